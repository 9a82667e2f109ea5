"""pytest-benchmark over the same cases as ``python -m medkernels.bench``:

    python -m pytest benchmarks/ --benchmark-only [-k decomp_conv]

Each (suite, case, provider) is one benchmark; the cases come from each
``benchmarks/bench_<family>.py`` unchanged, so both runners time the same thing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import medkernels  # noqa: E402,F401

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL = os.environ.get("PYTEST_BENCH_FULL") == "1"  # read by this runner only, not the package


def _params():
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"mk_bench_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for case in mod.cases(DEVICE, FULL):
            for name, fn in case.providers.items():
                cid = f"{case.op}|{case.shape}|{str(case.dtype).replace('torch.', '')}|{name}"
                yield pytest.param(fn, id=cid.replace(" ", "_"))


@pytest.mark.parametrize("fn", list(_params()))
def test_benchmark(benchmark, fn):
    if DEVICE.type == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(fn)
