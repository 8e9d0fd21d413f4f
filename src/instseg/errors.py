"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Every error a user can fix is defined here, so one `except InstsegError` (the CLI's) catches them
all. Torch-free on purpose: the ONNX inference path raises these too.
"""


class InstsegError(Exception):
    """Base class for errors caused by input the user can fix (files, names, options)."""


class DataError(InstsegError):
    """A dataset, image or label file is missing, unreadable or inconsistent."""


class CheckpointError(InstsegError):
    """A checkpoint is missing, truncated, corrupted, unsafe or needs a missing plugin."""


class ConfigError(InstsegError):
    """An option or combination of options is invalid."""


class TrainingError(InstsegError):
    """Training cannot go on (a loss that stays non-finite, a checkpoint that cannot be written)."""


class PluginError(InstsegError):
    """A plugin failed to load or register; the message names its distribution."""


class RegistryError(InstsegError, LookupError):
    """An unknown name, a name registered twice, or an invalid combination."""


class OutputError(InstsegError, OSError):
    """An output cannot be written (read-only folder, full disk, no permission) or would replace
    a file this run must not touch; the message names the path. Also an OSError, so callers that
    handled write failures as OSError keep working."""


class ExportError(InstsegError):
    """The model could not be exported, or the export does not match PyTorch."""


class MissingDependencyError(InstsegError, ImportError):
    """An optional package a command needs is not installed; the message says what to install.
    Also an ImportError, so code that guards an import with `except ImportError` keeps working."""
