"""Vendoring the 3D window attention: the C ABI (forward, backward, params form) against the reference, and
medkernels.cupy on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from vendoring_helpers import ctypes_lib, cupy_on_gpu, i64s, ptr


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_cupy_window_attention_on_gpu(cross):
    cupy = cupy_on_gpu()
    import torch

    from medkernels import cupy as mkc
    from medkernels import ops

    rng = np.random.default_rng(47)
    shape = (1, 3, 5, 4, 2, 8)
    arrs = [rng.standard_normal(shape).astype(np.float32) for _ in range(6 if cross else 3)]
    table = rng.standard_normal((27, 2)).astype(np.float32)
    tt = lambda a: torch.from_numpy(a).double()
    kw = dict(shift=1, rel_bias_table=table)
    if cross:
        got = mkc.cross_window_attention3d_separate(*(cupy.asarray(a) for a in arrs), 2, **kw)
        want = ops.cross_window_attention3d_separate(*map(tt, arrs), 2, shift=1, rel_bias_table=tt(table),
                                                     backend="reference")
        # the packed form on the qkv Linear's outputs: the same numbers from views
        qkv_a, qkv_b = (np.concatenate([a.reshape(*shape[:4], -1) for a in t], -1) for t in (arrs[:3], arrs[3:]))
        packed = mkc.cross_window_attention3d(cupy.asarray(qkv_a), cupy.asarray(qkv_b), 2, 2, **kw)
        for g, p in zip(got, packed):
            np.testing.assert_array_equal(cupy.asnumpy(g), cupy.asnumpy(p))
    else:
        got = [mkc.window_attention3d(*(cupy.asarray(a) for a in arrs), 2, **kw)]
        want = [ops.window_attention3d(*map(tt, arrs), 2, shift=1, rel_bias_table=tt(table), backend="reference")]
    for g, w in zip(got, want):
        np.testing.assert_allclose(cupy.asnumpy(g), w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_capi_window_attention_matches_the_reference(install_prefix, dtype):
    import ctypes

    import torch

    from medkernels import ops

    lib = ctypes_lib(install_prefix)
    rng = np.random.default_rng(29)
    sizes = (2, 3, 5, 4, 2, 8)
    q, k, v = (rng.standard_normal(sizes).astype(dtype) for _ in range(3))
    table = rng.standard_normal((3 * 3 * 3, 2)).astype(dtype)
    # a strided q: a view of a bigger buffer
    q_big = np.zeros((*sizes[:5], 16), dtype)
    q_big[..., :8] = q
    qv = q_big[..., :8]
    out = np.empty(sizes, dtype)
    fn = getattr(lib, f"mk_window_attention3d_fwd_{'f32' if dtype == np.float32 else 'f64'}")
    st = fn(ptr(q_big), ptr(k), ptr(v), i64s(sizes), i64s([s // q.itemsize for s in qv.strides]), None, None,
            i64s([2, 2, 2]), i64s([1, 1, 1]), ptr(table), None, ctypes.c_double(0.0), ctypes.c_double(-100.0),
            ctypes.c_int(0), ptr(out), None, None)
    assert st == 0, lib.mk_last_error()
    tt = lambda a: torch.from_numpy(np.ascontiguousarray(a)).double()
    want = ops.window_attention3d(tt(q), tt(k), tt(v), 2, shift=1, rel_bias_table=tt(table), backend="reference")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want.numpy(), rtol=tol, atol=tol)
    st = fn(ptr(q), ptr(k), ptr(v), i64s(sizes), None, None, None, i64s([2, 2, 2]), i64s([2, 1, 1]), None,
            None, ctypes.c_double(0.0), ctypes.c_double(-100.0), ctypes.c_int(0), ptr(out), None, None)
    assert st == 1 and b"shift < window" in lib.mk_last_error()
    if not lib.mk_cuda_available():
        fn = getattr(lib, f"mk_window_attention3d_fwd_{'f32' if dtype == np.float32 else 'f64'}_cuda")
        st = fn(ptr(q), ptr(k), ptr(v), i64s(sizes), None, None, None, i64s([2, 2, 2]), i64s([1, 1, 1]), None,
                None, ctypes.c_double(0.0), ctypes.c_double(-100.0), ctypes.c_int(0), ptr(out), None, None, None)
        assert st == 2 and b"without CUDA" in lib.mk_last_error()


def test_capi_window_attention_backward_matches_autograd(install_prefix):
    import ctypes

    import torch

    from medkernels import ops
    from medkernels.reference.window_attention import bias_table_grad

    lib = ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_window_attention3d_bwd_f64"):
        pytest.skip("this libmedkernels_capi predates the window attention backward")
    rng = np.random.default_rng(53)
    sizes = (1, 3, 5, 4, 2, 4)
    q, k, v, g = (rng.standard_normal(sizes) for _ in range(4))
    table = rng.standard_normal((27, 2))
    pad_kv = rng.standard_normal((2, 2, 4))
    out, lse = np.empty(sizes), np.empty(sizes[:5])
    common = (i64s(sizes), None, None, None, i64s([2, 2, 2]), i64s([1, 1, 1]), ptr(table), ptr(pad_kv),
              ctypes.c_double(0.0), ctypes.c_double(-100.0), ctypes.c_int(0))
    st = lib.mk_window_attention3d_fwd_f64(ptr(q), ptr(k), ptr(v), *common, ptr(out), None, ptr(lse))
    assert st == 0, lib.mk_last_error()
    dq, dk, dv = (np.empty(sizes) for _ in range(3))
    n = 2 * 2 * 2
    pair, dpad = np.empty((2, n, n)), np.empty((2, 2, 4))
    st = lib.mk_window_attention3d_bwd_f64(ptr(q), ptr(k), ptr(v), *common, ptr(out), None, ptr(lse), ptr(g),
                                           None, ptr(dq), ptr(dk), ptr(dv), None, ptr(pair), ptr(dpad))
    assert st == 0, lib.mk_last_error()
    tq, tk, tv, tt, tp = (torch.from_numpy(a).requires_grad_() for a in (q, k, v, table, pad_kv))
    y = ops.window_attention3d(tq, tk, tv, 2, shift=1, rel_bias_table=tt, pad_kv=tp, backend="reference")
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    y.backward(torch.from_numpy(g))
    for got, want in ((dq, tq), (dk, tk), (dv, tv), (dpad, tp)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bias_table_grad(torch.from_numpy(pair), 2, n).numpy(), tt.grad.numpy(), rtol=1e-10,
                               atol=1e-10)
    st = lib.mk_window_attention3d_bwd_f64(ptr(q), ptr(k), ptr(v), *common, ptr(out), None, None, ptr(g),
                                           None, ptr(dq), ptr(dk), ptr(dv), None, None, None)
    assert st == 1 and b"lse" in lib.mk_last_error()
