"""The Fashion-MNIST reader: shapes, padding, and clear errors for missing or damaged files."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from robustbench_bn.data import fashion_mnist
from robustbench_bn.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError


def test_test_split_is_3x32x32_uint8_with_padding():
    test = load_fashion_mnist("test")
    assert test.images.shape == (10_000, 3, 32, 32)
    assert test.images.dtype == torch.uint8
    assert test.labels.shape == (10_000,) and int(test.labels.max()) == 9
    assert int(test.images[:, :, :2].max()) == 0  # the 2-pixel zero padding
    assert torch.equal(test.images[:, 0], test.images[:, 2])  # replicated channel


def test_missing_files_name_the_searched_folders_and_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError) as error:
        load_fashion_mnist("test", data_dir=tmp_path / "empty")
    message = str(error.value)
    assert str(tmp_path / "empty") in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "download=true" in message


def test_truncated_idx_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    for name in ("t10k-labels-idx1-ubyte.gz",):
        shutil.copy(DEBIAN_DIR / name, tmp_path / name)
    with gzip.open(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz", "rb") as source:
        data = source.read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as target:
        target.write(data[: len(data) // 2])
    with pytest.raises(ConfigurationError, match="truncated"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_unknown_split_is_refused():
    with pytest.raises(ConfigurationError, match="'train' or 'test'"):
        load_fashion_mnist("validation")
