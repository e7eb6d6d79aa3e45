"""The counting stage alone (``FrameCounter``: merge, tracker, density calibration, hybrid and zone
counts) on a synthetic 4K crowd, in one process on the CPU: the per-frame host time that every GPU
frame also pays.

    .venv/bin/python tools/bench_counting.py --config config/gpu.yaml --frames 600 [--density] [--profile]

``--people`` walkers (15 of them standing, a random walk of 0.7 px per frame) in a 3840x2160 frame,
5 % missed per frame, fed as one global branch's detections at 30 frames/s (pts i/30); with
``--density``, a density map at stride 8 with one person per walker. Frames from 300 on are timed
(``static_after_s`` is 8 s in the shipped configs: only after it do tracks get the static check
over a full window). The digest covers every output (ids, tracks, static flags, boxes, trails,
counts), so two versions of the code can be compared for equal results.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.loader import load_pipeline_config  # noqa: E402
from pipeline.frame_counter import FrameCounter  # noqa: E402
from pipeline.types import BranchResult, DensityMap, Detections, FrameMeta  # noqa: E402

W, H, FPS = 3840, 2160, 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/gpu.yaml")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--people", type=int, default=130)
    ap.add_argument("--density", action="store_true", help="add a density map every frame")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top 25 by cumulative time")
    a = ap.parse_args()

    cfg = load_pipeline_config(a.config)
    counter = FrameCounter.from_config(cfg, FPS)
    det_branch = next(n for n, r in counter.roles.items() if r != "density")
    dens_branch = next((n for n, r in counter.roles.items() if r == "density"), None)
    if a.density and dens_branch is None:
        raise SystemExit(f"{a.config}: no density branch enabled")
    rng = np.random.default_rng(0)
    n = a.people
    pos = rng.uniform([100, 200], [W - 100, H - 50], (n, 2))
    vel = rng.normal(0, 2.0, (n, 2))
    vel[:15] = 0
    size = np.stack([rng.uniform(40, 70, n), rng.uniform(100, 170, n)], 1)
    digest = hashlib.sha256()
    times: list[float] = []
    prof = cProfile.Profile() if a.profile else None
    for i in range(a.frames):
        pos = pos + vel + rng.normal(0, 0.7, (n, 2))
        pos[:, 0] = np.clip(pos[:, 0], 40, W - 40)
        pos[:, 1] = np.clip(pos[:, 1], 180, H - 10)
        seen = rng.random(n) > 0.05
        c, s = pos[seen], size[seen]
        xyxy = np.concatenate([c - s * [0.5, 1.0], c + s * [0.5, 0.0]], 1).astype(np.float32)
        dets = Detections(
            xyxy=xyxy, score=rng.uniform(0.4, 0.95, len(c)).astype(np.float32),
            class_id=np.zeros(len(c), np.int32), source=np.full(len(c), -1, np.int32),
        )
        meta = FrameMeta("cam0", i, i / FPS, 0.0, W, H)
        results = {det_branch: BranchResult(branch=det_branch, frame=meta, detections=dets)}
        if a.density and dens_branch is not None:
            dm = np.full((H // 8, W // 8), 0.002, np.float32)
            cell = (c / 8).astype(int)
            np.add.at(dm, (np.clip(cell[:, 1] - 8, 0, H // 8 - 1), np.clip(cell[:, 0], 0, W // 8 - 1)), 1.0)
            contrast = np.full(dm.shape, 20.0, np.float32)
            results[dens_branch] = BranchResult(branch=dens_branch, frame=meta, density=DensityMap(dm, 8, contrast=contrast))
        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        _merged, _density, counts = counter(results, meta)
        times.append((time.perf_counter() - t0) * 1e3)
        if prof is not None:
            prof.disable()
        t = counts.tracking
        digest.update(np.asarray(t.track_id).tobytes())
        digest.update(repr((counts.fused, t.confirmed_count, counts.density)).encode())
        for tr in t.tracks:
            digest.update(repr((tr.id, tr.static, tr.counted, tr.age_frames, tr.missed_frames)).encode())
            digest.update(np.asarray(tr.xyxy).tobytes())
            digest.update(np.asarray(tr.trail).tobytes())
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    ts = np.array(times[300:] if a.frames > 350 else times)
    print(
        f"{a.config}: {a.people} people, density {'on' if a.density else 'off'}, frames {a.frames}: "
        f"p50 {np.median(ts):.2f} ms p95 {np.percentile(ts, 95):.2f} ms; digest {digest.hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
