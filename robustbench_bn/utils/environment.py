"""Provenance written next to every result: package versions, git revision, device."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import torch

from robustbench_bn.version import __version__


@cache
def git_revision() -> str:
    """The suite's git commit (with ``+dirty`` for uncommitted changes), or ``unknown``."""
    folder = Path(__file__).resolve().parents[1]
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision + ("+dirty" if status else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}threads"


def environment(device: torch.device) -> dict[str, Any]:
    import hydra
    import numpy
    import torchvision

    return {
        "robustbench_bn": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "hydra": hydra.__version__,
        "platform": platform.platform(),
        "device": device_name(device),
    }
