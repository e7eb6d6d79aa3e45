"""The project's error hierarchy.

It lives in ``config`` because ``config`` is the lowest layer (it imports nothing of ours), so every
other package can raise and catch these. It is the project's one error module.

Each error carries a message written for the operator: what is wrong and how to fix it. Headless
mode maps the class to an exit code (its ``exit_code``).
"""

from __future__ import annotations


class AppError(Exception):
    """Base of every error the application reports to the operator."""

    exit_code = 1


class ConfigError(AppError):
    """A configuration file is missing, unreadable or invalid; the message names file and key path."""

    exit_code = 2


class SourceError(AppError):
    """A video source cannot be opened or read (missing file, corrupt stream, unreachable URL)."""

    exit_code = 3


class ModelLoadError(AppError):
    """A model file is missing, unreadable, or its inputs/outputs do not match what the config says."""

    exit_code = 4


class GpuUnavailableError(AppError):
    """A GPU feature (CUDA, NVDEC, TensorRT) was asked for on a machine that lacks it."""

    exit_code = 5


class StageError(AppError):
    """A pipeline stage failed while running; the message names the stage and the frame."""

    exit_code = 6


class StorageError(AppError):
    """The database cannot be opened or written (unwritable path, full disk, locked file)."""

    exit_code = 7
