"""``rbn-data verify`` finds planted defects; ``rbn-data make-c`` writes sets the released-data
loaders read back, with checksums, and resumes without rewriting finished files."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from test_released_data import WNIDS, _write_cifar_pickles, make_tree

from robustbench_bn.data.benchmark import Cell, as_float_images
from robustbench_bn.data.clean_sets import cifar10_on_the_fly
from robustbench_bn.data.cli import main
from robustbench_bn.data.released import CIFAR_C_CORRUPTIONS, CifarCorrupted, ImageTreeCorrupted


def _verify(capsys, name: str, root) -> tuple[int, str]:
    try:
        main(["verify", name, "--root", str(root)])
    except SystemExit as exit_info:
        return int(exit_info.code), capsys.readouterr().out
    return 0, capsys.readouterr().out


def test_verify_names_every_planted_cifar_defect_and_the_fix(tmp_path, capsys):
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(10, dtype=np.uint8), 5))
    good = np.zeros((50, 32, 32, 3), np.uint8)
    for corruption in CIFAR_C_CORRUPTIONS:
        np.save(root / f"{corruption}.npy", good)
    (root / "fog.npy").unlink()
    np.save(root / "snow.npy", good.astype(np.float32))
    np.save(root / "frost.npy", good[:, :16])
    (root / "contrast.npy").write_bytes((root / "contrast.npy").read_bytes()[:500])
    code, out = _verify(capsys, "cifar10_c", root)
    assert code == 1
    assert "fog.npy is missing" in out
    assert "snow.npy is float32" in out and "expected uint8" in out
    assert "frost.npy is uint8 (50, 16, 32, 3)" in out
    assert "contrast.npy cannot be read" in out and "truncated" in out
    assert "labels.npy has 50 labels, the release has 50000" in out
    assert out.count("rbn-data download cifar10_c") >= 5  # every problem says how to fix it


@pytest.fixture
def cifar_pickles(tmp_path):
    """CIFAR-10's pickles with 12 random test images (structure beats flat colour here)."""
    folder = tmp_path / "cifar-10-batches-py"
    labels = [i % 10 for i in range(12)]
    _write_cifar_pickles(folder, labels)
    pixels = np.random.default_rng(0).integers(0, 256, (12, 3 * 32 * 32), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": pixels, b"labels": labels}, handle)
    return tmp_path


def _make_cifar(data_dir, out) -> None:
    main(
        ["make-c", "cifar10", "--data-dir", str(data_dir), "--out", str(out)]
        + ["--corruptions", "fog,gaussian_noise", "--n-examples", "8", "--no-progress"]
    )


def test_make_c_cifar_writes_the_on_the_fly_images_and_verifies(cifar_pickles, capsys):
    out = cifar_pickles / "regenerated"
    _make_cifar(cifar_pickles, out)
    assert "OK" in capsys.readouterr().out
    written = CifarCorrupted(name="cifar10_c", root=str(out))
    on_the_fly = cifar10_on_the_fly(data_dir=str(cifar_pickles), n_examples=8)
    for cell in (Cell("fog", 1), Cell("gaussian_noise", 5)):
        indices = torch.arange(8)
        images, labels = written.load(cell, indices)
        expected, expected_labels = on_the_fly.load(cell, indices)
        assert torch.equal(as_float_images(images), as_float_images(expected)), cell
        assert torch.equal(labels, expected_labels)


def test_make_c_resumes_and_verify_catches_a_changed_file(cifar_pickles, capsys):
    out = cifar_pickles / "regenerated"
    _make_cifar(cifar_pickles, out)
    stamps = {path.name: path.stat().st_mtime_ns for path in out.glob("*.npy")}
    (out / "fog.npy").unlink()  # as if the run had been killed before writing it
    _make_cifar(cifar_pickles, out)
    assert (out / "fog.npy").is_file()
    for name in ("gaussian_noise.npy", "labels.npy"):
        assert (out / name).stat().st_mtime_ns == stamps[name], f"{name} was rewritten"
    capsys.readouterr()
    array = np.load(out / "fog.npy")
    array[0, 0, 0, 0] ^= 1
    np.save(out / "fog.npy", array)
    code, message = _verify(capsys, "cifar10_c", out)
    assert code == 1
    assert "fog.npy" in message and "SHA-256" in message and "make-c" in message


def test_make_c_folder_writes_a_q85_jpeg_tree_the_tree_loader_reads(tmp_path, capsys):
    source = tmp_path / "val"
    for label, wnid in enumerate(WNIDS):
        (source / wnid).mkdir(parents=True)
        for index in range(2):
            from torchvision.io import encode_jpeg

            image = torch.full((3, 64, 64), 40 + 60 * label + 10 * index, dtype=torch.uint8)
            (source / wnid / f"image_{index}.JPEG").write_bytes(
                bytes(encode_jpeg(image, quality=95).numpy())
            )
    out = tmp_path / "Regenerated-C"
    main(
        ["make-c", "folder", "--source-dir", str(source), "--out", str(out)]
        + ["--corruptions", "brightness", "--severities", "1,5", "--no-progress"]
    )
    capsys.readouterr()
    files = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.JPEG"))
    assert len(files) == 2 * len(WNIDS) * 2
    assert files[0] == f"brightness/1/{WNIDS[0]}/image_0.JPEG"
    release = ImageTreeCorrupted(name="tiny_imagenet_c", root=str(out), num_classes=len(WNIDS))
    images, labels = release.load(Cell("brightness", 5), torch.arange(6))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    mild, _ = release.load(Cell("brightness", 1), torch.arange(6))
    # Brightness severity 5 brightens more than severity 1.
    assert float(as_float_images(images).mean()) > float(as_float_images(mild).mean())


def test_verify_tree_names_an_empty_class_folder_and_a_truncated_image(tmp_path, capsys):
    root = make_tree(tmp_path / "Tiny-ImageNet-C", size=64)
    cell = root / "fog" / "3"
    shutil.rmtree(cell / WNIDS[0])
    (cell / WNIDS[0]).mkdir()
    victim = next((root / "fog" / "2" / WNIDS[1]).iterdir())
    victim.write_bytes(victim.read_bytes()[:200])
    code, out = _verify(capsys, "tiny_imagenet_c", root)
    assert code == 1
    assert f"fog/3/{WNIDS[0]}/ is an empty class folder" in out
    assert victim.name in out
    assert "shot_noise/ is missing" in out


@pytest.mark.parametrize("name", ["cifar10_c", "tiny_imagenet_c"])
def test_verify_names_a_missing_folder_and_a_cut_short_or_unfinished_make_c(tmp_path, capsys, name):
    from robustbench_bn.data.cli import verify

    missing = tmp_path / "nowhere"
    assert verify(name, missing) == [
        f"{missing} does not exist: rbn-data download {name} --root {tmp_path}"
    ]
    root = tmp_path / "set"
    root.mkdir()
    (root / "manifest.json").write_text("{not json")
    problems = verify(name, root)
    assert (
        problems[0]
        == f"{root}/manifest.json cannot be read: the make-c run was cut short; rerun it."
    )
    assert not any("did not finish" in problem for problem in problems)
    (root / "manifest.json").write_text(
        '{"complete": false, "n_images": 2, "corruptions": ["fog"], "severities": [1]}'
    )
    problems = verify(name, root)
    assert problems[0].startswith("manifest.json says the make-c run did not finish")
    assert any("fog" in problem for problem in problems[1:])
