"""Config loading: the shipped files validate; every error names the file and the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config import ConfigError, load_log_config, load_pipeline_config
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
