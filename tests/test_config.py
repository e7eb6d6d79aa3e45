"""Config loading: the shipped files validate; every error names the file and the key path."""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from config import ConfigError, configure_logging, load_log_config, load_pipeline_config
from config.schema import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name != "log.yaml"], ids=lambda p: p.name)
def test_shipped_pipeline_configs_validate(path: Path) -> None:
    cfg = load_pipeline_config(path)
    assert cfg.branches


def test_shipped_log_config_validates() -> None:
    cfg = load_log_config(ROOT / "config/log.yaml")
    assert "inference" in cfg.channels


# pipeline.yaml runs the demo on a CPU, where a 4K frame takes seconds: these keys differ from
# the code's defaults (GPU values) on purpose, and say so in the file's comments.
CPU_DEMO_OVERRIDES = {("fusion", "strategy"), ("fusion", "strict_sync_timeout_ms"), ("fusion", "stall_timeout_s")}


def test_defaults_in_code_agree_with_the_shipped_file() -> None:
    """Keys left out of pipeline.yaml take the code's defaults; keys written there must equal them."""
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    cfg = load_pipeline_config(ROOT / "config/pipeline.yaml")
    for section in ("fusion", "storage", "telemetry"):
        defaults = PipelineConfig.model_fields[section].default_factory().model_dump(mode="json")  # type: ignore[misc]
        assert set(data[section]) == set(defaults), section
        for key, value in defaults.items():
            if (section, key) not in CPU_DEMO_OVERRIDES:
                assert data[section][key] == value, (section, key)
    assert cfg.counting.model_dump(mode="json") == PipelineConfig.model_fields["counting"].default_factory().model_dump(mode="json")  # type: ignore[misc]


def _write(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["fusion"].update(stratgy="STRICT_SYNC"), "fusion.stratgy: unknown key"),
        (lambda d: d["fusion"].update(strategy="FASTEST"), "fusion.strategy"),
        (lambda d: d["preprocess"]["yolo_tiles"].update(overlap=1.5), "preprocess.yolo_tiles.overlap"),
        (lambda d: d["branches"]["density"].update(model="nope"), "unknown model 'nope'"),
        (lambda d: d["branches"]["density"].update(input="nope"), "unknown preprocess spec 'nope'"),
        (lambda d: d.pop("models"), "models: required key is missing"),
        (lambda d: d["backend"].update(name="tensorrt"), "tensorrt needs device: gpu"),
        (lambda d: d["streams"][0].update(decoder="ffmpeg"), "streams.0.decoder"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_pipeline_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(bad)


def test_cli_reports_config_error_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d["storage"].update(dbpath="x.db"))
    proc = subprocess.run(
        [sys.executable, "main.py", "headless", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "storage.dbpath: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- log channels -------------------------------------------------------------------------------

LOG_YAML = ROOT / "config/log.yaml"
PACKAGES = ("app", "pipeline", "gpu", "models", "storage", "ui", "config")
_MODULE_LOGGER = re.compile(r"^(\w+) = logging\.getLogger\((.*)\)", re.MULTILINE)


def _module_loggers() -> list[tuple[str, str, str]]:
    """(module, attribute, getLogger argument as written) of every module-level
    ``x = logging.getLogger(...)`` in our packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found += [(module, attr, arg) for attr, arg in _MODULE_LOGGER.findall(path.read_text(encoding="utf-8"))]
    return found


MODULE_LOGGERS = _module_loggers()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put the root logger and the channels back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ours = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
            if name.startswith("people_counter") and isinstance(lg, logging.Logger)}
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if name.startswith("people_counter") and isinstance(lg, logging.Logger):
            lg.setLevel(ours.get(name, logging.NOTSET))


def test_module_loggers_are_found() -> None:
    """The scan below is not vacuous: it sees the loggers of several packages."""
    assert {m.split(".")[0] for m, _, _ in MODULE_LOGGERS} >= {"app", "pipeline", "storage", "ui", "models"}


def test_each_channel_of_log_yaml_sets_its_logger(restore_logging: None) -> None:
    cfg = load_log_config(LOG_YAML)
    configure_logging(cfg)
    for ch, level in cfg.channels.items():
        assert logging.getLogger(f"people_counter.{ch}").level == logging.getLevelName(level), ch


@pytest.mark.parametrize(
    ("module", "attr"),
    [(m, a) for m, a, _ in MODULE_LOGGERS],
    ids=[f"{m}.{a}" for m, a, _ in MODULE_LOGGERS],
)
def test_module_logger_follows_its_log_yaml_channel(module: str, attr: str, restore_logging: None) -> None:
    """Each module logs to ``people_counter.<channel>`` of a channel in log.yaml, so the file's level
    reaches it: with every channel at DEBUG under an ERROR root, the module logs at DEBUG."""
    logger = getattr(importlib.import_module(module), attr)
    assert isinstance(logger, logging.Logger)
    channels = load_log_config(LOG_YAML).channels
    prefix, _, channel = logger.name.partition(".")
    assert prefix == "people_counter" and channel in channels, f"{module}: logger {logger.name!r}, channels {sorted(channels)}"
    configure_logging(load_log_config(LOG_YAML).model_copy(update={"level": "ERROR", "channels": dict.fromkeys(channels, "DEBUG")}))
    assert logger.getEffectiveLevel() == logging.DEBUG
