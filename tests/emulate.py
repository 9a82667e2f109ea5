"""The Python side of the host emulators of the CUDA kernels (tests/<family>_emulate.cpp with
tests/emulate_io.h): build one, write a case directory (params.txt and raw .bin tensors), run it,
read its outputs back. The emulation lives in the tests only; the library ships no emulated
entry point."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "csrc" / "include"
CXX = shutil.which("g++") or shutil.which("c++")

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def build(family: str, tmp_path_factory, opt: str = "-O2") -> Path:
    """Compile tests/<family>_emulate.cpp (warnings are errors); skips without a C++ compiler."""
    if CXX is None:
        pytest.skip("no C++ compiler: cannot build the host emulation of the CUDA kernels")
    exe = tmp_path_factory.mktemp(f"{family}_emulate") / f"{family}_emulate"
    cmd = [CXX, "-std=c++17", opt, "-Wall", f"-I{INCLUDE}", str(ROOT / "tests" / f"{family}_emulate.cpp"), "-o",
           str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    assert "warning" not in res.stderr.lower(), res.stderr[-4000:]
    return exe


def span(t: torch.Tensor) -> torch.Tensor:
    """The elements from t's first one over its whole strided span, as a flat tensor."""
    n = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return torch.as_strided(t, (n,), (1,))


def write(path: Path, t: torch.Tensor) -> None:
    path.write_bytes(span(t).contiguous().view(torch.uint8).numpy().tobytes())


def read(path: Path, dtype: torch.dtype, shape: Sequence[int], stride: Sequence[int] | None = None) -> torch.Tensor:
    """A tensor of `shape` (with `stride`; default contiguous) from the raw elements in path."""
    flat = torch.frombuffer(bytearray(path.read_bytes()), dtype=dtype)
    if stride is None:
        stride = torch.empty(shape, device="meta").stride()
    return torch.as_strided(flat, tuple(shape), tuple(stride)).clone()


def run(exe: Path, d: Path, params: Iterable) -> list:
    """Write d/params.txt (floats as repr, so inf and nan come through), run exe on d, return its
    stdout lines (one per emulated kernel launch)."""
    (d / "params.txt").write_text(" ".join(repr(v) if isinstance(v, float) else str(int(v)) for v in params))
    res = subprocess.run([str(exe), str(d)], capture_output=True, text=True)
    assert res.returncode == 0, f"emulator failed ({res.returncode}): {res.stderr}"
    return res.stdout.splitlines()
