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


# -- zones and class ids --------------------------------------------------------------------------

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]


def _with_zones(*zones: dict[str, object]):  # type: ignore[no-untyped-def]
    return lambda d: d["counting"].update(zones=list(zones))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_with_zones({"name": "door", "polygon": SQUARE}, {"name": "desk", "polygon": SQUARE}, {"name": "door", "polygon": SQUARE}),
         "zones 0 and 2 are both named 'door'"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [10, 0]]}), "counting.zones.0.polygon: List should have at least 3 items"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [float("nan"), 0], [10, 10]]}), "polygon points must be finite numbers; got [[nan, 0.0]]"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [float("inf"), 0], [10, 10]]}), "must be finite"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [5, 5], [10, 10]]}), "encloses no area"),
        (_with_zones({"name": "a", "polygon": [[3, 3], [3, 3], [3, 3]]}), "encloses no area"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [0.1, 0.1], [0.3, 0.3]], "units": "normalized"}), "encloses no area"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [10, 10], [10, 0], [0, 10]]}), "crosses itself"),
        (_with_zones({"name": "a", "polygon": [[-5, 0], [10, 0], [10, 10]]}), "points [[-5.0, 0.0]] lie outside the frame (x, y >= 0)"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [1.5, 0], [1, 1]], "units": "normalized"}), "normalized units are 0..1"),
        (_with_zones({"name": "a", "polygon": SQUARE, "frame_size": [80, 80]}), "outside the 80x80 frame_size"),
        (_with_zones({"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "units": "normalized", "frame_size": [10, 10]}),
         "frame_size is for units: pixels"),
        (_with_zones({"name": "a", "polygon": SQUARE, "frame_size": [0, 100]}), "must be positive"),
        (_with_zones({"name": "a", "polygon": SQUARE, "units": "percent"}), "counting.zones.0.units"),
        (_with_zones({"name": "", "polygon": SQUARE}), "counting.zones.0.name"),
        (lambda d: d["models"]["person"].update(person_classes=[0, -1]), "[-1] are negative"),
        (lambda d: d["models"]["person"].update(person_classes=[0, 0]), "an id is given twice"),
        (lambda d: d["models"]["person"].update(person_classes=[]), "a YOLO model would count no one"),
    ],
)
def test_bad_zones_and_classes_name_the_field(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_good_zones_load_in_each_unit(tmp_path: Path) -> None:
    zones = (
        {"name": "door", "polygon": SQUARE},  # plain pixels: configs written before units existed
        {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "units": "normalized"},
        {"name": "desk", "polygon": [[0, 0], [384, 0], [384, 576], [0, 576]], "frame_size": [768, 576]},
    )
    cfg = load_pipeline_config(_write(tmp_path, _with_zones(*zones)))
    assert [(z.name, z.units, z.frame_size) for z in cfg.counting.zones] == [
        ("door", "pixels", None), ("left", "normalized", None), ("desk", "pixels", (768, 576))
    ]
    again = PipelineConfig.model_validate(cfg.model_dump(mode="json"))  # headless re-validates a dump
    assert again.counting.zones == cfg.counting.zones


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00\x01garbage\x80", "not a UTF-8 text file (byte 0xff at offset 0)"),
        (b"streams: []\n\xe9t\xe9\n", "not a UTF-8 text file (byte 0xe9 at offset 12)"),
        (b"\x00\x01\x02", "not valid YAML: unacceptable character #x0000"),
        (b"", "the file is empty"),
        (b"# only a comment\n", "the file is empty"),
        (b"- a\n- b\n", "the top level must be a mapping of keys, got list"),
        (b"just text\n", "the top level must be a mapping of keys, got str"),
        (b"streams: [\n", "not valid YAML: expected the node content"),
        (b"max_frames: 3\nmax_frames: 4\n", "key 'max_frames' is given twice in one mapping at line 2"),
        (b"models: {}\n", "3 invalid setting(s): streams: required key is missing; preprocess: required key"),
    ],
    ids=["binary", "latin-1", "nul-bytes", "empty", "comment-only", "list", "scalar", "syntax", "duplicate-key", "missing-keys"],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory; pass the pipeline config file itself"):
        load_pipeline_config(tmp_path)
    with pytest.raises(ConfigError, match="is a directory; pass the log config file itself"):
        load_log_config(tmp_path)


def test_duplicate_keys_are_refused_at_any_depth(tmp_path: Path) -> None:
    text = (ROOT / "config/pipeline.yaml").read_text()
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.replace("  queue_size: 4\n", "  queue_size: 4\n  queue_size: 8\n"))
    with pytest.raises(ConfigError, match="key 'queue_size' is given twice"):
        load_pipeline_config(path)
