"""The bench's ``report.html``: one self-contained page (inline CSS and PNG charts, no script, no
link), one function per section, each returning its HTML fragments in page order."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.bench.plots import e2e_box, fps_plot, stage_plot
from app.bench.report import fmt
from pipeline.telemetry import STAT_FIELDS

STAGE_HELP: dict[str, str] = {
    "decode_ms": "time to get the next frame from the source (demux + decode + colour conversion to RGB).",
    "preprocess_ms": "letterbox / tiling / grid resampling and normalisation into model tensors; in the "
    "pipeline, the sum over the branches that ran on the frame.",
    "preprocess_<spec>_ms": "preprocessing for one input spec alone.",
    "inference_model_<branch>_ms": "one branch's model call: prepare_batch + enqueue + stream_sync (the "
    "inference itself; on ONNX Runtime the call blocks, so stream_sync is ~0 and enqueue holds it).",
    "prepare_batch_ms": "chunking, padding and dtype conversion of the input batch (summed over branches).",
    "enqueue_ms": "submitting the batch to the backend (on a blocking backend: the whole inference).",
    "stream_sync_ms": "waiting for the device to finish (GPU backends).",
    "postprocess_ms": "decoding raw outputs into detections / a density map (summed over branches).",
    "fusion_wait_ms": "STRICT_SYNC: from the frame's first branch result to its publication, i.e. how long "
    "fusion waited for the slowest branch; 0 for strategies that publish at once.",
    "overlay_lag_ms": "ASYNC_OVERLAY: age of the oldest branch result drawn over the published frame.",
    "end_to_end_ms": "from the frame's decode to its publication (RAW_STREAM: to its metadata record). "
    "Includes the time a decoded frame waits for room in a full branch queue.",
    "run_ms": "<branch>.run_ms: wall time of the branch's whole run (preprocess + inference + postprocess).",
}



def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _stage_rows(stages: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> list[list[str]]:
    return [[f"<code>{html.escape(n)}</code>", *(fmt(stages[n].get(f), 0 if f == "n" else 2) for f in STAT_FIELDS)] for n in names]


_STAT_HEADER = ["stage", "N", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} code{font-size:.95em}
.note{color:#555;font-size:.9em} dl.help dt{font-family:monospace;margin-top:.4em} dl.help dd{margin-left:1.5em;color:#444}
img{max-width:100%;display:block;margin:.3em 0} details{margin:.5em 0} .good{color:#176e1f;font-weight:600}
"""


_RUN_DESCRIPTION = {
    "preprocess": "decode + every branch's preprocessing, no inference, one frame after the other.",
    "overlapped": "the whole pipeline, fusion {strategy}, branches overlapped (one thread each).",
    "sequential": "the whole pipeline, fusion {strategy}, branches one after the other.",
}


def _counts(counts: Mapping[str, Any], sep: str, empty: str) -> str:
    return ", ".join(f"{a}{sep}{b}" for a, b in counts.items()) or empty


