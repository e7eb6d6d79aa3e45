"""NVDEC source on the 4K demo clip: frame count, shape, pixels against FFmpeg (PyAV), the ring."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.errors import SourceError
from config.schema import FusionConfig
from gpu.events import to_host
from models.branch import Decoded, run_branch
from pipeline.orchestrator import Orchestrator
from pipeline.types import Detections, Frame
from tests.gpu.conftest import asset
from tests.gpu.test_ring import spin_copy
from tests.timed_branches import sum_combine

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


class _DecodeCopies:
    """The NVDEC source, keeping a host copy of each frame as it leaves the decoder (the slot is
    fresh then): what a later read of the frame must still see."""

    def __init__(self, src: Any, cp: Any) -> None:
        self.src = src
        self.cp = cp
        self.copies: dict[int, np.ndarray] = {}

    def __enter__(self) -> _DecodeCopies:
        self.src.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.src.__exit__(*exc)

    def frames(self) -> Any:
        for frame in self.src.frames():
            self.copies[frame.meta.frame_index] = self.cp.asnumpy(frame.image)
            yield frame


class _HeldBranch:
    """A branch on the real skeleton that blocks before preprocessing frame 0 until ``gate`` is
    set, then reads each frame late on its own stream (a queued copy behind a GPU wait)."""

    every_n_frames = 1

    def __init__(self, cp: Any, gate: threading.Event) -> None:
        self.name = "held"
        self.cp = cp
        self.gate = gate
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.read: dict[int, np.ndarray] = {}

    def run(self, frame: Frame) -> Any:
        return run_branch(self.name, frame, self._prepare, lambda p: ({}, {}), self._decode, stream=self.stream)

    def _prepare(self, frame: Frame) -> tuple[int, Any]:
        if frame.meta.frame_index == 0:
            assert self.gate.wait(120), "the test never opened the gate"
        out = self.cp.empty_like(frame.image)
        spin_copy(self.cp, frame.image, out, self.stream, ms=5.0)  # the read lags on the GPU
        return frame.meta.frame_index, out

    def _decode(self, prepared: tuple[int, Any], outputs: dict[str, Any]) -> Decoded:
        index, out = prepared
        self.read[index] = to_host(out)
        return Decoded(detections=Detections.empty())

    def cancel(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_held_slots_are_not_overwritten_and_the_decoder_drops_instead(cp: Any, nvc: Any) -> None:
    """Issue 8: a branch holds frame 0 (blocked before preprocessing) and three queued frames
    while NVDEC decodes on; the ring has 4 slots. No held slot is written: every frame the branch
    reads has its own pixels (compared with a copy taken at decode), and the frames that found
    every slot held are dropped at decode, counted and reported."""
    from gpu.nvdec_source import NvdecSource

    clip = asset(*CLIP)
    events: list[tuple[str, int | None, dict[str, Any]]] = []
    gate = threading.Event()
    nv = NvdecSource(
        str(clip), ring_depth=4, max_frames=60,
        on_event=lambda kind, message, frame_index=None, data=None: events.append((kind, frame_index, dict(data or {}))),
    )  # fmt: skip
    source = _DecodeCopies(nv, cp)
    branch = _HeldBranch(cp, gate)
    # queues longer than the ring, so the held branch keeps more frames than there are slots
    cfg = FusionConfig(queue_size=8, live_queue_size=8, strict_sync_timeout_ms=120_000.0)
    with Orchestrator(source, [branch], sum_combine, cfg, on_full="drop", poll_interval_s=0.005) as orch:
        deadline = time.monotonic() + 60
        while nv.dropped_frames < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert nv.dropped_frames >= 5, "the decoder never found the ring full"
        gate.set()
        assert orch.wait(120)
    st = orch.status
    assert st.state == "FINISHED", st.error
    assert st.frames_decoded + nv.dropped_frames == 60
    assert set(branch.read) == set(source.copies)  # the branch read every frame it was given
    for i, pixels in branch.read.items():
        assert np.array_equal(pixels, source.copies[i]), f"frame {i}: its slot was overwritten while held"
    drops = [e for e in events if e[0] == "drop"]
    assert drops and drops[0][2]["reason"] == "ring_full" and drops[0][2]["count"] == 1
    assert drops[0][1] == 4  # the first frame that found all 4 slots held
    assert nv.ring is not None and nv.ring.holds() == [0, 0, 0, 0]


def test_frames_carry_the_stream_colour(cp: Any, nvc: Any) -> None:
    from gpu.nvdec_source import NvdecSource
    from pipeline.preprocess import ColourSpec

    with NvdecSource(str(asset(*CLIP)), max_frames=2) as src:
        frames = list(src.frames())
    assert src.colour == ColourSpec("bt709", "limited")  # unspecified matrix, 4K: BT.709; MPEG range
    assert all(f.colour == src.colour and f.lease is not None for f in frames)


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
