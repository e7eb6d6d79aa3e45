"""``main.py bench`` end to end, as a user runs it: the demo detector on vtest.avi, a few frames.

One real bench (preprocess, e2e and sequential; two strategies) is run once for the module and its
report checked; ``--compare`` and the error paths run separately (they load no model, so they are
fast). The whole file stays well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".cache/assets"
VTEST = ASSETS / "video/vtest.avi"
DETECTOR = ASSETS / "models/person_yolov8s.onnx"
needs_assets = pytest.mark.skipif(
    not (VTEST.exists() and DETECTOR.exists()),
    reason="demo assets not fetched (.cache/assets/video/vtest.avi, models/person_yolov8s.onnx): "
    "run `python main.py fetch-assets`",
)

STRATEGIES = ("STRICT_SYNC", "ASYNC_OVERLAY")
FRAMES = 4
WARMUP = 1


def write_config(tmp: Path) -> Path:
    """config/pipeline.yaml on vtest with only the yolo_global branch and a warm-up of 1 frame."""
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["streams"][0]["uri"] = str(VTEST)
    data["models"]["person"]["path"] = str(DETECTOR)
    data["branches"]["yolo_tiles"]["enabled"] = False
    data["branches"]["density"]["enabled"] = False
    data["telemetry"]["warmup_frames"] = WARMUP
    data["storage"]["db_path"] = str(tmp / "unused.db")
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    if not (VTEST.exists() and DETECTOR.exists()):
        pytest.skip("demo assets not fetched")
    tmp = tmp_path_factory.mktemp("bench")
    cfg = write_config(tmp)
    out = tmp / "out"
    proc = run_cli(
        "bench", "--config", str(cfg), "--frames", str(FRAMES), "--fusion", *STRATEGIES,
        "--scenario", "preprocess", "e2e", "sequential", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, out, proc


@needs_assets
@pytest.mark.slow
def test_report_json_has_every_scenario_and_stage(bench_run: tuple[Path, Path, Any]) -> None:
    cfg, out, _ = bench_run
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == FRAMES and report["warmup_frames"] == WARMUP
    assert report["config"] == str(cfg) and report["source"] == str(VTEST)
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["device"] == "cpu"
    assert report["date"] and report["machine"]["platform"]
    runs = report["runs"]
    expected = {"preprocess", *(f"{s}/{f}" for s in ("e2e", "sequential") for f in STRATEGIES)}
    assert set(runs) == expected

    pre = runs["preprocess"]
    assert {"decode_ms", "preprocess_ms", "preprocess_yolo_global_ms"} <= set(pre["stages"])
    assert pre["stages"]["decode_ms"]["n"] == FRAMES - WARMUP
    assert pre["fps"] > 0 and "inference_model_yolo_global_ms" not in pre["stages"]

    for key in expected - {"preprocess"}:
        r = runs[key]
        stages = r["stages"]
        for name in ("decode_ms", "preprocess_ms", "inference_model_yolo_global_ms", "fusion_wait_ms", "end_to_end_ms"):
            assert name in stages, (key, name)
            assert set(stages[name]) == {"n", "mean", "p50", "p90", "p95", "p99", "max"}
        # every measured frame has its branch work and its publication, whatever the strategy
        assert stages["inference_model_yolo_global_ms"]["n"] == FRAMES - WARMUP, key
        assert stages["end_to_end_ms"]["n"] == FRAMES - WARMUP, key
        assert stages["inference_model_yolo_global_ms"]["p50"] > 0
        assert r["frames"] == FRAMES and r["measured_frames"] == FRAMES - WARMUP
        assert r["fps"] > 0 and r["publish_fps"] > 0
        assert r["drops"] == {} and r["partial_frames"] == 0  # files wait, never drop
        assert r["mode"] == ("sequential" if key.startswith("sequential") else "overlapped")
    # STRICT_SYNC knows which branch each frame waited on: the only one
    assert runs["e2e/STRICT_SYNC"]["waited_on"] == {"yolo_global": FRAMES}
    assert runs["e2e/ASYNC_OVERLAY"]["stages"]["fusion_wait_ms"]["max"] == 0.0

    ovs = report["comparisons"]["overlapped_vs_sequential"]
    assert [c["strategy"] for c in ovs] == list(STRATEGIES)
    for c in ovs:
        assert c["ratio"] > 0 and c["sequential_bound_fps"] > 0 and c["ideal_overlapped_fps"] > 0
        assert c["branches"]["yolo_global"]["slowdown"] > 0
        # one branch: perfect overlap cannot beat running it alone
        assert c["ideal_overlapped_fps"] == pytest.approx(c["sequential_bound_fps"])
    assert report["comparisons"]["strategies"]["e2e"] == [f"e2e/{s}" for s in STRATEGIES]


@needs_assets
@pytest.mark.slow
def test_report_html_is_self_contained_and_readable(bench_run: tuple[Path, Path, Any]) -> None:
    _, out, _ = bench_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 5 * 3  # per run: decode, preprocess, e2e at least
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link)\b", page)
    for text in ("Summary", "Overlapped vs sequential", "Strategy comparison", "end_to_end_ms",
                 "inference_model_yolo_global_ms", "p95 ms", "Drops", "What the measures mean"):
        assert text in page, text


@needs_assets
@pytest.mark.slow
def test_text_summary_names_fps_latency_and_ratio(bench_run: tuple[Path, Path, Any]) -> None:
    _, out, proc = bench_run
    text = proc.stdout
    assert "Traceback" not in proc.stderr
    for key in ("preprocess", "e2e/STRICT_SYNC", "sequential/ASYNC_OVERLAY", "e2e p50 ms", "e2e p95 ms"):
        assert key in text, key
    assert re.search(r"overlapped / sequential \(STRICT_SYNC\): [\d.]+ / [\d.]+ fps = [\d.]+x", text)
    assert str(out / "report.html") in text


@needs_assets
@pytest.mark.slow
def test_compare_with_itself_gives_ratios_of_one(bench_run: tuple[Path, Path, Any]) -> None:
    from app.bench import format_compare

    _, out, _ = bench_run
    report = json.loads((out / "report.json").read_text())
    text = format_compare(report, report, "same.json")
    rows = [ln for ln in text.splitlines() if ln.startswith("  ") and "ratio" not in ln]
    assert len(rows) >= 10
    for ln in rows:
        *_, p50_ratio, p95_ratio = ln.split()
        assert (p50_ratio, p95_ratio) in {("1.00", "1.00"), ("–", "–")}, ln  # – : 0 ms / 0 ms
    assert "e2e/STRICT_SYNC: fps" in text and "= 1.00x" in text


@needs_assets
@pytest.mark.slow
def test_compare_flag_prints_per_stage_ratios(bench_run: tuple[Path, Path, Any], tmp_path: Path) -> None:
    cfg, out, _ = bench_run
    proc = run_cli(
        "bench", "--config", str(cfg), "--frames", str(FRAMES), "--scenario", "preprocess",
        "--out", str(tmp_path / "again"), "--compare", str(out / "report.json"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"compare with {out / 'report.json'}" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("preprocess_yolo_global_ms"))
    assert re.fullmatch(r"\s*preprocess_yolo_global_ms(\s+[\d.]+){4}", line), line
    assert "e2e/STRICT_SYNC" not in proc.stdout.split("compare with")[1]  # only runs in both


@needs_assets
def test_missing_source_and_baseline_are_clear_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = run_cli("bench", "--config", str(cfg), "--source", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 3 and "video not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("bench", "--config", str(cfg), "--compare", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "baseline not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("bench", "--config", str(cfg), "--frames", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "warmup_frames" in proc.stderr