def _page_head(report: Mapping[str, Any]) -> list[str]:
    """Doctype, style, title and the paragraph saying when, where and on what the bench ran."""
    m = report["machine"]
    card = f", card {html.escape(str(m['card']))}" if m.get("card") else ""
    return [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>people-counter bench {html.escape(report['date'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>people-counter bench report</h1>",
        "<p>"
        f"<b>Date</b> {html.escape(report['date'])} &nbsp; <b>Machine</b> {html.escape(m['platform'])}, "
        f"{m['cpu_count']} CPUs{card} &nbsp; <b>Backend</b> {html.escape(m['backend'])} on {html.escape(m['device'])}<br>"
        f"<b>Config</b> <code>{html.escape(report['config'])}</code> &nbsp; <b>Source</b> <code>{html.escape(report['source'])}</code>"
        + (f"<br><b>Load average</b> (1/5/15 min) before {m['load_avg_1_5_15']}, after {m.get('load_avg_at_end')} "
           "&mdash; other processes on the machine skew the timings when the load before is above zero."
           if m.get("load_avg_1_5_15") else "")
        + f"<br><b>Frames</b> {report['frames']} per run, the first {report['warmup_frames']} of each are warm-up "
        "(left out of every statistic and frame rate).</p>",
    ]


def _branches_table(branches: Mapping[str, Mapping[str, Any]]) -> str:
    return _table(["branch", "model", "input spec", "runs on"],
                  [[html.escape(n), html.escape(b["model"]), html.escape(" + ".join([b["input"]] if isinstance(b["input"], str) else b["input"])),
                    "every frame" if b["every_n_frames"] == 1 else f"every {b['every_n_frames']}th frame"]
                   for n, b in branches.items()])


def _summary_section(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per run, the fps chart and the end-to-end box plot."""
    rows = [
        [f"<b>{html.escape(k)}</b>", html.escape(r["mode"]), fmt(r["fps"]), fmt(r["publish_fps"]),
         fmt(r["end_to_end_p50_ms"], 1), fmt(r["end_to_end_p95_ms"], 1), str(r["partial_frames"]),
         html.escape(_counts(r["drops"], ": ", "none")), html.escape(_counts(r["waited_on"], ": ", "–")),
         fmt(r["wall_s"], 1)]
        for k, r in runs.items()
    ]
    out = [
        "<h2>Summary</h2>",
        "<p class='note'><b>fps</b>: sustained throughput, frames fully processed (every scheduled branch returned) "
        "per second of wall time after warm-up. <b>publish fps</b>: frames published per second after warm-up "
        "(ASYNC_OVERLAY / RAW_STREAM publish at decode, ahead of the branches by up to the queue size). "
        "<b>e2e</b>: <code>end_to_end_ms</code>, decode to publication.</p>",
        _table(["run", "branches", "fps", "publish fps", "e2e p50 ms", "e2e p95 ms", "partial frames", "drops",
                "STRICT_SYNC waited on", "wall s"], rows),
        f"<img alt='fps per run' src='{fps_plot(runs)}'>",
    ]
    box = e2e_box(runs)
    if box:
        out.append(f"<img alt='end_to_end_ms per run' src='{box}'>")
    return out


def _overlap_section(ovs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Overlapped vs sequential fps per strategy, the bounds from branch times, per-branch slowdowns."""
    if not ovs:
        return []
    out = [
        "<h2>Overlapped vs sequential branches</h2>",
        "<p class='note'>Overlapped: one thread per branch, each frame goes to all branches at once; the "
        "throughput should be limited by the slowest branch. Sequential: the worker runs the branches one "
        "after the other; the throughput is limited by the sum of the branches. Ratio = overlapped fps / "
        "sequential fps (1.00 means overlapping buys nothing, e.g. when the branches share too few CPU cores).</p>",
        _table(["strategy", "overlapped fps", "sequential fps", "ratio", "sequential bound fps",
                "ideal overlapped fps"],
               [[html.escape(c["strategy"]), fmt(c["overlapped_fps"]), fmt(c["sequential_fps"]),
                 f"<b>{fmt(c['ratio'])}×</b>", fmt(c.get("sequential_bound_fps")), fmt(c.get("ideal_overlapped_fps"))]
                for c in ovs]),
        "<p class='note'><b>sequential bound</b> = 1000 / Σ (branch run_ms / every_n_frames) and <b>ideal "
        "overlapped</b> = 1000 / max (branch run_ms / every_n_frames), both from the sequential run's mean branch "
        "times: the first is what running the branches one after the other allows, the second what perfect "
        "overlap would give (the slowest branch alone). When the overlapped fps stays near the sequential bound, "
        "the branches compete for one resource (on a CPU: the cores) and each one slows down, as the table below "
        "shows.</p>",
    ]
    for c in ovs:
        if c.get("branches"):
            out.append(f"<p>{html.escape(c['strategy'])}: mean branch run time (<code>&lt;branch&gt;.run_ms</code>)</p>")
            out.append(_table(["branch", "runs on", "sequential ms", "overlapped ms", "slowdown when overlapped"],
                              [[html.escape(b), "every frame" if v["every_n_frames"] == 1 else f"every {v['every_n_frames']}th",
                                fmt(v["sequential_run_ms"], 1), fmt(v["overlapped_run_ms"], 1), f"{fmt(v['slowdown'])}×"]
                               for b, v in c["branches"].items()]))
    return out


def _strategy_section(scenario: str, keys: Sequence[str], runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The runs of one scenario side by side, one column per strategy: fps and p50 / p95 per stage."""
    stages: list[str] = []
    for k in keys:
        stages += [s for s in runs[k]["main_stages"] if s not in stages]
    header = ["stage", *[f"{k.split('/', 1)[1]} p50 / p95" for k in keys]]
    trows = [["<b>fps</b>", *[fmt(runs[k]["fps"]) for k in keys]],
             ["<b>publish fps</b>", *[fmt(runs[k]["publish_fps"]) for k in keys]],
             ["<b>partial frames</b>", *[str(runs[k]["partial_frames"]) for k in keys]]]
    for s in stages:
        cells = []
        for k in keys:
            st = runs[k]["stages"].get(s)
            cells.append(f"{fmt(st['p50'])} / {fmt(st['p95'])}" if st else "–")
        trows.append([f"<code>{html.escape(s)}</code>", *cells])
    return [
        f"<h2>Strategy comparison ({html.escape(scenario)})</h2>",
        "<p class='note'>The same frames through each fusion strategy; p50 / p95 in ms.</p>",
        _table(header, trows),
    ]


def _help_section() -> list[str]:
    """What every timing key and statistic means."""
    return [
        "<h2>What the measures mean</h2><dl class='help'>",
        *(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in STAGE_HELP.items()),
        "<dt>&lt;branch&gt;.&lt;key&gt;</dt><dd>the same key for one branch alone (plain keys are summed over the "
        "branches that ran on the frame).</dd>",
        "<dt>wait_for_&lt;branch&gt;_ms</dt><dd>STRICT_SYNC: when that branch's result arrived, after the frame's "
        "first result; the largest names the branch the frame waited on.</dd>",
        "<dt>queue_depth_&lt;branch&gt;</dt><dd>frames in that branch's queue right after submission (a count, "
        "not ms).</dd>",
        "<dt>N, mean, p50…max</dt><dd>samples after warm-up and their statistics, in ms; p95 is the value 95 % "
        "of frames stay under.</dd></dl>",
    ]


def _run_intro(key: str, r: Mapping[str, Any]) -> list[str]:
    """A run's heading, what it measured, its frame rate and (pipeline runs) drops and waits."""
    desc = _RUN_DESCRIPTION[r["mode"]].format(strategy=r["strategy"])
    out = [
        f"<h2>Run {html.escape(key)}</h2>",
        f"<p>{html.escape(desc)} {r['frames']} frames, {r['measured_frames']} measured; "
        f"<b>{fmt(r['fps'])} frames/s</b>; wall {fmt(r['wall_s'], 1)} s.</p>",
    ]
    if r["mode"] != "preprocess":
        out.append(f"<p>Drops: {html.escape(_counts(r['drops'], ': ', 'none'))} "
                   f"(frames are not dropped in a bench: full queues make decode wait). "
                   f"Partial frames: {r['partial_frames']}. Late results: {r['late_results']}. "
                   f"STRICT_SYNC waited on: {html.escape(', '.join(f'{a} ({b} frames)' for a, b in r['waited_on'].items()) or '–')}.</p>")
    return out


def _run_stages(r: Mapping[str, Any]) -> list[str]:
    """A run's main stages, every other timing key folded away, and one chart per main stage."""
    st = r["stages"]
    main = r["main_stages"]
    out = ["<h3>Main stages</h3>", _table(_STAT_HEADER, _stage_rows(st, main))]
    others = [s for s in st if s not in main]
    if others:
        out += [f"<details><summary>All {len(st)} timing keys</summary>", _table(_STAT_HEADER, _stage_rows(st, others)),
                "</details>"]
    if r.get("gpu_preprocess_micro"):
        out.append("<h3>GPU preprocess micro-benchmark</h3><pre>"
                   + html.escape(json.dumps(r["gpu_preprocess_micro"], indent=1, default=str)) + "</pre>")
    out.append("<h3>Histograms and time series</h3>")
    out += [f"<img alt='{html.escape(s)}' src='{stage_plot(s, r['series'][s], r['warmup_frames'])}'>" for s in main]
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """``report.html`` for a ``report.json`` (:func:`app.bench.report.build_report`)."""
    runs: Mapping[str, Mapping[str, Any]] = report["runs"]
    comp = report["comparisons"]
    out = [*_page_head(report), _branches_table(report["branches"]), *_summary_section(runs),
           *_overlap_section(comp["overlapped_vs_sequential"])]
    for scenario, keys in comp["strategies"].items():
        out += _strategy_section(scenario, keys, runs)
    out += _help_section()
    for key, r in runs.items():
        out += _run_intro(key, r) + _run_stages(r)
    out += ["<p class='note'>Written by <code>python main.py bench</code>; the same figures are in report.json.</p>",
            "</body></html>"]
    return "\n".join(out)
