"""YOLO decode: every head on synthetic tensors with known answers, shape errors, and the real
demo detector on a real vtest frame."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.assets import demo_asset_paths
from config.errors import ModelLoadError
from config.schema import ModelConfig
from models.yolo import YoloAdapter, decode_e2e, decode_v8, detect_head, nms
from pipeline.geometry import PreprocessPlan, plan_letterbox, plan_tiles
from pipeline.types import GLOBAL_SOURCE, PreprocessOutput

ROOT = Path(__file__).resolve().parents[1]
A = 8400
"""Anchors of a 640x640 v8 head."""

# A planted anchor: (anchor index, cx, cy, w, h, {class: score}[, coefficient channel]).
Plant = tuple[int, float, float, float, float, dict[int, float]]


def make_v8_pred(plants: Sequence[Plant], nc: int, batch: int = 1, n_coef: int = 0, seed: int = 0,
                 image_of: Sequence[int] | None = None, coef_channel: Sequence[int] | None = None) -> np.ndarray:
    """[B, 4+nc+n_coef, A] float32: random boxes, class scores as noise below 0.2, plus plants."""
    rng = np.random.default_rng(seed)
    pred = np.zeros((batch, 4 + nc + n_coef, A), np.float32)
    pred[:, 0:2] = rng.uniform(0, 640, (batch, 2, A))
    pred[:, 2:4] = rng.uniform(4, 200, (batch, 2, A))
    pred[:, 4 : 4 + nc] = rng.uniform(0, 0.2, (batch, nc, A))
    pred[:, 4 + nc :] = rng.normal(0, 1, (batch, n_coef, A))
    for k, (a, cx, cy, w, h, scores) in enumerate(plants):
        b = 0 if image_of is None else image_of[k]
        pred[b, 0:4, a] = (cx, cy, w, h)
        for c, s in scores.items():
            pred[b, 4 + c, a] = s
        if n_coef:
            pred[b, 4 + nc :, a] = 0.0
            pred[b, 4 + nc + (0 if coef_channel is None else coef_channel[k]), a] = 1.0
    return pred


def make_protos(rects: Sequence[tuple[int, int, int, int]], size: int = 160) -> np.ndarray:
    """[1, 32, size, size]: channel k is +10 inside proto rect k (x0, y0, x1, y1), -10 outside."""
    protos = np.full((1, 32, size, size), -10.0, np.float32)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        protos[0, k, y0:y1, x0:x1] = 10.0
    return protos


def make_cfg(**kw: object) -> ModelConfig:
    return ModelConfig(path="unused.onnx", kind="yolo", **kw)  # type: ignore[arg-type]


def make_pre(plan: PreprocessPlan) -> PreprocessOutput:
    w, h = plan.out_wh
    return PreprocessOutput(spec_name="test", tensor=np.zeros((plan.count, 3, h, w), np.float32), plan=plan)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- NMS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "scores", "thr", "keep"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.8, 0.9, 0.7], 0.5, [1, 2]),
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.5, [0, 1]),  # IoU 1/3 stays
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.3, [0]),
        ([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], [0.9, 0.8, 0.7], 0.6, [0, 2]),  # chain: 2 survives 1
        (np.zeros((0, 4)), [], 0.5, []),
    ],
)
def test_nms(boxes: list, scores: list, thr: float, keep: list[int]) -> None:
    got = nms(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), thr)
    assert got.tolist() == keep


# --- v8 detect ---------------------------------------------------------------------------------

PERSON, CAR = 0, 2


@pytest.mark.parametrize(
    ("name", "nc", "person_classes", "plants", "expected"),
    [
        ("coco person kept, car dropped", 80, [0],
         [(100, 320, 320, 100, 200, {PERSON: 0.9}), (200, 100, 100, 50, 50, {CAR: 0.95})],
         [((270, 220, 370, 420), 0.9, 0)]),
        ("best class not a person: dropped", 80, [0],
         [(100, 320, 320, 100, 200, {PERSON: 0.5, CAR: 0.9})], []),
        ("below threshold dropped", 80, [0], [(100, 320, 320, 100, 200, {PERSON: 0.3})], []),
        ("two person classes: Fall kept", 2, [0, 1],
         [(5, 200, 300, 60, 180, {1: 0.8}), (9000 % A, 500, 300, 60, 180, {0: 0.7})],
         [((170, 210, 230, 390), 0.8, 1), ((470, 210, 530, 390), 0.7, 0)]),
        ("one anchor, both labels: one person of the best label", 2, [0, 1],
         [(7, 200, 300, 60, 180, {0: 0.6, 1: 0.75})], [((170, 210, 230, 390), 0.75, 1)]),
        ("duplicates of one person: NMS keeps the best", 2, [0, 1],
         [(10, 200, 300, 60, 180, {0: 0.9}), (11, 202, 301, 60, 180, {0: 0.8}),
          (12, 199, 298, 62, 178, {1: 0.85}), (13, 400, 300, 60, 180, {0: 0.6})],
         [((170, 210, 230, 390), 0.9, 0), ((370, 210, 430, 390), 0.6, 0)]),
        ("only the Fall class counts", 2, [1],
         [(5, 200, 300, 60, 180, {1: 0.8}), (6, 500, 300, 60, 180, {0: 0.9})],
         [((170, 210, 230, 390), 0.8, 1)]),
    ],
)
def test_decode_v8_detect(name: str, nc: int, person_classes: list[int], plants: list[Plant],
                          expected: list[tuple[tuple[float, ...], float, int]]) -> None:
    pred = make_v8_pred(plants, nc)
    dets = decode_v8(pred, None, person_classes=person_classes, score_threshold=0.35, iou_threshold=0.5,
                     max_detections=300)
    assert len(dets) == len(expected), name
    for k, (box, score, cls) in enumerate(expected):
        np.testing.assert_allclose(dets.xyxy[k], box, atol=1e-3)
        assert dets.score[k] == pytest.approx(score)
        assert dets.class_id[k] == cls
    assert dets.coef is None


def test_decode_v8_max_detections_per_image() -> None:
    plants = [(i, 20 + 60 * i, 100, 40, 80, {0: 0.5 + 0.01 * i}) for i in range(10)]
    dets = decode_v8(make_v8_pred(plants, 1), None, person_classes=[0], score_threshold=0.35,
                     iou_threshold=0.5, max_detections=4)
    np.testing.assert_allclose(dets.score, [0.59, 0.58, 0.57, 0.56], atol=1e-6)


@pytest.mark.parametrize(
    ("tensor_box", "frame_box"),
    [
        # 768x576 -> 640x480 content, pad_y 80, scale 640/768
        ((100, 180, 200, 380), (120, 120, 240, 360)),
        ((0, 80, 640, 560), (0, 0, 768, 576)),
        ((-10, 60, 30, 100), (0, 0, 36, 24)),  # clipped to the frame
    ],
)
def test_adapter_letterbox_to_frame_pixels(tensor_box: tuple[float, ...], frame_box: tuple[float, ...]) -> None:
    x0, y0, x1, y1 = tensor_box
    plants = [(42, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, {1: 0.9})]
    pre = make_pre(plan_letterbox(768, 576, 640, 640))
    dets = YoloAdapter(make_cfg(person_classes=[0, 1])).decode({"output0": make_v8_pred(plants, 2)}, pre)
    assert len(dets) == 1
    np.testing.assert_allclose(dets.xyxy[0], frame_box, atol=1e-3)
    assert dets.source.tolist() == [GLOBAL_SOURCE]
    assert dets.masks is None


def test_adapter_tiles_source_and_offsets() -> None:
    # 1280x720, 640 tiles, 20% overlap: x origins [0, 512, 640], y origins [0, 80]
    plan = plan_tiles(1280, 720, 640, 640, 0.2)
    assert plan.count == 6
    plants = [(3, 100, 100, 40, 80, {0: 0.9}), (3, 100, 100, 40, 80, {0: 0.8})]
    pred = make_v8_pred(plants, 1, batch=6, image_of=[1, 4])
    dets = YoloAdapter(make_cfg()).decode({"out": pred}, make_pre(plan))
    assert dets.source.tolist() == [1, 4]
    np.testing.assert_allclose(dets.xyxy, [[592, 60, 632, 140], [592, 140, 632, 220]], atol=1e-3)


# --- v8 seg ------------------------------------------------------------------------------------


def test_v8_seg_masks_exact_on_proto_grid() -> None:
    # Frame = tensor (640x640 letterbox, scale 1): one proto cell = 4 frame pixels, and mask pixel
    # centres fall on proto cell centres, so the mask equals the planted rectangle exactly.
    protos = make_protos([(40, 50, 60, 80), (100, 20, 120, 40)])
    plants = [(7, 200, 260, 120, 160, {0: 0.9}), (8, 440, 120, 80, 80, {0: 0.8})]
    pred = make_v8_pred(plants, 1, n_coef=32, coef_channel=[0, 1])
    outputs = {"output1": protos, "output0": pred}  # order and names vary between exports
    dets = YoloAdapter(make_cfg(head="auto")).decode(outputs, make_pre(plan_letterbox(640, 640, 640, 640)))
    assert len(dets) == 2 and dets.masks is not None and dets.mask_xyxy is not None
    assert dets.mask_xyxy.tolist() == [[140, 180, 260, 340], [400, 80, 480, 160]]
    want0 = np.zeros((40, 30), bool)
    want0[5:35, 5:25] = True  # proto rows 50..80, cols 40..60 inside proto box rows 45..85, cols 35..65
    np.testing.assert_array_equal(dets.masks[0], want0)
    want1 = np.zeros((20, 20), bool)
    want1[0:20, 0:20] = True  # proto rect (100..120, 20..40) is exactly the box
    np.testing.assert_array_equal(dets.masks[1], want1)


def test_v8_seg_mask_cropped_to_box() -> None:
    # The planted region is larger than the box: the mask is all True, and nothing leaks outside.
    protos = make_protos([(0, 0, 160, 160)])
    pred = make_v8_pred([(3, 330, 250, 41, 63, {0: 0.9})], 1, n_coef=32)
    dets = YoloAdapter(make_cfg()).decode({"a": pred, "b": protos}, make_pre(plan_letterbox(640, 640, 640, 640)))
    assert dets.masks is not None and dets.mask_xyxy is not None
    x0, y0, x1, y1 = dets.mask_xyxy[0]
    assert (x0, y0, x1, y1) == (309, 218, 351, 282)  # floor/ceil of 309.5..350.5, 218.5..281.5
    m = dets.masks[0]
    assert m.shape == (16, 10)
    assert m[1:-1, 1:-1].all()


@pytest.mark.parametrize("frame_wh", [(768, 576), (1920, 1080), (576, 768)])
def test_v8_seg_mask_through_letterbox(frame_wh: tuple[int, int]) -> None:
    # The planted proto rectangle, mapped to the frame, is where the mask is True (up to one cell).
    plan = plan_letterbox(*frame_wh, 640, 640)
    prect = (40, 60, 70, 100)  # proto cells
    protos = make_protos([prect])
    pred = make_v8_pred([(9, 220, 320, 160, 240, {0: 0.9})], 1, n_coef=32)
    dets = YoloAdapter(make_cfg()).decode({"o": pred, "p": protos}, make_pre(plan))
    assert dets.masks is not None and dets.mask_xyxy is not None
    mask, (x0, y0, x1, y1) = dets.masks[0], dets.mask_xyxy[0]
    # frame rect of the planted region: proto -> tensor (x4) -> frame
    fr = plan.tensor_to_frame(np.array([[4 * prect[0], 4 * prect[1], 4 * prect[2], 4 * prect[3]]], np.float32), 0)[0]
    mh, mw = mask.shape
    xs = x0 + (np.arange(mw) + 0.5) * (x1 - x0) / mw
    ys = y0 + (np.arange(mh) + 0.5) * (y1 - y0) / mh
    cell = 4 / plan.scale[0]  # frame pixels per proto cell
    sure_in = ((ys > fr[1] + cell)[:, None] & (ys < fr[3] - cell)[:, None]) & ((xs > fr[0] + cell) & (xs < fr[2] - cell))[None, :]
    sure_out = ~(((ys > fr[1] - cell) & (ys < fr[3] + cell))[:, None] & ((xs > fr[0] - cell) & (xs < fr[2] + cell))[None, :])
    assert sure_in.any() and sure_out.any()
    assert mask[sure_in].all()
    assert not mask[sure_out].any()
    assert abs(mw - (x1 - x0) * plan.scale[0] / 4) <= 1  # proto resolution


# --- YOLO26 end-to-end -------------------------------------------------------------------------


def make_e2e(rows: Sequence[Sequence[float]], n_coef: int = 0, n: int = 300) -> np.ndarray:
    """[1, n, 6+n_coef]: the given rows (x1, y1, x2, y2, score, class[, coefs]) then zero rows."""
    pred = np.zeros((1, n, 6 + n_coef), np.float32)
    for k, r in enumerate(rows):
        pred[0, k, : len(r)] = r
    return pred


@pytest.mark.parametrize(
    ("person_classes", "rows", "expected"),
    [
        ([0], [(10, 20, 50, 120, 0.9, 0), (100, 20, 150, 120, 0.95, 2), (200, 20, 250, 120, 0.2, 0)],
         [((10, 20, 50, 120), 0.9, 0)]),
        # top-k over (anchor, class) pairs repeats an anchor per class: counted once
        ([0, 1], [(10, 20, 50, 120, 0.6, 0), (10, 20, 50, 120, 0.7, 1), (12, 20, 52, 120, 0.5, 0)],
         [((10, 20, 50, 120), 0.7, 1), ((12, 20, 52, 120), 0.5, 0)]),
        ([0, 1], [], []),
    ],
)
def test_decode_e2e_detect(person_classes: list[int], rows: list, expected: list) -> None:
    dets = decode_e2e(make_e2e(rows), None, person_classes=person_classes, score_threshold=0.35, max_detections=300)
    assert len(dets) == len(expected)
    for k, (box, score, cls) in enumerate(expected):
        np.testing.assert_allclose(dets.xyxy[k], box)
        assert dets.score[k] == pytest.approx(score)
        assert dets.class_id[k] == cls


def test_adapter_e2e_detect_letterbox() -> None:
    pre = make_pre(plan_letterbox(768, 576, 640, 640))
    pred = make_e2e([(100, 180, 200, 380, 0.9, 0)])
    dets = YoloAdapter(make_cfg()).decode({"output0": pred}, pre)
    np.testing.assert_allclose(dets.xyxy, [[120, 120, 240, 360]], atol=1e-3)


def test_adapter_e2e_seg_mask() -> None:
    protos = make_protos([(0, 0, 0, 0), (40, 50, 60, 80)])
    coefs = np.zeros(32, np.float32)
    coefs[1] = 1.0
    pred = make_e2e([(140, 180, 260, 340, 0.9, 0, *coefs)], n_coef=32)
    dets = YoloAdapter(make_cfg()).decode({"output0": pred, "output1": protos}, make_pre(plan_letterbox(640, 640, 640, 640)))
    assert dets.masks is not None
    want = np.zeros((40, 30), bool)
    want[5:35, 5:25] = True
    np.testing.assert_array_equal(dets.masks[0], want)


def test_transposed_v8_is_not_mistaken_for_e2e() -> None:
    # [1, 8400, 6] looks like an e2e head by shape; its "class" column gives it away.
    pred = make_v8_pred([(5, 200, 300, 60, 180, {0: 0.8, 1: 0.5})], 2).transpose(0, 2, 1).copy()
    with pytest.raises(ModelLoadError, match="non-integer"):
        YoloAdapter(make_cfg(person_classes=[0, 1])).decode({"output0": pred}, make_pre(plan_letterbox(640, 640, 640, 640)))


# --- head detection and shape errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "head"),
    [
        ({"output0": (1, 84, 8400)}, "v8_detect"),
        ({"output0": (1, 6, 8400)}, "v8_detect"),
        ({"output0": (None, 5, None)}, "v8_detect"),
        ({"output0": (1, 116, 8400), "output1": (1, 32, 160, 160)}, "v8_seg"),
        ({"protos": (1, 32, 160, 160), "pred": (1, 38, 8400)}, "v8_seg"),
        ({"output0": (1, 300, 6)}, "e2e_detect"),
        ({"output0": (1, 300, 38), "output1": (1, 32, 160, 160)}, "e2e_seg"),
        ({"output0": (4, 100, 6)}, "e2e_detect"),
        ({"output0": (None, None, 38), "output1": (None, 32, None, None)}, "e2e_seg"),  # dynamic export
        ({"output0": (None, 116, None), "output1": (None, 32, None, None)}, "v8_seg"),
    ],
)
def test_detect_head(shapes: dict, head: str) -> None:
    assert detect_head(shapes) == head


@pytest.mark.parametrize(
    ("head", "shapes", "needle"),
    [
        ("auto", {"output0": (1, 8400)}, "output0 [1, 8400]"),
        ("auto", {"output0": (1, 4, 8400)}, "[1, 4, 8400]"),
        ("auto", {"a": (1, 84, 8400), "b": (1, 84, 8400)}, "one 3-D prediction output"),
        ("auto", {"output0": (1, 116, 8400), "output1": (1, 16, 160, 160)}, "'output1' has shape [1, 16, 160, 160]"),
        ("auto", {"output0": (1, 1, 2, 3, 4)}, "[1, 1, 2, 3, 4]"),
        ("e2e_detect", {"output0": (1, 6, 8400)}, "'output0' has shape [1, 6, 8400]: head e2e_detect expects"),
        ("v8_seg", {"output0": (1, 116, 8400)}, "no protos: head v8_seg expects"),
        ("v8_detect", {"output0": (1, 84, 8400), "output1": (1, 32, 160, 160)}, "head v8_detect expects"),
        ("e2e_seg", {"output0": (1, 300, 6), "p": (1, 32, 160, 160)}, "'output0' has shape [1, 300, 6]"),
        ("auto", {"output0": (2, 116, 8400), "output1": (1, 32, 160, 160)}, "beside 'output0' [2, 116, 8400]"),
    ],
)
def test_bad_shapes_raise_model_load_error(head: str, shapes: dict, needle: str) -> None:
    outputs = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    with pytest.raises(ModelLoadError) as err:
        YoloAdapter(make_cfg(head=head)).decode(outputs, make_pre(plan_letterbox(640, 640, 640, 640)))
    assert needle in str(err.value)


def test_batch_must_match_plan() -> None:
    plan = plan_tiles(1280, 720, 640, 640, 0.2)
    with pytest.raises(ModelLoadError, match=r"batch 1 for 6 input tensors"):
        YoloAdapter(make_cfg()).decode({"output0": np.zeros((1, 6, A), np.float32)}, make_pre(plan))


def test_person_class_outside_model() -> None:
    with pytest.raises(ModelLoadError, match=r"\[2\] not among the 2 classes"):
        YoloAdapter(make_cfg(person_classes=[0, 2])).decode(
            {"output0": np.zeros((1, 6, A), np.float32)}, make_pre(plan_letterbox(640, 640, 640, 640))
        )


# --- the real demo detector on a real frame ----------------------------------------------------

# The three people walking in vtest.avi frame 0 (768x576), boxes checked by eye on a rendering.
VTEST_FRAME0_WALKERS = np.array([[487, 152, 536, 226], [636, 234, 692, 323], [244, 215, 290, 308]], np.float32)


def test_real_detector_on_vtest_frame0() -> None:
    av = pytest.importorskip("av")
    ort = pytest.importorskip("onnxruntime")
    assets = demo_asset_paths(ROOT / ".cache" / "assets")
    for path in (assets.detector_onnx, assets.vtest_avi):
        if not path.exists():
            pytest.skip(f"{path} missing: run `python main.py fetch-assets` (make assets)")
    from pipeline.preprocess import InputSpec, preprocess_numpy
    from pipeline.types import Frame, FrameMeta

    with av.open(str(assets.vtest_avi)) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    frame = Frame(FrameMeta("vtest", 0, 0.0, 0.0, w, h), rgb)
    pre = preprocess_numpy(frame, InputSpec("yolo_global", "letterbox", 640, 640))
    session = ort.InferenceSession(str(assets.detector_onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: pre.tensor}), strict=True))
    dets = YoloAdapter(make_cfg(person_classes=[0, 1], score_threshold=0.35)).decode(outputs, pre)
    # Three people walk in frame 0; the fall model also calls a yellow cloth on the grass "Fall".
    assert 3 <= len(dets) <= 5, (dets.xyxy, dets.score)
    for walker in VTEST_FRAME0_WALKERS:
        best = max((iou(walker, d) for d in dets.xyxy), default=0.0)
        assert best >= 0.7, f"walker {walker} not found: {dets.xyxy}"
    assert np.all(dets.source == GLOBAL_SOURCE)
    assert np.all((dets.xyxy[:, 2] <= w) & (dets.xyxy[:, 3] <= h))


def test_nms_dense_and_row_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.yolo as yolo

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 300, (400, 2))
    wh = rng.uniform(10, 80, (400, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    dense = nms(boxes, scores, 0.45)
    monkeypatch.setattr(yolo, "_NMS_DENSE_MAX", 10)
    rowwise = nms(boxes, scores, 0.45)
    assert 20 < len(dense) < 400
    np.testing.assert_array_equal(dense, rowwise)


# --- real Ultralytics exports (random weights, see docs/MODELS.md) -------------------------------

EXPORTS = ROOT / ".cache" / "models"


@pytest.mark.parametrize(
    ("name", "head"),
    [("yolov8n-seg", "v8_seg"), ("yolo26n-seg-nmsnone", "v8_seg"), ("yolo26n", "e2e_detect"), ("yolo26n-seg", "e2e_seg")],
)
def test_real_export_layouts(name: str, head: str) -> None:
    sample = EXPORTS / f"{name}.sample.npz"
    if not sample.exists():
        pytest.skip(f"{sample} missing: made by tools/export_yolo.py (docs/MODELS.md)")
    with np.load(sample) as z:
        outputs = {k: z[k] for k in z.files if k != "input"}
    assert detect_head({k: v.shape for k, v in outputs.items()}) == head
    # random weights: scores ~0.002, so keep everything of any COCO class
    cfg = make_cfg(person_classes=list(range(80)), score_threshold=0.0, max_detections=300)
    dets = YoloAdapter(cfg).decode(outputs, make_pre(plan_letterbox(640, 640, 640, 640)))
    assert 0 < len(dets) <= 300
    assert np.all(dets.xyxy[:, 2] > dets.xyxy[:, 0]) and np.all(dets.xyxy[:, 3] > dets.xyxy[:, 1])
    assert np.all((dets.xyxy >= 0) & (dets.xyxy <= 640))
    if head.startswith("e2e"):  # the same box, repeated once per class by the top-k, counts once
        rows = outputs["output0"][0]
        ok = (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
        assert len(dets) == len(np.unique(rows[ok, :4], axis=0)) < 300
    if head.endswith("seg"):
        assert dets.masks is not None and dets.mask_xyxy is not None and len(dets.masks) == len(dets)
        for m, (x0, y0, x1, y1) in zip(dets.masks, dets.mask_xyxy, strict=True):
            assert m.shape == (max(1, round((y1 - y0) / 4)), max(1, round((x1 - x0) / 4)))
        assert any(m.any() for m in dets.masks) and not all(m.all() for m in dets.masks)
    else:
        assert dets.masks is None


# --- non-finite outputs and class ids checked at load --------------------------------------------

xps = [pytest.param("numpy", id="numpy"), pytest.param("cupy", id="cupy")]


def _array_module(name: str):  # type: ignore[no-untyped-def]
    return np if name == "numpy" else pytest.importorskip("cupy")


def _spoil(a: np.ndarray, value: float, where: tuple[int, ...]) -> np.ndarray:
    out = a.copy()
    out[where] = value
    return out


V8 = make_v8_pred([(5, 200, 300, 60, 180, {0: 0.9})], 2)
E2E = np.zeros((1, 300, 6), np.float32)
E2E[0, 0] = (10, 10, 50, 90, 0.9, 0)


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ({"output0": _spoil(V8, np.nan, (0, 0, 17))}, "output 'output0' [1, 6, 8400] holds 1 NaN and 0 infinite values of 50400"),
        ({"output0": _spoil(V8, np.nan, (0, 4, slice(None)))}, "holds 8400 NaN"),  # every score NaN: would count 0
        ({"output0": _spoil(V8, np.inf, (0, 2, 3))}, "holds 0 NaN and 1 infinite values"),
        ({"output0": _spoil(V8, -np.inf, (0, 5, 3))}, "1 infinite"),
        ({"output0": _spoil(V8, np.nan, (0, 0, 0)).astype(np.float16)}, "holds 1 NaN"),
        ({"output0": _spoil(E2E, np.nan, (0, 7, 4))}, "output 'output0' [1, 300, 6] holds 1 NaN"),
        ({"output0": make_v8_pred([], 2, n_coef=32), "output1": _spoil(np.zeros((1, 32, 160, 160), np.float32), np.nan, (0, 3, 9, 9))},
         "output 'output1' [1, 32, 160, 160] holds 1 NaN"),
    ],
    ids=["v8-one-nan", "v8-nan-scores", "v8-inf", "v8-minus-inf", "v8-fp16", "e2e-nan", "seg-protos-nan"],
)
def test_non_finite_outputs_name_the_model(outputs: dict, needle: str) -> None:
    cfg = ModelConfig(path="models/broken.onnx", kind="yolo")
    with pytest.raises(ModelLoadError) as err:
        YoloAdapter(cfg).decode(outputs, make_pre(plan_letterbox(640, 640, 640, 640)))
    assert str(err.value).startswith("YOLO model models/broken.onnx: ")
    assert needle in str(err.value)
    assert "finite" in str(err.value)


@pytest.mark.parametrize("xp_name", xps)
def test_check_finite_on_each_array_module(xp_name: str) -> None:
    """The one screen of both YOLO adapters (NumPy and the GPU's CuPy outputs)."""
    from models.yolo import check_finite

    xp = _array_module(xp_name)
    good = xp.asarray(V8)
    check_finite("m", "out", good)
    check_finite("m", "out", xp.full((2, 3), 6.0e4, xp.float16))  # large but finite: no overflow in the screen
    with pytest.raises(ModelLoadError, match=r"holds 2 NaN and 1 infinite values of 6"):
        check_finite("m", "out", xp.asarray(np.array([[np.nan, 1, np.inf], [np.nan, 0, 2]], np.float32)))


def _info(shapes: dict[str, tuple[int | None, ...]]) -> tuple:  # type: ignore[type-arg]
    from pipeline.protocols import TensorInfo

    return tuple(TensorInfo(name, shape, "float32") for name, shape in shapes.items())


@pytest.mark.parametrize(
    ("shapes", "head", "person_classes", "needle"),
    [
        ({"output0": (1, 5, 8400)}, "auto", [0, 1],
         "model 'person' (x.onnx) has 1 class (ids 0..0) but person_classes is [0, 1]: [1] out of range; "
         "set models.person.person_classes to ids in 0..0"),
        ({"output0": (1, 6, 8400)}, "auto", [0, 2, 5], "has 2 classes (ids 0..1) but person_classes is [0, 2, 5]: [2, 5] out of range"),
        ({"output0": (1, 84, 8400)}, "v8_detect", [80], "has 80 classes (ids 0..79)"),
        ({"output0": (1, 37, 8400), "output1": (1, 32, 160, 160)}, "auto", [0, 1], "has 1 class (ids 0..0)"),  # seg: 4 + 1 + 32
        ({"output0": (1, 6, 8400)}, "auto", [0, 1], None),
        ({"output0": (None, 6, None)}, "auto", [0, 7], "has 2 classes (ids 0..1)"),  # dynamic batch and anchors
        ({"output0": (1, 300, 6)}, "auto", [0, 7], None),  # e2e: the class is a column, no count in the shape
    ],
)
def test_person_classes_checked_at_load(shapes: dict, head: str, person_classes: list[int], needle: str | None) -> None:
    from app.build import check_model_outputs

    model = ModelConfig(path="x.onnx", kind="yolo", head=head, person_classes=person_classes)  # type: ignore[arg-type]
    if needle is None:
        check_model_outputs("person", model, _info(shapes))
        return
    with pytest.raises(ModelLoadError) as err:
        check_model_outputs("person", model, _info(shapes))
    assert needle in str(err.value)


def test_one_class_onnx_with_two_person_classes_fails_at_load(tmp_path: Path) -> None:
    """A real 1-class ONNX through the real runner construction: refused before any frame."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from app.build import _make_runner
    from config.schema import PipelineConfig
    from pipeline.preprocess import InputSpec

    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 8400])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 5, 8400])
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0), helper.make_node("Expand", ["m", "shape"], ["output0"])]
    model = helper.make_model(helper.make_graph(nodes, "one_class", [inp], [out], initializer=[shape]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    path = tmp_path / "one_class.onnx"
    onnx.save(model, path)
    cfg = PipelineConfig.model_validate({
        "streams": [{"uri": "synthetic://640x480"}],
        "models": {"fall": {"path": str(path), "kind": "yolo", "person_classes": [0, 1]}},
        "preprocess": {"g": {"kind": "letterbox"}},
        "branches": {"g": {"model": "fall", "input": "g"}},
    })  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"model 'fall' \(.*one_class.onnx\) has 1 class \(ids 0..0\) but person_classes is \[0, 1\]"):
        _make_runner(cfg, "g", "fall", InputSpec("g", "letterbox", 640, 640))
