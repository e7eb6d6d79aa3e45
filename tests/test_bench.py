"""``main.py bench``: the report code on runs of known figures, then end to end as a user runs it.

The first tests build runs whose every timing is known (:class:`RunResult` rows, warm-up frames
at 1000 ms so that a warm-up frame leaking into a statistic shows) and check the figures the
report derives from them: statistics, overlapped / sequential ratios and bounds, the text
summary, ``--compare`` ratios and the HTML sections. They load no model and take about a second.

Then one real bench (the demo detector on vtest.avi; preprocess, e2e and sequential; two
strategies) is run once for the module and its report checked; ``--compare`` and the error paths
run separately. The whole file stays well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.bench import RunResult, build_report, format_compare, format_summary, load_baseline, render_html
from app.headless import load_config_with_overrides
from config.errors import ConfigError

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


# -- the report from runs of known figures ------------------------------------------------------

SHIPPED = ROOT / "config/pipeline.yaml"  # branches yolo_global and yolo_tiles every frame, density every 5th
WARMUP_MS = 1000.0
KNOWN_FRAMES = 4
BRANCH_RUN_MS = {
    "sequential": {"yolo_global": 40.0, "yolo_tiles": 100.0, "density": 250.0},
    "overlapped": {"yolo_global": 60.0, "yolo_tiles": 150.0, "density": 250.0},
}
# from the sequential times: 1000 / (40 + 100 + 250 / 5) and 1000 / max(40, 100, 250 / 5)
SEQUENTIAL_BOUND_FPS = 1000.0 / 190.0
IDEAL_OVERLAPPED_FPS = 10.0
PIPELINE_MAIN = ["decode_ms", "inference_model_yolo_global_ms", "end_to_end_ms"]
PREPROCESS_MAIN = ["decode_ms", "preprocess_ms", "preprocess_yolo_global_ms"]


def make_run(scenario: str, strategy: str | None, fps: float) -> RunResult:
    """A run of KNOWN_FRAMES frames, the first a warm-up frame with every timing at WARMUP_MS."""
    mode = {"preprocess": "preprocess", "e2e": "overlapped", "sequential": "sequential"}[scenario]
    if mode == "preprocess":
        row = {"decode_ms": 3.0, "preprocess_ms": 7.0, "preprocess_yolo_global_ms": 7.0}
    else:
        row = {"decode_ms": 3.0, "inference_model_yolo_global_ms": 35.0, "end_to_end_ms": 20.0,
               **{f"{b}.run_ms": ms for b, ms in BRANCH_RUN_MS[mode].items()}}
    run = RunResult(scenario, strategy, mode, frames=KNOWN_FRAMES, warmup=1, fps=fps, publish_fps=fps + 1, wall_s=2.0)
    run.rows = [(i, dict.fromkeys(row, WARMUP_MS) if i < run.warmup else dict(row)) for i in range(KNOWN_FRAMES)]
    if mode != "preprocess":
        run.waited_on = {"yolo_tiles": KNOWN_FRAMES}
    return run


def known_report(*runs: RunResult) -> dict[str, Any]:
    cfg = load_config_with_overrides(argparse.Namespace(config=str(SHIPPED), source=None, realtime=False))
    machine = {"platform": "test-platform", "cpu_count": 2, "device": "cpu", "backend": "onnxruntime", "card": None}
    return build_report(cfg, argparse.Namespace(config=str(SHIPPED), frames=KNOWN_FRAMES), runs, machine)


def all_runs() -> tuple[RunResult, ...]:
    """preprocess; e2e with two strategies; sequential with one (so only STRICT_SYNC has a pair)."""
    return (make_run("preprocess", None, 30.0), make_run("e2e", "STRICT_SYNC", 8.0),
            make_run("e2e", "ASYNC_OVERLAY", 9.0), make_run("sequential", "STRICT_SYNC", 5.0))


@pytest.fixture(scope="module")
def agg_backend() -> None:
    import matplotlib

    matplotlib.use("Agg")  # as bench_command does; no display


def test_run_json_leaves_warm_up_out_of_the_statistics_but_not_the_series() -> None:
    report = known_report(*all_runs())
    pre, e2e = report["runs"]["preprocess"], report["runs"]["e2e/STRICT_SYNC"]
    assert pre["stages"]["decode_ms"] == {"n": 3, "mean": 3.0, "p50": 3.0, "p90": 3.0, "p95": 3.0, "p99": 3.0, "max": 3.0}
    assert pre["series"]["decode_ms"] == {"frame": [0, 1, 2, 3], "ms": [WARMUP_MS, 3.0, 3.0, 3.0]}
    assert pre["measured_frames"] == 3 and pre["end_to_end_p50_ms"] is None
    assert pre["main_stages"] == PREPROCESS_MAIN
    assert e2e["main_stages"] == PIPELINE_MAIN
    # main stages in pipeline order, then the per-branch keys sorted
    assert list(e2e["stages"]) == [*PIPELINE_MAIN, "density.run_ms", "yolo_global.run_ms", "yolo_tiles.run_ms"]
    assert e2e["end_to_end_p50_ms"] == 20.0 and e2e["fps"] == 8.0 and e2e["publish_fps"] == 9.0
    assert e2e["waited_on"] == {"yolo_tiles": KNOWN_FRAMES}


def test_report_json_is_strict_json_without_nan() -> None:
    report = known_report(RunResult("preprocess", None, "preprocess"))  # no frame: fps and wall time NaN
    run = report["runs"]["preprocess"]
    assert run["fps"] is None and run["wall_s"] is None and run["stages"] == {}
    json.dumps(report, allow_nan=False)


def test_comparisons_give_ratio_bounds_and_slowdowns_from_known_times() -> None:
    comp = known_report(*all_runs())["comparisons"]
    (c,) = comp["overlapped_vs_sequential"]  # ASYNC_OVERLAY has no sequential run to pair with
    assert c["strategy"] == "STRICT_SYNC"
    assert (c["overlapped_fps"], c["sequential_fps"]) == (8.0, 5.0)
    assert c["ratio"] == pytest.approx(1.6)
    assert c["sequential_bound_fps"] == pytest.approx(SEQUENTIAL_BOUND_FPS)
    assert c["ideal_overlapped_fps"] == pytest.approx(IDEAL_OVERLAPPED_FPS)
    assert c["branches"] == {
        "yolo_global": {"sequential_run_ms": 40.0, "overlapped_run_ms": 60.0, "slowdown": 1.5, "every_n_frames": 1},
        "yolo_tiles": {"sequential_run_ms": 100.0, "overlapped_run_ms": 150.0, "slowdown": 1.5, "every_n_frames": 1},
        "density": {"sequential_run_ms": 250.0, "overlapped_run_ms": 250.0, "slowdown": 1.0, "every_n_frames": 5},
    }
    # side by side only where a scenario ran with more than one strategy
    assert comp["strategies"] == {"e2e": ["e2e/STRICT_SYNC", "e2e/ASYNC_OVERLAY"]}


def test_summary_prints_each_run_and_the_ratio_with_its_bounds() -> None:
    report = known_report(*all_runs())
    lines = format_summary(report).splitlines()
    assert lines[0] == f"bench: {report['source']}, {KNOWN_FRAMES} frames per run (5 warm-up), onnxruntime on cpu, 2 CPUs"
    assert lines[3].split() == ["preprocess", "30.00", "–", "–", "-", "-"]
    assert lines[4].split() == ["e2e/STRICT_SYNC", "8.00", "20.0", "20.0", "0", "none"]
    assert lines[-1] == ("overlapped / sequential (STRICT_SYNC): 8.00 / 5.00 fps = 1.60x  "
                         "(bounds from branch times: sequential 5.26, ideal overlap 10.00 fps)")


def compare_report(fps: float, stages: Mapping[str, tuple[float, float]], key: str = "e2e/STRICT_SYNC") -> dict[str, Any]:
    """The part of a report.json that --compare reads: one run, stages as (p50, p95)."""
    return {"runs": {key: {"fps": fps, "stages": {s: {"p50": a, "p95": b} for s, (a, b) in stages.items()}}}}


def compare_rows(text: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split()[1:] for ln in text.splitlines()[2:] if ln.startswith("  ")}


def test_compare_prints_this_run_over_the_baseline() -> None:
    current = compare_report(8.0, {"decode_ms": (6.0, 12.0), "end_to_end_ms": (30.0, 40.0), "new_ms": (1.0, 1.0)})
    baseline = compare_report(4.0, {"decode_ms": (3.0, 24.0), "end_to_end_ms": (0.0, 80.0), "gone_ms": (1.0, 1.0)})
    text = format_compare(current, baseline, "base.json")
    lines = text.splitlines()
    assert lines[0].startswith("compare with base.json (ratio = this run / baseline")
    assert lines[1] == "e2e/STRICT_SYNC: fps 8.00 vs 4.00 = 2.00x"
    # stage: p50, baseline p50, p50 ratio, p95 ratio; only stages in both; a 0 ms baseline has no ratio
    assert compare_rows(text) == {
        "stage": ["p50", "ms", "base", "p50", "p50", "ratio", "p95", "ratio"],
        "decode_ms": ["6.00", "3.00", "2.00", "0.50"],
        "end_to_end_ms": ["30.00", "0.00", "–", "0.50"],
    }


def test_compare_lists_only_runs_in_both() -> None:
    current = {"runs": {**compare_report(8.0, {"decode_ms": (6.0, 6.0)})["runs"],
                        **compare_report(2.0, {"decode_ms": (1.0, 1.0)}, key="preprocess")["runs"]}}
    text = format_compare(current, compare_report(4.0, {"decode_ms": (3.0, 3.0)}), "b.json")
    assert "e2e/STRICT_SYNC: fps" in text and "preprocess" not in text
    other = format_compare(current, compare_report(4.0, {}, key="sequential/STRICT_SYNC"), "b.json")
    assert other.splitlines()[1:] == ["  no run in common (scenarios/strategies differ)"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "baseline not found"),
        ("{not json", "is not a readable JSON report"),
        ('{"frames": 4}', "is not a bench report.json (no 'runs')"),
        ("[1, 2]", "is not a bench report.json (no 'runs')"),
    ],
)
def test_a_bad_baseline_is_a_config_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_baseline(str(path))


def test_a_written_report_loads_as_a_baseline(tmp_path: Path) -> None:
    report = known_report(make_run("preprocess", None, 30.0))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report, allow_nan=False))
    assert load_baseline(str(path)) == report


def h2_titles(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def run_section(page: str, key: str) -> str:
    return page.split(f"<h2>Run {key}</h2>")[1].split("<h2>")[0]


def assert_stage_rows_and_charts(section: str, stages: list[str]) -> None:
    for stage in stages:
        assert f"<td><code>{stage}</code></td><td>3</td>" in section, stage  # N = 3 measured frames
        assert f"<img alt='{stage}' src='data:image/png;base64," in section, stage


def test_html_has_every_section_and_stage(agg_backend: None) -> None:
    page = render_html(known_report(*all_runs()[1:]))  # the pipeline runs; the preprocess run below
    assert h2_titles(page) == [
        "Summary", "Overlapped vs sequential branches", "Strategy comparison (e2e)", "What the measures mean",
        "Run e2e/STRICT_SYNC", "Run e2e/ASYNC_OVERLAY", "Run sequential/STRICT_SYNC",
    ]
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>")
    overlap = page.split("<h2>Overlapped vs sequential branches</h2>")[1].split("<h2>")[0]
    for cell in ("<td>8.00</td><td>5.00</td><td><b>1.60×</b></td><td>5.26</td><td>10.00</td>",
                 "<td>yolo_tiles</td><td>every frame</td><td>100.0</td><td>150.0</td><td>1.50×</td>",
                 "<td>density</td><td>every 5th</td><td>250.0</td><td>250.0</td><td>1.00×</td>"):
        assert cell in overlap, cell
    strategies = page.split("<h2>Strategy comparison (e2e)</h2>")[1].split("<h2>")[0]
    assert "<th>STRICT_SYNC p50 / p95</th><th>ASYNC_OVERLAY p50 / p95</th>" in strategies
    assert "<td><code>end_to_end_ms</code></td><td>20.00 / 20.00</td><td>20.00 / 20.00</td>" in strategies
    run = run_section(page, "e2e/STRICT_SYNC")
    assert_stage_rows_and_charts(run, PIPELINE_MAIN)
    assert "<details><summary>All 6 timing keys</summary>" in run and "<code>yolo_tiles.run_ms</code>" in run
    assert "STRICT_SYNC waited on: yolo_tiles (4 frames)." in run
    # one chart per main stage of each run, the fps chart and the end-to-end box plot
    assert page.count("data:image/png;base64,") == 3 * len(PIPELINE_MAIN) + 2


def test_html_leaves_out_comparisons_that_have_no_runs(agg_backend: None) -> None:
    page = render_html(known_report(make_run("preprocess", None, 30.0)))
    assert h2_titles(page) == ["Summary", "What the measures mean", "Run preprocess"]
    assert_stage_rows_and_charts(run_section(page, "preprocess"), PREPROCESS_MAIN)
    assert "end_to_end_ms per run" not in page and "Drops:" not in page and "<details>" not in page
    assert page.count("data:image/png;base64,") == len(PREPROCESS_MAIN) + 1


# -- the real bench -----------------------------------------------------------------------------


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
    # STRICT_SYNC's waits run from a frame's first result: with one branch no frame waits for another
    assert runs["e2e/STRICT_SYNC"]["waited_on"] == {}
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
def test_compare_of_a_real_report_with_a_scaled_copy(bench_run: tuple[Path, Path, Any]) -> None:
    """Every run and stage of a real report against a baseline at 4x its fps, half its p50s and
    twice its p95s: every ratio is known (none where the baseline figure is 0 ms)."""
    _, out, _ = bench_run
    report = json.loads((out / "report.json").read_text())
    baseline = json.loads((out / "report.json").read_text())
    for run in baseline["runs"].values():
        run["fps"] *= 4
        for st in run["stages"].values():
            st["p50"], st["p95"] = st["p50"] / 2, st["p95"] * 2
    seen: dict[str, int] = {}
    key = ""
    for line in format_compare(report, baseline, "scaled.json").splitlines()[1:]:
        if not line.startswith("  "):
            key, _, rest = line.partition(": fps ")
            assert rest.endswith("= 0.25x"), line
            seen[key] = 0
        elif line.split()[0] != "stage":
            stage, _, _, p50_ratio, p95_ratio = line.split()
            st = report["runs"][key]["stages"][stage]
            assert p50_ratio == ("2.00" if st["p50"] else "–"), (key, line)
            assert p95_ratio == ("0.50" if st["p95"] else "–"), (key, line)
            seen[key] += 1
    assert seen == {k: len(r["stages"]) for k, r in report["runs"].items()}


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
