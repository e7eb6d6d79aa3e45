"""Test scenes for the density calibration, built at test time from vtest.avi (nothing large is
committed): dense crowds of known count made of hand-counted vtest frames scaled down and tiled,
and the empty background (the per-pixel median of many frames removes the walkers).

The hand counts are in ``tests/data/density_hand_counts.yaml`` (how they were made is written
there). A scene's truth is the sum of its cells' counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import yaml
from numpy.typing import NDArray
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT / ".cache/assets/video/vtest.avi"
HAND_COUNTS = ROOT / "tests/data/density_hand_counts.yaml"
GREY = 128


def hand_counts() -> dict[int, int]:
    """vtest frame index -> people counted by hand."""
    data = yaml.safe_load(HAND_COUNTS.read_text())
    return {int(k): int(v) for k, v in data["frames"].items()}


def vtest_frames(indices: Iterable[int]) -> dict[int, NDArray[np.uint8]]:
    """RGB (576, 768, 3) frames of vtest.avi by index."""
    want = set(indices)
    out: dict[int, NDArray[np.uint8]] = {}
    with av.open(str(VTEST)) as c:
        for i, vf in enumerate(c.decode(video=0)):
            if i in want:
                out[i] = np.asarray(vf.to_ndarray(format="rgb24"), np.uint8)
            if i >= max(want):
                break
    return out


def median_background(step: int = 8) -> NDArray[np.uint8]:
    """The empty scene: per-pixel median of every ``step``-th vtest frame (100 frames)."""
    frames = []
    with av.open(str(VTEST)) as c:
        for i, vf in enumerate(c.decode(video=0)):
            if i % step == 0:
                frames.append(np.asarray(vf.to_ndarray(format="rgb24"), np.uint8))
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


def dense_scene(
    frames: dict[int, NDArray[np.uint8]], counts: dict[int, int], scale: float, grid: tuple[int, int], frame_wh: tuple[int, int]
) -> tuple[NDArray[np.uint8], int]:
    """(image (H, W, 3) uint8, true count): ``grid`` (rows, cols) cells of vtest frames scaled by
    ``scale`` (area resampling), the hand-counted frames in index order cycling over the cells
    row-major; the rest of ``frame_wh`` flat grey. Truth = sum of the cells' hand counts."""
    w, h = frame_wh
    rows, cols = grid
    order = sorted(counts)
    cw, ch = round(768 * scale), round(576 * scale)
    if cols * cw > w or rows * ch > h:
        raise ValueError(f"{rows}x{cols} cells of {cw}x{ch} do not fit {w}x{h}")
    small = {i: np.asarray(Image.fromarray(frames[i]).resize((cw, ch), Image.Resampling.BOX)) for i in order}
    img = np.full((h, w, 3), GREY, np.uint8)
    truth = 0
    for k in range(rows * cols):
        i = order[k % len(order)]
        r, c = divmod(k, cols)
        img[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = small[i]
        truth += counts[i]
    return img, truth


def perspective_scene(frames: dict[int, NDArray[np.uint8]], counts: dict[int, int]) -> tuple[NDArray[np.uint8], int, int]:
    """(image (1728, 1920, 3) uint8, true count, true count of the far band): a view with depth made
    of real footage. The far band (top 1152 rows) is the 1/4-scale scene of ``dense_scene`` (8 x 10
    cells, people 25-38 px tall); the near band (bottom 576 rows, the default region grid's last
    row) holds the first two hand-counted frames at their own size (people 57-122 px tall) side by
    side, the rest flat grey. Truth = the far band's cells' counts + the two frames' counts."""
    order = sorted(counts)
    far, far_truth = dense_scene(frames, counts, 0.25, (8, 10), (1920, 1152))
    img = np.full((1728, 1920, 3), GREY, np.uint8)
    img[:1152] = far
    for j, i in enumerate(order[:2]):
        img[1152:, j * 768 : (j + 1) * 768] = frames[i]
    return img, far_truth + sum(counts[i] for i in order[:2]), far_truth
