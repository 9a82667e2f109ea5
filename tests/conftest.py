"""Test setup: the repository root on sys.path (tests run from a checkout, installed or not)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vendoring_helpers import install_prefix  # noqa: E402,F401  (the CMake package, for tests/test_vendoring*.py)

import medkernels  # noqa: E402,F401  (sets TRITON_INTERPRET before any Triton kernel is defined)


def _needs_gpu(item) -> bool:
    """A test that exercises a GPU: a cuda or triton backend parameter, or a skip-without-a-GPU mark."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(isinstance(v, str) and v in ("cuda", "triton") for v in params.values()):
        return True
    import torch

    no_gpu = not torch.cuda.is_available()
    # skipped exactly when there is no GPU (a test that needs one, not one that checks the CPU-only error)
    return any(m.args and isinstance(m.args[0], bool) and m.args[0] == no_gpu
               and any(w in str(m.kwargs.get("reason", "")) for w in ("GPU", "CUDA", "cuda"))
               for m in item.iter_markers("skipif"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: exercises a GPU (cuda/triton backend or needs a CUDA device); "
                            "benchmarks/gpu_suite.sh runs these first")


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if _needs_gpu(item):
            item.add_marker(pytest.mark.gpu)
