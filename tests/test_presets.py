"""Every experiment preset composes, and sets what its paper's protocol needs."""

from __future__ import annotations

from pathlib import Path

import pytest

import robustbench_bn
from robustbench_bn import runner as runner_module
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.runner import run

PRESETS = sorted(
    path.stem
    for path in (Path(robustbench_bn.__file__).parent / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes(make_config, preset):
    cfg = make_config(f"experiment={preset}", quick_model=False)
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


def test_released_data_presets_set_their_protocol(make_config):
    tent = make_config("experiment=tent_cifar10c_sev5", quick_model=False)
    assert (tent.model.name, tent.dataset.name, list(tent.dataset.severities)) == (
        "wrn28_10_robustbench_standard",
        "cifar10_c",
        [5],
    )
    assert (tent.runner.batch_size, tent.runner.reset, tent.dataset.include_clean) == (
        200,
        "per_cell",
        False,
    )
    benz = make_config("experiment=benz2021_resnet20_cifar10c", quick_model=False)
    assert (benz.method.statistics, benz.method.n_samples, benz.seed) == ("samples", 32, 333)
    assert len(benz.dataset.corruptions) == 19
    full = make_config("experiment=schneider2020_imagenetc", quick_model=False)
    partial = make_config(
        "experiment=schneider2020_imagenetc", "adaptation=partial", quick_model=False
    )
    assert (full.method.prior, full.runner.batch_size) == (0, 512)
    assert (partial.method.prior, partial.runner.batch_size) == (16, 8)
    assert full.dataset.subset == "all" and full.model.weights == "IMAGENET1K_V1"
    advbn = make_config("experiment=shu2021_advbn_imagenetc", quick_model=False)
    assert (advbn.finetune.name, advbn.finetune.split_after) == ("advbn", "layer1")


METHODS = sorted(
    path.stem for path in (Path(robustbench_bn.__file__).parent / "conf" / "method").glob("*.yaml")
)
FINETUNES = sorted(
    path.stem
    for path in (Path(robustbench_bn.__file__).parent / "conf" / "finetune").glob("*.yaml")
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_method_and_finetune_under_every_preset_gets_only_settings_it_takes(
    make_config, preset
):
    """`rbn-run experiment=benz2021 method=source` once handed source bn's settings (a raw
    TypeError); a preset's settings for one method now apply to that method alone."""
    for method in METHODS:
        cfg = make_config(f"experiment={preset}", f"method={method}", quick_model=False)
        arguments = runner_module._builder_arguments(cfg.method)
        runner_module.check_settings_taken(arguments, "method", method)
    for finetune in FINETUNES:
        cfg = make_config(f"experiment={preset}", f"finetune={finetune}", quick_model=False)
        if finetune == "none":
            assert set(cfg.finetune) == {"name"}, preset
        arguments = runner_module._builder_arguments(cfg.finetune)
        runner_module.check_settings_taken(arguments, "finetune", finetune)


def test_preset_settings_for_bn_stay_with_bn(make_config):
    assert set(make_config("experiment=benz2021", "method=source").method) == {
        "name",
        "_target_",
    }
    bn = make_config("experiment=benz2021", "method=bn", "method.n_samples=8").method
    assert (bn.statistics, bn.n_samples, bn.prior) == ("samples", 8, 0)
    none = make_config("experiment=shu2021_advbn_imagenetc", "finetune=none", quick_model=False)
    assert set(none.finetune) == {"name"}


def test_benz2021_with_source_runs(make_config):
    cfg = make_config(
        "experiment=benz2021",
        "method=source",
        "dataset.n_examples=64",
        "dataset.corruptions=[fog]",
        "dataset.severities=[5]",
    )
    rows = run(cfg)
    assert list(rows["method"]) == ["source", "source"] and (rows["seed"] == 333).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=source", "+method.statistics=samples"), "method=source takes no setting"),
        (("method=bn", "+method.n_sample=3"), "Did you mean method.n_samples"),
        (("finetune=advbn", "+finetune.epoch=1"), "Did you mean finetune.epochs"),
    ],
)
def test_settings_a_builder_does_not_take_are_refused_clearly(make_config, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        run(make_config(*overrides, "dataset.n_examples=64"))
