"""TensorRT pieces that run without TensorRT: the clear error, engine recipes, sidecar checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from config.errors import GpuUnavailableError


def tiny_onnx(path: Path, batch: int | str = "batch", h: int = 640, w: int = 640) -> Path:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, h, w])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_missing_tensorrt_names_the_backend_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where it is installed
    from models.tensorrt_backend import TensorRTBackend

    with pytest.raises(GpuUnavailableError, match=r"backend\.name: onnxruntime"):
        TensorRTBackend("model.onnx")


def _cfg(tmp_path: Path, static_batch: bool = False) -> Any:
    """A real PipelineConfig (validated like a YAML file) on tiny ONNX files."""
    from config.schema import PipelineConfig

    det = tiny_onnx(tmp_path / "det.onnx", 1 if static_batch else "batch")
    dens = tiny_onnx(tmp_path / "dens.onnx", "batch", 720, 640)
    return PipelineConfig.model_validate({
        "streams": [{"uri": "synthetic://3840x2160?frames=1", "decoder": "synthetic"}],
        "models": {"person": {"path": str(det), "kind": "yolo"}, "density": {"path": str(dens), "kind": "density"}},
        "backend": {"name": "tensorrt", "device": "gpu"},
        "preprocess": {
            "yolo_global": {"kind": "letterbox"},
            "yolo_tiles": {"kind": "tiles", "overlap": 0.2},
            "density": {"kind": "grid", "width": 640, "height": 720},
        },
        "branches": {
            "g": {"model": "person", "input": "yolo_global"},
            "t": {"model": "person", "input": "yolo_tiles"},
            "d": {"model": "density", "input": "density"},
        },
    })


def test_recipes_cover_global_plus_tiles_and_the_density_grid(tmp_path: Path) -> None:
    from models.engine_build import recipes

    by_model = {r.model: r for r in recipes(_cfg(tmp_path), "fp16", (3840, 2160))}
    assert by_model["person"].min_shape == (1, 3, 640, 640)
    assert by_model["person"].max_shape == (33, 3, 640, 640)  # 1 global + 32 tiles on 4K
    assert by_model["density"].max_shape == (18, 3, 720, 640)  # 6 x 3 grid on 4K
    assert by_model["person"].specs == ("yolo_global", "yolo_tiles")


def test_static_batch_model_keeps_its_batch(tmp_path: Path) -> None:
    from models.engine_build import recipes

    person = next(r for r in recipes(_cfg(tmp_path, static_batch=True), "fp16", (3840, 2160)) if r.model == "person")
    assert person.min_shape[0] == person.max_shape[0] == 1


def test_sidecar_mismatch_means_rebuild(tmp_path: Path) -> None:
    from models.engine_build import engine_path_for, is_current, recipes, sidecar

    recipe = recipes(_cfg(tmp_path), "fp16", (3840, 2160))[0]
    engine = engine_path_for(Path(recipe.onnx), tmp_path / "engines", "fp16")
    assert engine.name == "det.fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"x")
    meta = sidecar(recipe, "10.13.0", "NVIDIA H200")
    engine.with_suffix(".engine.json").write_text(json.dumps(meta))
    assert is_current(engine, meta)
    assert not is_current(engine, sidecar(recipe, "10.14.1", "NVIDIA H200"))
    assert not is_current(engine, sidecar(recipe, "10.13.0", "NVIDIA GeForce RTX 5060 Ti"))
    tiny_onnx(Path(recipe.onnx), "batch", 320, 320)  # the ONNX changed
    assert not is_current(engine, sidecar(recipe, "10.13.0", "NVIDIA H200"))


# --- recipes on the shipped config files (typed PipelineConfig, every branch layout) ------------

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["config/pipeline.yaml", "config/gpu.yaml", "config/tensorrt.yaml"]


def _shipped(name: str, one_call: bool = False) -> Any:
    from config.loader import load_pipeline_config

    cfg = load_pipeline_config(REPO / name)
    missing = [m.path for m in cfg.models.values() if not (REPO / m.path).is_file()]
    if missing:
        pytest.skip(f"{missing} missing: run `python main.py fetch-assets` (make assets)")
    data = cfg.model_dump(mode="json")
    for m in data["models"].values():
        m["path"] = str(REPO / m["path"])
    if one_call:
        data["branches"] = {
            "yolo": {"model": "person", "input": ["yolo_global", "yolo_tiles"]},
            "density": data["branches"]["density"],
        }
    return type(cfg).model_validate(data)


@pytest.mark.parametrize("one_call", [False, True], ids=["two-branches", "one-call"])
@pytest.mark.parametrize("name", SHIPPED)
def test_recipes_of_the_shipped_configs(name: str, one_call: bool) -> None:
    from models.engine_build import recipes

    cfg = _shipped(name, one_call)
    by_model = {r.model: r for r in recipes(cfg, "fp16", (3840, 2160))}
    assert set(by_model) == {"person", "density"}
    person, density = by_model["person"], by_model["density"]
    # the demo detector is written batch-dynamic by the setup: frame + 32 tiles in one profile
    assert person.min_shape == (1, 3, 640, 640) and person.max_shape == (33, 3, 640, 640)
    assert person.specs == ("yolo_global", "yolo_tiles")
    assert person.input_name == "images"
    assert density.max_shape == (18, 3, 720, 640) and density.specs == ("density",)


def test_recipes_take_a_typed_config() -> None:
    import inspect

    from config.schema import PipelineConfig
    from models.engine_build import build_engines, recipes

    for fn in (recipes, build_engines):
        assert inspect.signature(fn, eval_str=True).parameters["cfg"].annotation is PipelineConfig
