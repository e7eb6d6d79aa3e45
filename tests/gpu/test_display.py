"""The window's picture on the GPU path (gpu.display.DisplayCopier): a display-sized host RGB copy
of NVDEC frames, against the CPU path's picture of the same frame, and through the orchestrator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from config.schema import FusionConfig
from pipeline.orchestrator import MemorySink, Orchestrator
from pipeline.preprocess import NumpyPreprocessor
from pipeline.sources import PyAVSource
from tests.gpu.conftest import asset
from tests.timed_branches import sum_combine

CLIP = (".devcarry/v/demo_4k_hevc.mp4", ".cache/assets/video/demo_4k_hevc.mp4")


@pytest.fixture(scope="module")
def nvc(cp: Any) -> Any:
    return pytest.importorskip("PyNvVideoCodec", reason="PyNvVideoCodec not installed (stage it on the GPU machine)")


def test_the_picture_of_a_4k_frame_is_1280x720_and_matches_the_cpu_path(cp: Any, nvc: Any) -> None:
    from gpu.display import DisplayCopier
    from gpu.nvdec_source import NvdecSource

    clip = asset(*CLIP)
    copier = DisplayCopier()
    with NvdecSource(str(clip), max_frames=1) as src:
        frame = next(iter(src.frames()))
        picture = copier(frame)
    assert picture.shape == (720, 1280, 3) and picture.dtype == np.uint8 and isinstance(picture, np.ndarray)
    with PyAVSource(str(clip), stream_id="ref") as src:
        host = next(iter(src.frames()))
    ref = NumpyPreprocessor(copier.spec(host.meta.width, host.meta.height)).run(host).tensor[0]
    ref = np.clip(ref * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    diff = np.abs(picture.astype(np.int16) - ref.astype(np.int16))
    assert float(diff.mean()) <= 3.0 and float(np.percentile(diff, 99)) <= 16, (float(diff.mean()), float(np.percentile(diff, 99)))
    assert picture.std() > 10  # a real picture, not a flat one


def test_the_orchestrator_publishes_the_picture_of_each_gpu_frame_only_when_asked(cp: Any, nvc: Any) -> None:
    from gpu.display import DisplayCopier
    from gpu.nvdec_source import NvdecSource

    clip = asset(*CLIP)
    for publish in (True, False):
        sink = MemorySink()
        orch = Orchestrator(
            NvdecSource(str(clip), max_frames=6), [], sum_combine, FusionConfig(), sinks=(sink,),
            on_full="wait", publish_images=publish, display_copy=DisplayCopier(),
        )
        with orch:
            orch.wait()
        assert len(sink.results) == 6
        shapes = {None if r.frame_image is None else r.frame_image.shape for r in sink.results}
        assert shapes == ({(720, 1280, 3)} if publish else {None})
