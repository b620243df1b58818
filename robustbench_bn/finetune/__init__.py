"""Fine-tune stages applied to the source model before any test-time method (cached by config)."""
