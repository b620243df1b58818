"""Fingerprints of the corruption engine's outputs, to show that a change moves no bit.

The 836 cells the engine's speed work was checked on: scikit-image's sample photographs at
224, 64, 45 and 32 px (the three parameter families and a size between two), each of the 19
corruptions at severities 1-5, quantized and not (760 cells), and once per corruption and size
on inputs outside [0, 1] (severity 3, not quantized: 76 cells). Each cell's fingerprint is the
SHA-256 of its float32 output's bytes.

    .venv/bin/python scripts/corruption_fingerprints.py --write before.json
    (change the engine)
    .venv/bin/python scripts/corruption_fingerprints.py --compare before.json

``--compare`` lists every cell whose output differs and exits 1 if any does. Compiled kernels
are cached on disk by numba; after moving a kernel between files, run with
``NUMBA_CACHE_DIR`` set to an empty folder so that no cached machine code from before is
reused.
"""

from __future__ import annotations

# Before torch: importing the package chooses OpenMP's passive waiting (see the benchmark).
import robustbench_bn

# isort: split
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_corruptions import photographs  # noqa: E402

from robustbench_bn.data.corruptions import ALL_CORRUPTIONS, corrupt, image_seeds  # noqa: E402

SIZES = (224, 64, 45, 32)
#: Images per batch: enough for several per thread and chunk, few enough to run in minutes.
IMAGES = {224: 6, 64: 12, 45: 12, 32: 24}


def fingerprints(corruptions: list[str]) -> dict[str, str]:
    cells = {}
    for size in SIZES:
        images = photographs(size, IMAGES[size])
        # Outside [0, 1] on both sides, as a caller's unnormalized tensors would be.
        out_of_range = images * 1.5 - 0.25
        for corruption in corruptions:
            started = time.perf_counter()
            for severity in range(1, 6):
                seeds = image_seeds(
                    "fingerprint", corruption, severity, 0, torch.arange(len(images))
                )
                for quantize in (True, False):
                    output = corrupt(images, corruption, severity, seeds=seeds, quantize=quantize)
                    cells[f"{size}|{corruption}|{severity}|quantize={quantize}"] = _digest(output)
            seeds = image_seeds("fingerprint", corruption, 3, 1, torch.arange(len(images)))
            output = corrupt(out_of_range, corruption, 3, seeds=seeds, quantize=False)
            cells[f"{size}|{corruption}|3|out_of_range"] = _digest(output)
            print(f"{size:4} px {corruption:18} {time.perf_counter() - started:6.1f} s", flush=True)
    return cells


def _digest(output: torch.Tensor) -> str:
    return hashlib.sha256(output.contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path, help="write the fingerprints to this JSON file")
    action.add_argument("--compare", type=Path, help="compare with fingerprints written before")
    parser.add_argument("--corruptions", default=",".join(ALL_CORRUPTIONS))
    arguments = parser.parse_args()
    print(f"robustbench_bn {robustbench_bn.__version__}, torch {torch.__version__}")
    cells = fingerprints(arguments.corruptions.split(","))
    if arguments.write:
        arguments.write.write_text(json.dumps(cells, indent=1, sort_keys=True) + "\n")
        print(f"{len(cells)} cells written to {arguments.write}")
        return
    expected = json.loads(arguments.compare.read_text())
    differing = [cell for cell in cells if expected.get(cell) != cells[cell]]
    missing = [cell for cell in expected if cell not in cells]
    for cell in differing:
        print(f"differs: {cell}")
    print(f"{len(cells)} cells compared with {arguments.compare}: {len(differing)} differ, "
          f"{len(cells) - len(differing)} identical, {len(missing)} not computed")  # fmt: skip
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
