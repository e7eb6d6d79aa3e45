"""Build TensorRT engines from the config's ONNX models: ``python main.py build-engines``.

For each model used by an enabled branch, one engine with one optimisation profile that covers
every branch using it: batch from 1 up to the largest batch needed (global letterbox 1; tiles:
the tile count on the stream's frame size, + 1 when the global pass shares the model so both can
go in one call; density: the grid cell count, 18 on 4K), height/width from the branch's input
spec. A model exported with a static batch keeps it.

Precision ``fp32``, ``fp16`` (``BuilderFlag.FP16``) or ``int8`` (INT8 + FP16, calibrated with an
``IInt8EntropyCalibrator2`` fed by our own preprocessors with frames drawn from the configured
stream; the calibration cache is kept beside the engine and reused).

Each engine ``<engine_dir>/<onnx stem>.<precision>.engine`` has a JSON sidecar recording the
TensorRT version, the GPU name, the ONNX file's SHA-256 and the profile. An engine is rebuilt
when any of these changes; otherwise it is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import ConfigError, ModelLoadError
from config.schema import PipelineConfig
from gpu.bench import card_name
from models.trt_runtime import engine_path_for, import_tensorrt, trt_logger
from pipeline.preprocess import InputSpec, NumpyPreprocessor

log = logging.getLogger("people_counter.inference")

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True, slots=True)
class EngineRecipe:
    """What one engine is built from: the ONNX, the input profile and the precision."""

    model: str
    onnx: str
    input_name: str
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]
    precision: str
    specs: tuple[str, ...]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def probe_frame_size(cfg: PipelineConfig) -> tuple[int, int]:
    """(width, height) of the first stream, from its first frame (PyAV)."""
    from pipeline.sources import PyAVSource

    stream = cfg.streams[0]
    with PyAVSource(stream.uri, stream_id=stream.id) as src:
        for frame in src.frames():
            return frame.meta.width, frame.meta.height
    raise ConfigError(f"streams[0].uri: {stream.uri} gave no frame to size the engine profiles")


def recipes(cfg: PipelineConfig, precision: str, frame_wh: tuple[int, int]) -> list[EngineRecipe]:
    """One recipe per model of an enabled branch (see the module docstring). Every branch layout the
    config allows: one spec per branch, or several specs in one call (``input: [yolo_global,
    yolo_tiles]``); a spec used by two branches of one model counts once."""
    import onnx

    by_model: dict[str, dict[str, InputSpec]] = {}
    for branch in cfg.branches.values():
        if branch.enabled:
            specs_of = by_model.setdefault(branch.model, {})
            for name in branch.inputs:
                specs_of.setdefault(name, InputSpec.from_config(name, cfg.preprocess[name]))
    out = []
    for model, spec_map in by_model.items():
        specs = list(spec_map.values())
        path = Path(cfg.models[model].path)
        if not path.is_file():
            raise ModelLoadError(f"models.{model}.path: {path} not found (fetch the demo assets or fix the path)")
        sizes = {(s.height, s.width) for s in specs}
        if len(sizes) != 1:
            raise ConfigError(f"models.{model}: its branches use different input sizes {sorted(sizes)}; one engine takes one size")
        h, w = sizes.pop()
        counts = [s.plan(*frame_wh).count for s in specs]
        max_batch = sum(counts) if len(specs) > 1 else counts[0]
        graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
        dims = graph_input.type.tensor_type.shape.dim
        static_batch = dims[0].dim_value if dims and dims[0].dim_value > 0 else 0
        lo, hi = (static_batch, static_batch) if static_batch else (1, max_batch)
        out.append(
            EngineRecipe(
                model=model, onnx=str(path), input_name=graph_input.name,
                min_shape=(lo, 3, h, w), opt_shape=(hi, 3, h, w), max_shape=(hi, 3, h, w),
                precision=precision, specs=tuple(s.name for s in specs),
            )
        )  # fmt: skip
    return out


def sidecar(recipe: EngineRecipe, trt_version: str, gpu: str) -> dict[str, Any]:
    return {"tensorrt": trt_version, "gpu": gpu, "onnx_sha256": _sha256(Path(recipe.onnx)), "recipe": asdict(recipe)}


def is_current(engine: Path, meta: dict[str, Any]) -> bool:
    """True when ``engine`` exists and its sidecar matches ``meta`` (same TensorRT, GPU, ONNX, profile)."""
    side = engine.with_suffix(engine.suffix + ".json")
    if not engine.is_file() or not side.is_file():
        return False
    try:
        old = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(old == json.loads(json.dumps(meta)))


def calibration_batches(cfg: PipelineConfig, recipe: EngineRecipe, frames: int) -> Iterator[np.ndarray]:
    """Preprocessed batches (float32, the engine's max batch) from frames of the configured stream."""
    from pipeline.sources import PyAVSource

    stream = cfg.streams[0]
    pres = [NumpyPreprocessor(InputSpec.from_config(s, cfg.preprocess[s])) for s in recipe.specs]
    batch = recipe.max_shape[0]
    pending: list[np.ndarray] = []
    with PyAVSource(stream.uri, stream_id=stream.id) as src:
        for i, frame in enumerate(src.frames()):
            if i >= frames:
                break
            for pre in pres:
                pending.extend(pre.run(frame).tensor.astype(np.float32))
            while len(pending) >= batch:
                yield np.stack(pending[:batch])
                pending = pending[batch:]


def make_calibrator(trt: Any, batches: Iterator[np.ndarray], batch: int, cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` (host arrays copied to one device buffer)."""
    import cupy

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._device: Any = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            x = next(batches, None)
            if x is None:
                return None
            self._device = cupy.asarray(x)
            cupy.cuda.get_current_stream().synchronize()
            return [int(self._device.data.ptr)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(cfg: PipelineConfig, recipe: EngineRecipe, out: Path, workspace_mib: int, calibration_frames: int) -> None:
    """Parse the ONNX, set the profile and precision, build and write ``out``."""
    trt = import_tensorrt()
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(recipe.onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {recipe.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(recipe.input_name, recipe.min_shape, recipe.opt_shape, recipe.max_shape)
    config.add_optimization_profile(profile)
    if recipe.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if recipe.precision == "int8":
        if not hasattr(config, "int8_calibrator"):
            raise ModelLoadError(
                f"TensorRT {trt.__version__} has no implicit INT8 calibration; use an explicitly quantized "
                "(Q/DQ) ONNX or --fp16"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        cache = out.with_suffix(".calib")
        config.int8_calibrator = make_calibrator(
            trt, calibration_batches(cfg, recipe, calibration_frames), recipe.max_shape[0], cache
        )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"TensorRT failed to build {recipe.onnx} (see the tensorrt log lines)")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)


def build_engines(
    cfg: PipelineConfig,
    precision: str,
    progress: bool | Callable[[str], object] = True,
    *,
    force: bool = False,
    frame_wh: tuple[int, int] | None = None,
) -> list[Path]:
    """Build (or keep, when current) the engine of every model the config's enabled branches use.

    ``progress``: True for a tqdm bar, a callable for messages, False for silence. Returns the
    engine paths.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = import_tensorrt()
    tcfg = cfg.backend.tensorrt
    engine_dir = Path(tcfg.engine_dir)
    engine_dir.mkdir(parents=True, exist_ok=True)
    gpu = card_name()
    todo = recipes(cfg, precision, frame_wh or probe_frame_size(cfg))
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="build-engines", unit="engine")
    say: Callable[[str], object] = progress if callable(progress) else (bar.write if bar else (lambda _m: None))
    paths = []
    for recipe in todo:
        out = engine_path_for(Path(recipe.onnx), engine_dir, precision)
        meta = sidecar(recipe, trt.__version__, gpu)
        if not force and is_current(out, meta):
            say(f"{out}: current (TensorRT {trt.__version__}, {gpu}), kept")
        else:
            say(f"{out}: building {recipe.model} {recipe.precision} profile {recipe.min_shape}..{recipe.max_shape}")
            t0 = time.perf_counter()
            build_engine(cfg, recipe, out, tcfg.workspace_mib, tcfg.calibration_frames)
            out.with_suffix(out.suffix + ".json").write_text(json.dumps(meta, indent=2))
            say(f"{out}: built in {time.perf_counter() - t0:.0f} s")
        paths.append(out)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return paths


def main_build_engines(cfg: PipelineConfig, precision: str | None = None, *, force: bool = False) -> int:
    """Entry point of ``python main.py build-engines --config FILE [--fp16|--int8]``; 0 on success."""
    build_engines(cfg, precision or cfg.backend.tensorrt.precision, progress=True, force=force)
    return 0
