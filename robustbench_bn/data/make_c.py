"""Regenerate a corruption benchmark in a released layout with the suite's engine (``rbn-data
make-c``), so that it can be shared and read back by the released-data loaders.

* 32 px sources (CIFAR-10/100 test sets) are written like CIFAR-10-C (Hendrycks & Dietterich
  2019, Zenodo 2535967): ``<corruption>.npy`` uint8 (5n, 32, 32, 3), severities 1..5 stacked,
  and ``labels.npy`` uint8 (5n,). The images are exactly those of the on-the-fly benchmark
  (same dataset name, seeds and engine), so a run on the written files gives the on-the-fly
  numbers.
* Image folders (an ImageNet validation folder, prepared with Resize(256) + CenterCrop(224)
  as in make_imagenet_c.py, or any folder of equally sized images) are written like
  ImageNet-C: ``<corruption>/<severity>/<wnid>/<file>.JPEG``, saved at JPEG quality 85 like
  the release (the q85 round trip changes accuracy measurably; hendrycks/robustness #14).

Every written file's SHA-256 is listed in ``SHA256SUMS`` (``sha256sum -c SHA256SUMS``
checks it; so does ``rbn-data verify``) and the settings in ``manifest.json``. The run is
resumable: files are written whole (temporary file, then rename), finished files are kept
and a re-run writes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_bn.data.benchmark import SEVERITIES, check_severity
from robustbench_bn.data.clean_sets import (
    CIFAR_RELEASES,
    IMAGENET_CROP,
    IMAGENET_RESIZE,
    ImageSubset,
    decode_files,
    list_class_folders,
    load_cifar,
)
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.files import atomic_write, atomic_write_text

SOURCES = ("cifar10", "cifar100", "imagenet-val", "folder")
JPEG_QUALITY = 85
CHECKSUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
_JOURNAL = "SHA256SUMS.partial"
#: Images corrupted per engine call: memory stays small at 224 px, batches stay long at 32 px.
_CHUNK = {"npy": 1000, "jpeg_tree": 32}


@dataclass
class Source:
    """What make-c corrupts: images, labels, and (for trees) each image's output path."""

    name: str
    layout: str
    released_as: str
    images: Callable[[int, int], torch.Tensor]
    labels: torch.Tensor
    entries: list[str] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_source(
    source: str,
    *,
    data_dir: str | None = None,
    source_dir: str | None = None,
    n_examples: int | None = None,
    subset: ImageSubset | None = None,
    num_workers: int = 0,
) -> Source:
    """The clean images of ``source`` (see :data:`SOURCES`) and where each one goes."""
    if source in CIFAR_RELEASES:
        if not data_dir:
            raise ConfigurationError(
                f"make-c {source} needs --data-dir, the folder holding "
                f"{CIFAR_RELEASES[source]['folder']}/ (CIFAR's python pickles)."
            )
        test = load_cifar(data_dir, dataset=source, split="test")
        count = len(test) if n_examples is None else n_examples
        if not 1 <= count <= len(test):
            raise ConfigurationError(f"--n-examples must be 1..{len(test)}, got {count}.")
        images = test.images[:count]
        return Source(
            # The on-the-fly benchmark's name, so both give the same corrupted images.
            name=f"{source}_c_on_the_fly",
            layout="npy",
            released_as=f"{source}_c",
            images=lambda start, stop: images[start:stop],
            labels=test.labels[:count],
            description={
                "source": source,
                "data_dir": str(data_dir),
                "subset": f"first_{count}",
                "n_classes": CIFAR_RELEASES[source]["classes"],
            },
        )
    if source in ("imagenet-val", "folder"):
        if not source_dir:
            raise ConfigurationError(
                f"make-c {source} needs --source-dir, a folder of class folders "
                "(<source-dir>/<wnid>/<image>)."
            )
        root = Path(source_dir).expanduser()
        subset = subset or ImageSubset()
        files = list_class_folders(
            root,
            expected_classes=None,
            missing_hint="Expected <source-dir>/<wnid>/<image> class folders.",
        )
        chosen = subset.select(files, root)
        if n_examples is not None:
            chosen = chosen[:n_examples]
        prepare = source == "imagenet-val"
        paths = [root / entry for _, entry in chosen]

        def decode(start: int, stop: int) -> torch.Tensor:
            return decode_files(
                paths[start:stop],
                resize=IMAGENET_RESIZE if prepare else None,
                crop=IMAGENET_CROP if prepare else None,
                num_workers=num_workers,
                chunk=8,
            )

        first = decode(0, 1)
        if first.shape[-1] != first.shape[-2] or first.shape[-1] < 32:
            raise ConfigurationError(
                f"make-c folder needs square images of at least 32 px, {paths[0]} is "
                f"{first.shape[-1]}x{first.shape[-2]}; use imagenet-val to resize and crop."
            )
        # ImageNet-C's name for a 224 px tree; other image folders keep the same tree layout.
        released_as = "imagenet_c" if first.shape[-1] == IMAGENET_CROP else "tiny_imagenet_c"
        return Source(
            name=f"{source}:{root.name}",
            layout="jpeg_tree",
            released_as=released_as,
            images=decode,
            labels=torch.tensor([label for label, _ in chosen], dtype=torch.int64),
            entries=[entry for _, entry in chosen],
            description={
                "source": source,
                "source_dir": str(root),
                "subset": subset.describe(),
                "prepared": "resize256_centercrop224" if prepare else "as_is",
                "n_classes": len(files),
            },
        )
    raise ConfigurationError(f"Unknown make-c source {source!r}; choose one of {SOURCES}.")


