"""Test-time methods, one module each, all behind :class:`robustbench_bn.methods.base.Method`."""
