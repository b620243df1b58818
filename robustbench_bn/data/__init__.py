"""Data: clean datasets, corruption benchmarks (released or on the fly), the corruption engine."""
