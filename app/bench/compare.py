"""``bench --compare``: this bench's report against an earlier ``report.json``, run by run."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.bench.report import fmt
from config.errors import ConfigError


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def format_compare(current: Mapping[str, Any], baseline: Mapping[str, Any], baseline_path: str) -> str:
    """Per run and stage present in both: this run's p50 / baseline's p50, same for p95 (and fps)."""
    lines = [f"compare with {baseline_path} (ratio = this run / baseline; > 1.00 is slower for ms, faster for fps)"]
    common = [k for k in current["runs"] if k in baseline["runs"]]
    if not common:
        lines.append("  no run in common (scenarios/strategies differ)")
        return "\n".join(lines)
    for k in common:
        cur, base = current["runs"][k], baseline["runs"][k]
        lines.append(f"{k}: fps {fmt(cur['fps'])} vs {fmt(base['fps'])} = {fmt(_ratio(cur['fps'], base['fps']))}x")
        names = [s for s in cur["stages"] if s in base["stages"]]
        if not names:
            continue
        w0 = max(len("stage"), *(len(s) for s in names))
        lines.append(f"  {'stage':<{w0}}  {'p50 ms':>9}  {'base p50':>9}  {'p50 ratio':>9}  {'p95 ratio':>9}")
        for s in names:
            c, b = cur["stages"][s], base["stages"][s]
            lines.append(
                f"  {s:<{w0}}  {fmt(c.get('p50')):>9}  {fmt(b.get('p50')):>9}  {fmt(_ratio(c.get('p50'), b.get('p50'))):>9}  "
                f"{fmt(_ratio(c.get('p95'), b.get('p95'))):>9}"
            )
    return "\n".join(lines)


def load_baseline(path: str) -> dict[str, Any]:
    """The baseline report.json at ``path``; :class:`ConfigError` when it is missing or not a report."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--compare: baseline not found: {path} (pass the report.json of an earlier bench)")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--compare: {path} is not a readable JSON report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise ConfigError(f"--compare: {path} is not a bench report.json (no 'runs')")
    return data
