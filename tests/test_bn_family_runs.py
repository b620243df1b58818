"""eata, sar, lame and dua through the runner: built from their YAMLs, one row per cell, their
parameters in every row, and in the embedded default's grid preset."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

import robustbench_bn
from robustbench_bn.methods.eata import EfficientAntiForgetting
from robustbench_bn.methods.sar import SharpnessAwareReliable
from robustbench_bn.runner import run

SMALL = [
    "dataset.n_examples=64",
    "runner.batch_size=32",
    "dataset.severities=[5]",
    "dataset.corruptions=[gaussian_noise]",
]
CHEAP = {
    "eata": ["method.num_fisher_samples=128"],
    "sar": [],
    "lame": [],
    "dua": ["method.num_samples=4", "method.copies=16"],
}
EXPECTED_PARAMETERS = {
    "eata": {"entropy_margin": 0.4, "redundancy_threshold": 0.4, "num_fisher_samples": 128},
    "sar": {"rho": 0.05, "entropy_margin": 0.4, "reset_threshold": 0.2},
    "lame": {"knn": 5, "bound_lambda": 1.0, "affinity": "knn"},
    "dua": {"num_samples": 4, "copies": 16, "decay": 0.94, "min_momentum": 0.005},
}


@pytest.mark.parametrize("method", sorted(CHEAP))
def test_method_runs_from_its_config(make_config, method):
    rows = run(make_config(*SMALL, f"method={method}", *CHEAP[method]))
    assert list(zip(rows["corruption"], rows["severity"], strict=True)) == [
        ("clean", 0),
        ("gaussian_noise", 5),
    ]
    assert (rows["method"] == method).all() and (rows["n"] == 64).all()
    assert rows["accuracy"].between(0, 100).all()
    parameters = json.loads(rows["method_params"].iloc[0])
    assert EXPECTED_PARAMETERS[method].items() <= parameters.items()


def test_the_grid_preset_has_every_method():
    preset = Path(robustbench_bn.__file__).parent / "conf" / "experiment" / "fashion_grid.yaml"
    sweep = yaml.safe_load(preset.read_text())["hydra"]["sweeper"]["params"]
    assert sweep["method"].split(",") == [
        "source",
        "bn",
        "dmc",
        "tent",
        "eata",
        "sar",
        "lame",
        "dua",
    ]


@pytest.mark.parametrize("method", ["eata", "sar"])
def test_training_methods_keep_float32_parameters_under_autocast(
    quick_model, fashion_images, method
):
    model = copy.deepcopy(quick_model).eval()
    build = {"eata": EfficientAntiForgetting, "sar": SharpnessAwareReliable}[method]
    options = {"fisher_alpha": 0.0} if method == "eata" else {}
    adapter = build(model=model, learning_rate=0.01, **options)
    before = [parameter.detach().clone() for parameter in adapter.trainable]
    images = (fashion_images[0][:64] * 0.5 + 0.3).clamp(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in images.split(32):
            logits = adapter.predict(batch)
    assert torch.isfinite(logits).all()
    assert all(parameter.dtype == torch.float32 for parameter in adapter.trainable)
    assert any(
        not torch.equal(parameter, old)
        for parameter, old in zip(adapter.trainable, before, strict=True)
    )
