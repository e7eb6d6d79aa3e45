"""Load and validate the YAML config files; every error names the file and the key path."""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from config.errors import ConfigError
from config.schema import LogConfig, PipelineConfig

LOG_CHANNELS = ("app", "decode", "preprocess", "inference", "fusion", "storage", "ui", "telemetry")
"""Named log channels; each is the logger ``people_counter.<channel>``."""

_M = TypeVar("_M", bound=BaseModel)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (pass --config with an existing file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and place; see the commented config/pipeline.yaml)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _validate(model: type[_M], path: Path, data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None


def load_pipeline_config(path: str | Path, **overrides: Any) -> PipelineConfig:
    """Read ``pipeline.yaml``; ``overrides`` replace top-level keys before validation.

    Relative model, video and database paths stay relative to the working directory (the project
    root in ``make run``), as the operator typed them.
    """
    path = Path(path)
    data = _read_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _validate(PipelineConfig, path, data)


def load_log_config(path: str | Path) -> LogConfig:
    """Read ``log.yaml``."""
    path = Path(path)
    return _validate(LogConfig, path, _read_yaml(path))


def configure_logging(cfg: LogConfig) -> None:
    """Set up the root logger and one logger per channel (``people_counter.<channel>``)."""
    handlers: dict[str, dict[str, Any]] = {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    }
    if cfg.file:
        Path(cfg.file).parent.mkdir(parents=True, exist_ok=True)
        handlers["file"] = {"class": "logging.FileHandler", "formatter": "plain", "filename": cfg.file}
    unknown = sorted(set(cfg.channels) - set(LOG_CHANNELS))
    if unknown:
        raise ConfigError(f"log config: unknown channel(s) {unknown}; known: {list(LOG_CHANNELS)}")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": cfg.format}},
            "handlers": handlers,
            "root": {"level": cfg.level, "handlers": list(handlers)},
            "loggers": {f"people_counter.{ch}": {"level": lvl} for ch, lvl in cfg.channels.items()},
        }
    )
