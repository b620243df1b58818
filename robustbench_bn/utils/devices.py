"""One reading of a device setting (``runner.device``, ``finetune.device``,
``dataset.decode_device``, ``dataset.corruption_device``): ``auto``, ``cpu``, ``cuda`` or
``cuda:N``, with the same errors everywhere."""

from __future__ import annotations

import torch

from robustbench_bn.errors import ConfigurationError


def resolve_device(requested: object, *, setting: str, hint: str = "") -> torch.device:
    """``auto`` is CUDA when the machine has it, else the CPU. A string torch cannot read, a
    device other than cpu/cuda, or CUDA on a machine without it is refused, naming
    ``setting`` (e.g. ``runner.device``) and the fix; ``hint`` is added to the last message."""
    requested = str(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise ConfigurationError(
            f"{setting}={requested!r} is not a device; use cpu, auto or cuda (or cuda:N)."
        ) from error
    if device.type not in ("cpu", "cuda"):
        raise ConfigurationError(
            f"{setting}={requested!r}: the suite runs on cpu or cuda (or cuda:N), or auto."
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"{setting}={requested!r} but this machine has no CUDA device; use {setting}=cpu "
            f"(or auto){hint}."
        )
    return device
