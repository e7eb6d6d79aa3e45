"""GPU post-processing (score filter, mask assembly) against the NumPy YOLO adapter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.gpu.conftest import asset

SAMPLES = {
    # the last candidate is written by the setup (`python -m app.assets`): the demo detector's real
    # boxes with a seeded random seg head (models.onnx_prep.add_seg_head), on vtest frame 0
    "e2e_seg": (".devcarry/s/yolo26n-seg.sample.npz", ".cache/models/yolo26n-seg.sample.npz", ".cache/assets/samples/e2e_seg.sample.npz"),
    "v8_seg": (".devcarry/s/yolov8n-seg.sample.npz", ".cache/models/yolov8n-seg.sample.npz", ".cache/assets/samples/v8_seg.sample.npz"),
}


@pytest.mark.parametrize(("head", "threshold"), [("e2e_seg", 0.0), ("e2e_seg", 0.001), ("v8_seg", 0.0003)])
@pytest.mark.parametrize("kind", ["letterbox", "tiles"])
def test_gpu_decode_matches_numpy(cp: Any, head: str, threshold: float, kind: str) -> None:
    from config.schema import ModelConfig
    from models.yolo import YoloAdapter
    from models.yolo_gpu import GpuYoloAdapter
    from pipeline.preprocess import InputSpec
    from pipeline.types import PreprocessOutput

    data = np.load(asset(*SAMPLES[head]))
    outs = {k: data[k] for k in data.files if k != "input"}
    spec = InputSpec("s", kind, 640, 640, overlap=0.2)
    plan = spec.plan(1920, 1080)
    n = plan.count
    if n > 1:  # tiles: the sample repeated (the tile origins differ), protos perturbed per tile
        rng = np.random.default_rng(0)
        outs = {
            k: np.concatenate([v] + [(v * (1 + 1e-2 * rng.standard_normal(v.shape))).astype(np.float32) if v.ndim == 4 else v for _ in range(n - 1)])
            for k, v in outs.items()
        }
    pre = PreprocessOutput("s", None, plan)
    # random-weight samples: for the end-to-end head count every class, so a threshold keeps rows
    classes = [0] if head.startswith("v8") else list(range(80))
    cfg = ModelConfig(path="x.onnx", kind="yolo", person_classes=classes, score_threshold=threshold, max_detections=300)
    ref = YoloAdapter(cfg).decode(outs, pre)
    got = GpuYoloAdapter(cfg).decode({k: cp.asarray(v) for k, v in outs.items()}, pre)
    assert len(ref) > 0, "the sample should give detections at this threshold"
    assert len(got) == len(ref), f"{len(got)} detections on the GPU path, {len(ref)} on the NumPy path"
    np.testing.assert_array_equal(got.xyxy, ref.xyxy)
    np.testing.assert_array_equal(got.score, ref.score)
    np.testing.assert_array_equal(got.source, ref.source)
    np.testing.assert_array_equal(got.mask_xyxy, ref.mask_xyxy)
    assert got.masks is not None and ref.masks is not None
    total = sum(m.size for m in ref.masks)
    differ = sum(int((g != r).sum()) for g, r in zip(got.masks, ref.masks, strict=True))
    for g, r in zip(got.masks, ref.masks, strict=True):
        assert g.shape == r.shape
    # logits summed in another order flip only pixels whose logit is ~0
    assert differ <= max(2, total // 10000), f"{differ} of {total} mask pixels differ"
