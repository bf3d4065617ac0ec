"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class EditbenchError(Exception):
    """A problem with the user's input or environment that has a clear one-line explanation."""


class DataError(EditbenchError):
    """Missing or malformed benchmark data."""


class ConfigError(EditbenchError):
    """Unknown names, invalid hyperparameters or options."""


class UnsupportedArchitecture(EditbenchError):
    """The model's architecture has no adapter (or lacks a component the adapter needs)."""
