"""Corruption engine speed: the suite's engine against imagecorruptions-imaug, same images.

For each of the 19 corruptions, at 224 px and at 32 px, one process times

* ``reference``: ``imagecorruptions.corrupt`` (the maintained PyPI package of Hendrycks &
  Dietterich 2019's code, ImageNet parameters) image by image on uint8 HWC arrays;
* ``suite``: :func:`robustbench_bn.data.corruptions.corrupt` on the same images as one batch
  (parameter family by image size), including the per-image seeding;
* ``suite <device>`` with ``--device cuda``: the same on a GPU (synchronized before the clock
  stops).

Each timing is the best of ``--repeats`` (default 3; this machine's speed varies between
runs) at each of ``--severities`` (default 3; a corruption's rate is over all of them), and
follows one untimed warm-up call on the same corruption (lazy imports, and the suite's
per-size tables: kernels, resize matrices, frost photographs).

It prints images/s per corruption and in total (all 19 corruptions: total images over total
time) and the ratio suite / reference. The goal in the corruption-engine issue: at least 20x
the reference's total on CPU, and no corruption slower than the reference.

    .venv/bin/python scripts/benchmark_corruptions.py [--sizes 224 32] [--severities 1 2 3 4 5]
        [--device cuda]
"""

from __future__ import annotations

# Before torch: importing the package chooses OpenMP's passive waiting, which libgomp reads
# only when torch loads (see robustbench_bn/__init__.py).
import robustbench_bn

# isort: split
import argparse
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from robustbench_bn.data.corruptions import ALL_CORRUPTIONS, corrupt, image_seeds

SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


def photographs(size: int, count: int) -> torch.Tensor:
    """``count`` float images [count, 3, size, size]: scikit-image's sample photographs,
    centre-cropped to squares and resized (antialiased), repeated as needed."""
    from skimage import data

    pictures = []
    for name in SAMPLE_IMAGES:
        picture = torch.from_numpy(np.ascontiguousarray(getattr(data, name)()[..., :3]))
        picture = picture.permute(2, 0, 1).float() / 255
        side = min(picture.shape[-2:])
        top = (picture.shape[-2] - side) // 2
        left = (picture.shape[-1] - side) // 2
        square = picture[:, top : top + side, left : left + side]
        resized = F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=True)
        pictures.append(resized[0].clamp(0, 1))
    stacked = torch.stack(pictures)
    repeats = -(-count // len(stacked))
    # Quantized like decoded files, so both implementations see the same uint8 pixels.
    return (stacked.repeat(repeats, 1, 1, 1)[:count] * 255).round() / 255


def time_reference(images: torch.Tensor, corruption: str, severity: int, repeats: int = 1) -> float:
    from imagecorruptions import corrupt as reference_corrupt

    arrays = [
        np.ascontiguousarray((image.permute(1, 2, 0) * 255).round().byte().numpy())
        for image in images
    ]
    np.random.seed(0)
    reference_corrupt(arrays[0], corruption_name=corruption, severity=severity)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for array in arrays:
            reference_corrupt(array, corruption_name=corruption, severity=severity)
        best = min(best, time.perf_counter() - started)
    return best


def time_suite(
    images: torch.Tensor, corruption: str, severity: int, device: str, repeats: int = 1
) -> float:
    seeds = image_seeds("benchmark", corruption, severity, 0, torch.arange(len(images)))
    images = images.to(device)
    # Warm-up: lazy imports and the per-size tables (kernels, resize matrices), built once.
    corrupt(images[:2], corruption, severity, seeds=seeds[:2], device=device)
    if device != "cpu":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        corrupt(images, corruption, severity, seeds=seeds, device=device)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    parser.add_argument(
        "--severities",
        type=int,
        nargs="+",
        default=[3],
        help="each corruption is timed at every one of these; its rate is over all of them",
    )
    parser.add_argument(
        "--reference-images", type=int, default=None, help="default 12 at >= 128 px, else 96"
    )
    parser.add_argument(
        "--suite-images", type=int, default=None, help="default 48 at >= 128 px, else 1024"
    )
    parser.add_argument("--corruptions", default=",".join(ALL_CORRUPTIONS))
    parser.add_argument("--device", default=None, help="also time the suite on this device")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    arguments = parser.parse_args()
    corruptions = arguments.corruptions.split(",")
    warnings.filterwarnings("ignore")  # the reference's skimage / numpy deprecation notes
    severities = arguments.severities
    print(f"robustbench_bn {robustbench_bn.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, severities "
          f"{' '.join(map(str, severities))}")  # fmt: skip
    for size in arguments.sizes:
        large = size >= 128
        reference_count = arguments.reference_images or (12 if large else 96)
        suite_count = arguments.suite_images or (48 if large else 1024)
        images = photographs(size, max(reference_count, suite_count))
        columns = ["reference", "suite cpu"] + (
            [f"suite {arguments.device}"] * bool(arguments.device)
        )
        print(f"\n{size} px: reference on {reference_count} images one by one, suite on "
              f"{suite_count} as one batch; images/s")  # fmt: skip
        print(f"{'corruption':18}" + "".join(f"{name:>14}" for name in columns) + f"{'ratio':>9}")
        totals = {name: [0, 0.0] for name in columns}
        slowest_ratio = (float("inf"), "")
        for corruption in corruptions:
            rates = {}
            timings = {}
            if not arguments.skip_reference:
                timings["reference"] = (
                    reference_count * len(severities),
                    sum(
                        time_reference(
                            images[:reference_count], corruption, severity, arguments.repeats
                        )
                        for severity in severities
                    ),
                )
            timings["suite cpu"] = (
                suite_count * len(severities),
                sum(
                    time_suite(images[:suite_count], corruption, severity, "cpu", arguments.repeats)
                    for severity in severities
                ),
            )
            if arguments.device:
                timings[f"suite {arguments.device}"] = (
                    suite_count * len(severities),
                    sum(
                        time_suite(
                            images[:suite_count],
                            corruption,
                            severity,
                            arguments.device,
                            arguments.repeats,
                        )
                        for severity in severities
                    ),
                )
            line = f"{corruption:18}"
            for name in columns:
                if name not in timings:
                    line += f"{'-':>14}"
                    continue
                count, seconds = timings[name]
                rates[name] = count / seconds
                totals[name][0] += count
                totals[name][1] += seconds
                line += f"{rates[name]:14.1f}"
            if "reference" in rates:
                ratio = rates["suite cpu"] / rates["reference"]
                slowest_ratio = min(slowest_ratio, (ratio, corruption))
                line += f"{ratio:8.1f}x"
            print(line, flush=True)
        line = f"{'total':18}"
        total_rates = {
            name: count / seconds for name, (count, seconds) in totals.items() if seconds
        }
        for name in columns:
            line += f"{total_rates[name]:14.1f}" if name in total_rates else f"{'-':>14}"
        if "reference" in total_rates:
            line += f"{total_rates['suite cpu'] / total_rates['reference']:8.1f}x"
        print(line)
        if "reference" in total_rates:
            print(
                f"total ratio suite cpu / reference at {size} px: "
                f"{total_rates['suite cpu'] / total_rates['reference']:.1f}x (goal >= 20x); "
                f"lowest per-corruption ratio {slowest_ratio[0]:.2f}x ({slowest_ratio[1]})"
            )


if __name__ == "__main__":
    main()
