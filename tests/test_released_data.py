"""Released CIFAR-10-C layout: a miniature release in the exact format, read back cell by cell."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from robustbench_bn.data.benchmark import Cell
from robustbench_bn.data.released import CifarCorrupted
from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError

PER_SEVERITY = 8


def _pattern(severity: int, index: int) -> int:
    return (severity * 40 + index * 3) % 256


@pytest.fixture
def mini_release(tmp_path):
    """<root>/<corruption>.npy uint8 (5*n,32,32,3), labels.npy uint8 (5*n,), + clean pickles."""
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    labels = np.tile(np.arange(PER_SEVERITY) % 10, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for corruption in ("gaussian_noise", "fog"):
        array = np.zeros((5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        for severity in range(1, 6):
            for index in range(PER_SEVERITY):
                array[(severity - 1) * PER_SEVERITY + index] = _pattern(severity, index)
        array[..., 1] = 7  # the green channel marks the channel order
        np.save(root / f"{corruption}.npy", array)
    clean = tmp_path / "cifar-10-batches-py"
    clean.mkdir()
    data = np.full((PER_SEVERITY, 3 * 32 * 32), 9, dtype=np.uint8)
    with open(clean / "test_batch", "wb") as handle:
        pickle.dump({b"data": data, b"labels": list(range(PER_SEVERITY))}, handle)
    return root


def test_each_severity_reads_its_own_block_with_the_right_labels(mini_release):
    release = CifarCorrupted(
        name="cifar10_c", root=str(mini_release), clean_dir=str(mini_release.parent)
    )
    for severity in range(1, 6):
        images, labels = release.load(Cell("fog", severity), torch.arange(PER_SEVERITY))
        assert images.shape == (PER_SEVERITY, 3, 32, 32) and images.dtype == torch.float32
        expected = torch.tensor([_pattern(severity, i) for i in range(PER_SEVERITY)]) / 255
        torch.testing.assert_close(images[:, 0, 0, 0], expected)
        assert torch.all(images[:, 1] == 7 / 255)
        assert labels.tolist() == [i % 10 for i in range(PER_SEVERITY)]
    clean, clean_labels = release.load(Cell("clean", 0), torch.arange(3))
    assert torch.all(clean == 9 / 255) and clean_labels.tolist() == [0, 1, 2]


def test_full_run_on_the_miniature_release(mini_release, make_config):
    from robustbench_bn.runner import run

    cfg = make_config(
        "dataset=cifar10_c",
        f"dataset.root={mini_release}",
        f"dataset.clean_dir={mini_release.parent}",
        "dataset.corruptions=[gaussian_noise,fog]",
        "runner.batch_size=4",
        "method=bn",
    )
    rows = run(cfg)
    assert len(rows) == 11 and (rows["n"] == PER_SEVERITY).all()
    assert (rows["corruption_source"] == "released:cifar10_c").all()


def test_missing_corruption_file_names_layout_and_download(mini_release):
    release = CifarCorrupted(name="cifar10_c", root=str(mini_release))
    with pytest.raises(DatasetNotFoundError) as error:
        release.load(Cell("snow", 1), torch.arange(2))
    assert "snow.npy is missing" in str(error.value)
    assert "rbn-data download cifar10_c" in str(error.value)


def test_wrong_dtype_or_shape_is_refused(mini_release):
    np.save(mini_release / "fog.npy", np.zeros((5 * PER_SEVERITY, 32, 32, 3), np.float32))
    release = CifarCorrupted(name="cifar10_c", root=str(mini_release))
    with pytest.raises(ConfigurationError, match="dtype float32"):
        release.load(Cell("fog", 1), torch.arange(2))
    np.save(mini_release / "fog.npy", np.zeros((5 * PER_SEVERITY, 32, 32), np.uint8))
    release = CifarCorrupted(name="cifar10_c", root=str(mini_release))
    with pytest.raises(ConfigurationError, match="shape"):
        release.load(Cell("fog", 1), torch.arange(2))


def test_truncated_file_is_reported(mini_release):
    path = mini_release / "fog.npy"
    path.write_bytes(path.read_bytes()[:1000])
    release = CifarCorrupted(name="cifar10_c", root=str(mini_release))
    with pytest.raises(ConfigurationError, match="truncated"):
        release.load(Cell("fog", 2), torch.arange(2))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Expected layout"):
        CifarCorrupted(name="cifar10_c", root=str(tmp_path / "nowhere"))


def test_rbn_data_verify_catches_planted_defects(tmp_path, capsys):
    from robustbench_bn.data.cli import main

    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(10, dtype=np.uint8), 5))
    good = np.zeros((50, 32, 32, 3), np.uint8)
    from robustbench_bn.data.released import CIFAR_C_CORRUPTIONS

    for corruption in CIFAR_C_CORRUPTIONS:
        np.save(root / f"{corruption}.npy", good)
    (root / "fog.npy").unlink()
    np.save(root / "snow.npy", good.astype(np.float32))
    np.save(root / "frost.npy", good[:, :16])
    (root / "contrast.npy").write_bytes((root / "contrast.npy").read_bytes()[:500])
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "cifar10_c", "--root", str(root)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "fog.npy is missing" in out
    assert "snow.npy is float32" in out
    assert "frost.npy is uint8 (50, 16, 32, 3)" in out
    assert "contrast.npy cannot be read" in out and "truncated" in out
    assert "has 50 labels, the release has 50000" in out