class _Journal:
    """SHA-256 of every finished output, appended as files finish, so a re-run can resume."""

    def __init__(self, out: Path) -> None:
        self.path = out / _JOURNAL
        self.out = out
        self.sums: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                digest, _, relative = line.partition("  ")
                if relative and (out / relative).is_file():
                    self.sums[relative] = digest
        final = out / CHECKSUMS
        if final.is_file():
            for line in final.read_text().splitlines():
                digest, _, relative = line.partition("  ")
                if relative and (out / relative).is_file():
                    self.sums.setdefault(relative, digest)

    def done(self, relative: str) -> bool:
        if relative in self.sums:
            return True
        path = self.out / relative
        if path.is_file():  # written whole by a run that stopped before its journal line
            self.add(relative, _sha256(path))
            return True
        return False

    def add(self, relative: str, digest: str) -> None:
        self.sums[relative] = digest
        with open(self.path, "a") as handle:
            handle.write(f"{digest}  {relative}\n")

    def finish(self) -> None:
        lines = "".join(f"{self.sums[key]}  {key}\n" for key in sorted(self.sums))
        atomic_write_text(self.out / CHECKSUMS, lines)
        self.path.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a handle: np.save appends ".npy" to a file name without it.
    with open(path, "wb") as handle:
        np.save(handle, array)


def _corrupt(
    source: Source,
    images: torch.Tensor,
    start: int,
    corruption: str,
    severity: int,
    *,
    seed: int,
    family: str | None,
) -> torch.Tensor:
    from robustbench_bn.data import corruptions as engine

    indices = torch.arange(start, start + len(images))
    seeds = engine.image_seeds(source.name, corruption, severity, seed, indices)
    corrupted = engine.corrupt(
        images.float().div_(255), corruption, severity, seeds=seeds, family=family
    )
    # The engine quantizes to the uint8 grid (like the reference's np.uint8 cast), so
    # rounding here is exact.
    return corrupted.mul_(255).round_().to(torch.uint8)


def _write_npy(
    source: Source,
    out: Path,
    units: list[tuple[str, Sequence[int]]],
    journal: _Journal,
    *,
    seed: int,
    family: str | None,
    bar: Any,
) -> None:
    count = len(source)
    if not journal.done("labels.npy"):
        labels = source.labels.numpy().astype(np.uint8)
        atomic_write(out / "labels.npy", lambda path: _save_npy(path, np.tile(labels, 5)))
        journal.add("labels.npy", _sha256(out / "labels.npy"))
    chunk = _CHUNK["npy"]
    for corruption, severities in units:
        relative = f"{corruption}.npy"
        if journal.done(relative):
            bar.update(count * len(severities))
            continue

        def write(path: Path, corruption: str = corruption) -> None:
            # np.save's layout, filled block by block so that memory stays at one chunk.
            array = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.uint8, shape=(5 * count, 32, 32, 3)
            )
            for severity in SEVERITIES:
                for start in range(0, count, chunk):
                    stop = min(start + chunk, count)
                    block = _corrupt(
                        source,
                        source.images(start, stop),
                        start,
                        corruption,
                        severity,
                        seed=seed,
                        family=family,
                    )
                    offset = (severity - 1) * count
                    array[offset + start : offset + stop] = block.permute(0, 2, 3, 1).numpy()
                    bar.update(stop - start)
            array.flush()
            del array

        atomic_write(out / relative, write)
        journal.add(relative, _sha256(out / relative))


