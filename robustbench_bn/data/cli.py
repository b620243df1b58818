"""``rbn-data``: list, download, verify and regenerate corruption benchmarks.

    rbn-data list
    rbn-data download cifar10_c --root data          # resumable; untars into data/CIFAR-10-C
    rbn-data download imagenet_c --root data --parts noise,blur
    rbn-data verify cifar10_c --root data/CIFAR-10-C
    rbn-data make-c cifar10 --data-dir data --out data/CIFAR-10-C-regen
    rbn-data make-c imagenet-val --source-dir data/imagenet/val --subset balanced --out ...

``download`` fetches each archive from the release's official Zenodo record, resuming a
partial file with an HTTP Range request, and checks its MD5: the one shipped in the
release's manifest where it could be cited, otherwise the one the Zenodo record's API
publishes (``list`` says which). ``verify`` checks presence, dtypes, shapes, the images per
severity and class, the labels, JPEG integrity, and SHA-256 sums where the folder has them
(every ``make-c`` output does); it says exactly what is wrong and how to fix it, and exits
non-zero on any problem. ``make-c`` writes a corrupted set in the released layout with the
suite's engine (see :mod:`robustbench_bn.data.make_c`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustbench_bn.data.clean_sets import IMAGE_SUFFIXES, SUBSET_MODES, ImageSubset
from robustbench_bn.data.released import release_manifest, release_names
from robustbench_bn.errors import ConfigurationError

#: How many files of one kind of problem are listed before the rest are counted.
LISTED = 10
ZENODO_API = "https://zenodo.org/api/records/{record}"
_TIMEOUT = 60


class Problems:
    """Problems found by ``verify``, each with its remedy; long runs of one kind are counted."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}
        self._remedies: dict[str, str] = {}

    def add(self, message: str) -> None:
        self.items.append(message)

    def add_file(self, kind: str, path: str, remedy: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._examples.setdefault(kind, [])
        if len(self._examples[kind]) < LISTED:
            self._examples[kind].append(path)
        self._remedies[kind] = remedy

    def messages(self) -> list[str]:
        grouped = []
        for kind, count in self._counts.items():
            examples = ", ".join(self._examples[kind])
            more = f" and {count - LISTED} more" if count > LISTED else ""
            grouped.append(f"{count} file(s) {kind}: {examples}{more}. {self._remedies[kind]}")
        return self.items + grouped

    def __bool__(self) -> bool:
        return bool(self.items or self._counts)


def _regenerated(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"damaged": True}


def _start_verifying(
    name: str, root: Path
) -> tuple[dict[str, Any], str, Problems, dict[str, Any] | None]:
    """What verifying a folder begins with: the release's manifest, the command that fetches
    it, the problems found so far (``root`` missing; a make-c manifest cut short or saying its
    run did not finish) and the make-c manifest of a regenerated set (None for a downloaded
    release, or when it cannot be read)."""
    manifest = release_manifest(name)
    fetch = f"rbn-data download {name} --root {root.parent}"
    problems = Problems()
    if not root.is_dir():
        problems.add(f"{root} does not exist: {fetch}")
        return manifest, fetch, problems, None
    regenerated = _regenerated(root)
    if regenerated and regenerated.get("damaged"):
        problems.add(
            f"{root}/manifest.json cannot be read: the make-c run was cut short; rerun it."
        )
        regenerated = None
    if regenerated and not regenerated.get("complete"):
        problems.add(
            "manifest.json says the make-c run did not finish: run the same command again "
            "(finished files are kept)."
        )
    return manifest, fetch, problems, regenerated


def _check_sums(root: Path, problems: Problems) -> int:
    """SHA-256 of every file listed in ``root/SHA256SUMS``; returns how many were checked."""
    from robustbench_bn.data.make_c import file_sha256, iter_checksums

    checked = 0
    for relative, digest in iter_checksums(root):
        path = root / relative
        checked += 1
        if not path.is_file():
            problems.add_file(
                "listed in SHA256SUMS are missing",
                relative,
                "Run the same rbn-data make-c command again; it writes only what is missing.",
            )
        elif file_sha256(path) != digest:
            problems.add_file(
                "differ from their SHA-256 in SHA256SUMS",
                relative,
                "They changed after they were written: delete them and run the same "
                "rbn-data make-c command again (or fetch the set again from whoever shared it).",
            )
    return checked


def verify_npy(name: str, root: Path) -> list[str]:
    """Every problem in a CIFAR-C folder, each with what to do; empty when it is sound."""
    manifest, fetch, problems, regenerated = _start_verifying(name, root)
    if not root.is_dir():
        return problems.messages()
    expected_rows = 5 * (
        regenerated["n_images"] if regenerated else manifest["images_per_severity"]
    )
    corruptions = regenerated["corruptions"] if regenerated else manifest["corruptions"]
    rows = None
    labels_path = root / "labels.npy"
    try:
        labels = np.load(labels_path, mmap_mode="r")
        if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) == 0 or len(labels) % 5:
            problems.add(
                f"labels.npy is {labels.dtype} {labels.shape}, expected uint8 "
                f"({expected_rows},): fetch it again ({fetch})."
            )
        else:
            rows = len(labels)
            blocks = np.asarray(labels).reshape(5, rows // 5)
            if not (blocks == blocks[0]).all():
                problems.add(
                    "labels.npy: the five severity blocks differ; the file is damaged: "
                    f"fetch it again ({fetch})."
                )
            if int(blocks.max()) >= manifest["num_classes"]:
                problems.add(
                    f"labels.npy has labels up to {int(blocks.max())}, but {name} has "
                    f"{manifest['num_classes']} classes: it is another release's labels file."
                )
            if rows != expected_rows:
                problems.add(
                    f"labels.npy has {rows} labels, the release has {expected_rows} "
                    f"({expected_rows // 5} per severity): a partial copy? fetch it again "
                    f"({fetch})."
                )
    except FileNotFoundError:
        problems.add(f"labels.npy is missing from {root}: fetch the release again ({fetch}).")
    except (ValueError, OSError) as error:
        problems.add(f"labels.npy cannot be read ({error}): it is truncated; fetch it again.")
    for corruption in corruptions:
        path = root / f"{corruption}.npy"
        if not path.is_file():
            problems.add(f"{corruption}.npy is missing: untar the release again ({fetch}).")
            continue
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            problems.add(
                f"{corruption}.npy cannot be read ({error}): it is truncated; delete it and "
                f"fetch it again ({fetch})."
            )
            continue
        expected = (rows or expected_rows, 32, 32, 3)
        if array.dtype != np.uint8 or tuple(array.shape) != expected:
            problems.add(
                f"{corruption}.npy is {array.dtype} {tuple(array.shape)}, expected uint8 "
                f"{expected} ({expected[0] // 5} images per severity): fetch it again ({fetch})."
            )
    _check_sums(root, problems)
    return problems.messages()


def _jpeg_intact(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(2)
        try:
            handle.seek(-2, os.SEEK_END)
        except OSError:
            return False
        return head == b"\xff\xd8" and handle.read(2) == b"\xff\xd9"


def verify_tree(name: str, root: Path, *, quick: bool = False) -> list[str]:
    """Every problem in an ImageNet-C style tree, each with what to do; empty when sound."""
    from robustbench_bn.data.clean_sets import decode_image

    manifest, fetch, problems, regenerated = _start_verifying(name, root)
    if not root.is_dir():
        return problems.messages()
    per_severity = regenerated["n_images"] if regenerated else manifest["images_per_severity"]
    if regenerated:
        required, optional = list(regenerated["corruptions"]), []
        severities = [str(s) for s in regenerated["severities"]]
    else:
        optional = list(manifest.get("optional_corruptions", []))
        required = [c for c in manifest["corruptions"] if c not in optional]
        severities = ["1", "2", "3", "4", "5"]
    size = manifest["image_size"]
    reference_names: tuple[str, list[str]] | None = None
    for corruption in required + optional:
        corruption_dir = root / corruption
        if not corruption_dir.is_dir():
            if corruption in required:
                problems.add(
                    f"{corruption}/ is missing: extract the archive that holds it again ({fetch})."
                )
            continue
        for severity in severities:
            folder = corruption_dir / severity
            cell = f"{corruption}/{severity}"
            if not folder.is_dir():
                problems.add(f"{cell}/ is missing: extract its archive again ({fetch}).")
                continue
            classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
            names: list[str] = []
            empty = []
            for wnid in classes:
                files = sorted(
                    entry.name
                    for entry in os.scandir(folder / wnid)
                    if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)
                )
                if not files:
                    empty.append(wnid)
                names += [f"{wnid}/{file}" for file in files]
            expected_classes = (regenerated or {}).get("n_classes") or manifest["num_classes"]
            if len(classes) != expected_classes:
                problems.add(
                    f"{cell} has {len(classes)} class folders, expected {expected_classes}: a "
                    f"missing folder shifts every later class index; extract again ({fetch})."
                )
            for wnid in empty:
                problems.add(
                    f"{cell}/{wnid}/ is an empty class folder: its images were lost in "
                    f"extraction; extract the archive again ({fetch})."
                )
            if len(names) != per_severity:
                problems.add(
                    f"{cell} has {len(names)} images, expected {per_severity}: extract again "
                    f"({fetch})."
                )
            if reference_names is None:
                reference_names = (cell, names)
            elif names != reference_names[1]:
                missing = sorted(set(reference_names[1]) - set(names))[:3]
                problems.add(
                    f"{cell} holds other files than {reference_names[0]} (e.g. missing "
                    f"{missing}): every cell must hold the same images; extract again."
                )
            if names:
                try:
                    first = decode_image(folder / names[0])
                    if tuple(first.shape[1:]) != (size, size):
                        problems.add(
                            f"{cell}/{names[0]} is {first.shape[2]}x{first.shape[1]} px, the "
                            f"release has {size}x{size}: this is not {manifest['title']}."
                        )
                except ConfigurationError as error:
                    problems.add(str(error))
            if not quick:
                for relative in names:
                    if not _jpeg_intact(folder / relative):
                        problems.add_file(
                            "are truncated or not JPEG (no start/end marker)",
                            f"{cell}/{relative}",
                            f"Delete them and extract the archive again ({fetch}).",
                        )
    _check_sums(root, problems)
    return problems.messages()


def verify(name: str, root: Path, *, quick: bool = False) -> list[str]:
    manifest = release_manifest(name)
    if manifest["layout"] == "npy":
        return verify_npy(name, root)
    return verify_tree(name, root, quick=quick)


# --------------------------------------------------------------------------- download


def zenodo_md5(record_url: str, file_name: str) -> str | None:
    """The MD5 the Zenodo record's API publishes for ``file_name``; None when unreachable."""
    record = record_url.rstrip("/").rsplit("/", 1)[-1]
    try:
        with urllib.request.urlopen(ZENODO_API.format(record=record), timeout=_TIMEOUT) as reply:
            metadata = json.load(reply)
    except (OSError, ValueError):
        return None
    files = metadata.get("files", [])
    if isinstance(files, dict):
        files = list(files.get("entries", {}).values())
    for entry in files:
        if entry.get("key") == file_name or entry.get("filename") == file_name:
            checksum = str(entry.get("checksum", ""))
            if checksum.startswith("md5:"):
                return checksum[4:]
            if len(checksum) == 32:
                return checksum
    return None


def fetch(url: str, destination: Path, *, progress: bool = True) -> None:
    """Download ``url`` to ``destination``, resuming ``destination.part`` with a Range request."""
    from tqdm import tqdm

    partial = destination.with_name(destination.name + ".part")
    start = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        reply = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing left to fetch: the part is whole
            partial.rename(destination)
            return
        raise ConfigurationError(f"Download of {url} failed: HTTP {error.code}.") from error
    except OSError as error:
        raise ConfigurationError(
            f"Download of {url} failed ({error}). Without network access, fetch the file "
            f"elsewhere and put it at {destination}; then run the command again."
        ) from error
    with reply:
        resumed = start and reply.status == 206
        mode = "ab" if resumed else "wb"
        total = reply.headers.get("Content-Length")
        total = int(total) + (start if resumed else 0) if total else None
        with (
            open(partial, mode) as handle,
            tqdm(
                total=total,
                initial=start if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=destination.name,
                disable=not progress,
            ) as bar,
        ):
            while chunk := reply.read(1 << 20):
                handle.write(chunk)
                bar.update(len(chunk))
    partial.rename(destination)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    name: str, root: Path, *, parts: Sequence[str] | None = None, progress: bool = True
) -> Path:
    """Fetch, check and extract a release's archives into ``root``; returns its folder."""
    manifest = release_manifest(name)
    archives = manifest["archives"]
    if parts:
        known = {a["file"].removesuffix(".tar") for a in archives}
        unknown = sorted(set(parts) - known)
        if unknown:
            raise ConfigurationError(
                f"--parts {unknown} not in {name}; choose from {sorted(known)}."
            )
        archives = [a for a in archives if a["file"].removesuffix(".tar") in parts]
    else:
        archives = [a for a in archives if not a.get("optional")]
    root.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        path = root / archive["file"]
        marker = root / f".{archive['file']}.extracted"
        if marker.is_file():
            print(f"{archive['file']}: already downloaded and extracted")
            continue
        if not path.is_file():
            print(f"{archive['file']}: downloading {archive['url']}")
            fetch(archive["url"], path, progress=progress)
        expected, source = archive.get("md5"), "the shipped manifest"
        if not expected:
            expected, source = zenodo_md5(manifest["record"], archive["file"]), "Zenodo's API"
        actual = _md5(path)
        if expected is None:
            print(
                f"{archive['file']}: md5 {actual} NOT VERIFIED (no MD5 is shipped for it and "
                f"Zenodo's API could not be reached); compare it with {manifest['record']}."
            )
        elif actual != expected:
            damaged = path.with_name(path.name + ".damaged")
            path.rename(damaged)
            raise ConfigurationError(
                f"{archive['file']}: MD5 {actual}, expected {expected} ({source}). The "
                f"download is damaged; it was moved to {damaged}. Delete it and run the "
                "command again."
            )
        else:
            print(f"{archive['file']}: md5 {actual} OK ({source})")
        target = root / archive["extract_to"]
        target.mkdir(parents=True, exist_ok=True)
        print(f"{archive['file']}: extracting into {target}")
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")
        marker.write_text(actual + "\n")
    return root / manifest["folder"]


