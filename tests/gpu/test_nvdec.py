"""NVDEC source on the 4K demo clip: frame count, shape, pixels against FFmpeg (PyAV), the ring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.errors import SourceError
from tests.gpu.conftest import asset

CLIP = (".devcarry/v/demo_4k_hevc.mp4", ".cache/assets/video/demo_4k_hevc.mp4")


@pytest.fixture(scope="module")
def nvc(cp: Any) -> Any:
    return pytest.importorskip("PyNvVideoCodec", reason="PyNvVideoCodec not installed (stage it on the GPU machine)")


def pyav_nv12(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    av = pytest.importorskip("av", reason="PyAV gives the reference decode")
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                f = frame.reformat(format="nv12")
                h, w = f.height, f.width
                y = np.frombuffer(f.planes[0], np.uint8).reshape(h, -1)[:, :w]
                uv = np.frombuffer(f.planes[1], np.uint8).reshape(h // 2, -1)[:, :w]
                out[i] = np.concatenate([y, uv])
    return out


def test_decodes_4k_clip_bit_exact_against_ffmpeg(cp: Any, nvc: Any) -> None:
    from gpu.nvdec_source import NvdecSource

    clip = asset(*CLIP)
    picks = {0, 1, 57, 119}
    got: dict[int, np.ndarray] = {}
    n = 0
    with NvdecSource(str(clip)) as src:
        for frame in src.frames():
            assert frame.layout == "nv12" and frame.device == "gpu"
            assert frame.image.shape == (2160 * 3 // 2, 3840) and frame.image.dtype == cp.uint8
            assert frame.meta.frame_index == n
            if n in picks:
                got[n] = cp.asnumpy(frame.image)
            n += 1
    assert n == 120, f"decoded {n} frames, the clip has 120"
    ref = pyav_nv12(clip, picks)
    for i in sorted(picks):
        diff = np.abs(got[i].astype(np.int16) - ref[i].astype(np.int16))
        assert int(diff.max()) == 0, f"frame {i}: NVDEC and FFmpeg differ, max abs {int(diff.max())}, {int((diff > 0).sum())} bytes"


def test_ring_slots_are_recycled_not_reallocated(cp: Any, nvc: Any) -> None:
    from gpu.nvdec_source import NvdecSource

    clip = asset(*CLIP)
    with NvdecSource(str(clip), ring_depth=4, max_frames=13) as src:
        assert src.ring is not None
        slots = src.ring.slot_pointers()
        ptrs = [int(f.image.data.ptr) for f in src.frames()]
        assert src.ring.slot_pointers() == slots
    assert len(ptrs) == 13
    assert ptrs == [slots[i % 4] for i in range(13)]


def test_ring_release_orders_the_next_writer(cp: Any) -> None:
    from gpu.ring import FrameRing

    ring = FrameRing((6, 4), depth=2)
    writer = cp.cuda.Stream(non_blocking=True)
    reader = cp.cuda.Stream(non_blocking=True)
    i, slot = ring.acquire(writer)
    with writer:
        slot.fill(7)
    writer.synchronize()
    with reader:
        seen = slot.sum()
    ring.release(i, reader)
    ring.acquire(writer)
    j, again = ring.acquire(writer)
    assert j == i and int(again.data.ptr) == int(slot.data.ptr)
    with writer:
        again.fill(1)
    writer.synchronize()
    assert int(seen.get()) == 7 * 24


def test_missing_file_is_a_source_error(cp: Any, nvc: Any, tmp_path: Path) -> None:
    from gpu.nvdec_source import NvdecSource

    with pytest.raises(SourceError, match="not found"):
        NvdecSource(str(tmp_path / "nope.mp4")).open()


def test_corrupt_file_is_a_source_error(cp: Any, nvc: Any, tmp_path: Path) -> None:
    from gpu.nvdec_source import NvdecSource

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError), NvdecSource(str(bad)) as src:
        for _ in src.frames():
            pass
