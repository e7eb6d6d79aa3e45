"""The report's charts, as ``data:`` PNG URIs so that ``report.html`` is one self-contained file.
matplotlib is imported on first use (the command selects the Agg backend first)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any


def png_uri(fig: Any) -> str:
    """``fig`` as a base64 ``data:image/png`` URI; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def stage_plot(name: str, series: Mapping[str, list[Any]], warmup: int) -> str:
    """One stage of one run: histogram of the measured frames beside its per-frame time series."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frames, ms = series["frame"], series["ms"]
    meas = [v for i, v in zip(frames, ms, strict=True) if i >= warmup and v is not None]
    fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(10, 2.6), gridspec_kw={"width_ratios": [1, 1.6]})
    if meas:
        ax_h.hist(meas, bins=min(30, max(5, len(meas) // 2)), color="#3b75af")
    ax_h.set_xlabel(f"{name} (ms)")
    ax_h.set_ylabel("frames")
    ax_h.set_title("histogram (after warm-up)", fontsize=9)
    wf = [i for i in frames if i < warmup]
    wv = [v for i, v in zip(frames, ms, strict=True) if i < warmup]
    mf = [i for i in frames if i >= warmup]
    mv = [v for i, v in zip(frames, ms, strict=True) if i >= warmup]
    if wf:
        ax_t.plot(wf, wv, "o-", color="#bbbbbb", ms=3, label="warm-up")
    ax_t.plot(mf, mv, "o-", color="#3b75af", ms=3, label="measured")
    if warmup:
        ax_t.axvspan(-0.5, warmup - 0.5, color="#eeeeee", zorder=0)
    ax_t.set_xlabel("frame index")
    ax_t.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_t.set_ylabel("ms")
    ax_t.set_title("per frame", fontsize=9)
    ax_t.grid(alpha=0.3)
    if wf:
        ax_t.legend(fontsize=7, loc="upper right")
    fig.suptitle(name, fontsize=10, x=0.01, ha="left")
    return png_uri(fig)


def fps_plot(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Sustained fps per pipeline run (the preprocess run too when it is the only one)."""
    import matplotlib.pyplot as plt

    keys = [k for k in runs if runs[k]["mode"] != "preprocess"] or list(runs)
    vals = [runs[k]["fps"] or 0.0 for k in keys]
    colors = {"preprocess": "#999999", "overlapped": "#3b75af", "sequential": "#e08a2c"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(keys) + 0.8))
    ax.barh(keys, vals, color=[colors.get(runs[k]["mode"], "#3b75af") for k in keys])
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("frames/s (sustained, after warm-up; the preprocess ceiling is in the table)"
                  if len(keys) < len(runs) else "frames/s (sustained, after warm-up)")
    ax.grid(axis="x", alpha=0.3)
    return png_uri(fig)


def e2e_box(runs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Box plot of ``end_to_end_ms`` per run; None when no run has it."""
    import matplotlib.pyplot as plt

    data, labels = [], []
    for k, r in runs.items():
        s = r["series"].get("end_to_end_ms")
        if not s:
            continue
        vals = [v for i, v in zip(s["frame"], s["ms"], strict=True) if i >= r["warmup_frames"] and v is not None]
        if vals:
            data.append(vals)
            labels.append(k)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(data) + 0.8))
    ax.boxplot(data, orientation="horizontal", whis=(5, 95))
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel("end_to_end_ms (ms; whiskers p5-p95)")
    ax.grid(axis="x", alpha=0.3)
    return png_uri(fig)

