"""evaluate() from Python, model=python, the model checks before the first cell, and rbn-report
reading any CSV of rows."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_bn import evaluate
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report.cli import main as report_main
from robustbench_bn.runner import run

ROOT = Path(__file__).resolve().parents[1]
#: Cells enough to exercise the runner, few enough to take seconds.
TINY = ["dataset.n_examples=16", "dataset.corruptions=[fog]", "dataset.severities=[1]"]
QUIET = ["display.progress=false", "display.print_table=false"]


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """evaluate() uses rbn-run's relative paths (outputs, .cache): keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def small_net(classes: int = 10, *, batch_norm: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)]
    return nn.Sequential(*layers)


def test_readme_example_runs(in_tmp, capsys):
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md:Use from Python", "exec"), namespace)
    rows = namespace["rows"]
    assert sorted(rows["method"].unique()) == ["bn", "source"]
    assert len(rows) == 2 * (1 + 2)  # clean + 2 corruptions at severity 5, per method
    assert (rows["n"] == 100).all() and (rows["model"] == "resnet18_mine").all()
    assert (rows["preprocessing"] == "mean=(0.2516,0.2516,0.2516);std=(0.3531,0.3531,0.3531)").all()
    # bn changes the numbers (test-batch statistics instead of the random init's running ones).
    by_method = rows.pivot_table(
        index=["corruption", "severity"], columns="method", values="correct"
    )
    assert (by_method["bn"] != by_method["source"]).any()
    report = (in_tmp / "outputs/python/report/report.md").read_text()
    assert "| source | bn |" in report
    jobs = sorted((in_tmp / "outputs/python/runs/fashion_mnist_c/resnet18_mine/none").iterdir())
    assert [job.name.split("-")[0] for job in jobs] == ["bn", "source"]

    # The same call again resumes: nothing recomputed, the same rows.
    model = namespace["model"]
    quick = namespace["quick"]
    again = evaluate(
        model,
        method="bn",
        overrides=[*quick, *QUIET],
        output_dir="outputs/python",
        preprocessing=((0.2516,) * 3, (0.3531,) * 3),
        name="resnet18_mine",
    )
    first = rows[rows["method"] == "bn"].reset_index(drop=True)
    assert again["finished_at"].tolist() == first["finished_at"].tolist()
    assert again["correct"].tolist() == first["correct"].tolist()


def test_model_fingerprint_names_the_folder_and_the_model_is_not_changed(in_tmp):
    torch.manual_seed(0)
    model = small_net()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    first = evaluate(model, method="bn", overrides=[*TINY, *QUIET], output_dir="out")
    # bn patched the BatchNorm forwards of the copy it adapted, not of the user's model.
    assert "forward" not in vars(model[1])
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert (
        first["model"].str.fullmatch(r"torch\.nn\.modules\.container\.Sequential@[0-9a-f]{8}").all()
    )
    assert (first["preprocessing"] == "none(model takes [0,1] images)").all()

    with torch.no_grad():
        model[0].weight.mul_(2)
    second = evaluate(model, method="bn", overrides=[*TINY, *QUIET], output_dir="out")
    assert first["config_hash"].iloc[0] != second["config_hash"].iloc[0]
    assert first["model"].iloc[0] != second["model"].iloc[0]
    folders = list((in_tmp / "out/runs/fashion_mnist_c").glob("*Sequential@*/none/bn-*"))
    assert len(folders) == 2

    # A callable preprocessing is applied inside and named in the rows.
    def halve(images: torch.Tensor) -> torch.Tensor:
        return images / 2

    third = evaluate(model, overrides=[*TINY, *QUIET], preprocessing=halve)
    assert (
        third["preprocessing"].iloc[0].startswith("callable:")
        and "halve" in third["preprocessing"].iloc[0]
    )


