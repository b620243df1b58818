"""The package version, in a module of its own so that code reporting it (the environment
written into every row) need not import the package's ``__init__``, which imports the Python
API lazily (an import cycle otherwise)."""

__version__ = "0.1.0"
