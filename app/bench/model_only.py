"""The bench's model-only figures: each branch's model alone, same session and batch, beside the
pipeline runs (``report.json["model_only"]`` and, per run, ``model_gap``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from app.build import make_input_spec
from config.schema import PipelineConfig
from models.model_bench import time_model_only

log = logging.getLogger("people_counter.telemetry")


def branch_batch(cfg: PipelineConfig, name: str, frame_wh: tuple[int, int]) -> int:
    """Images one run of branch ``name`` sends to its model on a frame of ``frame_wh``: the sum
    over its specs (one call for ``[yolo_global, yolo_tiles]``); a spread grid's phase batch."""
    bcfg = cfg.branches[name]
    counts = [make_input_spec(i, cfg.preprocess[i]).plan(*frame_wh).count for i in bcfg.inputs]
    if bcfg.spread and bcfg.every_n_frames > 1:
        return -(-counts[0] // bcfg.every_n_frames)
    return sum(counts)


def model_only(
    cfg: PipelineConfig, branches: Sequence[Any], frame_wh: tuple[int, int], *, iters: int, warmup: int
) -> dict[str, Any]:
    """Per branch: :func:`models.model_bench.time_model_only` of its own runner (the session the
    pipeline used) at the branch's batch; an entry with ``error`` where that cannot run."""
    out: dict[str, Any] = {}
    for b in branches:
        runner = getattr(b, "runner", None)
        if runner is None:
            continue
        batch = branch_batch(cfg, b.name, frame_wh)
        spec = make_input_spec(cfg.branches[b.name].inputs[0], cfg.preprocess[cfg.branches[b.name].inputs[0]])
        try:
            t = time_model_only(runner, batch, hw=(spec.height, spec.width), iters=iters, warmup=warmup)
        except Exception as exc:  # report it, never fail the bench for it
            log.warning("model-only timing of %s failed: %s", b.name, exc)
            out[b.name] = {"batch": batch, "error": f"{type(exc).__name__}: {exc}"}
            continue
        out[b.name] = {"batch": batch, **t.as_dict()}
    return out


def model_gaps(run: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """For one run: per branch, pipeline ``inference_model_<branch>_ms`` p50 against the model
    alone per run (``per_run_p50_ms``), and the gap between them."""
    gaps: dict[str, Any] = {}
    for name, m in model.items():
        st = run.get("stages", {}).get(f"inference_model_{name}_ms")
        pipe = st.get("p50") if st else None
        alone = m.get("per_run_p50_ms")
        ok = isinstance(pipe, float) and isinstance(alone, float) and math.isfinite(pipe) and math.isfinite(alone)
        gaps[name] = {
            "pipeline_p50_ms": pipe,
            "model_only_p50_ms": alone,
            "gap_ms": pipe - alone if ok else None,
            "ratio": pipe / alone if ok and alone else None,
        }
    return gaps
