"""Vendoring the few-step diffusion steps: the C ABI (flat and params form) against the CPU ops, and
medkernels.cupy on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from vendoring_helpers import ctypes_lib, cupy_on_gpu, ptr


@pytest.mark.parametrize("op", ["q_sample", "ddim_step", "ddpm_step"])
def test_cupy_diffusion_on_gpu(op):
    cupy = cupy_on_gpu()
    import torch

    from medkernels import cupy as mkc
    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    sched = FastDDPMSchedule()
    rng = np.random.default_rng(31)
    x, e = (rng.standard_normal((3, 2, 5, 4, 7)).astype(np.float32) for _ in range(2))
    t, t_next = np.array([0, 400, 999]), np.array([-1, 300, 900])
    tt = torch.from_numpy
    X, E = cupy.asarray(x), cupy.asarray(e)
    if op == "q_sample":
        got = [mkc.q_sample(X, t, sched, seed=11, offset=2)]
        want = [ops.q_sample(tt(x), tt(t), schedule=sched, seed=11, offset=2, backend="cpu")]
    elif op == "ddim_step":
        got = mkc.ddim_step(X, E, t, t_next, sched, eta=0.5, seed=11, offset=2, return_x0=True)
        want = ops.ddim_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, eta=0.5, seed=11, offset=2,
                             return_x0=True, backend="cpu")
    else:
        got = mkc.ddpm_step(X, E, t, t_next, sched, seed=11, offset=2, return_x0=True)
        want = ops.ddpm_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, seed=11, offset=2, return_x0=True,
                             backend="cpu")
    for g, w in zip(got, want):
        # the same Philox bits; the normals differ from the CPU's only by a few ulps of logf/sinf/cosf
        np.testing.assert_allclose(cupy.asnumpy(g), w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["q_sample", "ddim_step", "ddpm_step"])
def test_capi_diffusion_matches_the_cpu_op(install_prefix, op):
    import ctypes

    import torch

    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    lib = ctypes_lib(install_prefix)
    sched = FastDDPMSchedule()
    rng = np.random.default_rng(23)
    x, e = (rng.standard_normal((3, 2, 4, 4, 5)).astype(np.float32) for _ in range(2))
    t, t_next = np.array([0, 400, 999]), np.array([-1, 300, 900])
    table = sched.alpha_table(torch.device("cpu")).double().numpy()
    T = table.size - 1
    out, x0 = np.empty_like(x), np.empty_like(x)
    common = (ptr(table), ctypes.c_int64(T), ctypes.c_int64(3), ctypes.c_int64(x[0].size), ctypes.c_uint64(11),
              ctypes.c_uint64(2))
    tt = torch.from_numpy
    if op == "q_sample":
        st = lib.mk_diffusion_q_sample_f32(ptr(x), None, ptr(t), *common, ptr(out))
        want = [ops.q_sample(tt(x), tt(t), schedule=sched, seed=11, offset=2, backend="cpu")]
    elif op == "ddim_step":
        st = lib.mk_diffusion_ddim_step_f32(ptr(x), ptr(e), None, ptr(t), ptr(t_next), *common,
                                            ctypes.c_double(0.5), ptr(out), ptr(x0))
        want = ops.ddim_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, eta=0.5, seed=11, offset=2,
                             return_x0=True, backend="cpu")
    else:
        st = lib.mk_diffusion_ddpm_step_f32(ptr(x), ptr(e), None, ptr(t), ptr(t_next), *common,
                                            ctypes.c_double(1.0), ctypes.c_int(1), ptr(out), ptr(x0))
        want = ops.ddpm_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, seed=11, offset=2, clip=1.0,
                             return_x0=True, backend="cpu")
    assert st == 0, lib.mk_last_error()
    for got, w in zip((out, x0), want):
        np.testing.assert_array_equal(got, w.numpy())
    # a timestep out of range: MK_INVALID_ARGUMENT and the reason
    bad = np.array([0, 400, 1000])
    st = lib.mk_diffusion_q_sample_f32(ptr(x), None, ptr(bad), *common, ptr(out))
    assert st == 1 and b"t must be in 0..999" in lib.mk_last_error()
    st = lib.mk_diffusion_q_sample_f32(ptr(x), None, None, *common, ptr(out))
    assert st == 1 and b"must not be NULL" in lib.mk_last_error()
    if not lib.mk_cuda_available():
        st = lib.mk_diffusion_q_sample_f32_cuda(ptr(x), None, ptr(t), *common, ptr(out), None)
        assert st == 2 and b"without CUDA" in lib.mk_last_error()


def test_capi_diffusion_loss_matches_the_cpu_op(install_prefix):
    import ctypes

    import torch

    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    lib = ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_diffusion_loss_f32"):
        pytest.skip("this libmedkernels_capi predates mk_diffusion_loss")
    rng = np.random.default_rng(43)
    e = rng.standard_normal((2, 1, 9, 10, 13)).astype(np.float32)  # 1170 elements: two loss blocks per sample
    grad = np.empty_like(e)
    sum_sq = np.zeros(1)
    st = lib.mk_diffusion_loss_f32(ptr(e), None, ctypes.c_int64(2), ctypes.c_int64(e[0].size), ctypes.c_uint64(9),
                                   ctypes.c_uint64(4), ctypes.c_double(1.0), ptr(grad), ptr(sum_sq))
    assert st == 0, lib.mk_last_error()
    et = torch.from_numpy(e)
    want = ops.diffusion_loss(et, et, torch.tensor([1, 2]), 9, offset=4, schedule=FastDDPMSchedule(), backend="cpu")
    np.testing.assert_allclose(sum_sq[0] / 2, float(want), rtol=1e-6)
    from medkernels.ops.diffusion import randn

    z = randn(et, 9, offset=4, backend="cpu").numpy()
    np.testing.assert_allclose(grad, e - z, rtol=1e-6, atol=1e-6)
