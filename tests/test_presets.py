"""Every experiment preset composes, and sets what its paper's protocol needs."""

from __future__ import annotations

from pathlib import Path

import pytest

import robustbench_bn

PRESETS = sorted(
    path.stem
    for path in (Path(robustbench_bn.__file__).parent / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes(make_config, preset):
    cfg = make_config(f"experiment={preset}")
    assert cfg.method.name and cfg.dataset.name


def test_paper_presets_set_their_protocol(make_config):
    benz = make_config("experiment=benz2021")
    assert (benz.method.statistics, benz.method.n_samples, benz.runner.batch_size, benz.seed) == (
        "samples",
        32,
        128,
        333,
    )
    tent = make_config("experiment=wang2021_tent")
    assert (tent.method.name, tent.runner.batch_size, tent.runner.reset) == (
        "tent",
        200,
        "per_cell",
    )
    schneider = make_config("experiment=schneider2020")
    assert schneider.method.prior == 16 and schneider.method.statistics == "batch"
    assert make_config("experiment=shu2021_advbn").finetune.name == "advbn"


def test_presets_can_be_overridden_on_the_command_line(make_config):
    cfg = make_config("experiment=benz2021", "method.n_samples=64")
    assert cfg.method.n_samples == 64
