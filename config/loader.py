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


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last
    one silently, so half of an edit would be lost without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", mark
                )
            try:
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and where (PyYAML's text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}" if exc.problem_mark else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{exc.problem}{context}{where}"
    return " ".join(str(exc).split())


def _read_yaml(path: Path, what: str = "pipeline config") -> dict[str, Any]:
    """The top-level mapping of a YAML file; every failure a one-line ``ConfigError`` naming the file."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (pass --config with an existing file)")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; pass the {what} file itself (e.g. {path}/pipeline.yaml)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            f"the {what} is YAML text: is this the right file?"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; the {what} is a mapping of keys (see config/pipeline.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _format_errors(path: Path, exc: ValidationError) -> str:
    """All validation errors on one line: ``file: N invalid setting(s): key.path: why; ...``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and place; see the commented config/pipeline.yaml)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{path}: {exc.error_count()} invalid setting(s): " + "; ".join(" ".join(p.split()) for p in parts)


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
    return _validate(LogConfig, path, _read_yaml(path, "log config"))


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
