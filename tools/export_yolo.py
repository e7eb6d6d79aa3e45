#!/usr/bin/env python3
"""Export Ultralytics YOLO models to the ONNX layout the people counter reads.

Stand-alone tool: run it in YOUR OWN Ultralytics environment (``pip install
ultralytics onnx onnxslim onnxruntime``). It is not imported by the project and
Ultralytics is never a project dependency. docs/MODELS.md describes, tensor by
tensor, what the resulting files contain.

Examples::

    # Your trained weights (the usual case):
    python tools/export_yolo.py my-yolo26n-seg.pt --out models/

    # Random-weight stand-ins with the same architecture (no weight download),
    # as used for the project's local decoder checks:
    YOLO_OFFLINE=1 python tools/export_yolo.py yolo26n-seg.yaml yolov8n-seg.yaml \
        yolo26n.yaml --out .cache/models --inspect --sample
    YOLO_OFFLINE=1 python tools/export_yolo.py yolo26n-seg.yaml --static-batch 33 \
        --out .cache/models --inspect --sample

Every export uses ``format="onnx", imgsz=640, simplify=True, opset=17,
nms=False`` and, unless ``--static-batch`` is given, ``dynamic=True`` (batch,
height and width symbolic). ``nms=False`` matters for YOLO26: it selects the
NMS-free one-to-one head, whose output is already the final top-300 list.
With Ultralytics' default ``nms=None`` a YOLO26 ONNX export carries the
one-to-many head instead (the YOLOv8-style raw layout that needs NMS). Models
without a one-to-one head (YOLOv8, YOLO11) give the raw layout either way.

Options:
    --out DIR           where the .onnx files go (default: current directory)
    --static-batch N    export with a fixed batch N (dynamic=False); the file
                        is named <stem>-b<N>.onnx
    --seed S            torch seed for random weights built from a .yaml (0)
    --no-calibrate      skip the BatchNorm calibration of .yaml builds (see
                        calibrate_bn: without it random-weight outputs are
                        degenerate, all scores equal)
    --inspect           print inputs, outputs (symbolic dims), metadata and the
                        actual output shapes from onnxruntime on random input
    --sample            also save <out>/<file stem>.sample.npz holding a seeded
                        random input ("input") and the outputs ("output0"...)
    --nms {false,none}  ``none`` exports with Ultralytics' default nms=None
                        (raw one-to-many layout, for comparison)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def calibrate_bn(net, seed: int, batches: int = 2) -> None:
    """Give a freshly built (random-weight) network non-degenerate outputs.

    Straight from its .yaml, every BatchNorm holds mean 0 / var 1 while the real
    activations shrink layer after layer, so the heads see ~0 features: every
    class score equals the prior bias and boxes repeat, i.e. ties everywhere.
    One train-mode pass over seeded random images, with cumulative BN
    statistics, sets each BN's running mean/var to what it actually sees. The
    weights stay random; only the BN statistics change.
    """
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.rand(4, 3, 640, 640, generator=g))
    net.eval()


def export_one(
    source: str, out_dir: Path, static_batch: int | None, seed: int, nms: bool | None, calibrate: bool = True
) -> Path:
    """Export one model (a .pt checkpoint or an architecture .yaml) and return the .onnx path in out_dir."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)  # makes random weights of a .yaml build repeatable
    src = Path(source)
    stem = src.stem
    if static_batch:
        stem = f"{stem}-b{static_batch}"
    if nms is None:
        stem = f"{stem}-nmsnone"
    # Ultralytics writes a yaml build's export into the current directory and a
    # .pt's export beside the .pt; a temp copy keeps both away from the source.
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        if src.suffix == ".pt":
            shutil.copy(src, Path(tmp) / src.name)
            source = str(Path(tmp) / src.name)
        os.chdir(tmp)
        try:
            model = YOLO(source)
            if src.suffix != ".pt" and calibrate:
                calibrate_bn(model.model, seed)
            kwargs = dict(format="onnx", imgsz=640, simplify=True, opset=17, nms=nms)
            if static_batch:
                kwargs.update(dynamic=False, batch=static_batch)
            else:
                kwargs.update(dynamic=True)
            produced = Path(model.export(**kwargs)).resolve()  # may be relative to tmp
        finally:
            os.chdir(cwd)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{stem}.onnx"
        shutil.move(str(produced), target)
    return target


def _dims(value_info) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def inspect(path: Path, sample: bool, seed: int) -> None:
    """Print the ONNX interface and run it with onnxruntime (CPU) on random input."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path), load_external_data=False)
    print(f"== {path.name}  ({path.stat().st_size:,} bytes, opset {m.opset_import[0].version}, IR {m.ir_version})")
    for i in m.graph.input:
        print(f"  input  {i.name}: {_dims(i)} {onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type)}")
    for o in m.graph.output:
        print(f"  output {o.name}: {_dims(o)} {onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type)}")
    for p in m.metadata_props:
        print(f"  meta   {p.key} = {p.value[:200]}{'...' if len(p.value) > 200 else ''}")

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    batches = [fixed_batch] if fixed_batch else [1, 2]
    rng = np.random.default_rng(seed)
    for b in batches:
        x = rng.random((b, 3, 640, 640), dtype=np.float32)
        outs = sess.run(None, {inp.name: x})
        shapes = ", ".join(f"{o.name}{list(v.shape)}" for o, v in zip(sess.get_outputs(), outs, strict=True))
        print(f"  run batch {b}: {shapes}")
    if sample:
        x = np.random.default_rng(seed).random((batches[0], 3, 640, 640), dtype=np.float32)
        outs = sess.run(None, {inp.name: x})
        npz = path.with_suffix(".sample.npz")
        np.savez_compressed(npz, input=x, **{o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)})
        print(f"  sample saved: {npz}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help=".pt checkpoints or Ultralytics architecture .yaml names")
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--static-batch", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inspect", action="store_true")
    ap.add_argument("--sample", action="store_true")
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--nms", choices=["false", "none"], default="false")
    a = ap.parse_args(argv)
    a.out = a.out.resolve()
    for s in a.sources:
        t0 = time.perf_counter()
        path = export_one(s, a.out, a.static_batch, a.seed, False if a.nms == "false" else None, not a.no_calibrate)
        print(f"exported {s} -> {path} in {time.perf_counter() - t0:.1f} s")
        if a.inspect or a.sample:
            inspect(path, a.sample, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
