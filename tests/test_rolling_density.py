"""A density branch spread over frames (``spread: true``) gives the same map as the whole grid,
once every tile has run; real CSRNet on a small grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from config import ConfigError, load_pipeline_config
from config.schema import ModelConfig
from models.backends import create_backend
from models.branch import ModelBranch, RollingDensityBranch
from models.density import DensityAdapter
from models.runner import ModelRunner
from pipeline.preprocess import InputSpec, NumpyPreprocessor
from pipeline.types import Frame, FrameMeta

ROOT = Path(__file__).resolve().parents[1]
CSRNET = ROOT / ".cache/assets/models/csrnet_fp32.onnx"
needs_csrnet = pytest.mark.skipif(not CSRNET.exists(), reason="CSRNet not built (run `make run` or `python main.py fetch-assets`)")

SPEC = InputSpec("density", "grid", 64, 72, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0)


def frame(index: int, image: np.ndarray) -> Frame:
    return Frame(FrameMeta("t", index, index / 30, 0.0, image.shape[1], image.shape[0]), image)


@needs_csrnet
def test_spread_branch_matches_the_whole_grid_once_every_tile_ran() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (130, 250, 3), dtype=np.uint8)  # 4 x 2 cells of 64x72, padded
    runner = ModelRunner(create_backend("onnxruntime", str(CSRNET)), "density")
    model = ModelConfig(path=str(CSRNET), kind="density")
    whole = ModelBranch("whole", preprocessor=NumpyPreprocessor(SPEC), runner=runner, adapter=DensityAdapter(model))
    rolling = RollingDensityBranch(
        "rolling",
        preprocessors=[NumpyPreprocessor(dataclasses.replace(SPEC, phase=(k, 3))) for k in range(3)],
        whole_spec=SPEC,
        runner=runner,
        stride=8,
    )
    assert rolling.every_n_frames == 1
    results = [rolling.run(frame(i, image)) for i in range(4)]
    assert all(r.error is None for r in results)
    assert results[0].density is None and results[1].density is None  # not every tile has run yet
    expected = whole.run(frame(0, image)).density
    assert expected is not None
    for r in results[2:]:
        assert r.density is not None
        np.testing.assert_allclose(r.density.density, expected.density, rtol=1e-4, atol=1e-6)
        assert r.density.count == pytest.approx(expected.count, rel=1e-4)
    # each frame ran only its third of the 8 tiles: tiles 0,3,6 / 1,4,7 / 2,5 (the phases' own plans,
    # and what each frame's preprocessing produced)
    phases = [p.run(frame(k, image)) for k, p in enumerate(rolling.preprocessors)]
    assert [o.plan.indices.tolist() for o in phases] == [[0, 3, 6], [1, 4, 7], [2, 5]]  # type: ignore[union-attr]
    assert [o.tensor.shape[0] for o in phases] == [3, 3, 2]


@needs_csrnet
def test_a_changed_tile_updates_only_its_cells() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (144, 128, 3), dtype=np.uint8)  # 2 x 2 cells
    b = a.copy()
    b[:72, :64] = 255 - b[:72, :64]  # tile 0 changes
    runner = ModelRunner(create_backend("onnxruntime", str(CSRNET)), "density")
    rolling = RollingDensityBranch(
        "rolling",
        preprocessors=[NumpyPreprocessor(dataclasses.replace(SPEC, phase=(k, 2))) for k in range(2)],
        whole_spec=SPEC,
        runner=runner,
        stride=8,
    )
    first = rolling.run(frame(0, a))
    second = rolling.run(frame(1, a)).density  # tiles 1 and 3: the map is complete
    third = rolling.run(frame(2, b)).density  # tiles 0 and 2 of the changed image
    assert first.density is None and second is not None and third is not None
    changed = np.abs(third.density - second.density) > 1e-6
    assert changed[:9, :8].any() and not changed[:, 8:].any() and not changed[9:, :].any()


def test_spread_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["branches"]["yolo_tiles"]["spread"] = True
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"branches\.yolo_tiles\.spread"):
        load_pipeline_config(path)
