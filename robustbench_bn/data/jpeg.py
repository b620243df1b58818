"""Reading a JPEG tree as fast as the machine allows: decode threads on the CPU, or nvJPEG.

ImageNet-C is 3.75 million 224 px JPEGs; reading them, not the network, sets the pace of a
full run. The usual path (torchvision ``ImageFolder`` + PIL + ``ToTensor`` in DataLoader
worker processes) decodes with libjpeg-turbo, then converts every image to float32 CHW in the
worker, collates floats, and sends four bytes per pixel through shared memory to the main
process. Here:

* ``decode_device="cpu"``: ``torchvision.io`` decodes with the same libjpeg-turbo into uint8
  CHW (identical pixels, checked by ``scripts/benchmark_loading.py``), in a pool of threads
  (the decoder releases the GIL), ahead of the reader: no worker processes, no pickling, one
  byte per pixel, and the float conversion happens once per batch where the model runs.
* ``decode_device="cuda"``: the threads only read the files; each batch is decoded on the GPU
  with ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG), so the CPU does almost
  nothing per image. nvJPEG's IDCT and chroma upsampling are not bit-identical to
  libjpeg-turbo's: ``tests/test_jpeg_reader.py`` measures the difference when CUDA is there.

The decode device is written into every row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.devices import resolve_device

DECODE_DEVICES = ("cpu", "cuda", "auto")


def resolve_decode_device(requested: str) -> str:
    """``cpu``, ``cuda`` (or ``cuda:N``), or ``auto`` (CUDA when available)."""
    return str(resolve_device(requested, setting="dataset.decode_device"))


def read_jpeg_bytes(path: Path) -> torch.Tensor:
    """The file's bytes as uint8, refused when the JPEG end marker is missing (cut short)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{path} cannot be read ({error.strerror}).") from error
    if len(data) < 4 or data[-2:] != b"\xff\xd9":
        raise ConfigurationError(
            f"{path} is truncated (no JPEG end marker, {len(data)} bytes). Delete it and "
            "extract the archive again."
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def check_size(image: torch.Tensor, path: Path, size: int | None) -> torch.Tensor:
    if size is not None and tuple(image.shape[-2:]) != (size, size):
        raise ConfigurationError(
            f"{path} is {image.shape[-1]}x{image.shape[-2]} pixels, expected {size}x{size}: "
            "the file does not belong to this release."
        )
    return image


def decode_on_cpu(path: Path, size: int | None) -> torch.Tensor:
    """One file as uint8 [3, H, W] RGB (libjpeg-turbo through torchvision.io)."""
    import torchvision.io as io

    data = read_jpeg_bytes(path)
    try:
        image = io.decode_jpeg(data, mode=io.ImageReadMode.RGB)
    except RuntimeError as error:
        raise ConfigurationError(
            f"{path} cannot be decoded ({error}); the file is truncated or not a JPEG. "
            "Delete it and extract the archive again."
        ) from error
    return check_size(image, path, size)


def decode_on_gpu(
    data: Sequence[torch.Tensor], paths: Sequence[Path], size: int | None, device: str
) -> torch.Tensor:
    """A batch of file contents decoded together by nvJPEG, uint8 [B, 3, H, W] on ``device``."""
    import torchvision.io as io

    try:
        images = io.decode_jpeg(list(data), mode=io.ImageReadMode.RGB, device=device)
    except RuntimeError as error:
        raise ConfigurationError(
            f"nvJPEG cannot decode a batch from {paths[0].parent} ({error}); a file is damaged "
            "or not a baseline JPEG. dataset.decode_device=cpu names the file."
        ) from error
    return torch.stack([check_size(i, p, size) for i, p in zip(images, paths, strict=True)])


class ThreadedReader:
    """Per-index work (decode, or read the bytes) done by a thread pool ahead of the caller.

    A cell is read in batches along its stream order: the stored order unless :meth:`follow`
    was given another (a shuffled or label-shifted stream). After each request that continues
    that order, the next ``ahead`` indices of it are queued, so the threads decode the next
    batch while the caller computes on this one, whatever the order; any other request
    (random adaptation samples) is served from the pool too. ``threads=0`` does the work in
    the caller's thread.
    """

    def __init__(
        self, work: Callable[[int], torch.Tensor], count: int, *, threads: int, ahead: int
    ):
        self._work = work
        self._count = count
        self._ahead = ahead
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="jpeg") if threads else None
        self._queued: dict[int, Future[torch.Tensor]] = {}
        self._order: list[int] | None = None  # None: the stored order, 0..count-1
        self._position: dict[int, int] = {}

    def follow(self, order: Sequence[int]) -> None:
        """Read ahead along ``order`` (a permutation of some indices) from now on."""
        self._order = [int(index) for index in order]
        self._position = {index: position for position, index in enumerate(self._order)}

    def _position_of(self, index: int) -> int | None:
        return index if self._order is None else self._position.get(index)

    def _index_at(self, position: int) -> int:
        return position if self._order is None else self._order[position]

    def _submit(self, index: int) -> None:
        if index not in self._queued and self._pool is not None:
            self._queued[index] = self._pool.submit(self._work, index)

    def read(self, indices: Sequence[int]) -> list[torch.Tensor]:
        if self._pool is None:
            return [self._work(index) for index in indices]
        for index in indices:
            self._submit(index)
        results = [self._queued[index].result() for index in indices]
        for index in set(indices):
            del self._queued[index]
        positions = [self._position_of(index) for index in indices]
        along = None not in positions and all(
            b == a + 1 for a, b in zip(positions, positions[1:], strict=False)
        )
        if indices and along:
            last = positions[-1]
            length = self._count if self._order is None else len(self._order)
            for stale in [
                index
                for index in self._queued
                if (position := self._position_of(index)) is not None and position <= last
            ]:
                self._queued.pop(stale).cancel()
            for position in range(last + 1, min(last + 1 + self._ahead, length)):
                self._submit(self._index_at(position))
        return results

    def close(self) -> None:
        if self._pool is not None:
            for future in self._queued.values():
                future.cancel()
            self._queued.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class JpegFiles:
    """Batches of a fixed list of JPEG files, decoded on ``device`` by ``threads`` threads."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        size: int | None,
        threads: int,
        device: str = "cpu",
        ahead: int = 256,
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.device = device
        if device == "cpu":

            def work(index: int) -> torch.Tensor:
                return decode_on_cpu(self.paths[index], size)

        else:

            def work(index: int) -> torch.Tensor:
                return read_jpeg_bytes(self.paths[index])

        self._reader = ThreadedReader(work, len(self.paths), threads=threads, ahead=ahead)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [B, 3, H, W] of the files at ``indices`` (on the decode device)."""
        indices = list(indices)
        results = self._reader.read(indices)
        if self.device == "cpu":
            return torch.stack(results)
        return decode_on_gpu(results, [self.paths[i] for i in indices], self.size, self.device)

    def follow(self, order: Sequence[int]) -> None:
        """Decode ahead along ``order``, the stream order the batches will be asked in."""
        self._reader.follow(order)

    def close(self) -> None:
        self._reader.close()

    def __del__(self) -> None:
        if hasattr(self, "_reader"):
            self.close()