@pytest.mark.parametrize(
    ("model", "method", "message"),
    [
        (small_net(1000), "source", "outputs 1000 classes, but fashion_mnist_c has 10"),
        (small_net(batch_norm=False), "bn", "BatchNorm2d"),
        (small_net(batch_norm=False), "tent", "BatchNorm2d"),
        (nn.Sequential(small_net(), nn.Unflatten(1, (2, 5))), "source", "shape [2, 2, 5]"),
        (nn.Identity(), "source", "must be logits [2, 10]"),
        (nn.Conv2d(1, 4, 3), "source", "The model fails on a batch"),
    ],
    ids=[
        "1000_classes",
        "bn_without_bn_layers",
        "tent_without_bn_layers",
        "3d_output",
        "no_classifier",
        "wrong_input_channels",
    ],
)
def test_unusable_model_is_refused_before_the_first_cell(in_tmp, model, method, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        evaluate(model, method=method, overrides=[*TINY, *QUIET], output_dir="out")
    rows_files = list((in_tmp / "out").rglob("rows.csv"))
    assert rows_files == []


def test_tuple_output_is_refused(in_tmp):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_net()

        def forward(self, images):
            return self.net(images), images

    with pytest.raises(ConfigurationError, match="returns tuple"):
        evaluate(TwoHeads(), overrides=[*TINY, *QUIET])


def test_bad_arguments_are_refused(in_tmp):
    with pytest.raises(ConfigurationError, match="torch.nn.Module"):
        evaluate(lambda images: images)
    with pytest.raises(ConfigurationError, match="does not apply"):
        evaluate(small_net(), overrides=["model=resnet20_cifar"])
    with pytest.raises(ConfigurationError, match="list of strings"):
        evaluate(small_net(), overrides="dataset.n_examples=16")
    with pytest.raises(ConfigurationError, match="preprocessing must be"):
        evaluate(small_net(), preprocessing=0.5)
    with pytest.raises(ConfigurationError, match="Cannot compose"):
        evaluate(small_net(), method="no_such_method")


def test_model_python_from_the_config(make_config, tmp_path):
    cfg = make_config(
        "model=python",
        "model.target=torchvision.models:resnet18",
        "model.kwargs={num_classes: 10}",
        "model.mean=[0.2516,0.2516,0.2516]",
        "model.std=[0.3531,0.3531,0.3531]",
        *TINY,
        quick_model=False,
    )
    rows = run(cfg)
    assert (rows["model"] == "torchvision.models:resnet18").all()
    assert rows["preprocessing"].iloc[0] == "mean=(0.2516,0.2516,0.2516);std=(0.3531,0.3531,0.3531)"
    assert len(rows) == 2

    for target, message in [
        ("torchvision.models.resnet18", "must be 'pkg.module:function'"),
        ("no_such_package_24:build", "cannot import no_such_package_24"),
        ("torchvision.models:no_such_net", "has no no_such_net"),
        ("collections:OrderedDict", "returned OrderedDict"),
        ("torchvision.models:ResNet50_Weights.DEFAULT", "is not callable"),
    ]:
        cfg = make_config(
            "model=python",
            f"model.target={target}",
            *TINY,
            quick_model=False,
            output_dir=tmp_path / "bad",
        )
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            run(cfg)


def test_model_python_kwargs_that_do_not_fit_are_refused(make_config):
    cfg = make_config(
        "model=python",
        "model.target=torchvision.models:resnet18",
        "model.kwargs={depth: 3}",
        *TINY,
        quick_model=False,
    )
    with pytest.raises(ConfigurationError, match="cannot be called with"):
        run(cfg)


def test_compare_accepts_any_csv_of_rows(tmp_path, capsys):
    slice_csv = ROOT / "results/fashion_mnist_c/ci_slice.csv"
    with pytest.raises(SystemExit) as exit_status:
        report_main(["compare", str(slice_csv), str(slice_csv)])
    assert exit_status.value.code == 0
    assert capsys.readouterr().out.strip().endswith("PASS")

    # A moved cell in a saved frame fails the comparison.
    frame = pd.read_csv(slice_csv)
    frame.loc[0, "accuracy"] += 5
    moved = tmp_path / "moved_rows.csv"
    frame.to_csv(moved, index=False)
    with pytest.raises(SystemExit) as exit_status:
        report_main(["compare", str(moved), str(slice_csv)])
    assert exit_status.value.code == 1

    with pytest.raises(SystemExit) as exit_status:
        report_main(
            [
                str(ROOT / "results/fashion_mnist_c/full_grid.csv"),
                "--out",
                str(tmp_path / "report"),
                "--no-plots",
            ]
        )
    assert exit_status.value.code == 0
    assert "| dmc |" in (tmp_path / "report/report.md").read_text()
