"""Bad input through the real command line (issue 9, point 7): every case stops with its exit code
and ONE error line, without a traceback.

Each case runs ``main.py`` in a subprocess on real files: broken config files, bad zones and class
ids, a real ONNX model with one class, and real ONNX models whose outputs are NaN or Inf on the
demo video. Load-time cases (arguments, config, model load) leave nothing else on stderr; run-time
cases (a model's outputs, a zone that does not fit the frame) stop the run after its first frame,
with the pipeline's log lines around the one error line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".cache/assets"
VTEST = ASSETS / "video/vtest.avi"
DETECTOR = ASSETS / "models/person_yolov8s.onnx"
CSRNET = ASSETS / "models/csrnet_fp32.onnx"
HAVE_ASSETS = VTEST.exists() and DETECTOR.exists() and CSRNET.exists()


def write_config(folder: Path, **changes: object) -> Path:
    """The shipped config on 2 frames of vtest, the demo models, ``changes`` at dotted keys."""
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["streams"][0]["uri"] = str(VTEST)
    data["models"]["person"]["path"] = str(DETECTOR)
    data["models"]["density"]["path"] = str(CSRNET)
    data["storage"]["db_path"] = str(folder / "people.db")
    data["max_frames"] = 2
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_bytes(folder: Path, content: bytes) -> Path:
    path = folder / "pipeline.yaml"
    path.write_bytes(content)
    return path


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def yolo_onnx(path: Path, rows: int, value: float) -> Path:
    """A YOLOv8-shaped model [1, 3, 640, 640] -> [1, rows, 8400] (rows = 4 + classes), every
    output the input's mean times ``value`` (NaN or Inf make every output NaN or Inf)."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, rows, 8400])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, rows, 8400])
    v = helper.make_tensor("v", TensorProto.FLOAT, [], [value])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "v"], ["mv"]),
        helper.make_node("Expand", ["mv", "shape"], ["output0"]),
    ]
    return _save(helper.make_graph(nodes, "yolo", [inp], [out], initializer=[shape, v]), path)


