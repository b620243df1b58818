"""Every device setting is read by one function, with the same errors."""

from __future__ import annotations

import pytest
import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.devices import resolve_device


def test_auto_and_cpu():
    assert resolve_device("cpu", setting="runner.device") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", setting="runner.device").type == expected


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ("graphics card", r"finetune.device='graphics card' is not a device; use cpu, auto"),
        ("meta", r"finetune.device='meta': the suite runs on cpu or cuda"),
    ],
)
def test_refusals_name_the_setting_and_the_fix(requested, message):
    with pytest.raises(ConfigurationError, match=message):
        resolve_device(requested, setting="finetune.device")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_refused_with_the_hint():
    with pytest.raises(
        ConfigurationError, match=r"no CUDA device; use runner.device=cpu \(or auto\), or so"
    ):
        resolve_device("cuda:1", setting="runner.device", hint=", or so")
