"""How far nvJPEG's pixels (``dataset.decode_device=cuda``) are from libjpeg-turbo's (``cpu``).

Both decoders are the suite's own (:func:`robustbench_bn.data.jpeg.decode_on_cpu` and
:func:`~robustbench_bn.data.jpeg.decode_on_gpu`). The images are an ImageNet-C-layout tree's
JPEGs (``--root``, or a tree made as ``benchmark_loading.py --dataset imagenet_c`` makes it:
scikit-image's photographs corrupted by the engine, quality 85, PIL's default 4:2:0 chroma
subsampling). The same pixels are then re-encoded by PIL with 4:4:4 (no chroma subsampling)
and 4:2:0, so that the share of the difference due to chroma upsampling shows: libjpeg-turbo
interpolates the half-resolution chroma ("fancy upsampling"), a decoder that replicates it
differs at colour edges.

Prints, per set, the mean absolute difference in uint8 levels, its 99th percentile, the
maximum, and the share of identical values. Needs a CUDA device.

    python scripts/jpeg_decoder_difference.py [--root TREE] [--images 2000]
"""

from __future__ import annotations

import argparse
import io as python_io
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torchvision import io

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustbench_bn.data.jpeg import decode_on_cpu, decode_on_gpu, read_jpeg_bytes  # noqa: E402


def statistics(cpu: list[torch.Tensor], gpu: list[torch.Tensor]) -> str:
    difference = torch.cat(
        [(g.cpu().int() - c.int()).abs().flatten() for c, g in zip(cpu, gpu, strict=True)]
    )
    # torch.quantile takes at most 2**24 values: a seeded sample of 10 million.
    seeded = torch.Generator().manual_seed(0)
    picks = torch.randint(len(difference), (10_000_000,), generator=seeded)
    sample = difference[picks].float()
    identical = 100 * float((difference == 0).float().mean())
    return (
        f"mean {float(difference.float().mean()):6.3f}  p99 {float(sample.quantile(0.99)):5.1f}  "
        f"max {int(difference.max()):3d}  identical {identical:5.1f}%"
    )


def reencoded(images: list[torch.Tensor], subsampling: int) -> list[torch.Tensor]:
    """The pixels as PIL quality-85 JPEG bytes (subsampling 0: 4:4:4, 2: 4:2:0)."""
    files = []
    for image in images:
        buffer = python_io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(
            buffer, format="JPEG", quality=85, subsampling=subsampling
        )
        files.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=100)
    arguments = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("jpeg_decoder_difference.py compares against nvJPEG: it needs CUDA.")
    root = arguments.root
    if root is None:
        from benchmark_loading import make_tree

        root = Path(tempfile.mkdtemp(prefix="imagenet_c_tree_"))
        make_tree(root, arguments.images)
    paths = sorted(root.rglob("*.JPEG"))[: arguments.images]
    cpu = [decode_on_cpu(path, None) for path in paths]
    gpu: list[torch.Tensor] = []
    for start in range(0, len(paths), arguments.batch_size):
        batch = paths[start : start + arguments.batch_size]
        gpu.extend(decode_on_gpu([read_jpeg_bytes(path) for path in batch], batch, None, "cuda"))
    print(
        f"{len(paths)} JPEGs of {root}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name()}: nvJPEG against libjpeg-turbo, uint8 levels"
    )
    print(f"{'the files as they are':34} {statistics(cpu, gpu)}")
    for subsampling, name in ((0, "re-encoded 4:4:4 (no subsampling)"), (2, "re-encoded 4:2:0")):
        files = reencoded(cpu, subsampling)
        on_cpu = [io.decode_jpeg(data, mode=io.ImageReadMode.RGB) for data in files]
        on_gpu: list[torch.Tensor] = []
        for start in range(0, len(files), arguments.batch_size):
            stop = start + arguments.batch_size
            on_gpu.extend(decode_on_gpu(files[start:stop], paths[start:stop], None, "cuda"))
        print(f"{name:34} {statistics(on_cpu, on_gpu)}")


if __name__ == "__main__":
    main()