def density_onnx(path: Path, value: float) -> Path:
    """A CSRNet-shaped model [B, 3, H, W] -> [B, 1, H/8, W/8]: the 8x8 mean times ``value``."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, "h", "w"])
    out = helper.make_tensor_value_info("density", TensorProto.FLOAT, ["b", 1, "h8", "w8"])
    v = helper.make_tensor("v", TensorProto.FLOAT, [], [value])
    nodes = [
        helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("ReduceMean", ["p"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["r", "v"], ["density"]),
    ]
    return _save(helper.make_graph(nodes, "density", [inp], [out], initializer=[v]), path)


ONLY_GLOBAL = {"branches.yolo_tiles.enabled": False, "branches.density.enabled": False}
SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]


@dataclass(frozen=True)
class Case:
    """One bad input: ``make(folder) -> command line after main.py``; what it must give."""

    make: Callable[[Path], list[str]]
    exit_code: int
    message: str
    phase: str = "config"
    """args / config / load: nothing but the error line on stderr; run: stops after a frame."""


def headless(path: Path, *extra: str) -> list[str]:
    return ["headless", "--config", str(path), "--quiet", *extra]


def zones(*zs: dict[str, object]) -> Callable[[Path], list[str]]:
    return lambda d: headless(write_config(d, **{"counting.zones": list(zs)}))


CASES: dict[str, Case] = {
    # the command line
    "max-frames-negative": Case(lambda d: headless(write_config(d), "--max-frames", "-5"), 2,
                                "main.py headless: error: argument --max-frames: expected a whole number >= 1, got -5", "args"),
    "max-frames-zero": Case(lambda d: headless(write_config(d), "--max-frames", "0"), 2,
                            "expected a whole number >= 1, got 0; leave the option out to run to the end", "args"),
    "max-frames-text": Case(lambda d: headless(write_config(d), "--max-frames", "ten"), 2,
                            "expected a whole number >= 1, got 'ten'", "args"),
    "bench-frames-zero": Case(lambda d: ["bench", "--config", str(write_config(d)), "--frames", "0"], 2,
                              "main.py bench: error: argument --frames: expected a whole number >= 1, got 0", "args"),
    "unknown-option": Case(lambda d: headless(write_config(d), "--frame-limit", "3"), 2, "unrecognized arguments: --frame-limit 3", "args"),
    # the config file itself
    "binary-config": Case(lambda d: headless(write_bytes(d, b"\xff\xfe\x00\x01\x80\x81 garbage")), 2,
                          "pipeline.yaml: not a UTF-8 text file (byte 0xff at offset 0)"),
    "latin-1-config": Case(lambda d: headless(write_bytes(d, "# caméra\nstreams: []\n".encode("latin-1"))), 2,
                           "not a UTF-8 text file (byte 0xe9 at offset 5)"),
    "nul-bytes-config": Case(lambda d: headless(write_bytes(d, b"\x00\x00\x00")), 2, "not valid YAML: unacceptable character #x0000"),
    "empty-config": Case(lambda d: headless(write_bytes(d, b"")), 2, "pipeline.yaml: the file is empty"),
    "list-config": Case(lambda d: headless(write_bytes(d, b"- streams\n- models\n")), 2,
                        "the top level must be a mapping of keys, got list"),
    "scalar-config": Case(lambda d: headless(write_bytes(d, b"hello\n")), 2, "the top level must be a mapping of keys, got str"),
    "missing-config": Case(lambda d: headless(d / "nope.yaml"), 2, "nope.yaml: config file not found"),
    "directory-config": Case(lambda d: headless(d), 2, "is a directory; pass the pipeline config file itself"),
    "yaml-syntax": Case(lambda d: headless(write_bytes(d, b"streams: [\n")), 2, "not valid YAML: expected the node content"),
    "duplicate-key": Case(lambda d: headless(write_bytes(d, b"max_frames: 3\nmax_frames: 4\n")), 2,
                          "not valid YAML: key 'max_frames' is given twice in one mapping at line 2"),
    "required-keys-missing": Case(lambda d: headless(write_bytes(d, b"max_frames: 3\n")), 2,
                                  "4 invalid setting(s): streams: required key is missing; models: required key is missing"),
    "binary-log-config": Case(lambda d: [*headless(write_config(d)), "--log-config", str(write_bytes(d / "..", b"\xff\xff"))], 2,
                              "not a UTF-8 text file (byte 0xff at offset 0); the log config is YAML text"),
    # zones
    "duplicate-zone-names": Case(zones({"name": "door", "polygon": SQUARE}, {"name": "door", "polygon": SQUARE}), 2,
                                 "counting: zones 0 and 1 are both named 'door'"),
    "zone-two-points": Case(zones({"name": "door", "polygon": [[0, 0], [10, 0]]}), 2,
                            "counting.zones.0.polygon: List should have at least 3 items"),
    "zone-nan": Case(zones({"name": "door", "polygon": [[0, 0], [float("nan"), 0], [10, 10]]}), 2,
                     "counting.zones.0: zone 'door': polygon points must be finite numbers"),
    "zone-collinear": Case(zones({"name": "door", "polygon": [[0, 0], [5, 5], [10, 10]]}), 2, "zone 'door': polygon [[0.0, 0.0], [5.0, 5.0], [10.0, 10.0]] encloses no area"),
    "zone-negative": Case(zones({"name": "door", "polygon": [[-1, 0], [10, 0], [10, 10]]}), 2, "lie outside the frame (x, y >= 0)"),
    "zone-normalized-above-1": Case(zones({"name": "door", "polygon": [[0, 0], [2, 0], [1, 1]], "units": "normalized"}), 2,
                                    "normalized units are 0..1"),
    "zone-outside-the-frame": Case(lambda d: headless(write_config(d, **ONLY_GLOBAL, **{"counting.zones": [
                                       {"name": "door", "polygon": [[0, 0], [1000, 0], [1000, 576], [0, 576]]}]})), 2,
                                   "ConfigError: counting.zones 'door': polygon point (1000, 0) lies outside the 768x576 frame", "run"),
    # models
    "person-class-negative": Case(lambda d: headless(write_config(d, **{"models.person.person_classes": [-1]})), 2,
                                  "models.person: person_classes [-1]: class ids start at 0"),
    "one-class-model": Case(lambda d: headless(write_config(d, **{"models.person.path": str(yolo_onnx(d / "one.onnx", 5, 0.0))})), 4,
                            "one.onnx) has 1 class (ids 0..0) but person_classes is [0, 1]: [1] out of range; "
                            "set models.person.person_classes to ids in 0..0", "load"),
    "nan-detector": Case(lambda d: headless(write_config(d, **ONLY_GLOBAL, **{"models.person.path": str(yolo_onnx(d / "nan.onnx", 6, float("nan")))})), 4,
                         "branch yolo_global failed on frame 0: ModelLoadError: YOLO model ", "run"),
    "inf-density": Case(lambda d: headless(write_config(d, **{"branches.yolo_tiles.enabled": False,
                                                               "models.density.path": str(density_onnx(d / "inf.onnx", float("inf")))})), 4,
                        "branch density failed on frame 0: ModelLoadError: density model ", "run"),
}
NEEDS_ASSETS = {"one-class-model", "nan-detector", "inf-density", "zone-outside-the-frame"}
"""The cases that read a frame or load a model (the others stop before)."""

_RESULTS: dict[str, subprocess.CompletedProcess[str]] = {}


@pytest.fixture
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, subprocess.CompletedProcess[str]]:
    """The case's CLI run, once per case for the tests below."""
    name: str = request.param
    if name in NEEDS_ASSETS and not HAVE_ASSETS:
        pytest.skip("demo assets not fetched (run `make run` or `python main.py fetch-assets`)")
    case = CASES[name]
    if name not in _RESULTS:
        folder = tmp_path_factory.mktemp(name) / "case"
        folder.mkdir()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        _RESULTS[name] = subprocess.run([sys.executable, "main.py", *case.make(folder)], cwd=ROOT, capture_output=True,
                                        text=True, timeout=240, env=env)  # fmt: skip
    return case, _RESULTS[name]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ") or (line.startswith("main.py") and ": error: " in line)]


