"""Data: clean datasets, corruption benchmarks (released or corrupted on the fly), the corruption engine."""
