"""Errors that carry a message a user can act on.

Everything the suite raises for bad input derives from :class:`ConfigurationError`, so the
command-line entry points can print the message and exit non-zero instead of a traceback.
"""


class ConfigurationError(ValueError):
    """Bad input from the user: a wrong name, a value out of range, a missing file."""


class DatasetNotFoundError(ConfigurationError, FileNotFoundError):
    """A dataset is not where the configuration says, with the layout and how to get it."""
