"""The setup's seg-layout model and samples (what the GPU post-processing tests read): the
detector's own boxes and scores are kept exactly, the added head has the YOLOv8-seg layout, and
the samples decode to detections on the NumPy adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.assets import demo_asset_paths

ASSETS = demo_asset_paths(Path(__file__).resolve().parents[1] / ".cache" / "assets")


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} missing: run `python main.py fetch-assets` (make assets)")


def test_seg_model_keeps_the_detector_rows_and_adds_the_seg_layout() -> None:
    ort = pytest.importorskip("onnxruntime")
    _need(ASSETS.detector_seg_onnx, ASSETS.detector_dyn_onnx, ASSETS.v8_seg_sample)
    seg = ort.InferenceSession(str(ASSETS.detector_seg_onnx), providers=["CPUExecutionProvider"])
    det = ort.InferenceSession(str(ASSETS.detector_dyn_onnx), providers=["CPUExecutionProvider"])
    x = np.load(ASSETS.v8_seg_sample)["input"]
    x2 = np.concatenate([x, x[:, :, ::-1]])  # batch 2: the head is batch-dynamic too
    out0, out1 = seg.run(["output0", "output1"], {"images": x2})
    (ref,) = det.run(None, {"images": x2})
    assert out0.shape == (2, 38, 8400) and out1.shape == (2, 32, 160, 160)
    np.testing.assert_array_equal(out0[:, :6], ref)


@pytest.mark.parametrize(("sample", "head", "classes", "threshold"), [("v8", "v8_seg", [0, 1], 0.35), ("e2e", "e2e_seg", [0, 1], 0.35)])
def test_samples_decode_to_the_people_of_vtest_frame0(sample: str, head: str, classes: list[int], threshold: float) -> None:
    from config.schema import ModelConfig
    from models.yolo import YoloAdapter
    from pipeline.preprocess import InputSpec
    from pipeline.types import PreprocessOutput

    path = ASSETS.v8_seg_sample if sample == "v8" else ASSETS.e2e_seg_sample
    _need(path)
    data = np.load(path)
    outs = {k: data[k] for k in data.files if k != "input"}
    plan = InputSpec("g", "letterbox", 640, 640).plan(768, 576)
    cfg = ModelConfig(path="x.onnx", kind="yolo", head=head, person_classes=classes, score_threshold=threshold)
    dets = YoloAdapter(cfg).decode(outs, PreprocessOutput("g", None, plan))
    # the three walkers of frame 0 (and the cloth the fall model sees); the end-to-end layout is the
    # top 300 anchors without NMS (an e2e head needs none; these anchors are not one-to-one), so repeats
    assert 3 <= len(dets) <= (6 if head == "v8_seg" else 300), dets.xyxy
    walkers = np.array([[487, 152, 536, 226], [636, 234, 692, 323], [244, 215, 290, 308]], np.float32)
    for w in walkers:
        assert np.abs(dets.xyxy - w).max(axis=1).min() < 4.0, f"walker {w} missing"
    assert dets.masks is not None and len(dets.masks) == len(dets)
