"""Exceptions that carry a user-facing message (the CLI prints them without a traceback)."""


class CtrkitError(Exception):
    """Base class: the message is complete and meant for the user."""


class InputError(CtrkitError):
    """Bad input data: names the file, line and field where known."""


class StoreError(CtrkitError):
    """A store that is missing, incomplete, or of an unknown format."""


class ConfigError(CtrkitError):
    """A flag or configuration value that is out of range or inconsistent."""


class OutputError(CtrkitError):
    """An output that cannot be written (bad path, disk full, an input named as output); says what was kept."""
