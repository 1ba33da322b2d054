"""Errors a user can cause. The CLI catches `MedsynError` once and prints one line (exit code 2)."""


class MedsynError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in medsyn."""


class SpecError(MedsynError):
    """A dataset spec string that cannot be parsed or names an unknown kind/option."""


class DataError(MedsynError):
    """Missing, unreadable or malformed dataset files (CSV columns, corrupt images, empty classes)."""


class ConfigError(MedsynError):
    """An invalid configuration value (model name, size, option combination)."""


class CheckpointError(MedsynError):
    """A run directory or checkpoint that is missing, corrupt or from an incompatible version."""
