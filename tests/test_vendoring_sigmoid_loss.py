"""Vendoring the pairwise sigmoid loss: the C ABI (forward, backward, CUDA entry points, params form)
against the reference, and the header-only CUDA launchers linking without the library."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from vendoring_helpers import NVCC, ROOT, ctypes_lib, ptr


@pytest.mark.parametrize("positives", ["diagonal", "labels", "mask"])
def test_capi_sigmoid_loss_matches_the_reference(install_prefix, positives):
    import ctypes
    import math

    import torch

    from medkernels import ops

    lib = ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_sigmoid_loss_fwd_f64"):
        pytest.skip("this libmedkernels_capi predates the sigmoid loss entry points")
    rng = np.random.default_rng(37)
    n, d = 6, 16
    x, y = (rng.standard_normal((n, d)) for _ in range(2))
    labels = np.array([0, 1, 1, 2, 0, 3])
    mask = (rng.random((n, n)) < 0.3).astype(np.uint8)
    t_prime, bias = math.log(10.0), -10.0
    loss = np.zeros(1)
    mode = {"diagonal": 0, "labels": 1, "mask": 2}[positives]
    st = lib.mk_sigmoid_loss_fwd_f64(ptr(x), ptr(y), ctypes.c_int64(n), ctypes.c_int64(n), ctypes.c_int64(d), None,
                                     None, ctypes.c_double(10.0), ctypes.c_double(bias), ctypes.c_int(0),
                                     ctypes.c_int(mode), ctypes.c_int64(0), ptr(labels), ptr(labels), ptr(mask),
                                     None, ptr(loss))
    assert st == 0, lib.mk_last_error()
    kw = {"labels": torch.from_numpy(labels)} if positives == "labels" else (
        {"positive_mask": torch.from_numpy(mask.astype(bool))} if positives == "mask" else {})
    want = ops.sigmoid_loss(torch.from_numpy(x), torch.from_numpy(y), t_prime, bias, reduction="sum",
                            backend="reference", **kw)
    np.testing.assert_allclose(loss[0], float(want), rtol=1e-12)
    # positives=labels without labels: the documented error
    st = lib.mk_sigmoid_loss_fwd_f64(ptr(x), ptr(y), ctypes.c_int64(n), ctypes.c_int64(n), ctypes.c_int64(d), None,
                                     None, ctypes.c_double(10.0), ctypes.c_double(bias), ctypes.c_int(0),
                                     ctypes.c_int(1), ctypes.c_int64(0), None, None, None, None, ptr(loss))
    assert st == 1 and b"labels" in lib.mk_last_error()


def test_capi_sigmoid_loss_backward_matches_autograd(install_prefix):
    import ctypes
    import math

    import torch

    from medkernels import ops

    lib = ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_sigmoid_loss_bwd_f64"):
        pytest.skip("this libmedkernels_capi predates the sigmoid loss backward")
    rng = np.random.default_rng(59)
    n, m, d = 5, 7, 8
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    lx, ly = rng.integers(0, 3, n), rng.integers(0, 3, m)
    gx, gy, gt, gb = np.empty_like(x), np.empty_like(y), np.zeros(1), np.zeros(1)
    st = lib.mk_sigmoid_loss_bwd_f64(ptr(x), ptr(y), ctypes.c_int64(n), ctypes.c_int64(m), ctypes.c_int64(d), None,
                                     None, ctypes.c_double(math.exp(1.5)), ctypes.c_double(-2.0), ctypes.c_int(0),
                                     ctypes.c_int(1), ctypes.c_int64(0), ptr(lx), ptr(ly), None, None,
                                     ctypes.c_double(0.5), ptr(gx), None, ptr(gy), None, ptr(gt), ptr(gb))
    assert st == 0, lib.mk_last_error()
    tx, ty = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).requires_grad_()
    tt, tb = torch.tensor(1.5, dtype=torch.float64, requires_grad=True), torch.tensor(-2.0, dtype=torch.float64,
                                                                                   requires_grad=True)
    loss = ops.sigmoid_loss(tx, ty, tt, tb, labels=torch.from_numpy(lx), labels_y=torch.from_numpy(ly),
                            reduction="sum", backend="reference")
    (0.5 * loss).backward()
    for got, want in ((gx, tx), (gy, ty), (gt[0], tt), (gb[0], tb)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_capi_sigmoid_loss_cuda_entry_points(install_prefix):
    """The _cuda sigmoid-loss entry points exist for every dtype; the workspace query matches the kernels'
    plan; without a GPU a call returns a status (MK_UNSUPPORTED from a CPU build) and never aborts."""
    import ctypes

    import torch

    lib = ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_sigmoid_loss_cuda_workspace_bytes"):
        pytest.skip("this libmedkernels_capi predates the CUDA sigmoid loss entry points")
    for op in ("fwd", "bwd"):
        for dt in ("f32", "f64", "f16", "bf16"):
            assert hasattr(lib, f"mk_sigmoid_loss_{op}_{dt}_cuda")
    lib.mk_sigmoid_loss_cuda_workspace_bytes.restype = ctypes.c_size_t
    ws = lib.mk_sigmoid_loss_cuda_workspace_bytes
    # forward: one double per (row block of 64, column split); backward: two per row block
    assert ws(ctypes.c_int64(1), ctypes.c_int64(1)) == 16
    assert ws(ctypes.c_int64(100), ctypes.c_int64(100)) == 2 * 2 * 8
    assert ws(ctypes.c_int64(32768), ctypes.c_int64(32768)) == 512 * 2 * 8
    assert ws(ctypes.c_int64(0), ctypes.c_int64(5)) == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: host pointers would reach the kernels (tests/test_sigmoid_loss.py runs them)")
    n, d = 4, 8
    x = np.ones((n, d), np.float32)
    loss = np.zeros(1)
    # a workspace of the size asked for, so the call gets past the argument checks: built with
    # CUDA it then fails at the launch (no GPU here), built without it says unsupported
    nbytes = ws(ctypes.c_int64(n), ctypes.c_int64(n))
    work = np.zeros(max(nbytes, 8) // 8, np.float64)
    st = lib.mk_sigmoid_loss_fwd_f32_cuda(ptr(x), ptr(x), ctypes.c_int64(n), ctypes.c_int64(n), ctypes.c_int64(d),
                                          None, None, ctypes.c_double(10.0), ctypes.c_double(-10.0), ctypes.c_int(0),
                                          ctypes.c_int(0), ctypes.c_int64(0), None, None, None, None, ptr(loss),
                                          ptr(work), ctypes.c_size_t(nbytes), None)
    assert st == (3 if lib.mk_cuda_available() else 2), lib.mk_last_error()
    assert b"mk_sigmoid_loss_fwd_f32_cuda" in lib.mk_last_error() or lib.mk_cuda_available()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_sigmoid_loss_cuh_links_without_the_library(tmp_path):
    """A program instantiating the header-only sigmoid-loss launchers links with nvcc alone."""
    src = tmp_path / "use_sl.cu"
    src.write_text(
        '#include "medkernels/cuda/sigmoid_loss.cuh"\n'
        "int main() {\n"
        "  medkernels::SigmoidLossParams p; medkernels::SigmoidLossBwdParams b;\n"
        "  int e = int(medkernels::cuda::launch_sigmoid_loss_fwd<medkernels::half_t>(p, nullptr));\n"
        "  e += int(medkernels::cuda::launch_sigmoid_loss_bwd<double>(b, nullptr));\n"
        "  return e > 1000;\n"
        "}\n")
    run = subprocess.run([NVCC, "-std=c++17", "-arch=sm_80", f"-I{ROOT / 'csrc' / 'include'}", str(src), "-o",
                          str(tmp_path / "use_sl")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
