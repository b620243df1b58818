"""Models: small CIFAR-size nets written here, source training for the embedded default."""
