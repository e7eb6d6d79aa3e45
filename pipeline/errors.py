"""Errors raised by the pipeline; the hierarchy itself is defined in :mod:`config.errors`."""

from __future__ import annotations

from config.errors import (
    AppError,
    ConfigError,
    GpuUnavailableError,
    ModelLoadError,
    SourceError,
    StageError,
    StorageError,
)

__all__ = [
    "AppError",
    "ConfigError",
    "GpuUnavailableError",
    "ModelLoadError",
    "SourceError",
    "StageError",
    "StorageError",
]
