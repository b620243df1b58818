"""The JPEG-tree decoder (robustbench_bn/data/jpeg.py): the pixels of PIL, any read order, clear
errors, and nvJPEG on the GPU when there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io as io
from PIL import Image

from robustbench_bn.data.jpeg import JpegFiles, resolve_decode_device
from robustbench_bn.data.released import ImageTreeCorrupted
from robustbench_bn.errors import ConfigurationError

SIZE = 64


def textured_jpegs(folder: Path, count: int, *, size: int = SIZE) -> list[Path]:
    """Noisy gradients saved at quality 85: chroma and detail, so decoders can disagree."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 255, size)
    paths = []
    for index in range(count):
        base = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                            torch.full((size, size), 10.0 * index)])  # fmt: skip
        noise = torch.randint(-40, 41, (3, size, size), generator=generator)
        image = (base + noise).clamp(0, 255).to(torch.uint8)
        path = folder / f"image_{index:03d}.JPEG"
        path.write_bytes(bytes(io.encode_jpeg(image, quality=85).numpy()))
        paths.append(path)
    return paths


@pytest.mark.parametrize("threads", [0, 2])
def test_cpu_decode_gives_the_pixels_of_pil_in_any_order(tmp_path, threads):
    paths = textured_jpegs(tmp_path, 12)
    expected = torch.stack(
        [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
    )
    reader = JpegFiles(paths, size=SIZE, threads=threads, ahead=4)
    sequential = torch.cat([reader.read(range(start, start + 4)) for start in (0, 4, 8)])
    assert sequential.dtype == torch.uint8 and torch.equal(sequential, expected)
    # Random samples (the adaptation methods' draw), a jump back, a repeated index.
    for indices in ([7, 2, 11], [0, 1], [5, 5, 3]):
        assert torch.equal(reader.read(indices), expected[indices])
    reader.close()


def test_damaged_files_are_named(tmp_path):
    paths = textured_jpegs(tmp_path, 3)
    paths[1].write_bytes(paths[1].read_bytes()[:200])
    with pytest.raises(ConfigurationError, match=r"image_001.JPEG is truncated"):
        JpegFiles(paths, size=SIZE, threads=2).read([0, 1, 2])
    other = textured_jpegs(tmp_path / "big", 1, size=SIZE * 2)
    with pytest.raises(ConfigurationError, match=r"is 128x128 pixels, expected 64x64"):
        JpegFiles(other, size=SIZE, threads=0).read([0])


def test_decode_device_choices():
    assert resolve_decode_device("cpu") == "cpu"
    assert resolve_decode_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigurationError, match="not a device"):
        resolve_decode_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA device"):
            resolve_decode_device("cuda")


def _tree(root: Path, count: int) -> Path:
    for wnid in ("n01", "n02"):
        textured_jpegs(root / "fog" / "1" / wnid, count)
    return root


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device")
def test_gpu_decode_matches_the_cpu_decode_closely(tmp_path):
    from robustbench_bn.data.benchmark import Cell

    root = _tree(tmp_path / "tree", 6)
    trees = {
        device: ImageTreeCorrupted(
            name="tiny_imagenet_c",
            root=str(root),
            num_classes=2,
            num_workers=2,
            decode_device=device,
        )
        for device in ("cpu", "cuda")
    }
    cell = Cell("fog", 1)
    indices = torch.arange(12)
    cpu_images, cpu_labels = trees["cpu"].load(cell, indices)
    gpu_images, gpu_labels = trees["cuda"].load(cell, indices)
    assert gpu_images.device.type == "cuda" and gpu_images.dtype == torch.uint8
    assert torch.equal(cpu_labels, gpu_labels)
    assert trees["cuda"].row_fields()["decode_device"] == "cuda"
    difference = (gpu_images.cpu().int() - cpu_images.int()).abs()
    print(f"nvJPEG vs libjpeg-turbo, 4:2:0: max |diff| {int(difference.max())}, mean "
          f"{float(difference.float().mean()):.4f} uint8 levels")  # fmt: skip
    # Measured on an H200 (torch 2.11): mean 2.83, max 25 on these noisy colour ramps. It is
    # chroma upsampling (libjpeg-turbo interpolates the half-resolution chroma; 4:4:4 files
    # decode bit-identically, below), which is why decode_device defaults to cpu.
    assert float(difference.float().mean()) < 4.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device")
