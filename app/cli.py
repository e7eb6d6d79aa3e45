"""The command line: ``headless``, ``gui``, ``bench``, ``export``, ``fetch-assets``, ``build-engines``.

Every ``AppError`` is printed as one clear message (no traceback) and mapped to its exit code; a
bad argument is one line too (``main.py headless: error: ...``), exit 2 like a bad config.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from config import configure_logging, load_log_config
from config.errors import AppError
from config.schema import FusionStrategyName

DEFAULT_CONFIG = "config/pipeline.yaml"
DEFAULT_LOG_CONFIG = "config/log.yaml"
STRATEGIES = [s.value for s in FusionStrategyName]
EXPORT_KINDS = ["counts", "crossings", "visits", "static"]  # storage.export.EXPORTS (not imported: keeps --help fast)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``prog: error: why (see prog --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a frame count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 1, got {value}; leave the option out to run to the end"
        )
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"pipeline config (default {DEFAULT_CONFIG})")
    p.add_argument("--log-config", default=DEFAULT_LOG_CONFIG, help=f"log channels (default {DEFAULT_LOG_CONFIG})")
    p.add_argument("--source", help="override streams[0].uri: a video file or rtsp/http URL")
    p.add_argument("--max-frames", type=positive_int, help="stop after N frames (N >= 1)")
    p.add_argument("--fusion", choices=STRATEGIES, help="fusion strategy (default: the config's)")
    p.add_argument("--realtime", action="store_true", help="deliver a file at its frame rate, like a live camera")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="main.py", description="people-counter: real-time people counting")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("headless", help="run the pipeline without a window; store counts in SQLite")
    _add_common(p)
    p.add_argument("--db", help="SQLite database (default storage.db_path)")
    p.add_argument("--export", help="write the run's count history to this .csv or .json at the end")
    p.add_argument("--quiet", action="store_true", help="no progress line")

    p = sub.add_parser("gui", help="run the operator window (falls back to headless with no display)")
    _add_common(p)
    p.add_argument("--db", help="SQLite database (default storage.db_path)")

    p = sub.add_parser("run", help="the demo: gui when a display exists, else headless")
    _add_common(p)
    p.add_argument("--db", help="SQLite database (default storage.db_path)")
    p.add_argument("--export", help="count history export at the end (.csv or .json)")

    p = sub.add_parser("bench", help="benchmark the pipeline; writes report.html and report.json")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--log-config", default=DEFAULT_LOG_CONFIG)
    p.add_argument("--source", help="override streams[0].uri")
    p.add_argument("--frames", type=positive_int, default=60, help="frames per scenario (default 60)")
    p.add_argument("--fusion", nargs="+", choices=STRATEGIES, help="strategies to compare (default: the config's)")
    p.add_argument("--scenario", nargs="+", choices=["preprocess", "e2e", "sequential"], default=["preprocess", "e2e"],
                   help="preprocess: decode + preprocess only; e2e: whole pipeline; sequential: branches one after another")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    p.add_argument("--compare", help="a baseline report.json: print per-stage ratios")
    p.add_argument("--streams", type=positive_int, default=1,
                   help="N > 1: also run N copies of the stream at once in this process (each its own sessions), "
                   "and report each one's frames/s, drops and e2e")
    p.add_argument("--realtime", action="store_true",
                   help="deliver the file at its frame rate, like a live camera (latency as a live stream sees it)")

    p = sub.add_parser("export", help="export count history, line crossings, zone visits or static tracks from a database")
    p.add_argument("--db", required=True, help="SQLite database")
    p.add_argument("--out", required=True, help="output file, .csv or .json")
    p.add_argument(
        "--what", choices=EXPORT_KINDS, default="counts",
        help="counts: one row per frame (default); crossings: one per line crossing; "
        "visits: one per zone visit, with its dwell; static: one per track flagged static",
    )
    p.add_argument("--since", help="ISO date/time (UTC), inclusive")
    p.add_argument("--until", help="ISO date/time (UTC), exclusive")
    p.add_argument("--run", type=int, help="only this run id")

    p = sub.add_parser("fetch-assets", help="download the demo models and video into .cache/assets")
    p.add_argument("--cache", default=".cache/assets")

    p = sub.add_parser("build-engines", help="build TensorRT engines for the config's models")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--log-config", default=DEFAULT_LOG_CONFIG)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fp16", action="store_const", dest="precision", const="fp16")
    g.add_argument("--int8", action="store_const", dest="precision", const="int8")
    return parser


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


_QT_PROBE = "from PySide6.QtWidgets import QApplication; QApplication([])"
_QT_PROBE_TIMEOUT_S = 60.0
_QT_X11_PACKAGES = (
    "libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 "
    "libxcb-randr0 libxcb-xkb1 libxkbcommon-x11-0"
)
"""What Qt 6's X11 plugin loads beyond a bare X client (Qt's "Qt for X11 Requirements")."""


def window_problem() -> str | None:
    """Why Qt cannot open a window on this display, or None when it can.

    Qt ends the whole process (``qFatal``, exit 134) when its platform plugin does not load: a
    display it cannot connect to, or a library the X11 plugin needs (``libxcb-cursor0`` since Qt
    6.5, missing on minimal installs). A child process tries first, so that this one can say why
    and run headless instead."""
    if sys.platform in ("darwin", "win32") or os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal"):
        return None
    env = {**os.environ, "QT_DEBUG_PLUGINS": "1"}  # Qt then names the library its plugin lacks
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _QT_PROBE], capture_output=True, text=True, timeout=_QT_PROBE_TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired:
        return f"Qt did not start on this display within {_QT_PROBE_TIMEOUT_S:g} s"
    if probe.returncode == 0:
        return None
    missing = sorted(set(re.findall(r"(lib[\w.+-]+?\.so[.\d]*): cannot open shared object file", probe.stderr)))
    if missing:
        return (
            f"Qt's display plugin cannot load {', '.join(missing)} (Debian/Ubuntu: `sudo apt install "
            f"{_QT_X11_PACKAGES}`; Fedora: `sudo dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms "
            "xcb-util-image xcb-util-renderutil libxkbcommon-x11`)"
        )
    said = [line.strip() for line in probe.stderr.splitlines() if line.strip().startswith(("qt.qpa", "Could not", "This application"))]
    reason = "; ".join(said[:2]) or f"Qt exited {probe.returncode}"
    if "could not connect to display" in probe.stderr.lower():
        reason += f" (DISPLAY={os.environ.get('DISPLAY', '')!r}: is the X server running, and may this user use it?)"
    return reason


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    from app.build import release_gpu

    release_gpu()  # the end of the GPU shutdown order (app.build.close_branches, release_gpu)
    if code in (130, 143):
        # Stopped by a signal, everything flushed: a repeat (a double Ctrl-C) must not kill the
        # process now. Python's finalisation puts a handler it installed back to the default
        # (death by SIGINT, exit -2) but leaves an ignored signal ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return code


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "log_config") and Path(args.log_config).exists():
            configure_logging(load_log_config(args.log_config))
        else:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return _dispatch(args)
    except AppError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; everything recorded so far is saved", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "fetch-assets":
        from app.assets import fetch_demo_assets

        fetch_demo_assets(Path(args.cache))
        return 0
    if cmd == "export":
        from app.headless import export_command

        return export_command(args)
    if cmd == "bench":
        from app.bench import bench_command

        return bench_command(args)
    if cmd == "build-engines":
        from app.headless import build_engines_command

        return build_engines_command(args)
    if cmd == "gui" or (cmd == "run" and has_display()):
        if not has_display():
            print("no display found (DISPLAY is unset): running headless", file=sys.stderr)
        else:
            try:
                from app.gui import run_gui
            except ImportError as exc:
                print(f"the window cannot start ({exc}); running headless", file=sys.stderr)
            else:
                problem = window_problem()
                if problem is None:
                    return run_gui(args)
                print(f"the window cannot open: {problem}; running headless", file=sys.stderr)
    if cmd == "run" and not has_display():
        print("no display (DISPLAY is unset): running headless on the demo", file=sys.stderr)
    from app.headless import headless_command

    return headless_command(args)
