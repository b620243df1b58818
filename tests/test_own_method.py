"""docs/METHODS.md's "Writing your own method" example runs as written: the class from a module
outside the package, the YAML from a search path of the user's own."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.runner import run

DOCS = Path(__file__).resolve().parents[1] / "docs" / "METHODS.md"
SMALL = [
    "dataset.n_examples=64",
    "runner.batch_size=32",
    "dataset.severities=[1]",
    "dataset.corruptions=[brightness]",
]


def _example_blocks() -> dict[str, str]:
    section = DOCS.read_text().split("## Writing your own method", 1)[1]
    return dict(re.findall(r"```(python|yaml)\n(.*?)```", section, flags=re.DOTALL))


@pytest.fixture
def own_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    blocks = _example_blocks()
    (tmp_path / "my_methods.py").write_text(blocks["python"])
    (tmp_path / "my_conf" / "method").mkdir(parents=True)
    (tmp_path / "my_conf" / "method" / "flip_average.yaml").write_text(blocks["yaml"])
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_conf"


def test_the_documented_method_runs_and_records_its_parameter(make_config, own_method):
    cfg = make_config(*SMALL, f"hydra.searchpath=[file://{own_method}]", "method=flip_average")
    run(cfg)
    rows = pd.read_csv(Path(cfg.paths.output_dir) / "rows.csv")
    assert set(rows.method) == {"flip_average"}
    assert set(rows.method_params) == {'{"weight": 0.5}'}
    assert len(rows) == 2 and rows.accuracy.between(0, 100).all()


def test_a_key_the_documented_method_does_not_take_is_refused(make_config, own_method):
    cfg = make_config(
        *SMALL, f"hydra.searchpath=[file://{own_method}]", "method=flip_average", "+method.wieght=1"
    )
    with pytest.raises(ConfigurationError, match="wieght"):
        run(cfg)