def test_gpu_decode_of_unsubsampled_jpegs_differs_by_rounding_only(tmp_path):
    """Without chroma subsampling (4:4:4) nothing is upsampled: what remains between the two
    decoders is the IDCT's and the colour conversion's rounding."""
    from robustbench_bn.data.jpeg import decode_on_cpu, decode_on_gpu, read_jpeg_bytes

    paths = []
    for index, path in enumerate(textured_jpegs(tmp_path / "420", 6)):
        pixels = np.array(Image.open(path).convert("RGB"))
        paths.append(tmp_path / f"full_chroma_{index}.JPEG")
        Image.fromarray(pixels).save(paths[-1], format="JPEG", quality=85, subsampling=0)
    on_cpu = torch.stack([decode_on_cpu(path, SIZE) for path in paths])
    on_gpu = decode_on_gpu([read_jpeg_bytes(path) for path in paths], paths, SIZE, "cuda")
    difference = (on_gpu.cpu().int() - on_cpu.int()).abs()
    print(f"nvJPEG vs libjpeg-turbo, 4:4:4: max |diff| {int(difference.max())}, mean "
          f"{float(difference.float().mean()):.4f} uint8 levels")  # fmt: skip
    assert float(difference.float().mean()) < 0.5 and int(difference.max()) <= 4


def test_the_reader_reads_ahead_along_a_followed_order(tmp_path):
    paths = textured_jpegs(tmp_path, 12)
    reader = JpegFiles(paths, size=SIZE, threads=2, ahead=4)
    order = [5, 0, 9, 3, 11, 1, 7, 2, 10, 4, 8, 6]
    reader.follow(order)
    first = reader.read(order[:4])
    assert set(reader._reader._queued) == set(order[4:8])  # the next batch is being decoded
    reader.read([9, 0])  # an adaptation sample off the order: served, changes nothing ahead
    assert set(reader._reader._queued) == set(order[4:8])
    rest = torch.cat([reader.read(order[start : start + 4]) for start in (4, 8)])
    expected = JpegFiles(paths, size=SIZE, threads=0).read(range(12))
    assert torch.equal(torch.cat([first, rest]), expected[order])
    reader.close()


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs CUDA")


@pytest.mark.parametrize("decode_device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
@pytest.mark.parametrize("order", ["shuffled", "label_shift"])
def test_a_shuffled_cell_of_a_tree_decodes_ahead_with_the_same_pixels(
    tmp_path, order, decode_device
):
    """Sequential cells were decoded ahead of the runner, shuffled ones batch by batch on
    request: the tree now follows the stream's order, pixel for pixel the stored images
    (with nvJPEG the threads read the files ahead and each batch decodes on the GPU)."""
    from robustbench_bn.data.benchmark import Cell
    from robustbench_bn.data.streams import build_stream, iterate_stream

    root = _tree(tmp_path / "tree", 12)
    options = dict(
        name="tiny_imagenet_c", root=str(root), num_classes=2, decode_device=decode_device
    )
    tree = ImageTreeCorrupted(**options, num_workers=2)
    cell = Cell("fog", 1)
    stream = build_stream(tree, [cell], order=order, label_shift_alpha=0.5, seed=0)
    assert not torch.equal(stream.indices, torch.arange(24))
    batches = iterate_stream(tree, stream, batch_size=8)
    images, labels, _ = next(batches)
    queued = set(tree._reader[1]._reader._queued)
    assert queued == set(stream.indices[8:].tolist())  # the rest of the stream, in flight
    later = list(batches)
    images = torch.cat([images, *(batch[0] for batch in later)])
    labels = torch.cat([labels, *(batch[1] for batch in later)])
    stored_images, stored_labels = ImageTreeCorrupted(**options, num_workers=0).load(
        cell, torch.arange(24)
    )
    assert torch.equal(images, stored_images[stream.indices])
    assert torch.equal(labels, stored_labels[stream.indices])
