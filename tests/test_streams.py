"""Test streams: each order's determinism and content, the mixed stream's per-cell accounting,
resume rules, the rows' stream columns, and clear errors for bad stream settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_bn.data.benchmark import Cell
from robustbench_bn.data.streams import (
    build_stream,
    iterate_stream,
    label_shifted_order,
    plan_units,
    stream_order,
)
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.runner import config_hash, run

SMALL = ["dataset.n_examples=200", "runner.batch_size=50", "dataset.severities=[5]"]
THREE_CORRUPTIONS = "dataset.corruptions=[gaussian_noise,contrast,brightness]"


class LabelsOnly:
    """A benchmark stand-in whose images are their own (cell, index) tags."""

    name = "tags"
    num_classes = 10

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def cell_size(self, cell: Cell) -> int:
        return len(self.labels)

    def cell_labels(self, cell: Cell) -> torch.Tensor:
        return self.labels

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tags = torch.stack(
            [torch.full_like(indices, cell.severity * 100 + len(cell.corruption)), indices], dim=1
        )
        return tags, self.labels[indices]


def _labels(size: int = 1000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, classes, size))


def _classes_per_batch(labels: torch.Tensor, order: torch.Tensor, batch: int = 64) -> float:
    ordered = labels[order]
    return float(
        np.mean([len(set(ordered[i : i + batch].tolist())) for i in range(0, len(ordered), batch)])
    )


@pytest.mark.parametrize("order", ["sequential", "shuffled", "label_shift"])
def test_every_order_is_a_permutation_fixed_by_seed_and_cell(order):
    labels = _labels()

    def draw(seed, key):
        return stream_order(labels, order=order, label_shift_alpha=0.01, seed=seed, key=key)

    first = draw(0, "gaussian_noise-5")
    assert torch.equal(torch.sort(first).values, torch.arange(len(labels)))
    assert torch.equal(first, draw(0, "gaussian_noise-5"))
    if order == "sequential":
        assert torch.equal(first, torch.arange(len(labels)))
    else:
        assert not torch.equal(first, draw(1, "gaussian_noise-5"))
        assert not torch.equal(first, draw(0, "contrast-5"))


def test_label_shift_concentration_controls_how_many_classes_share_a_batch():
    labels = _labels(2000)
    shuffled = stream_order(labels, order="shuffled", label_shift_alpha=None, seed=0, key="c")
    strong = stream_order(labels, order="label_shift", label_shift_alpha=0.01, seed=0, key="c")
    weak = stream_order(labels, order="label_shift", label_shift_alpha=100.0, seed=0, key="c")
    assert _classes_per_batch(labels, shuffled) > 9.5
    assert _classes_per_batch(labels, strong) < 2.5
    assert _classes_per_batch(labels, weak) > 8


def test_label_shifted_order_keeps_every_image_once_with_few_classes():
    labels = np.array([3] * 7 + [5] * 2)
    order = label_shifted_order(labels, 0.5, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(9))


def test_mixed_stream_holds_each_image_once_interleaves_cells_and_tags_them():
    benchmark = LabelsOnly(_labels(300))
    cells = [Cell("gaussian_noise", 5), Cell("contrast", 5), Cell("fog", 5)]
    for order in ("sequential", "shuffled", "label_shift"):
        stream = build_stream(benchmark, cells, order=order, label_shift_alpha=0.01, seed=0)
        again = build_stream(benchmark, cells, order=order, label_shift_alpha=0.01, seed=0)
        assert torch.equal(stream.indices, again.indices)
        assert torch.equal(stream.cell_ids, again.cell_ids)
        assert stream.counts() == [300, 300, 300]
        for cell_id in range(3):
            own = stream.indices[stream.cell_ids == cell_id]
            assert torch.equal(torch.sort(own).values, torch.arange(300))
            if order == "sequential":  # each cell keeps its own order inside the mix
                assert torch.equal(own, torch.arange(300))
        seen = 0
        for images, labels, cell_ids in iterate_stream(benchmark, stream, 64):
            # The loaded images are the tagged ones: the right cell and index at every position.
            expected_cell = torch.tensor(
                [cells[i].severity * 100 + len(cells[i].corruption) for i in cell_ids.tolist()]
            )
            assert torch.equal(images[:, 0], expected_cell)
            assert torch.equal(labels, benchmark.labels[images[:, 1]])
            seen += len(labels)
        assert seen == 900
        if order != "label_shift":
            first_batch = stream.cell_ids[:64]
            assert len(torch.unique(first_batch)) == 3


def test_plan_units_mixes_corruptions_per_severity_and_keeps_clean_alone():
    cells = [Cell("clean", 0)] + [Cell(c, s) for c in ("a", "b") for s in (1, 3)]
    assert plan_units(cells, "cells") == [[cell] for cell in cells]
    assert plan_units(cells, "mixed") == [
        [Cell("clean", 0)],
        [Cell("a", 1), Cell("b", 1)],
        [Cell("a", 3), Cell("b", 3)],
    ]


def test_source_accuracy_is_the_same_in_every_order_and_stream(make_config, tmp_path):
    """The source model predicts image by image: an order or stream that lost, repeated or
    mislabelled an image, or a mixed stream that counted one for the wrong cell, would show."""
    reference = None
    for order in ("sequential", "shuffled", "label_shift"):
        for stream in ("cells", "mixed"):
            rows = run(
                make_config(
                    *SMALL,
                    THREE_CORRUPTIONS,
                    f"runner.order={order}",
                    f"runner.stream={stream}",
                    output_dir=tmp_path / f"{order}-{stream}",
                )
            )
            assert (rows["order"] == order).all() and (rows["stream"] == stream).all()
            alpha = rows["label_shift_alpha"]
            assert (alpha == 0.01).all() if order == "label_shift" else alpha.isna().all()
            counts = rows.set_index(["corruption", "severity"])[["n", "correct"]]
            if reference is None:
                reference = counts
            pd.testing.assert_frame_equal(counts, reference)


def test_label_shift_hurts_test_batch_statistics_and_is_the_same_for_every_method(
    make_config, tmp_path
):
    def mean_accuracy(order, method):
        rows = run(
            make_config(
                *SMALL,
                THREE_CORRUPTIONS,
                f"method={method}",
                f"runner.order={order}",
                output_dir=tmp_path / f"{order}-{method}",
            )
        )
        return rows[rows["corruption"] != "clean"]["accuracy"].mean()

    assert mean_accuracy("label_shift", "bn") < mean_accuracy("sequential", "bn") - 10


def test_mixed_stream_resumes_whole_severities_and_refuses_a_partial_one(make_config, tmp_path):
    overrides = [
        *SMALL[:2],
        "dataset.severities=[1,5]",
        THREE_CORRUPTIONS,
        "method=bn",
        "runner.stream=mixed",
    ]
    cfg = make_config(*overrides)
    first = run(cfg)
    assert len(first) == 7
    again = run(make_config(*overrides))  # nothing left: no cell evaluated twice
    pd.testing.assert_frame_equal(
        again[["corruption", "correct", "finished_at"]],
        first[["corruption", "correct", "finished_at"]],
    )
    rows_file = tmp_path / "job" / "rows.csv"
    on_disk = pd.read_csv(rows_file, dtype={"config_hash": str})
    # Drop all of severity 5 but one cell: that severity's stream is gone only in part.
    partial = on_disk[~((on_disk["severity"] == 5) & (on_disk["corruption"] != "contrast"))]
    partial.to_csv(rows_file, index=False)
    with pytest.raises(ConfigurationError, match="mixed stream of severity 5"):
        run(make_config(*overrides))
    # Without that severity at all, the job redoes it, bit for bit.
    on_disk[on_disk["severity"] != 5].to_csv(rows_file, index=False)
    redone = run(make_config(*overrides))
    key = ["corruption", "severity"]
    pd.testing.assert_frame_equal(
        redone.sort_values(key)[[*key, "correct"]].reset_index(drop=True),
        first.sort_values(key)[[*key, "correct"]].reset_index(drop=True),
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("runner.order=random", "runner.order must be one of"),
        ("runner.stream=interleaved", "runner.stream must be one of"),
    ],
)
def test_bad_stream_settings_are_refused_clearly(make_config, override, message):
    with pytest.raises(ConfigurationError, match=message):
        run(make_config(*SMALL, override))


@pytest.mark.parametrize("alpha", ["0", "-1", "inf", "null"])
def test_label_shift_needs_a_positive_concentration(make_config, alpha):
    with pytest.raises(ConfigurationError, match="label_shift_alpha must be a positive"):
        run(make_config(*SMALL, "runner.order=label_shift", f"runner.label_shift_alpha={alpha}"))


def test_default_stream_settings_keep_the_config_hash_of_earlier_jobs(make_config):
    from omegaconf import open_dict

    default = make_config(*SMALL)
    earlier = make_config(*SMALL)
    with open_dict(earlier):  # a job from before the stream settings existed
        for key in ("order", "stream", "label_shift_alpha"):
            del earlier.runner[key]
    assert config_hash(default) == config_hash(earlier)
    # The concentration changes nothing unless the order reads it.
    assert config_hash(make_config(*SMALL, "runner.label_shift_alpha=5")) == config_hash(default)
    shifted = make_config(*SMALL, "runner.order=label_shift")
    assert config_hash(shifted) != config_hash(default)
    assert config_hash(shifted) != config_hash(
        make_config(*SMALL, "runner.order=label_shift", "runner.label_shift_alpha=5")
    )
    assert config_hash(make_config(*SMALL, "runner.stream=mixed")) != config_hash(default)


def test_adaptation_samples_are_the_same_images_in_every_order():
    from robustbench_bn.data.streams import sample_positions

    benchmark = LabelsOnly(_labels(300))
    for cells in ([Cell("fog", 5)], [Cell("fog", 5), Cell("contrast", 5)]):
        drawn = set()
        for order in ("sequential", "shuffled", "label_shift"):
            stream = build_stream(benchmark, cells, order=order, label_shift_alpha=0.01, seed=0)
            positions = sample_positions(stream, 32, seed=0)
            drawn.add(
                tuple(
                    zip(
                        stream.cell_ids[positions].tolist(),
                        stream.indices[positions].tolist(),
                        strict=True,
                    )
                )
            )
        assert len(drawn) == 1 and len(next(iter(drawn))) == 32
