"""The GPU shutdown order, tried as a user runs it: the realtime GPU demo (NVDEC, ONNX Runtime CUDA
sessions on their own streams, the density branch spread) in several processes in a row. Each must
exit 0, with its run closed ``completed`` and every frame stored, and print no CUDA failure.

Before the fixed order (``models.ort_cuda.release_session``: a session's stream is synchronised
before the session is destroyed), 1-3 of 10 such processes aborted at exit in ``cudaFreeHost``
(CUDA error 800) on an H200. Nothing here ends the process early: the CUDA libraries' own
teardown runs after the command returns.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gpu.conftest import asset

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = int(os.environ.get("TEARDOWN_PROCESSES", "10"))
FRAMES = 60


def _config(tmp_path: Path) -> Path:
    clip = asset(".cache/assets/video/demo_4k_hevc.mp4")
    detector = asset(".cache/assets/models/person_yolov8s.dyn.fp16.onnx")
    density = asset(".cache/assets/models/csrnet_fp16.onnx")
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "config/gpu.yaml").read_text())
    cfg["streams"][0].update(uri=str(clip), realtime=True)
    cfg["models"]["person"]["path"] = str(detector)
    cfg["models"]["density"]["path"] = str(density)
    cfg["storage"]["db_path"] = str(tmp_path / "teardown.db")
    cfg["max_frames"] = FRAMES
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_gpu_processes_in_a_row_exit_0_with_their_runs_closed(cp: Any, tmp_path: Path) -> None:
    config = _config(tmp_path)
    # faulthandler: an abort prints every Python thread's stack (where the teardown was)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "QT_QPA_PLATFORM": "offscreen", "PYTHONFAULTHANDLER": "1"}
    logs = Path(os.environ.get("TEARDOWN_LOGS", tmp_path))
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(PROCESSES):
        proc = subprocess.run(
            [sys.executable, "main.py", "headless", "--config", str(config), "--quiet"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        (logs / f"process_{i}.stderr.txt").write_text(proc.stderr)
        failure = [line[:200] for line in proc.stderr.splitlines() if "CUDA failure" in line or "terminate called" in line]
        results.append((i, proc.returncode, failure[:2]))
    bad = [r for r in results if r[1] != 0 or r[2]]
    assert not bad, f"processes that did not end cleanly (index, exit code, CUDA messages): {bad}"
    with sqlite3.connect(tmp_path / "teardown.db") as con:
        runs = con.execute(
            "SELECT r.id, r.status, r.ended_at IS NOT NULL, (SELECT COUNT(*) FROM frames f WHERE f.run_id = r.id) "
            "FROM runs r ORDER BY r.id"
        ).fetchall()
    assert len(runs) == PROCESSES
    assert all(status == "completed" and ended for _, status, ended, _ in runs), runs
    assert all(frames == FRAMES for *_, frames in runs), runs


def test_session_released_twice_and_after_a_run_is_safe(cp: Any) -> None:
    """``close`` synchronises the session's stream and destroys it at once; a second close and
    a later call are harmless (a call after close is a StageError, not a crash)."""
    from config.errors import StageError
    from models.onnxruntime_backend import OnnxRuntimeBackend

    model = asset(".cache/assets/models/person_yolov8s.dyn.fp16.onnx")
    backend = OnnxRuntimeBackend(model, device="gpu")
    x = cp.zeros((2, 3, 640, 640), dtype=cp.float32)
    pending = backend.enqueue({backend.inputs[0].name: x})  # queued; not waited for before close
    backend.close()
    out = pending.wait()
    assert next(iter(out.values())).shape[0] == 2
    backend.close()
    with pytest.raises(StageError):
        backend.enqueue({backend.inputs[0].name: x})
