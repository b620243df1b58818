"""robustbench_bn: corruption robustness and normalization-statistics adaptation benchmarks."""

import os
import sys

from robustbench_bn.version import __version__

# OpenMP's threads wait for work passively (asleep) unless the user chose otherwise. By
# default they spin for a while after each of torch's parallel operations, and on a machine
# with few cores the spinning takes the CPU from the corruption engine's own threads, which
# run right after such an operation. Measured on 2 cores, one process per setting: the 19
# corruptions at 224 px took 21.3 -> 18.5 ms per image summed (jpeg_compression 0.63 ->
# 0.51), the embedded default's bn job (`rbn-run method=bn`) 173 / 140 -> 156 / 134 s. Work
# that is all torch pays instead: a bare ResNet-18 forward pass (32 px, batch 128) was about 7%
# slower in the median, AdvBN's fine-tuning test 405 s against 364 s spinning (one pair;
# training-step timings were within this machine's noise). libgomp
# reads the setting once, when torch loads, so it can only be chosen before torch is
# imported; `OMP_WAIT_POLICY=ACTIVE` keeps the spinning.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["__version__", "evaluate"]


def __getattr__(name: str):
    # Imported on first use, so that `import robustbench_bn` stays cheap (no torch, no Hydra)
    # and the OpenMP setting above still comes before torch.
    if name == "evaluate":
        from robustbench_bn.api import evaluate

        return evaluate
    raise AttributeError(f"module 'robustbench_bn' has no attribute {name!r}")
