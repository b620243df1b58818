"""The unadapted baseline: the model as trained, BatchNorm in eval mode with source statistics."""

from __future__ import annotations

from robustbench_bn.methods.base import Method


class Source(Method):
    """No adaptation; every prediction uses the source running statistics."""
