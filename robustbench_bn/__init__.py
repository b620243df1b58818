"""robustbench_bn: corruption robustness and normalization-statistics adaptation benchmarks."""

__version__ = "0.1.0"
