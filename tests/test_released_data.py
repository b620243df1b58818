"""Released layouts: miniature releases in the exact formats, read back cell by cell and run.

CIFAR-10-C / CIFAR-100-C: ``<corruption>.npy`` uint8 (5n, 32, 32, 3) + ``labels.npy``, with
CIFAR's python pickles for the clean cell. ImageNet-C / Tiny-ImageNet-C: JPEG trees
``<corruption>/<severity>/<wnid>/<file>.JPEG``. Every image encodes its severity, class and
index in its pixel values, so a test can tell exactly which image came back.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io as io

from robustbench_bn.data.benchmark import Cell, as_float_images
from robustbench_bn.data.clean_sets import ImageSubset, load_cifar
from robustbench_bn.data.released import CifarCorrupted, ImageTreeCorrupted
from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError

PER_SEVERITY = 8
WNIDS = ("n01440764", "n01443537", "n01484850")
TREE_CORRUPTIONS = ("fog", "gaussian_noise")


def _pattern(severity: int, index: int) -> int:
    return (severity * 40 + index * 3) % 256


def _write_cifar_pickles(folder: Path, labels: list[int], *, value: int = 9, cifar100=False):
    folder.mkdir(parents=True, exist_ok=True)
    data = np.full((len(labels), 3 * 32 * 32), value, dtype=np.uint8)
    data[:, 1024:2048] = 7  # green plane: proves the CHW order survives
    key = b"fine_labels" if cifar100 else b"labels"
    names = ("test", "train") if cifar100 else ("test_batch", "data_batch_1")
    for name in names:
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, key: list(labels)}, handle)
    if not cifar100:
        for i in range(2, 6):
            (folder / f"data_batch_{i}").write_bytes((folder / "data_batch_1").read_bytes())


def make_cifar_release(tmp_path: Path, *, name: str = "CIFAR-10-C", classes: int = 10) -> Path:
    """A miniature CIFAR-C release: two corruptions, PER_SEVERITY images per severity."""
    root = tmp_path / name
    root.mkdir()
    labels = (np.arange(PER_SEVERITY) * 7 % classes).astype(np.uint8)
    np.save(root / "labels.npy", np.tile(labels, 5))
    for corruption in ("gaussian_noise", "fog"):
        array = np.zeros((5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        for severity in range(1, 6):
            for index in range(PER_SEVERITY):
                array[(severity - 1) * PER_SEVERITY + index] = _pattern(severity, index)
        array[..., 1] = 7  # the green channel marks the channel order
        np.save(root / f"{corruption}.npy", array)
    clean = "cifar-100-python" if classes == 100 else "cifar-10-batches-py"
    _write_cifar_pickles(tmp_path / clean, labels.tolist(), cifar100=classes == 100)
    return root


def _tree_value(severity: int, label: int, index: int) -> int:
    return 20 * severity + 7 * label + 2 * index


def make_tree(root: Path, *, size: int, per_class: int = 2, quality: int = 95) -> Path:
    """A miniature JPEG tree: TREE_CORRUPTIONS x 5 severities x WNIDS x per_class images."""
    for corruption in TREE_CORRUPTIONS:
        for severity in range(1, 6):
            for label, wnid in enumerate(WNIDS):
                folder = root / corruption / str(severity) / wnid
                folder.mkdir(parents=True)
                for index in range(per_class):
                    value = _tree_value(severity, label, index)
                    image = torch.full((3, size, size), value, dtype=torch.uint8)
                    data = io.encode_jpeg(image, quality=quality)
                    (folder / f"ILSVRC2012_val_{label}{index:04d}.JPEG").write_bytes(
                        bytes(data.numpy())
                    )
    return root


@pytest.fixture
def mini_release(tmp_path):
    return make_cifar_release(tmp_path)


@pytest.fixture
def compose_config(make_config):
    """The suite's config as rbn-run composes it, for any model config: conftest's
    make_config without the embedded default's ``model.epochs`` override, which no other
    model config accepts (these runs use random-weight CIFAR ResNets)."""
    return lambda *overrides: make_config(*overrides, quick_model=False)


# --------------------------------------------------------------------------- CIFAR-C


def test_each_severity_reads_its_own_block_with_the_right_labels(mini_release):
    release = CifarCorrupted(
        name="cifar10_c", root=str(mini_release), clean_dir=str(mini_release.parent)
    )
    expected_labels = [i * 7 % 10 for i in range(PER_SEVERITY)]
    for severity in range(1, 6):
        images, labels = release.load(Cell("fog", severity), torch.arange(PER_SEVERITY))
        assert images.shape == (PER_SEVERITY, 3, 32, 32) and images.dtype == torch.uint8
        assert images.is_contiguous()
        images = as_float_images(images)
        expected = torch.tensor([_pattern(severity, i) for i in range(PER_SEVERITY)]) / 255
        torch.testing.assert_close(images[:, 0, 0, 0], expected)
        assert torch.all(images[:, 1] == 7 / 255)
        assert labels.dtype == torch.int64 and labels.tolist() == expected_labels
    # Scattered indices (the adaptation samples) read the same images as a range does.
    picked, picked_labels = release.load(Cell("fog", 3), torch.tensor([5, 0, 2]))
    whole, _ = release.load(Cell("fog", 3), torch.arange(PER_SEVERITY))
    torch.testing.assert_close(picked, whole[[5, 0, 2]])
    assert picked_labels.tolist() == [expected_labels[i] for i in (5, 0, 2)]
    clean, clean_labels = release.load(Cell("clean", 0), torch.arange(3))
    clean = as_float_images(clean)
    assert torch.all(clean[:, 0] == 9 / 255) and torch.all(clean[:, 1] == 7 / 255)
    assert clean_labels.tolist() == expected_labels[:3]
    assert release.row_fields()["subset"] == "all"


def test_n_examples_takes_the_first_images_and_says_so(mini_release):
    release = CifarCorrupted(name="cifar10_c", root=str(mini_release), n_examples=3)
    assert release.cell_size(Cell("fog", 1)) == 3
    assert release.row_fields()["subset"] == "first_3"
    with pytest.raises(ConfigurationError, match="1..8"):
        CifarCorrupted(name="cifar10_c", root=str(mini_release), n_examples=9)


def test_training_split_comes_from_the_clean_pickles(mini_release):
    release = CifarCorrupted(
        name="cifar10_c", root=str(mini_release), clean_dir=str(mini_release.parent)
    )
    images, labels = release.training_images()
    assert images.shape == (5 * PER_SEVERITY, 3, 32, 32) and images.dtype == torch.uint8
    assert len(labels) == 5 * PER_SEVERITY


def test_clean_set_of_another_dataset_is_refused(tmp_path):
    root = make_cifar_release(tmp_path)
    _write_cifar_pickles(tmp_path / "cifar-10-batches-py", [9] * PER_SEVERITY)
    release = CifarCorrupted(name="cifar10_c", root=str(root), clean_dir=str(tmp_path))
    with pytest.raises(ConfigurationError, match="not the same dataset"):
        release.load(Cell("clean", 0), torch.arange(2))


def test_missing_clean_pickles_name_layout_and_download(mini_release, tmp_path):
    release = CifarCorrupted(
        name="cifar10_c", root=str(mini_release), clean_dir=str(tmp_path / "elsewhere")
    )
    with pytest.raises(DatasetNotFoundError) as error:
        release.load(Cell("clean", 0), torch.arange(2))
    assert "cifar-10-batches-py" in str(error.value)
    assert "torchvision.datasets.CIFAR10" in str(error.value)


def test_truncated_clean_pickle_is_reported(mini_release):
    path = mini_release.parent / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigurationError, match="truncated"):
        load_cifar(mini_release.parent, dataset="cifar10", split="test")


def test_missing_corruption_file_names_layout_and_download(mini_release):
    release = CifarCorrupted(name="cifar10_c", root=str(mini_release))
    with pytest.raises(DatasetNotFoundError) as error:
        release.load(Cell("snow", 1), torch.arange(2))
    assert "snow.npy is missing" in str(error.value)
    assert "Expected layout" in str(error.value)
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


def test_labels_of_another_release_are_refused(mini_release):
    np.save(mini_release / "labels.npy", np.full(5 * PER_SEVERITY, 42, np.uint8))
    with pytest.raises(ConfigurationError, match="10 classes"):
        CifarCorrupted(name="cifar10_c", root=str(mini_release))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Expected layout"):
        CifarCorrupted(name="cifar10_c", root=str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- JPEG trees


def _values(images: torch.Tensor) -> list[int]:
    return [round(v) for v in (as_float_images(images).mean(dim=(1, 2, 3)) * 255).tolist()]


@pytest.mark.parametrize(("name", "size"), [("imagenet_c", 224), ("tiny_imagenet_c", 64)])
def test_tree_reads_each_severity_with_labels_from_sorted_wnids(tmp_path, name, size):
    root = make_tree(tmp_path / name, size=size)
    release = ImageTreeCorrupted(name=name, root=str(root), num_classes=len(WNIDS))
    cell = Cell("fog", 4)
    assert release.cell_size(cell) == 6
    images, labels = release.load(cell, torch.arange(6))
    assert images.shape == (6, 3, size, size) and images.dtype == torch.uint8
    images = as_float_images(images)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert _values(images) == [_tree_value(4, label, i) for label in range(3) for i in range(2)]
    scattered, scattered_labels = release.load(Cell("fog", 2), torch.tensor([5, 0]))
    scattered = as_float_images(scattered)
    assert _values(scattered) == [_tree_value(2, 2, 1), _tree_value(2, 0, 0)]
    assert scattered_labels.tolist() == [2, 0]
    assert release.row_fields() == {
        "subset": "all",
        "corruption_source": f"released:{name}",
        "decode_device": "cpu",
    }


def test_worker_decoding_gives_the_same_batches(tmp_path):
    root = make_tree(tmp_path / "tiny", size=64, per_class=3)
    in_process = ImageTreeCorrupted(name="tiny_imagenet_c", root=str(root), num_classes=3)
    workers = ImageTreeCorrupted(
        name="tiny_imagenet_c", root=str(root), num_classes=3, num_workers=2
    )
    cell = Cell("gaussian_noise", 5)
    for start in range(0, 9, 4):
        indices = torch.arange(start, min(start + 4, 9))
        expected, expected_labels = in_process.load(cell, indices)
        images, labels = workers.load(cell, indices)
        torch.testing.assert_close(images, expected)
        assert torch.equal(labels, expected_labels)
    # A jump back (e.g. the next method's samples) falls back to in-process decoding.
    images, _ = workers.load(cell, torch.tensor([0, 1]))
    torch.testing.assert_close(images, in_process.load(cell, torch.tensor([0, 1]))[0])


def test_balanced_subset_is_deterministic_and_per_class(tmp_path):
    root = make_tree(tmp_path / "tiny", size=64, per_class=4)
    release = ImageTreeCorrupted(
        name="tiny_imagenet_c", root=str(root), num_classes=3, subset="balanced",
        images_per_class=2, subset_seed=1,
    )  # fmt: skip
    cell = Cell("fog", 1)
    assert release.cell_size(cell) == 6
    _, labels = release.load(cell, torch.arange(6))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    chosen = release._cell_files(cell)[0]
    again = ImageTreeCorrupted(
        name="tiny_imagenet_c", root=str(root), num_classes=3, subset="balanced",
        images_per_class=2, subset_seed=1,
    )._cell_files(cell)[0]  # fmt: skip
    assert chosen == again
    # Another class's files do not move this class's choice.
    for path in (root / "fog" / "1" / WNIDS[2]).iterdir():
        if path not in chosen:
            path.unlink()
    reduced = ImageTreeCorrupted(
        name="tiny_imagenet_c", root=str(root), num_classes=3, subset="balanced",
        images_per_class=2, subset_seed=1,
    )._cell_files(cell)[0]  # fmt: skip
    assert reduced == chosen
    assert release.row_fields()["subset"] == "balanced:2_per_class:seed1"
    other_seed = ImageSubset(mode="balanced", images_per_class=2, seed=2)
    files = {w: sorted(p.name for p in (root / "fog" / "2" / w).iterdir()) for w in WNIDS}
    assert other_seed.select(files, root) != ImageSubset(
        mode="balanced", images_per_class=2, seed=1
    ).select(files, root)


def test_subset_file_reads_the_listed_images(tmp_path):
    root = make_tree(tmp_path / "tiny", size=64)
    listing = tmp_path / "subset.txt"
    listing.write_text(
        f"# a user's list\n{WNIDS[2]}/ILSVRC2012_val_20001.JPEG\n"
        f"{WNIDS[0]}/ILSVRC2012_val_00000.JPEG\n"
    )
    release = ImageTreeCorrupted(
        name="tiny_imagenet_c", root=str(root), num_classes=3, subset="file",
        subset_file=str(listing),
    )  # fmt: skip
    images, labels = release.load(Cell("fog", 3), torch.arange(2))
    assert labels.tolist() == [0, 2]
    assert _values(images) == [_tree_value(3, 0, 0), _tree_value(3, 2, 1)]
    assert release.row_fields()["subset"].startswith("file:subset.txt:sha256=")
    listing.write_text(f"{WNIDS[0]}/not_there.JPEG\n")
    release = ImageTreeCorrupted(
        name="tiny_imagenet_c", root=str(root), num_classes=3, subset="file",
        subset_file=str(listing),
    )  # fmt: skip
    with pytest.raises(DatasetNotFoundError, match="not_there.JPEG"):
        release.cell_size(Cell("fog", 1))


def test_tree_defects_are_clear_errors(tmp_path):
    root = make_tree(tmp_path / "ImageNet-C", size=224)

    def fresh() -> ImageTreeCorrupted:
        return ImageTreeCorrupted(name="imagenet_c", root=str(root), num_classes=3)

    with pytest.raises(DatasetNotFoundError) as error:
        fresh().cell_size(Cell("snow", 1))
    assert "snow is missing" in str(error.value)
    assert "rbn-data download imagenet_c" in str(error.value)
    empty = root / "fog" / "2" / WNIDS[1]
    for path in empty.iterdir():
        path.unlink()
    with pytest.raises(DatasetNotFoundError, match="is empty"):
        fresh().cell_size(Cell("fog", 2))
    empty.rmdir()
    with pytest.raises(DatasetNotFoundError, match="2 class folders, expected 3"):
        fresh().cell_size(Cell("fog", 2))
    victim = next((root / "fog" / "3" / WNIDS[0]).iterdir())
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(ConfigurationError, match="truncated"):
        fresh().load(Cell("fog", 3), torch.arange(2))
    small = io.encode_jpeg(torch.zeros(3, 100, 100, dtype=torch.uint8))
    (root / "fog" / "4" / WNIDS[0] / "ILSVRC2012_val_00000.JPEG").write_bytes(bytes(small.numpy()))
    with pytest.raises(ConfigurationError, match="100x100 pixels, expected 224x224"):
        fresh().load(Cell("fog", 4), torch.arange(2))
    with pytest.raises(ConfigurationError, match="dataset.subset must be one of"):
        ImageTreeCorrupted(name="imagenet_c", root=str(root), subset="5000")
    with pytest.raises(ConfigurationError, match="dataset.include_clean=false"):
        fresh().load(Cell("clean", 0), torch.arange(2))


# --------------------------------------------------------------------------- full runs


def test_full_run_on_the_miniature_cifar10_c(mini_release, compose_config):
    from robustbench_bn.runner import run

    cfg = compose_config(
        "dataset=cifar10_c",
        "model=resnet20_cifar",
        f"dataset.root={mini_release}",
        f"dataset.clean_dir={mini_release.parent}",
        "dataset.corruptions=[gaussian_noise,fog]",
        "runner.batch_size=4",
        "method=bn",
    )
    rows = run(cfg)
    assert len(rows) == 11 and (rows["n"] == PER_SEVERITY).all()
    assert (rows["corruption_source"] == "released:cifar10_c").all()
    assert (rows["subset"] == "all").all()
    assert rows["preprocessing"].str.contains("input=32px").all()
    assert (Path(cfg.paths.output_dir) / "table.csv").is_file()


def test_full_run_on_the_miniature_cifar100_c(tmp_path, compose_config):
    from robustbench_bn.runner import run

    root = make_cifar_release(tmp_path, name="CIFAR-100-C", classes=100)
    cfg = compose_config(
        "dataset=cifar100_c",
        "model=resnet20_cifar",
        "model.num_classes=100",
        f"dataset.root={root}",
        f"dataset.clean_dir={tmp_path}",
        "dataset.corruptions=[fog]",
        "dataset.severities=[1,5]",
        "runner.batch_size=4",
    )
    rows = run(cfg)
    assert rows["corruption"].tolist() == ["clean", "fog", "fog"]
    assert (rows["dataset"] == "cifar100_c").all() and (rows["n"] == PER_SEVERITY).all()


@pytest.mark.parametrize(("name", "size"), [("imagenet_c", 224), ("tiny_imagenet_c", 64)])
def test_full_run_on_a_miniature_tree(tmp_path, compose_config, name, size):
    from robustbench_bn.runner import run

    root = make_tree(tmp_path / name, size=size)
    cfg = compose_config(
        f"dataset={name}",
        "model=resnet20_cifar",
        "model.num_classes=3",  # the model must fit the tree's classes (checked before a cell)
        f"dataset.root={root}",
        "dataset.num_classes=3",
        "dataset.num_workers=0",
        "dataset.subset=balanced",
        "dataset.images_per_class=1",
        f"dataset.corruptions=[{','.join(TREE_CORRUPTIONS)}]",
        "runner.batch_size=3",
        "method=bn",
    )
    rows = run(cfg)
    assert len(rows) == 10 and (rows["n"] == 3).all()
    assert (rows["subset"] == "balanced:1_per_class:seed0").all()
    assert (rows["corruption_source"] == f"released:{name}").all()
    assert (rows["decode_device"] == "cpu").all()
    # The 32 px model resizes the tree's images itself, and the row says so.
    assert rows["preprocessing"].str.contains("input=32px").all()


@pytest.mark.parametrize(
    ("dataset", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_full_run_on_cifar_corrupted_on_the_fly(tmp_path, compose_config, dataset, folder):
    from robustbench_bn.runner import run

    labels = list(range(10)) + [3, 4]
    _write_cifar_pickles(tmp_path / folder, labels, cifar100=dataset == "cifar100")
    cfg = compose_config(
        f"dataset={dataset}_c_on_the_fly",
        "model=resnet20_cifar",
        # The class-count check refuses a 10-class head on CIFAR-100.
        f"model.num_classes={100 if dataset == 'cifar100' else 10}",
        f"dataset.data_dir={tmp_path}",
        "dataset.corruptions=[brightness]",
        "dataset.severities=[2]",
        "runner.batch_size=6",
    )
    rows = run(cfg)
    assert rows["corruption"].tolist() == ["clean", "brightness"]
    assert (rows["n"] == 12).all() and (rows["subset"] == "all").all()
    assert (rows["corruption_source"] == "on_the_fly:cifar").all()
