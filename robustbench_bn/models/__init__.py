"""Models: the small CIFAR-size nets written here and the source-model training for the embedded default."""
