#!/usr/bin/env bash
# Screenshots of the operator window (running, paused, source error, history, zones, lines, tracks, the
# camera list of three streams) on the real demo, on a virtual X display: docs/img/*.png
# (`docs/screenshots.sh tracks`: that shot only; `cameras`: the camera list). Needs Xvfb (apt-get install -y xvfb xdotool imagemagick libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v Xvfb >/dev/null || { echo "Xvfb missing: apt-get install -y xvfb xdotool imagemagick libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0" >&2; exit 1; }
DISPLAY_NUM=${DISPLAY_NUM:-:99}
Xvfb "$DISPLAY_NUM" -screen 0 1600x1000x24 -nolisten tcp &
XVFB=$!
trap 'kill $XVFB 2>/dev/null || true' EXIT
for _ in $(seq 50); do xdpyinfo -display "$DISPLAY_NUM" >/dev/null 2>&1 && break; sleep 0.1; done
# cameras (docs/screenshots_cameras.py: a config with three streams) is a shot of its own
window_args=()
cameras=0
for a in "$@"; do
  if [ "$a" = cameras ]; then cameras=1; else window_args+=("$a"); fi
done
if [ $# -eq 0 ] || [ ${#window_args[@]} -gt 0 ]; then
  DISPLAY="$DISPLAY_NUM" QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshots.py "${window_args[@]}"
fi
if [ $# -eq 0 ] || [ $cameras -eq 1 ]; then
  DISPLAY="$DISPLAY_NUM" QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshots_cameras.py
fi
main=(running paused zones lines source_error history)
shots=()
if [ $# -eq 0 ]; then shots=(tracks "${main[@]}" cameras); fi
for a in "$@"; do
  if [ "$a" = main ]; then shots+=("${main[@]}"); else shots+=("$a"); fi
done
for name in "${shots[@]}"; do
  convert "docs/img/$name.png" -resize 1150x -colors 64 "PNG8:docs/img/$name.png"  # under 300 KB each
done
ls -la docs/img/*.png
