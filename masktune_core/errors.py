"""Errors whose message is fit to show a user as is: each names the field or file at fault."""

from __future__ import annotations


class MaskTuneError(Exception):
    """Base class. The CLI and the dashboard print ``str(err)`` and nothing else."""


class ConfigError(MaskTuneError):
    """A configuration value is invalid. ``field`` is the option's name (as on the CLI)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(MaskTuneError):
    """A dataset file or folder is missing, malformed or unreadable. ``path`` names it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class CheckpointError(MaskTuneError):
    """A checkpoint cannot be loaded into the requested model."""


class RunStoreError(MaskTuneError):
    """A run directory cannot be read or written (bad id, full disk, read-only, ...)."""
