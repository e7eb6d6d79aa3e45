"""Build a small vtest mosaic with PyAV and decode it back (real encode, real decode)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from app.assets import demo_asset_paths
from app.demo_clip import build_mosaic_clip

REPO_ROOT = Path(__file__).resolve().parents[1]
VTEST = demo_asset_paths(REPO_ROOT / ".cache" / "assets").vtest_avi

pytestmark = pytest.mark.skipif(
    not VTEST.is_file(),
    reason=f"vtest.avi not cached at {VTEST}: run `python -m app.assets` (needs Debian mirror once)",
)

CELL_W, CELL_H, VTEST_FRAMES = 768, 576, 795


def _decode_gray(path: Path) -> tuple[str, list[np.ndarray]]:
    """Codec name and the luma planes ``[H, W]`` uint8 of every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
    return codec, frames


def _vtest_frames(indices: set[int]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    with av.open(str(VTEST)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                out[i] = frame.to_ndarray(format="gray")
            if i >= max(indices):
                break
    return out


@pytest.mark.parametrize(("codec", "suffix"), [("hevc", ".mp4"), ("h264", ".mkv")])
def test_small_mosaic_round_trips(tmp_path: Path, codec: str, suffix: str) -> None:
    # 2 x 2 cells; the second row is cropped by the frame edge to 1000 - 576 = 424 rows.
    width, height, n_frames = 1536, 1000, 6
    out = build_mosaic_clip(
        VTEST,
        tmp_path / f"mosaic{suffix}",
        width=width,
        height=height,
        frames=n_frames,
        codec=codec,  # type: ignore[arg-type]
    )
    assert out.is_file()
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"

    decoded_codec, frames = _decode_gray(out)
    assert decoded_codec == codec
    assert len(frames) == n_frames
    assert all(f.shape == (height, width) for f in frames)

    first = frames[0].astype(np.float64)
    assert first.std() > 20, "frame looks blank"
    cells = [first[r * CELL_H : r * CELL_H + 424, c * CELL_W : (c + 1) * CELL_W] for r in (0, 1) for c in (0, 1)]
    for i in range(len(cells)):
        for j in range(i + 1, len(cells)):
            assert np.abs(cells[i] - cells[j]).mean() > 2, f"cells {i} and {j} show the same picture"

    # Cell i plays vtest from frame i * 795 // 4 at native scale: among nearby source frames the
    # decoded cell is closest to exactly that one (vtest is noisy, so neighbours differ clearly).
    starts = [i * VTEST_FRAMES // 4 for i in range(4)]
    t = n_frames - 1
    window = range(-3, 4)
    src = _vtest_frames({s + t + k for s in starts for k in window})
    last = frames[t].astype(np.float64)
    for i, start in enumerate(starts):
        r, c = divmod(i, 2)
        h = min(CELL_H, height - r * CELL_H)
        cell = last[r * CELL_H : r * CELL_H + h, c * CELL_W : (c + 1) * CELL_W]
        mae = {start + t + k: np.abs(cell - src[start + t + k][:h]).mean() for k in window}
        assert min(mae, key=mae.__getitem__) == start + t, f"cell {i}: MAE by source frame {mae}"
        assert mae[start + t] < 5, f"cell {i}: too far from vtest frame {start + t} ({mae[start + t]:.1f})"


def test_rejects_odd_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        build_mosaic_clip(VTEST, tmp_path / "x.mp4", width=1535, height=1000, frames=1)
