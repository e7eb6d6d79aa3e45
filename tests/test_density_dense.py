"""Dense scenes of known count made of real footage: hand-counted vtest frames scaled down and
tiled (``tests/density_scenes.py``), where detection alone fails, through the real detector,
real CSRNet and ``FrameCounter`` (a fresh stream: one frame, nothing learnt, the prior scale).

Measured on 1920x1152 scenes (2 cores; slow: ~2-4 min for both, the models run once per module):

| scene | people tall | truth | detections | raw density | hybrid |
| --- | --- | --- | --- | --- | --- |
| 1/2 scale, 4x5 cells | 50-75 px | 127 | 23 | 76.6 | 74.6 |
| 1/4 scale, 8x10 cells | 25-38 px | 500 | 0 | 88.0 | 88.0 |

Detection fails (18 % and 0 %); the hybrid counts these regions by density and is far closer than
detection alone. It is not closer than the raw density: CSRNet at the frame's own resolution
undercounts people this small (0.6x at 1/2 scale, 0.18x at 1/4) and nothing in a frame without
reliable detections can tell the scale; that shortfall is the strict xfail below. Upscaling the
density input 2x brings the 1/4 scene to 448 raw (the last test): the remedy needs a density
input spec with an upscale factor (docs/MODELS.md, "Density").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.build import make_branches
from config import load_pipeline_config
from config.schema import PipelineConfig
from pipeline.frame_counter import FrameCounter
from pipeline.types import BranchResult, CountResult, Frame, FrameMeta
from tests.density_scenes import VTEST, dense_scene, hand_counts, vtest_frames

ROOT = Path(__file__).resolve().parents[1]
DETECTOR = ROOT / ".cache/assets/models/person_yolov8s.dyn.onnx"
CSRNET = ROOT / ".cache/assets/models/csrnet_fp32.onnx"
pytestmark = [
    pytest.mark.skipif(
        not (VTEST.exists() and DETECTOR.exists() and CSRNET.exists()),
        reason="demo assets not fetched (run `make run` or `python main.py fetch-assets`)",
    ),
    pytest.mark.slow,
    pytest.mark.timeout(900),
]
SCENES = {"half": (0.5, (4, 5)), "quarter": (0.25, (8, 10))}
FRAME_WH = (1920, 1152)


def dense_config() -> PipelineConfig:
    cfg = load_pipeline_config(ROOT / "config/pipeline.yaml")
    data = cfg.model_dump(mode="json")
    data["models"]["person"]["path"] = str(DETECTOR)
    data["models"]["density"]["path"] = str(CSRNET)
    data["tracking"]["enabled"] = False  # one frame
    for b in data["branches"].values():
        b["every_n_frames"] = 1
    return PipelineConfig.model_validate(data)


@pytest.fixture(scope="module")
def scenes() -> dict[str, tuple[np.ndarray, int]]:
    counts = hand_counts()
    frames = vtest_frames(counts)
    return {name: dense_scene(frames, counts, scale, grid, FRAME_WH) for name, (scale, grid) in SCENES.items()}


@pytest.fixture(scope="module")
def counted(scenes: dict[str, tuple[np.ndarray, int]]) -> dict[str, tuple[int, CountResult]]:
    cfg = dense_config()
    branches = make_branches(cfg)
    try:
        out = {}
        for name, (img, truth) in scenes.items():
            meta = FrameMeta("t", 0, 0.0, 0.0, img.shape[1], img.shape[0])
            results: dict[str, BranchResult] = {b.name: b.run(Frame(meta, img)) for b in branches}
            _, _, counts = FrameCounter.from_config(cfg)(results, meta)
            out[name] = (truth, counts)
        return out
    finally:
        for b in branches:
            b.close()


def test_scenes_are_what_the_hand_counts_say(scenes: dict[str, tuple[np.ndarray, int]]) -> None:
    assert scenes["half"][1] == 127 and scenes["quarter"][1] == 500
    assert scenes["quarter"][0].shape == (1152, 1920, 3)


@pytest.mark.parametrize("name", list(SCENES))
def test_hybrid_is_closer_than_detection_alone(counted: dict[str, tuple[int, CountResult]], name: str) -> None:
    truth, c = counted[name]
    assert c.detection is not None and c.fused is not None and c.calibration is not None
    assert c.detection < 0.3 * truth  # detection saturates: people too small and too many
    assert c.region_source.sum() >= 0.5 * c.region_source.size  # the hybrid counts most regions by density
    assert abs(c.fused - truth) < abs(c.detection - truth)
    assert c.calibration.source == "prior" and c.calibration.flat == pytest.approx(0.0, abs=1.0)


@pytest.mark.xfail(strict=True, reason="CSRNet at the frame's resolution undercounts 25-75 px people; no reliable detections to scale it")
@pytest.mark.parametrize("name", list(SCENES))
def test_hybrid_is_closer_than_raw_density(counted: dict[str, tuple[int, CountResult]], name: str) -> None:
    truth, c = counted[name]
    assert c.calibration is not None and c.fused is not None
    assert abs(c.fused - truth) < abs(c.calibration.raw - truth) - 0.05 * truth


def test_density_input_upscaled_twice_counts_the_quarter_scene(scenes: dict[str, tuple[np.ndarray, int]]) -> None:
    """The remedy, measured: the same model on the 1/4 scene upscaled 2x (people 50-76 px in its input)."""
    img, truth = scenes["quarter"]
    up = np.asarray(Image.fromarray(img).resize((2 * img.shape[1], 2 * img.shape[0]), Image.Resampling.BICUBIC))
    cfg = dense_config()
    (branch,) = make_branches(cfg, only={"density"})
    try:
        res = branch.run(Frame(FrameMeta("t", 0, 0.0, 0.0, up.shape[1], up.shape[0]), up))
    finally:
        branch.close()
    assert res.density is not None
    assert res.density.count == pytest.approx(truth, rel=0.2)  # measured 448.5 for 500
