"""Model-only timing: ONNX Runtime (or TensorRT) alone on random input of a branch's batch shape.

The bench puts this beside each pipeline run (``report.json["model_only"]``), so that the gap
between ``inference_model_<branch>_ms`` in the pipeline and what the model itself costs (same
session, same options, same batch) is visible: chunking, copies, thread contention.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.runner import ModelRunner


@dataclass(frozen=True, slots=True)
class ModelOnlyTiming:
    """``n`` timed calls of one model at one input shape (after ``warmup`` untimed ones)."""

    shape: tuple[int, ...]
    """The shape of one call: the branch's batch, or the model's static batch."""
    calls: int
    """Calls of that shape that one pipeline run of the branch makes (more than 1 for a model with
    a static batch smaller than the branch's batch)."""
    dtype: str
    n: int
    warmup: int
    p50_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @property
    def per_run_p50_ms(self) -> float:
        """What one run of the branch costs in the model alone: ``calls`` x ``p50_ms``."""
        return self.calls * self.p50_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape), "calls": self.calls, "per_run_p50_ms": self.per_run_p50_ms, "dtype": self.dtype, "n": self.n, "warmup": self.warmup,
            "p50_ms": self.p50_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
        }  # fmt: skip


def _random_input(runner: ModelRunner, shape: tuple[int, ...], seed: int) -> Any:
    dtype = runner.input.dtype if runner.input.dtype in ("float32", "float16") else "float32"
    x = np.random.default_rng(seed).random(shape, dtype=np.float32).astype(dtype)
    if getattr(runner.backend, "device", "cpu") == "gpu":
        import cupy

        return cupy.asarray(x)
    return x


def _sync(outputs: Any) -> None:
    for v in outputs.values():
        if hasattr(v, "__cuda_array_interface__"):
            import cupy

            cupy.cuda.runtime.deviceSynchronize()
            return


def time_model_only(
    runner: ModelRunner, batch: int, *, hw: tuple[int, int] | None = None, iters: int = 3, warmup: int = 1, seed: int = 0
) -> ModelOnlyTiming:
    """Time ``runner.backend`` alone (``enqueue(...).wait()``, no chunking or padding) on a random
    ``(batch, 3, H, W)`` input; ``H, W`` from the model's input, else ``hw``. A model with a static
    batch is timed at that batch, ``calls`` times per run."""
    h = runner.input.shape[2] or (hw[0] if hw else None)
    w = runner.input.shape[3] or (hw[1] if hw else None)
    if h is None or w is None:
        raise ValueError(f"{runner.model_name}: input {runner.input.name} has a dynamic height/width; pass hw")
    static = runner.static_batch
    calls = -(-int(batch) // static) if static else 1
    shape = (int(static or batch), 3, int(h), int(w))
    x = _random_input(runner, shape, seed)
    feeds = {runner.input.name: x}
    for _ in range(warmup):
        _sync(runner.backend.enqueue(feeds).wait())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        _sync(runner.backend.enqueue(feeds).wait())
        times.append((time.perf_counter() - t0) * 1e3)
    arr = np.array(times) if times else np.array([math.nan])
    return ModelOnlyTiming(
        shape=shape, calls=calls, dtype=str(getattr(x, "dtype", "float32")), n=len(times), warmup=warmup,
        p50_ms=float(np.median(arr)), mean_ms=float(arr.mean()), min_ms=float(arr.min()), max_ms=float(arr.max()),
    )  # fmt: skip