# --------------------------------------------------------------------------- command line


def _list() -> None:
    for name in release_names():
        manifest = release_manifest(name)
        known = [a for a in manifest["archives"] if a.get("md5")]
        checksums = (
            "MD5 shipped"
            if len(known) == len(manifest["archives"])
            else "MD5 from Zenodo's API at download"
        )
        layout = (
            "<corruption>.npy + labels.npy"
            if manifest["layout"] == "npy"
            else "<corruption>/<severity>/<wnid>/*.JPEG"
        )
        archives = ", ".join(a["file"] for a in manifest["archives"])
        print(
            f"{name:16} {manifest['title']:16} {manifest['record']}\n"
            f"{'':16} {manifest['folder']}/{layout}  ({manifest['image_size']} px, "
            f"{manifest['num_classes']} classes, {manifest['images_per_severity']} images per "
            f"severity)\n{'':16} archives: {archives}; {checksums}"
        )


def _report(name: str, root: Path, problems: list[str]) -> int:
    if problems:
        print(f"{name} at {root}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"{name} at {root}: OK")
    return 0


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbn-data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the known releases: layout, source, checksums")
    names = list(release_names())
    verify_parser = commands.add_parser("verify", help="check a release or make-c folder")
    verify_parser.add_argument("name", choices=names)
    verify_parser.add_argument("--root", type=Path, default=None, help="the release's folder")
    verify_parser.add_argument(
        "--quick", action="store_true", help="JPEG trees: skip the per-file marker check"
    )
    download_parser = commands.add_parser("download", help="fetch, check and extract")
    download_parser.add_argument("name", choices=names)
    download_parser.add_argument("--root", type=Path, default=Path("data"))
    download_parser.add_argument(
        "--parts", type=_comma_list, default=None, help="archives to fetch, e.g. noise,blur"
    )
    make = commands.add_parser("make-c", help="write a corrupted set in the released layout")
    make.add_argument("source", choices=["cifar10", "cifar100", "imagenet-val", "folder"])
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--data-dir", help="cifar10/cifar100: the folder with CIFAR's pickles")
    make.add_argument("--source-dir", help="imagenet-val/folder: <dir>/<wnid>/<image>")
    make.add_argument("--corruptions", type=_comma_list, default=None)
    make.add_argument("--severities", type=_comma_list, default=None)
    make.add_argument("--n-examples", type=int, default=None)
    make.add_argument("--subset", choices=SUBSET_MODES, default="all")
    make.add_argument("--images-per-class", type=int, default=5)
    make.add_argument("--subset-seed", type=int, default=0)
    make.add_argument("--subset-file", default=None)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--jpeg-quality", type=int, default=85)
    make.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    make.add_argument("--no-progress", action="store_true")
    return parser


def _run(arguments: argparse.Namespace) -> int:
    if arguments.command == "list":
        _list()
        return 0
    if arguments.command == "download":
        folder = download(arguments.name, arguments.root, parts=arguments.parts)
        return _report(arguments.name, folder, verify(arguments.name, folder, quick=True))
    if arguments.command == "verify":
        manifest = release_manifest(arguments.name)
        root = arguments.root or Path("data") / manifest["folder"]
        return _report(arguments.name, root, verify(arguments.name, root, quick=arguments.quick))
    from robustbench_bn.data.make_c import make_c

    severities = [int(s) for s in arguments.severities] if arguments.severities else None
    subset = ImageSubset(
        mode=arguments.subset,
        images_per_class=arguments.images_per_class,
        seed=arguments.subset_seed,
        file=arguments.subset_file,
    )
    manifest_path = make_c(
        arguments.source,
        out=arguments.out,
        data_dir=arguments.data_dir,
        source_dir=arguments.source_dir,
        corruptions=arguments.corruptions,
        severities=severities or (1, 2, 3, 4, 5),
        n_examples=arguments.n_examples,
        subset=subset,
        seed=arguments.seed,
        jpeg_quality=arguments.jpeg_quality,
        num_workers=arguments.workers,
        progress=not arguments.no_progress,
    )
    released_as = json.loads(manifest_path.read_text())["released_as"]
    print(f"wrote {arguments.out} ({released_as} layout; SHA256SUMS and manifest.json inside)")
    return _report(released_as, arguments.out, verify(released_as, arguments.out))


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    try:
        code = _run(arguments)
    except ConfigurationError as error:
        print(f"rbn-data: error: {error}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