@pytest.mark.parametrize("outcome", list(CASES), indirect=True)
def test_bad_input_gives_its_exit_code_and_one_error_line(outcome: tuple[Case, subprocess.CompletedProcess[str]]) -> None:
    case, proc = outcome
    assert proc.returncode == case.exit_code, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert case.message in lines[0], lines[0]
    if case.phase in ("args", "config"):
        assert proc.stderr.strip() == lines[0], "nothing but the error line"
    if case.phase == "run":
        assert lines[0].startswith("error: pipeline failed: ")
    assert "Traceback" not in proc.stdout




@pytest.mark.parametrize("outcome", list(CASES), indirect=True)
def test_bad_input_prints_no_traceback(outcome: tuple[Case, subprocess.CompletedProcess[str]]) -> None:
    _, proc = outcome
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.skipif(not HAVE_ASSETS, reason="demo assets not fetched")
def test_nan_detector_names_the_model_file_and_the_count(tmp_path: Path) -> None:
    """The one line says which model, which output, how many values and what to do; the run is
    stored as failed (a model that outputs NaN on every frame would otherwise count 0 people)."""
    import sqlite3

    model = yolo_onnx(tmp_path / "nan.onnx", 6, float("nan"))
    cfg = write_config(tmp_path, **ONLY_GLOBAL, **{"models.person.path": str(model)})
    proc = subprocess.run([sys.executable, "main.py", *headless(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 4
    (line,) = _error_lines(proc.stderr)
    assert (f"YOLO model {model}: output 'output0' [1, 6, 8400] holds 50400 NaN and 0 infinite values of 50400: "
            "a model must output finite numbers") in line  # fmt: skip
    with sqlite3.connect(tmp_path / "people.db") as con:
        (status,) = con.execute("select status from runs").fetchone()
        counted = con.execute("select count(*) from frames where fused_count = 0").fetchone()[0]
    assert status == "failed"
    assert counted == 0, "no frame is stored as 0 people"