def _write_tree(
    source: Source,
    out: Path,
    units: list[tuple[str, Sequence[int]]],
    journal: _Journal,
    *,
    seed: int,
    family: str | None,
    quality: int,
    bar: Any,
) -> None:
    import torchvision.io as io

    chunk = _CHUNK["jpeg_tree"]
    for start in range(0, len(source), chunk):
        stop = min(start + chunk, len(source))
        entries = source.entries[start:stop]
        images: torch.Tensor | None = None
        for corruption, severities in units:
            for severity in severities:
                relatives = [f"{corruption}/{severity}/{entry}" for entry in entries]
                todo = [i for i, relative in enumerate(relatives) if not journal.done(relative)]
                bar.update(len(relatives) - len(todo))
                if not todo:
                    continue
                if images is None:
                    images = source.images(start, stop)
                corrupted = _corrupt(
                    source, images, start, corruption, severity, seed=seed, family=family
                )
                for i in todo:
                    data = bytes(io.encode_jpeg(corrupted[i], quality=quality).numpy())
                    path = out / relatives[i]
                    # The release keeps the validation file's name, extension included.
                    atomic_write(path, lambda temporary, data=data: temporary.write_bytes(data))
                    journal.add(relatives[i], hashlib.sha256(data).hexdigest())
                    bar.update(1)


def make_c(
    source: str,
    *,
    out: str | Path,
    data_dir: str | None = None,
    source_dir: str | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    n_examples: int | None = None,
    subset: ImageSubset | None = None,
    seed: int = 0,
    family: str | None = None,
    jpeg_quality: int = JPEG_QUALITY,
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write the corrupted set into ``out``; returns the path of its ``manifest.json``."""
    from tqdm import tqdm

    from robustbench_bn.data import corruptions as engine

    names = list(corruptions) if corruptions else list(engine.ALL_CORRUPTIONS)
    for name in names:
        engine.check_corruption_name(name)
    severities = [check_severity(int(severity)) for severity in severities]
    if not 1 <= jpeg_quality <= 100:
        raise ConfigurationError(f"--jpeg-quality must be 1..100, got {jpeg_quality}.")
    data = open_source(
        source,
        data_dir=data_dir,
        source_dir=source_dir,
        n_examples=n_examples,
        subset=subset,
        num_workers=num_workers,
    )
    if data.layout == "npy" and list(severities) != list(SEVERITIES):
        raise ConfigurationError(
            "The .npy layout stacks all five severities in every file; leave --severities "
            "out for a 32 px source."
        )
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    settings = {
        "format": "robustbench_bn make-c 1",
        "layout": data.layout,
        "released_as": data.released_as,
        **data.description,
        "dataset_name_for_seeds": data.name,
        "n_images": len(data),
        "seed": seed,
        "family": family,
        "jpeg_quality": jpeg_quality if data.layout == "jpeg_tree" else None,
        "engine": _engine_hash(),
    }
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        changed = {
            key: (previous.get(key), value)
            for key, value in settings.items()
            if previous.get(key) != value
        }
        if changed:
            raise ConfigurationError(
                f"{out} holds a set made with other settings ({changed}); finished files "
                "would not match. Choose another --out or delete the folder."
            )
        corruptions_done = previous.get("corruptions", [])
        names = list(dict.fromkeys([*corruptions_done, *names]))
    units = [(name, severities) for name in names]
    manifest = {**settings, "corruptions": names, "severities": severities, "complete": False}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    journal = _Journal(out)
    total = len(data) * len(names) * len(severities)
    with tqdm(total=total, desc=f"make-c {source}", unit="img", disable=not progress) as bar:
        if data.layout == "npy":
            _write_npy(data, out, units, journal, seed=seed, family=family, bar=bar)
        else:
            _write_tree(
                data,
                out,
                units,
                journal,
                seed=seed,
                family=family,
                quality=jpeg_quality,
                bar=bar,
            )
    journal.finish()
    manifest["complete"] = True
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest_path


def _engine_hash() -> str:
    from robustbench_bn.data.on_the_fly import engine_source_hash

    return engine_source_hash()


def iter_checksums(folder: Path) -> Iterator[tuple[str, str]]:
    """``(relative path, sha256)`` pairs of a folder's ``SHA256SUMS``, if it has one."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        digest, _, relative = line.partition("  ")
        if relative:
            yield relative, digest


def file_sha256(path: Path) -> str:
    return _sha256(path)
