"""The global letterbox and the tiles in ONE model call give what two branches give (real detector,
real vtest frames); the config refuses combinations it cannot run."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from app.build import make_branches, make_counter
from config import ConfigError, load_pipeline_config
from config.schema import PipelineConfig
from models.branch import OneCallYoloBranch
from pipeline.types import GLOBAL_SOURCE, Frame, FrameMeta

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT / ".cache/assets/video/vtest.avi"
DETECTOR = ROOT / ".cache/assets/models/person_yolov8s.onnx"


def config(tmp_path: Path, **branches: dict[str, object]) -> PipelineConfig:
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["models"]["person"]["path"] = str(DETECTOR)
    data["branches"] = branches
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_pipeline_config(path)


@pytest.mark.skipif(not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched")
def test_one_call_gives_the_same_people_as_two_branches(tmp_path: Path) -> None:
    one = config(tmp_path, yolo={"model": "person", "input": ["yolo_global", "yolo_tiles"]})
    two = config(
        tmp_path,
        yolo_global={"model": "person", "input": "yolo_global"},
        yolo_tiles={"model": "person", "input": "yolo_tiles"},
    )
    (b1,) = make_branches(one)
    b2 = make_branches(two)
    assert isinstance(b1, OneCallYoloBranch)
    with av.open(str(VTEST)) as c:
        img = next(iter(c.decode(video=0))).to_ndarray(format="rgb24")
    frame = Frame(FrameMeta("t", 0, 0.0, 0.0, img.shape[1], img.shape[0]), img)
    r1 = b1.run(frame)
    r2 = {b.name: b.run(frame) for b in b2}
    assert r1.error is None and r1.detections is not None and r1.tile_rects is not None
    assert (r1.detections.source == GLOBAL_SOURCE).sum() == len(r2["yolo_global"].detections)
    np.testing.assert_allclose(r1.tile_rects, r2["yolo_tiles"].tile_rects)
    merged1, _, c1 = make_counter(one)({"yolo": r1}, frame.meta)
    merged2, _, c2 = make_counter(two)(r2, frame.meta)
    assert c1.detection == c2.detection >= 3
    np.testing.assert_allclose(np.sort(merged1.xyxy, axis=0), np.sort(merged2.xyxy, axis=0), atol=1e-3)
    assert "inference_model_yolo_ms" in r1.timings
    for b in [b1, *b2]:
        b.close()


@pytest.mark.parametrize(
    ("branch", "message"),
    [
        ({"model": "density", "input": ["yolo_global", "yolo_tiles"]}, "for a YOLO model"),
        ({"model": "person", "input": ["yolo_tiles", "density"]}, "one letterbox and one tiles spec"),
        ({"model": "person", "input": ["yolo_tiles", "yolo_tiles"]}, "distinct"),
        ({"model": "person", "input": ["yolo_global", "nope"]}, "unknown preprocess spec 'nope'"),
    ],
)
def test_bad_one_call_inputs_are_config_errors(tmp_path: Path, branch: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, yolo=branch)


@pytest.mark.skipif(not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched")
def test_bench_reports_a_one_call_branch(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    config(tmp_path, yolo={"model": "person", "input": ["yolo_global", "yolo_tiles"]})
    data = yaml.safe_load((tmp_path / "p.yaml").read_text())
    data["telemetry"]["warmup_frames"] = 1
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "main.py", "bench", "--config", str(tmp_path / "p.yaml"), "--source", str(VTEST),
         "--frames", "3", "--scenario", "e2e", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"].values()
    assert "inference_model_yolo_ms" in run["stages"]
    assert "yolo_global + yolo_tiles" in (out / "report.html").read_text()
