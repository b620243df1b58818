"""``rbn-data``: list, download and verify the released corruption benchmarks.

    rbn-data list
    rbn-data verify cifar10_c --root data/CIFAR-10-C
    rbn-data download cifar10_c --root data      # resumable; untars into data/CIFAR-10-C

``verify`` checks presence, dtype, shape, the five severity blocks and the labels, says
exactly what is wrong and how to fix it, and exits non-zero on any problem. The release
archives' checksums are not shipped (they could not be verified when this was written);
``download`` prints the SHA-256 of what it fetched so it can be compared with Zenodo's page.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robustbench_bn.data.released import CIFAR_C_CORRUPTIONS, CIFAR_C_RELEASES

DOWNLOAD_URLS = {
    "cifar10_c": "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
    "cifar100_c": "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1",
}
FOLDERS = {"cifar10_c": "CIFAR-10-C", "cifar100_c": "CIFAR-100-C"}


def verify_cifar_c(name: str, root: Path) -> list[str]:
    """Every problem found in a CIFAR-C folder, each with what to do; empty when it is sound."""
    if not root.is_dir():
        return [f"{root} does not exist: rbn-data download {name} --root {root.parent}"]
    problems = []
    labels_path = root / "labels.npy"
    rows = None
    try:
        labels = np.load(labels_path, mmap_mode="r")
        if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) % 5:
            problems.append(
                f"labels.npy is {labels.dtype} {labels.shape}, expected uint8 "
                "(50000,): download it again."
            )
        else:
            rows = len(labels)
            per_severity = rows // 5
            blocks = np.asarray(labels).reshape(5, per_severity)
            if not (blocks == blocks[0]).all():
                problems.append(
                    "labels.npy: the five severity blocks differ; the file is "
                    "damaged: download it again."
                )
            if rows != 50_000:
                problems.append(
                    f"labels.npy has {rows} labels, the release has 50000 "
                    "(a partial or regenerated copy?)."
                )
    except FileNotFoundError:
        problems.append(f"labels.npy is missing from {root}: download the release again.")
    except ValueError as error:
        problems.append(f"labels.npy cannot be read ({error}): it is truncated; download again.")
    for corruption in CIFAR_C_CORRUPTIONS:
        path = root / f"{corruption}.npy"
        if not path.is_file():
            problems.append(
                f"{corruption}.npy is missing: untar the release again "
                f"(rbn-data download {name} --root {root.parent})."
            )
            continue
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as error:
            problems.append(
                f"{corruption}.npy cannot be read ({error}): it is truncated; "
                "delete it and download again."
            )
            continue
        expected = (rows or 50_000, 32, 32, 3)
        if array.dtype != np.uint8 or tuple(array.shape) != expected:
            problems.append(
                f"{corruption}.npy is {array.dtype} {tuple(array.shape)}, expected "
                f"uint8 {expected}: download it again."
            )
    return problems


def download(name: str, root: Path) -> Path:
    """Fetch the release archive (resuming a partial file with an HTTP Range request), untar."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / CIFAR_C_RELEASES[name]["archive"]
    partial = archive.with_suffix(".tar.part")
    if not archive.is_file():
        start = partial.stat().st_size if partial.is_file() else 0
        request = urllib.request.Request(
            DOWNLOAD_URLS[name], headers={"Range": f"bytes={start}-"} if start else {}
        )
        print(f"downloading {DOWNLOAD_URLS[name]} -> {archive} (from byte {start})")
        with urllib.request.urlopen(request) as response, open(partial, "ab") as handle:
            if start and response.status != 206:  # the server ignored the range: start over
                handle.truncate(0)
            while chunk := response.read(1 << 20):
                handle.write(chunk)
        partial.rename(archive)
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    source = CIFAR_C_RELEASES[name]["url"]
    print(f"sha256 {digest.hexdigest()}  {archive.name} (compare with {source})")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / FOLDERS[name]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rbn-data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the known releases, their layout and source")
    for command in ("verify", "download"):
        sub = commands.add_parser(command)
        sub.add_argument("name", choices=sorted(CIFAR_C_RELEASES))
        sub.add_argument("--root", type=Path, default=None)
    arguments = parser.parse_args(argv)
    if arguments.command == "list":
        for name, release in CIFAR_C_RELEASES.items():
            print(
                f"{name:11} {release['archive']:16} {release['url']}  "
                f"layout: <root>/{FOLDERS[name]}/<corruption>.npy + labels.npy"
            )
        return
    if arguments.command == "download":
        folder = download(arguments.name, arguments.root or Path("data"))
        arguments.root = folder
    root = arguments.root or Path("data") / FOLDERS[arguments.name]
    problems = verify_cifar_c(arguments.name, root)
    if problems:
        print(f"{arguments.name} at {root}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        sys.exit(1)
    print(f"{arguments.name} at {root}: OK ({len(CIFAR_C_CORRUPTIONS)} corruptions, labels)")


if __name__ == "__main__":
    main()
