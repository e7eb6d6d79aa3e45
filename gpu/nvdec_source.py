"""NVDEC frame source: PyNvVideoCodec decode of a file or URL straight to GPU memory, native NV12.

``NvdecSource(uri).frames()`` yields ``Frame(meta, image, layout="nv12", device="gpu")`` where
``image`` is a (H*3/2, W) uint8 CuPy array in a slot of a :class:`gpu.ring.FrameRing`.

- Demux: ``PyNvVideoCodec.CreateDemuxer`` (FFmpeg inside: files, RTSP, HTTP).
- Decode: ``CreateDecoder(..., usedevicememory=True, outputColorType=NATIVE)`` on the source's CUDA
  stream. Live URLs use ``DisplayDecodeLatencyType.LOW`` with ``ENDOFPICTURE`` packets (frames come
  out as soon as they are decoded; cameras send no B-frames), files the native mode.
- Hand-over: the decoded surface is taken zero-copy (DLPack, else the planes' CUDA array
  interface) and copied once, on the GPU, into the next ring slot, because the decoder reuses its
  surfaces. Slots are allocated once and recycled.

Frame memory: leased (:mod:`gpu.ring`). ``Frame.lease`` is the slot's :class:`gpu.ring.SlotLease`:
the orchestrator holds it for the branches that took the frame and each branch releases it after
its last read (an event on its stream); the slot is not written again while a hold remains. When
every slot is held (branches behind decode by more than ``ring_depth`` frames) the decoded frame
is dropped, not written over a held one: counted in :attr:`NvdecSource.dropped_frames` and
reported as a ``drop`` event (the 1st and every 100th) through ``on_event(kind, message,
frame_index=None, data=None)`` (the PyAV source's signature), data ``{"reason": "ring_full",
"count": int, "ring_depth": int}``. A dropped frame keeps its index (indices and pts follow the
stream), so the frames delivered have a gap there. A frame nobody holds is valid until the ring
comes round to its slot again (``ring_depth`` frames later at the earliest).

Streams: the slot copy runs on the source's stream; without a given ``stream`` the source waits
for it (host, its own stream only) before it yields, so readers on any stream see the pixels.

Colour: ``Frame.colour`` is the stream's matrix and range (:class:`pipeline.preprocess.ColourSpec`),
read once at open by a PyAV probe of the container's codec parameters (files; a network stream
gets the rule for unspecified streams: BT.709 for HD, BT.601 for SD, limited range).

Errors: no CuPy / no device / no PyNvVideoCodec -> ``GpuUnavailableError`` (says how to switch to
the CPU decoder); missing, unreadable or corrupt input -> ``SourceError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from config.errors import SourceError
from gpu.imports import require, require_cuda_device
from gpu.ring import FrameRing, SlotLease
from pipeline.preprocess import ColourSpec, colour_from_av
from pipeline.sources import EventCallback, ignore_event, is_network_uri
from pipeline.types import Frame, FrameMeta

log = logging.getLogger("people_counter.decode")

_SWITCH = "set streams[].decoder: pyav to decode on the CPU"

_DROP_EVENT_EVERY = 100


def probe_colour(uri: str, width: int, height: int) -> ColourSpec:
    """The colour matrix and range a file's video stream declares (PyAV reads the container's
    codec parameters; no GPU needed); the rule for unspecified streams where it says nothing or
    cannot be read."""
    try:
        import av

        with av.open(uri) as container:
            cc = container.streams.video[0].codec_context
            color_range = cc.color_range
            if not color_range and cc.pix_fmt and cc.pix_fmt.startswith("yuvj"):
                color_range = 2  # the J formats are full range
            return colour_from_av(cc.colorspace, color_range, width, height)
    except Exception as exc:  # no PyAV, or a container it cannot read: the rule
        log.warning("nvdec: cannot read the colour metadata of %s (%s); using the rule for unspecified streams", uri, exc)
        return ColourSpec.default_for(width, height)


def import_nvc() -> Any:
    """``PyNvVideoCodec``, or a GpuUnavailableError that says how to decode on the CPU."""
    return require("PyNvVideoCodec", "NVDEC decode", f"pip install PyNvVideoCodec, or {_SWITCH}")


def _import_cupy() -> Any:
    return require_cuda_device("NVDEC decode", _SWITCH)


_RETIRED: list[Any] = []
"""Decoders of closed sources, kept alive until :func:`release_retired_decoders`."""


def release_after_sessions() -> int:
    """The shutdown order after every ONNX Runtime / TensorRT session of the process is closed:
    CuPy's pooled pinned buffers, then the decoders of closed sources
    (:func:`release_retired_decoders`). Returns how many decoders were released."""
    import cupy

    cupy.get_default_pinned_memory_pool().free_all_blocks()
    return release_retired_decoders()


def release_retired_decoders() -> int:
    """Destroy the decoders of closed sources; call it after every ONNX Runtime / TensorRT session
    of the process is closed (the shutdown order: sessions and bindings, pinned buffers, decoders,
    then the CUDA context at exit). Returns how many were released."""
    import gc

    n = len(_RETIRED)
    _RETIRED.clear()
    gc.collect()
    return n


class NvdecSource:
    """Decode ``uri`` with NVDEC into a GPU frame ring (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        *,
        stream_id: str = "cam0",
        loop: bool = False,
        gpu_id: int = 0,
        ring_depth: int = 8,
        low_latency: bool | None = None,
        stream: Any = None,
        max_frames: int | None = None,
        on_event: EventCallback = ignore_event,
    ) -> None:
        self.uri = uri
        self.on_event = on_event
        self.stream_id = stream_id
        self.loop = loop
        self.gpu_id = gpu_id
        self.ring_depth = ring_depth
        self.network = is_network_uri(uri)
        self.low_latency = self.network if low_latency is None else low_latency
        self.max_frames = max_frames
        self._given_stream = stream
        self.stream: Any = None
        self.ring: FrameRing | None = None
        self._nvc: Any = None
        self._demuxer: Any = None
        self._decoder: Any = None
        self._rt: Any = None
        self.width = 0
        self.height = 0
        self.fps = 0.0
        self.surface_path = ""
        """How decoded surfaces are read: "dlpack" or "planes" (set at the first frame)."""
        self.colour: ColourSpec | None = None
        """The stream's YUV matrix and range (set at open; every frame carries it)."""
        self.dropped_frames = 0
        """Decoded frames dropped because every ring slot was still held by a reader."""

    def __enter__(self) -> NvdecSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        cp = _import_cupy()
        self._nvc = import_nvc()
        if not self.network and not Path(self.uri).is_file():
            raise SourceError(f"video file not found: {self.uri}")
        with cp.cuda.Device(self.gpu_id):
            self.stream = self._given_stream or cp.cuda.Stream(non_blocking=True)
        self._open_demuxer()
        self.ring = FrameRing((self.height * 3 // 2, self.width), self.ring_depth, device_id=self.gpu_id)
        self.colour = (
            ColourSpec.default_for(self.width, self.height) if self.network else probe_colour(self.uri, self.width, self.height)
        )
        log.info(
            "nvdec: %s %dx%d %.2f fps, %s latency, ring of %d slots, colour %s %s",
            self.uri, self.width, self.height, self.fps, "low" if self.low_latency else "native", self.ring_depth,
            self.colour.matrix, self.colour.range,
        )  # fmt: skip

    def _open_demuxer(self, with_decoder: bool = True) -> None:
        nvc = self._nvc
        try:
            self._demuxer = nvc.CreateDemuxer(self.uri)
            self.width, self.height = int(self._demuxer.Width()), int(self._demuxer.Height())
            self.fps = float(self._demuxer.FrameRate())
            codec = self._demuxer.GetNvCodecId()
        except Exception as exc:  # PyNvVideoCodec raises its own exception types (or RuntimeError)
            raise SourceError(f"cannot open {self.uri} for NVDEC: {exc}") from None
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise SourceError(f"{self.uri}: unsupported frame size {self.width}x{self.height} (NV12 needs even sizes)")
        if not with_decoder:
            return  # looping a file: the flushed decoder takes the same stream again
        latency = nvc.DisplayDecodeLatencyType.LOW if self.low_latency else nvc.DisplayDecodeLatencyType.NATIVE
        kwargs: dict[str, Any] = {
            "gpuid": self.gpu_id,
            "codec": codec,
            # The runtime's primary context (CuPy's and ONNX Runtime's): with 0 the decoder makes a
            # context of its own, and tearing that down at close broke ORT's pinned-memory frees
            # in later runs (CUDA error 800 in cudaFreeHost, seen on an H200).
            "cudacontext": int(_import_cupy().cuda.driver.ctxGetCurrent()),
            "cudastream": int(self.stream.ptr),
            "usedevicememory": True,
            "outputColorType": nvc.OutputColorType.NATIVE,
            "latency": latency,
        }
        try:
            self._decoder = nvc.CreateDecoder(**kwargs)
            _import_cupy().cuda.runtime.setDevice(self.gpu_id)  # see _decode
        except Exception as exc:
            raise SourceError(f"cannot create an NVDEC decoder for {self.uri} (codec {codec}): {exc}") from None

    def close(self) -> None:
        # The decoder is not destroyed here but retired (see release_retired_decoders): destroying
        # a PyNvVideoCodec decoder while ONNX Runtime CUDA sessions are alive made ORT abort the
        # process later in cudaFreeHost (CUDA error 800; 2 of 10 processes, H200, 2026-12-01).
        if self._decoder is not None:
            _RETIRED.append(self._decoder)
        self._decoder = None
        self._demuxer = None

    def _surface(self, decoded: Any) -> Any:
        """The decoded NV12 surface as a (H*3/2, W) CuPy view (zero-copy; may be pitched)."""
        cp = _import_cupy()
        h, w = self.height, self.width
        try:
            arr = cp.from_dlpack(decoded)
            if tuple(arr.shape) == (h * 3 // 2, w):
                self._note_path("dlpack", arr)
                return arr
        except Exception:  # older builds: no DLPack for NV12; use the planes below
            pass
        y_view, uv_view = decoded.cuda()[:2]
        y = cp.asarray(y_view).reshape(h, -1)[:, :w]
        uv = cp.asarray(uv_view).reshape(h // 2, -1)[:, :w]
        self._note_path("planes", y)
        return (y, uv)

    def _note_path(self, path: str, arr: Any) -> None:
        if not self.surface_path:
            self.surface_path = path
            log.info("nvdec: surfaces via %s, %s strides %s", path, arr.shape, arr.strides)

    def _to_slot(self, decoded: Any) -> tuple[Any, SlotLease] | None:
        """The decoded surface copied into a free slot, with its lease; None when every slot is held."""
        cp = _import_cupy()
        assert self.ring is not None
        got = self.ring.acquire(self.stream)
        if got is None:
            return None
        _, slot, lease = got
        with self.stream:
            surf = self._surface(decoded)
            if isinstance(surf, tuple):
                slot[: self.height] = surf[0]
                slot[self.height :] = surf[1]
            else:
                cp.copyto(slot, surf)
        return slot, lease

    def _drop(self, index: int) -> None:
        self.dropped_frames += 1
        n = self.dropped_frames
        if n == 1 or n % _DROP_EVENT_EVERY == 0:
            message = (
                f"{self.uri}: frame {index} dropped at decode: all {self.ring_depth} GPU frame slots are still "
                f"held by branches ({n} so far)"
            )
            log.warning(message)
            self.on_event("drop", message, frame_index=index, data={"reason": "ring_full", "count": n, "ring_depth": self.ring_depth})
        else:
            log.debug("frame %d dropped at decode: ring full (%d so far)", index, n)

    def _packets(self) -> Iterator[Any]:
        nvc = self._nvc
        for packet in self._demuxer:
            if self.low_latency:
                packet.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
            yield packet

    def _decode(self, packet: Any) -> list[Any]:
        out = list(self._decoder.Decode(packet))
        # PyNvVideoCodec pushes and pops the context around its calls; the thread's CUDA runtime
        # can be left with no current context, and the next ONNX Runtime call on this thread
        # (sequential branches, the warm-up) then fails in cudaFreeHost (error 800, "GPU=-1")
        # and aborts the process. Make the device's primary context current again.
        self._rt.setDevice(self.gpu_id)
        return out

    def _decode_all(self) -> Iterator[Any]:
        nvc = self._nvc
        self._rt = _import_cupy().cuda.runtime
        try:
            for packet in self._packets():
                yield from self._decode(packet)
            while True:  # flush the frames still in the decoder
                rest = self._decode(nvc.PacketData())
                if not rest:
                    break
                yield from rest
        except GeneratorExit:
            raise
        except Exception as exc:
            raise SourceError(f"NVDEC decode of {self.uri} failed: {exc}") from None

    def frames(self) -> Iterator[Frame]:
        if self._decoder is None:
            self.open()
        index = 0
        tb = 1.0 / self.fps if self.fps > 0 else 0.0
        while True:
            produced = 0
            for decoded in self._decode_all():
                got = self._to_slot(decoded)
                if got is None:
                    self._drop(index)
                else:
                    slot, lease = got
                    if self._given_stream is None:
                        self.stream.synchronize()
                    meta = FrameMeta(self.stream_id, index, index * tb, time.perf_counter(), self.width, self.height)
                    yield Frame(meta, slot, layout="nv12", device="gpu", colour=self.colour, lease=lease)
                index += 1
                produced += 1
                if self.max_frames is not None and index >= self.max_frames:
                    return
            if produced == 0 and index == 0:
                raise SourceError(f"{self.uri}: no frame could be decoded (corrupt or not a video?)")
            if not self.loop or self.network:
                return
            self._open_demuxer(with_decoder=False)
