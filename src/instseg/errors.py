"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Torch-free on purpose: the ONNX inference path raises these too.
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
