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


# --------------------------------------------------------------------------------------------
# The one-kernel v8 decode (gpu.postprocess.decode_v8_nms) against models.yolo.decode_v8

DETECTOR = (".cache/assets/models/person_yolov8s.dyn.fp16.onnx", ".cache/assets/models/person_yolov8s.dyn.onnx")
CLIP = (".cache/assets/video/demo_4k_hevc.mp4",)


def _tdets_equal(got: Any, ref: Any) -> None:
    assert len(got) == len(ref), f"{len(got)} detections on the GPU, {len(ref)} in NumPy"
    np.testing.assert_array_equal(got.image, ref.image)
    np.testing.assert_array_equal(got.xyxy, ref.xyxy)
    np.testing.assert_array_equal(got.score, ref.score)
    np.testing.assert_array_equal(got.class_id, ref.class_id)
    assert (got.coef is None) == (ref.coef is None)
    if ref.coef is not None:
        np.testing.assert_array_equal(got.coef, ref.coef)


def _kernel(cp: Any, pred: np.ndarray, classes: list[int], thr: float, iou: float, max_det: int, n_coef: int = 0) -> Any:
    from gpu.postprocess import decode_v8_nms
    from models.yolo import TensorDetections

    got = decode_v8_nms(cp.asarray(pred), 4 + np.asarray(classes), n_coef, thr, iou, max_det)
    if got is None:
        return None
    rows, image = got
    return TensorDetections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int32), image, rows[:, 6:] if n_coef else None)


def _crowd_pred(rng: np.random.Generator, b: int, nc: int, a: int, n_coef: int = 0) -> np.ndarray:
    """Clustered boxes (heavy overlap), scores on a coarse grid (many exact ties), some w/h <= 0."""
    pred = np.zeros((b, 4 + nc + n_coef, a), np.float32)
    centres = rng.uniform(0, 640, (b, 60, 4))
    centres[..., 2:] = rng.uniform(10, 150, (b, 60, 2))  # each person's size
    pick = rng.integers(0, 60, (b, a))
    box = np.take_along_axis(centres, pick[..., None], axis=1)
    box[..., :2] += rng.normal(0, 3, (b, a, 2))
    box[..., 2:] *= rng.uniform(0.85, 1.15, (b, a, 2))
    box[..., 2:] -= rng.uniform(0, 1, (b, a, 2)) < 0.02  # now and then a box of no size
    box[..., 2:] *= rng.uniform(0, 1, (b, a, 2)) >= 0.01
    pred[:, :4] = box.transpose(0, 2, 1)
    pred[:, 4 : 4 + nc] = np.round(rng.uniform(0, 1, (b, nc, a)) * 20) / 20
    pred[:, 4 + nc :] = rng.standard_normal((b, n_coef, a))
    return pred


@pytest.mark.parametrize(
    ("classes", "thr", "iou", "max_det", "n_coef"),
    [([0], 0.9, 0.5, 300, 0), ([0, 2], 0.85, 0.45, 300, 0), ([1], 0.9, 0.7, 7, 0), ([0], 0.9, 0.5, 300, 32), ([0, 1, 2], 0.95, 0.0, 300, 0)],
)
def test_v8_kernel_matches_numpy_on_a_crowd_with_ties(cp: Any, classes: list[int], thr: float, iou: float, max_det: int, n_coef: int) -> None:
    """Same rows, order and float32 values as decode_v8: ties in score, other classes winning an
    anchor, w/h <= 0, the max_detections cap, IoU threshold 0, seg coefficients."""
    from models.yolo import decode_v8

    pred = _crowd_pred(np.random.default_rng(len(classes) * 7 + max_det), 6, 3, 8400, n_coef)
    protos = np.zeros((6, 32, 2, 2), np.float32) if n_coef else None
    ref = decode_v8(pred, protos, person_classes=classes, score_threshold=thr, iou_threshold=iou, max_detections=max_det)
    got = _kernel(cp, pred, classes, thr, iou, max_det, n_coef)
    assert got is not None
    assert len(ref) > 30, "the crowd should keep many detections"
    if max_det < 300:
        assert np.bincount(ref.image).max() == max_det, "the cap should bind on some image"
    _tdets_equal(got, ref)


def test_v8_kernel_hands_an_image_over_its_capacity_back_and_the_adapter_still_matches(cp: Any) -> None:
    from config.schema import ModelConfig
    from gpu.postprocess import NMS_CAPACITY
    from models.yolo import YoloAdapter
    from models.yolo_gpu import GpuYoloAdapter
    from pipeline.preprocess import InputSpec
    from pipeline.types import PreprocessOutput

    pred = _crowd_pred(np.random.default_rng(3), 2, 1, 8400)
    assert (pred[:, 4] >= 0.3).sum(axis=1).max() > NMS_CAPACITY
    assert _kernel(cp, pred, [0], 0.3, 0.5, 300) is None
    plan = InputSpec("s", "tiles", 640, 640, overlap=0.2).plan(1152, 640)
    assert plan.count == 2
    cfg = ModelConfig(path="x.onnx", kind="yolo", person_classes=[0], score_threshold=0.3, max_detections=300)
    pre = PreprocessOutput("s", None, plan)
    ref = YoloAdapter(cfg).decode({"output0": pred}, pre)
    got = GpuYoloAdapter(cfg).decode({"output0": cp.asarray(pred)}, pre)
    np.testing.assert_array_equal(got.xyxy, ref.xyxy)
    np.testing.assert_array_equal(got.score, ref.score)
    np.testing.assert_array_equal(got.source, ref.source)


def test_v8_kernel_matches_numpy_on_the_real_detector_over_the_4k_tiles(cp: Any) -> None:
    """The demo detector (ONNX Runtime CUDA) on the letterbox and 32 tiles of the 4K demo's frame 0:
    on the same outputs the GPU adapter gives the NumPy adapter's detections exactly, through the
    kernel."""
    from config.schema import ModelConfig
    from models.onnxruntime_backend import OnnxRuntimeBackend
    from models.yolo import YoloAdapter
    from models.yolo_gpu import GpuYoloAdapter
    from pipeline.preprocess import InputSpec, preprocess_numpy
    from pipeline.sources import PyAVSource

    with PyAVSource(str(asset(*CLIP)), stream_id="t") as src:
        frame = next(iter(src.frames()))
    pytest.importorskip("onnxruntime")
    be = OnnxRuntimeBackend(asset(*DETECTOR), device="gpu")
    cfg = ModelConfig(path="x.onnx", kind="yolo", person_classes=[0, 1], score_threshold=0.35, max_detections=300)
    total = 0
    for spec in (InputSpec("g", "letterbox", 640, 640), InputSpec("t", "tiles", 640, 640, overlap=0.2)):
        pre = preprocess_numpy(frame, spec)
        with be.stream:
            dev = be.infer({be.inputs[0].name: cp.asarray(pre.tensor)})
            be.stream.synchronize()
            out = {k: cp.asnumpy(v) for k, v in dev.items()}
            ref = YoloAdapter(cfg).decode(out, pre)
            assert _kernel(cp, dev["output0"], [0, 1], 0.35, 0.5, 300) is not None
            got = GpuYoloAdapter(cfg).decode(dev, pre)
        np.testing.assert_array_equal(got.xyxy, ref.xyxy)
        np.testing.assert_array_equal(got.score, ref.score)
        np.testing.assert_array_equal(got.class_id, ref.class_id)
        np.testing.assert_array_equal(got.source, ref.source)
        total += len(ref)
    be.close()
    assert total > 100, f"the 4K demo frame should hold over 100 detections, got {total}"
