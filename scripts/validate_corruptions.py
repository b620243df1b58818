"""Validate the suite's corruption engine against imagecorruptions-imaug on real photographs.

The reference is the maintained PyPI package of Hendrycks & Dietterich 2019's corruption code
(``imagecorruptions``, ImageNet parameters). Both run on scikit-image's sample photographs
resized to 224 x 224, for every corruption and severity, with the suite's ``imagenet`` family.
Per image it measures

* strength: the mean absolute change against the clean image (0..255) and the PSNR against it;
* agreement, for the deterministic corruptions: the PSNR between the two outputs.

Thresholds (the corruption-engine issue): deterministic corruptions at least 35 dB between
the implementations; random ones with a mean absolute change within 10% of the reference's,
averaged over the images. Random draws differ by design (the suite seeds each image itself),
so their outputs are not compared pixel by pixel.

    .venv/bin/python scripts/validate_corruptions.py [--images 6] [--csv validation.csv]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from robustbench_bn.data.corruptions import (
    ALL_CORRUPTIONS,
    RANDOM_CORRUPTIONS,
    corrupt,
    image_seeds,
)

SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
DETERMINISTIC_PSNR = 35.0
STRENGTH_TOLERANCE = 0.10


def photographs(count: int) -> np.ndarray:
    """uint8 [count, 224, 224, 3]: centre squares of scikit-image's photographs, resized with
    PIL's antialiasing filter."""
    from PIL import Image
    from skimage import data

    images = []
    for name in SAMPLE_IMAGES[:count]:
        picture = getattr(data, name)()[..., :3]
        side = min(picture.shape[:2])
        top = (picture.shape[0] - side) // 2
        left = (picture.shape[1] - side) // 2
        square = Image.fromarray(picture[top : top + side, left : left + side])
        images.append(np.asarray(square.resize((224, 224), Image.LANCZOS)))
    return np.stack(images)


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, choices=range(1, 7))
    parser.add_argument("--corruptions", default=",".join(ALL_CORRUPTIONS))
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--repeats", type=int, default=8, help="draws per image (random ones)")
    parser.add_argument("--csv", default=None, help="write the per-cell table here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a cell fails")
    arguments = parser.parse_args()
    from imagecorruptions import corrupt as reference_corrupt

    warnings.filterwarnings("ignore")  # the reference's deprecation notes
    clean = photographs(arguments.images)
    clean_tensor = torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 255
    rows = []
    started = time.perf_counter()
    for corruption in arguments.corruptions.split(","):
        for severity in (int(value) for value in arguments.severities.split(",")):
            # Random corruptions are drawn `repeats` times per image: one frost photograph or
            # fog fractal per image would leave the strength to chance.
            repeats = arguments.repeats if corruption in RANDOM_CORRUPTIONS else 1
            references, ours, cleans = [], [], []
            for repeat in range(repeats):
                for index, image in enumerate(clean):
                    np.random.seed(1000 * repeat + index)  # the reference's global generator
                    output = reference_corrupt(image, corruption_name=corruption, severity=severity)
                    references.append(np.asarray(output).astype(np.uint8)[..., :3])
                    cleans.append(image)
                seeds = image_seeds(
                    "validation", corruption, severity, repeat, torch.arange(len(clean))
                )
                output = corrupt(clean_tensor, corruption, severity, seeds=seeds, family="imagenet")
                ours.extend((output * 255).round().byte().permute(0, 2, 3, 1).numpy())
            clean_copies = cleans
            change_reference = np.mean(
                [
                    np.abs(r.astype(float) - c).mean()
                    for r, c in zip(references, clean_copies, strict=True)
                ]
            )
            change_suite = np.mean(
                [
                    np.abs(o.astype(float) - c).mean()
                    for o, c in zip(ours, clean_copies, strict=True)
                ]
            )
            row = {
                "corruption": corruption,
                "severity": severity,
                "kind": "random" if corruption in RANDOM_CORRUPTIONS else "deterministic",
                "reference_change": round(change_reference, 2),
                "suite_change": round(change_suite, 2),
                "change_ratio": round(change_suite / max(change_reference, 1e-9), 3),
                "reference_psnr_vs_clean": round(
                    np.mean([psnr(r, c) for r, c in zip(references, clean_copies, strict=True)]), 2
                ),
                "suite_psnr_vs_clean": round(
                    np.mean([psnr(o, c) for o, c in zip(ours, clean_copies, strict=True)]), 2
                ),
            }
            if row["kind"] == "deterministic":
                between = np.mean(
                    [min(psnr(o, r), 99.0) for o, r in zip(ours, references, strict=True)]
                )
                row["psnr_between"] = round(between, 2)
                row["passed"] = between >= DETERMINISTIC_PSNR
            else:
                row["psnr_between"] = float("nan")
                row["passed"] = abs(row["change_ratio"] - 1) <= STRENGTH_TOLERANCE
            rows.append(row)
            print(
                f"{corruption:18} s{severity} {row['kind']:13} change ref {change_reference:6.2f} "
                f"suite {change_suite:6.2f} (x{row['change_ratio']:.3f})  "
                f"between {row['psnr_between']:6.2f} dB  {'PASS' if row['passed'] else 'FAIL'}",
                flush=True,
            )
    table = pd.DataFrame(rows)
    if arguments.csv:
        table.to_csv(arguments.csv, index=False)
    print(
        f"\n{len(clean)} photographs at 224 px, random corruptions drawn {arguments.repeats} "
        f"times per image, {time.perf_counter() - started:.0f} s"
    )
    print("per corruption: worst change ratio (random) or lowest PSNR between (deterministic)")
    for corruption, cells in table.groupby("corruption", sort=False):
        if cells["kind"].iloc[0] == "deterministic":
            figure = f"min {cells['psnr_between'].min():6.2f} dB"
        else:
            worst = cells.loc[(cells["change_ratio"] - 1).abs().idxmax(), "change_ratio"]
            figure = f"ratio {worst:6.3f}"
        failed = cells.loc[~cells["passed"], "severity"].tolist()
        verdict = "PASS" if not failed else f"FAIL at severities {failed}"
        print(f"  {corruption:18} {cells['kind'].iloc[0]:13} {figure:>15}  {verdict}")
    failures = int((~table["passed"]).sum())
    print(f"{len(table) - failures} of {len(table)} cells pass")
    return 1 if arguments.strict and failures else 0


if __name__ == "__main__":
    sys.exit(main())
