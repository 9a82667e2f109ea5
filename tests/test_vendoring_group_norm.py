"""Vendoring GroupNorm + add / FiLM + activation: its C ABI, the params form only (mk_group_norm_params,
generated from the C++ struct's field list), against the float64 reference and its autograd."""

from __future__ import annotations

import ctypes

import numpy as np
from vendoring_helpers import ctypes_lib, new_params


def test_capi_group_norm_params_form_matches_the_reference(install_prefix):
    import torch

    from medkernels.reference.group_norm import group_norm_act_ref

    lib = ctypes_lib(install_prefix)
    rng = np.random.default_rng(61)
    N, C, G, size = 2, 6, 3, (3, 4, 5)
    x = rng.standard_normal((N, C, *size))
    weight, bias = rng.standard_normal(C), rng.standard_normal(C)
    scale, shift, add = (rng.standard_normal((N, C)) for _ in range(3))
    y = np.empty_like(x)
    mean, rstd = np.empty((N, G)), np.empty((N, G))
    p = new_params(lib, "mk_group_norm_params")
    assert p.eps == 1e-5 and p.groups == 1 and p.activation == 0  # the C++ defaults
    p.dtype = 3  # float64
    p.x, p.y, p.weight, p.bias = x.ctypes.data, y.ctypes.data, weight.ctypes.data, bias.ctypes.data
    p.scale, p.shift, p.add = scale.ctypes.data, shift.ctypes.data, add.ctypes.data
    p.mean, p.rstd = mean.ctypes.data, rstd.ctypes.data
    p.batch, p.channels, p.groups, p.spatial = N, C, G, int(np.prod(size))
    p.x_strides[:] = p.y_strides[:] = [C * p.spatial, p.spatial, 1]
    p.activation = 3  # silu
    assert lib.mk_group_norm_fwd(ctypes.byref(p)) == 0, lib.mk_last_error()
    t = [torch.from_numpy(a).requires_grad_() for a in (x, weight, bias, scale, shift, add)]
    want = group_norm_act_ref(t[0], G, t[1], t[2], 1e-5, t[3], t[4], t[5], "silu")
    np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    # the backward from the forward's saved statistics, every gradient
    g = rng.standard_normal(x.shape)
    grads = [np.empty_like(a) for a in (x, weight, bias, scale, shift, add)]
    b = new_params(lib, "mk_group_norm_bwd_params")
    b.fwd = p
    b.grad_y = g.ctypes.data
    b.grad_y_strides[:] = b.grad_x_strides[:] = list(p.x_strides)
    b.grad_x, b.grad_weight, b.grad_bias, b.grad_scale, b.grad_shift, b.grad_add = (a.ctypes.data for a in grads)
    assert lib.mk_group_norm_bwd(ctypes.byref(b)) == 0, lib.mk_last_error()
    want.backward(torch.from_numpy(g))
    for got, ref in zip(grads, t):
        np.testing.assert_allclose(got, ref.grad.numpy(), rtol=1e-10, atol=1e-10)
    # the C++ validator's message, through the C ABI
    p.groups = 4
    assert lib.mk_group_norm_fwd(ctypes.byref(p)) == 1 and b"groups" in lib.mk_last_error()


def test_capi_group_norm_cuda_entry_points(install_prefix):
    """The _cuda entry points and their workspace queries exist in every build; without a GPU (or
    in a build without CUDA) the call fails with a message naming it, never a crash."""
    lib = ctypes_lib(install_prefix)
    for name in ("mk_group_norm_fwd_workspace_bytes_cuda", "mk_group_norm_bwd_workspace_bytes_cuda"):
        getattr(lib, name).restype = ctypes.c_size_t
    p = new_params(lib, "mk_group_norm_params")
    p.dtype, p.batch, p.channels, p.groups, p.spatial = 0, 2, 8, 2, 5000
    p.x_strides[:] = p.y_strides[:] = [8 * 5000, 5000, 1]
    # NC... layout: one channel per block of 256 rows, 16 positions a row: 2 splits of 2500
    assert lib.mk_group_norm_fwd_workspace_bytes_cuda(ctypes.byref(p)) == 2 * 8 * 2 * 2 * 8
    b = new_params(lib, "mk_group_norm_bwd_params")
    b.fwd = p
    assert lib.mk_group_norm_bwd_workspace_bytes_cuda(ctypes.byref(b)) == (16 * 2 * 5 + 16 * 5 + 2 * 2 * 2) * 8
    x = np.zeros((2, 8, 5000), np.float32)
    p.x = p.y = p.mean = p.rstd = x.ctypes.data
    # host pointers and no workspace: refused before any launch, by name
    assert lib.mk_group_norm_fwd_cuda(ctypes.byref(p), None) != 0
    err = lib.mk_last_error()
    assert b"mk_group_norm_fwd_cuda" in err or b"workspace" in err, err


def test_cupy_group_norm_on_gpu():
    from vendoring_helpers import cupy_on_gpu

    cupy = cupy_on_gpu()
    import torch

    from medkernels import cupy as mkc
    from medkernels.reference.group_norm import group_norm_act_ref

    rng = np.random.default_rng(62)
    N, C, G = 2, 40, 8
    x = rng.standard_normal((N, C, 9, 17, 5)) + 3.0
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    sc, sh, ad = (rng.standard_normal((N, C)) for _ in range(3))
    want = group_norm_act_ref(*(torch.from_numpy(a) for a in (x,)), G, torch.from_numpy(w), torch.from_numpy(b),
                              1e-5, *(torch.from_numpy(a) for a in (sc, sh, ad)), "silu").numpy()
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        args = [cupy.asarray(a.astype(dtype)) for a in (x, w, b, sc, sh, ad)]
        y = mkc.group_norm_act(args[0], G, args[1], args[2], scale=args[3], shift=args[4], add=args[5],
                               activation="silu")
        np.testing.assert_allclose(cupy.asnumpy(y).astype(np.float64), want, rtol=tol, atol=tol * 4)
        x_cl = cupy.ascontiguousarray(args[0].transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
        y_cl = mkc.group_norm_act(x_cl, G, args[1], args[2], scale=args[3], shift=args[4], add=args[5],
                                  activation="silu")
        assert y_cl.strides == x_cl.strides
        np.testing.assert_allclose(cupy.asnumpy(y_cl).astype(np.float64), want, rtol=tol, atol=tol * 4)
