"""Headless runs end to end, as a user runs them: real models, real video, real SQLite.

And every bad input stops with a clear message and its exit code, without a traceback, keeping
what was recorded.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".cache/assets"
VTEST = ASSETS / "video/vtest.avi"
DETECTOR = ASSETS / "models/person_yolov8s.onnx"
CSRNET = ASSETS / "models/csrnet_fp32.onnx"
needs_assets = pytest.mark.skipif(
    not (VTEST.exists() and DETECTOR.exists() and CSRNET.exists()),
    reason="demo assets not fetched (run `make run` or `python main.py fetch-assets`)",
)


def write_config(tmp_path: Path, **changes: object) -> Path:
    """The shipped config with absolute asset paths, a small vtest run and ``changes`` (dotted keys)."""
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["streams"][0]["uri"] = str(VTEST)
    data["models"]["person"]["path"] = str(DETECTOR)
    data["models"]["density"]["path"] = str(CSRNET)
    data["storage"]["db_path"] = str(tmp_path / "people.db")
    data["max_frames"] = 3
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@needs_assets
@pytest.mark.slow
def test_headless_on_vtest_counts_stores_and_exports(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out_csv = tmp_path / "counts.csv"
    proc = run_cli("headless", "--config", str(cfg), "--export", str(out_csv), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "end_to_end_ms" in proc.stdout and "people:" in proc.stdout
    db = tmp_path / "people.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("select frame_index, fused_count, detection_count, density_count, partial from frames order by frame_index").fetchall()
        run = con.execute("select status, config_json, versions_json, summary_json from runs").fetchone()
        stages = {r[0] for r in con.execute("select distinct stage from frame_timings")}
        mode = con.execute("pragma journal_mode").fetchone()[0]
    assert [r[0] for r in rows] == [0, 1, 2]
    assert all(2 <= r[2] <= 10 for r in rows), rows  # vtest's first frames show a handful of walkers
    assert rows[0][3] is not None and rows[0][3] > 0  # density ran on frame 0 (every 5th frame)
    assert not any(r[4] for r in rows)
    assert run[0] == "completed" and json.loads(run[1])["max_frames"] == 3 and "onnxruntime" in json.loads(run[2])
    assert {"decode_ms", "end_to_end_ms", "fusion_wait_ms", "inference_model_yolo_tiles_ms"} <= stages
    assert mode == "wal"
    lines = out_csv.read_text().splitlines()
    assert len(lines) == 4 and "fused_count" in lines[0]


def _tiny_onnx(path: Path, out_shape: list[int]) -> Path:
    """An ONNX that takes a YOLO input but outputs the wrong shape."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(out_shape)], out_shape)
    pool = helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1)
    const = helper.make_node("Expand", ["m", "shape"], ["output0"])
    graph = helper.make_graph([pool, const], "bad", [inp], [out], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@needs_assets
@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("missing_video", 3, "video not found"),
        ("corrupt_video", 3, "corrupt.mp4"),
        ("unreachable_url", 3, "127.0.0.1"),
        ("missing_model", 4, "model file not found"),
        ("bad_outputs", 4, "output"),
        ("unknown_key", 2, "fusion.strategyy: unknown key"),
        ("unwritable_db", 7, "cannot"),
    ],
)
def test_bad_inputs_exit_with_a_clear_message(tmp_path: Path, case: str, exit_code: int, message: str) -> None:
    changes: dict[str, object] = {}
    if case == "missing_video":
        changes["streams.0.uri"] = str(tmp_path / "missing.mp4")
    elif case == "corrupt_video":
        bad = tmp_path / "corrupt.mp4"
        bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
        changes["streams.0.uri"] = str(bad)
    elif case == "unreachable_url":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        changes["streams.0.uri"] = f"rtsp://127.0.0.1:{port}/cam"
        changes["streams.0.reconnect_attempts"] = 0
        changes["streams.0.open_timeout_s"] = 2.0
    elif case == "missing_model":
        changes["models.person.path"] = str(tmp_path / "nope.onnx")
    elif case == "bad_outputs":
        changes["models.person.path"] = str(_tiny_onnx(tmp_path / "bad.onnx", [1, 7]))
    elif case == "unknown_key":
        changes["fusion.strategyy"] = "STRICT_SYNC"
    elif case == "unwritable_db":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        changes["storage.db_path"] = str(blocker / "sub" / "people.db")  # a file stands where a folder must be
    cfg = write_config(tmp_path, **changes)
    proc = run_cli("headless", "--config", str(cfg), "--quiet", timeout=120)
    assert proc.returncode == exit_code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_assets
def test_read_only_database_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; the unwritable-path case above covers this as root")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    cfg = write_config(tmp_path, **{"storage.db_path": str(ro / "people.db")})
    proc = run_cli("headless", "--config", str(cfg), "--quiet")
    assert proc.returncode == 7 and str(ro) in proc.stderr


def test_export_command_needs_an_existing_database(tmp_path: Path) -> None:
    proc = run_cli("export", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "x.csv"))
    assert proc.returncode == 7 and "database not found" in proc.stderr


def _downscaled_copy(src: Path, dst: Path, size: tuple[int, int], frames: int) -> Path:
    """The first ``frames`` frames of ``src`` re-encoded at ``size`` (a camera set to another resolution)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            out.mux(stream.encode(frame.reformat(width=size[0], height=size[1], format="yuv420p")))
        out.mux(stream.encode(None))
    return dst


@needs_assets
def test_zones_count_the_same_halves_after_a_resolution_change(tmp_path: Path) -> None:
    """One zone config, vtest at 768x576 and at 384x288: the left half (pixels drawn on 768x576,
    with frame_size) counts the walkers on the left, not everyone (what a plain pixel zone did at
    384x288); the halves add up to the frame's count, and a normalized whole-frame zone equals it."""
    zones = [
        {"name": "left", "polygon": [[0, 0], [384, 0], [384, 576], [0, 576]], "frame_size": [768, 576]},
        {"name": "right", "polygon": [[384, 0], [768, 0], [768, 576], [384, 576]], "frame_size": [768, 576]},
        {"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]], "units": "normalized"},
    ]
    small = _downscaled_copy(VTEST, tmp_path / "vtest_384.avi", (384, 288), 3)
    for uri in (VTEST, small):
        run_dir = tmp_path / uri.stem
        run_dir.mkdir()
        cfg = write_config(run_dir, **{
            "streams.0.uri": str(uri), "counting.zones": zones, "counting.policy": "detections",
            "branches.yolo_tiles.enabled": False, "branches.density.enabled": False,
            "tracking.enabled": False,  # 3 frames: zone counts of each frame's own detections
        })  # fmt: skip
        proc = run_cli("headless", "--config", str(cfg), "--quiet")
        assert proc.returncode == 0, proc.stderr
        with sqlite3.connect(run_dir / "people.db") as con:
            rows = [(fused, json.loads(z)) for fused, z in con.execute("select fused_count, zones_json from frames order by frame_index")]
        assert len(rows) == 3
        for fused, z in rows:
            assert z["left"] + z["right"] == z["all"] == fused, (uri.name, rows)
            assert 0 < z["left"] < fused, (uri.name, rows)  # vtest frame 0-2: one walker left of centre, two right
