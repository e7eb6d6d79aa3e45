"""GPU tests: every test here is marked ``gpu`` and skips where CuPy or a CUDA device is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _cupy_or_none() -> Any:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, or CUDARuntimeError without a driver
        return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def cp() -> Any:
    """The ``cupy`` module on a machine with a CUDA device; skips elsewhere."""
    mod = _cupy_or_none()
    if mod is None:
        pytest.skip("needs CuPy and a CUDA device (run `pytest -m gpu` on the GPU machine)")
    return mod


def asset(*candidates: str) -> Path:
    """The first existing path among ``candidates`` (relative to the repo root), else skip."""
    root = Path(__file__).resolve().parents[2]
    for c in candidates:
        p = root / c
        if p.is_file():
            return p
    pytest.skip(f"asset not found: {candidates} (fetch with `python -m app.assets`)")
