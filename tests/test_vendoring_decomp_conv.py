"""Vendoring the decomposed 3D convolution: its C ABI from ctypes (in a fresh interpreter without torch,
and in-process: backward, 16-bit storage, the params form), the JAX FFI example under jax.jit, and
medkernels.cupy on a GPU. Expected values from the NumPy evaluation in tests/vendoring_helpers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from vendoring_helpers import (
    CMAKE,
    EXAMPLES,
    capi_lib,
    conv_case,
    ctypes_lib,
    cupy_on_gpu,
    i64s,
    new_params,
    numpy_decomp_conv3d,
    ptr,
)

import medkernels


def test_numpy_reference_matches_torch_reference():
    """The NumPy evaluation above agrees with the package's reference (so the tests below judge the kernels)."""
    import torch

    from medkernels.reference.decomp_conv import decomp_conv3d_ref

    x, w_d, w_h, w_w, b = conv_case(1, c_in=4, c_out=6, groups=2, size=(4, 5, 6), k=3)
    for stride, act in ((1, 0), (2, 3)):
        got = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, 2, act)
        t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
        want = decomp_conv3d_ref(t(x), t(w_d), t(w_h), t(w_w), t(b), stride, 2, [None, "gelu", "relu", "silu"][act])
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_capi_ctypes_without_torch(install_prefix, tmp_path, dtype):
    lib = capi_lib(install_prefix)
    x, w_d, w_h, w_w, b = conv_case(5, c_in=6, c_out=6, groups=3, size=(4, 7, 5), k=5, dtype=dtype)
    np.savez(tmp_path / "in.npz", x=x, w_d=w_d, w_h=w_h, w_w=w_w, bias=b, stride=2, groups=3, activation=3)
    # a fresh interpreter that never imports our package (nor torch)
    run = subprocess.run([sys.executable, str(EXAMPLES / "capi_ctypes" / "decomp_conv_ctypes.py"), str(lib),
                          str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr
    out = np.load(tmp_path / "out.npz")
    assert not bool(out["torch_imported"]), "the ctypes path imported torch"
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, 2, 3, 3)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out["y"], want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out["y"], out["y_cl"])
    assert int(out["version"]) == 10000 * 0 + 100 * 1 and int(out["abi"]) == 1
    # documented errors: MK_INVALID_ARGUMENT (1) with a message naming the argument
    assert int(out["bad_status"]) == 1 and "kernel_size must be odd" in str(out["bad_msg"])
    assert int(out["null_status"]) == 1 and "must not be NULL" in str(out["null_msg"])
    if dtype == np.float32 and not medkernels.build_info().get("cuda"):
        assert int(out["cuda_status"]) == 2  # MK_UNSUPPORTED: this build has no CUDA


def test_capi_backward_matches_finite_differences(install_prefix):
    """mk_decomp_conv3d_bwd_f64 on NumPy arrays: the weight/bias/x gradients of sum(y * g)."""
    import ctypes

    lib = ctypes.CDLL(str(capi_lib(install_prefix)))
    lib.mk_last_error.restype = ctypes.c_char_p
    lib.mk_decomp_conv3d_bwd_workspace_bytes.restype = ctypes.c_size_t
    i64 = lambda v: (ctypes.c_int64 * len(v))(*v)
    x, w_d, w_h, w_w, b = conv_case(7, n=1, c_in=2, c_out=2, groups=2, size=(3, 4, 5), k=3, dtype=np.float64)
    y = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, 1, 2, 0)
    g = np.random.default_rng(8).standard_normal(y.shape)
    ws_bytes = lib.mk_decomp_conv3d_bwd_workspace_bytes(3, i64(x.shape), 2, 3, 1, 2)
    assert ws_bytes > 0
    ws = np.empty(ws_bytes, np.uint8)
    gx = np.empty_like(x)
    gw = [np.empty_like(w_d) for _ in range(3)]
    gb = np.empty_like(b)
    p = lambda a: ctypes.c_void_p(a.ctypes.data)
    st = lib.mk_decomp_conv3d_bwd_f64(p(g), None, p(x), i64(x.shape), None, p(w_d), p(w_h), p(w_w), p(b),
                                      ctypes.c_int64(2), ctypes.c_int64(3), ctypes.c_int64(1), ctypes.c_int64(2),
                                      ctypes.c_int(0), p(gx), None, p(gw[0]), p(gw[1]), p(gw[2]), p(gb), p(ws),
                                      ctypes.c_size_t(ws_bytes))
    assert st == 0, lib.mk_last_error()
    # linear in every argument: the gradient of sum(y * g) is exact by central differences of the reference
    f = lambda **kw: float((numpy_decomp_conv3d(**{**dict(x=x, w_d=w_d, w_h=w_h, w_w=w_w, bias=b, groups=2), **kw})
                            * g).sum())
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3, 4)), rtol=1e-10)
    e = np.zeros_like(w_h)
    e[1, 0, 2] = 1.0
    np.testing.assert_allclose(gw[1][1, 0, 2], (f(w_h=w_h + e) - f(w_h=w_h - e)) / 2, rtol=1e-8)
    ex = np.zeros_like(x)
    ex[0, 1, 2, 1, 3] = 1.0
    np.testing.assert_allclose(gx[0, 1, 2, 1, 3], (f(x=x + ex) - f(x=x - ex)) / 2, rtol=1e-8)
    # too small a workspace: the documented error, not a crash
    st = lib.mk_decomp_conv3d_bwd_f64(p(g), None, p(x), i64(x.shape), None, p(w_d), p(w_h), p(w_w), p(b),
                                      ctypes.c_int64(2), ctypes.c_int64(3), ctypes.c_int64(1), ctypes.c_int64(2),
                                      ctypes.c_int(0), p(gx), None, p(gw[0]), p(gw[1]), p(gw[2]), p(gb), p(ws),
                                      ctypes.c_size_t(1))
    assert st == 1 and b"workspace" in lib.mk_last_error()


@pytest.fixture(scope="module")
def jax_ffi_module(install_prefix, tmp_path_factory):
    jax = pytest.importorskip("jax")
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "include_dir"):
        pytest.skip(f"jax {jax.__version__} has no jax.ffi")
    if CMAKE is None:
        pytest.skip("cmake not found")
    build = tmp_path_factory.mktemp("jax_ffi")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run([CMAKE, "-S", str(EXAMPLES / "jax_ffi"), "-B", str(build), *gen,
                          f"-DCMAKE_PREFIX_PATH={install_prefix}", f"-DXLA_FFI_INCLUDE_DIR={jax.ffi.include_dir()}",
                          "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run([CMAKE, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    sys.path.insert(0, str(EXAMPLES / "jax_ffi"))
    try:
        import decomp_conv_jax
    finally:
        sys.path.remove(str(EXAMPLES / "jax_ffi"))
    decomp_conv_jax.register(str(build / "libmedkernels_jax_ffi.so"))
    return decomp_conv_jax


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stride,groups,activation", [(1, 4, None), (2, 2, "silu")], ids=["dw-s1", "g2-s2-silu"])
def test_jax_ffi_under_jit(jax_ffi_module, dtype, stride, groups, activation):
    import jax

    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", dtype == np.float64 or x64)
    try:
        _check_jax_ffi(jax, jax_ffi_module, dtype, stride, groups, activation)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _check_jax_ffi(jax, jax_ffi_module, dtype, stride, groups, activation):
    x, w_d, w_h, w_w, b = conv_case(13, c_in=4, c_out=4, groups=groups, size=(5, 4, 6), k=3, dtype=dtype)
    f = jax.jit(jax_ffi_module.decomp_conv3d, static_argnames=("stride", "groups", "activation"))
    y = f(x, w_d, w_h, w_w, b, stride=stride, groups=groups, activation=activation)
    assert y.dtype == dtype
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, groups, {None: 0, "silu": 3}[activation])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(y), want, rtol=tol, atol=tol)
    # composes with other jitted JAX code, no bias
    g = jax.jit(lambda x: (jax_ffi_module.decomp_conv3d(x * 2, w_d, w_h, w_w, groups=groups) ** 2).sum())
    want2 = (numpy_decomp_conv3d(x * 2, w_d, w_h, w_w, None, 1, groups) ** 2).sum()
    np.testing.assert_allclose(float(g(x)), want2, rtol=1e-4)


def test_jax_ffi_bad_arguments_raise(jax_ffi_module):
    x, w_d, w_h, w_w, b = conv_case(14, c_in=4, c_out=4, groups=4, size=(3, 3, 3), k=3)
    with pytest.raises(Exception, match="groups"):
        jax_ffi_module.decomp_conv3d(x, w_d, w_h, w_w, b, groups=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("stride,groups,activation", [(1, 4, None), (2, 2, "gelu")], ids=["dw-s1", "g2-s2-gelu"])
def test_cupy_decomp_conv3d_on_gpu(dtype, stride, groups, activation):
    cupy = cupy_on_gpu()
    from medkernels import cupy as mkc

    x, w_d, w_h, w_w, b = conv_case(17, c_in=4, c_out=4, groups=groups, size=(5, 6, 7), k=3, dtype=dtype)
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, groups, {None: 0, "gelu": 1}[activation])
    tol = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 2e-2}[dtype]
    args = [cupy.asarray(a) for a in (x, w_d, w_h, w_w, b)]
    y = mkc.decomp_conv3d(*args[:4], args[4], stride=stride, groups=groups, activation=activation)
    np.testing.assert_allclose(cupy.asnumpy(y).astype(np.float64), want, rtol=tol, atol=tol)
    x_cl = cupy.ascontiguousarray(args[0].transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
    y_cl = mkc.decomp_conv3d(x_cl, *args[1:4], args[4], stride=stride, groups=groups, activation=activation)
    np.testing.assert_array_equal(cupy.asnumpy(y_cl), cupy.asnumpy(y))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_capi_decomp_conv_16bit_and_channels_last_output(install_prefix, dtype):
    """16-bit storage through the C ABI (uint16 bits), y written channels-last through y_strides."""
    import ctypes

    lib = ctypes_lib(install_prefix)
    x, w_d, w_h, w_w, b = conv_case(41, c_in=4, c_out=4, groups=4, size=(3, 5, 6), k=3)
    if dtype == "f16":
        to_bits = lambda a: a.astype(np.float16).view(np.uint16)
        from_bits = lambda u: u.view(np.float16).astype(np.float64)
    else:  # bfloat16: the high half of float32 (inputs rounded by truncation; the kernel rounds to nearest)
        to_bits = lambda a: (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        from_bits = lambda u: (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    xs, wds, whs, wws, bs = (np.ascontiguousarray(to_bits(a)) for a in (x, w_d, w_h, w_w, b))
    want = numpy_decomp_conv3d(*(from_bits(a) for a in (xs, wds, whs, wws)), from_bits(bs), 1, 4, 0)
    y_cl = np.empty((x.shape[0], *x.shape[2:], 4), np.uint16)  # N D H W C storage
    y_strides = [y_cl.strides[0] // 2, 1, y_cl.strides[1] // 2, y_cl.strides[2] // 2, y_cl.strides[3] // 2]
    fn = getattr(lib, f"mk_decomp_conv3d_fwd_{dtype}")
    st = fn(ptr(xs), i64s(x.shape), None, ptr(wds), ptr(whs), ptr(wws), ptr(bs), ctypes.c_int64(4),
            ctypes.c_int64(3), ctypes.c_int64(1), ctypes.c_int64(4), ctypes.c_int(0), ptr(y_cl), i64s(y_strides))
    assert st == 0, lib.mk_last_error()
    got = from_bits(y_cl).transpose(0, 4, 1, 2, 3)
    tol = 1e-2 if dtype == "f16" else 2e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_capi_decomp_conv_params_form_matches_the_flat_form(install_prefix):
    """mk_decomp_conv_fwd / _bwd on a mk_decomp_conv_params (the C++ struct's fields) give the flat entry
    points' bits; kernel_size's limit comes from the C++ validator in both forms."""
    import ctypes

    lib = ctypes_lib(install_prefix)
    x, w_d, w_h, w_w, b = conv_case(71, n=1, c_in=4, c_out=4, groups=2, size=(4, 5, 6), k=5, dtype=np.float64)
    flat, y = np.empty((1, 4, 2, 3, 3)), np.empty((1, 4, 2, 3, 3))
    args = (ptr(x), i64s(x.shape), None, ptr(w_d), ptr(w_h), ptr(w_w), ptr(b), ctypes.c_int64(4), ctypes.c_int64(5),
            ctypes.c_int64(2), ctypes.c_int64(2), ctypes.c_int(3))
    assert lib.mk_decomp_conv3d_fwd_f64(*args, ptr(flat), None) == 0, lib.mk_last_error()
    p = new_params(lib, "mk_decomp_conv_params")
    p.dtype, p.x, p.w_d, p.w_h, p.w_w, p.bias, p.y = 3, x.ctypes.data, w_d.ctypes.data, w_h.ctypes.data, \
        w_w.ctypes.data, b.ctypes.data, y.ctypes.data
    p.batch, p.in_channels, p.out_channels, p.kernel_size, p.stride, p.groups, p.activation = 1, 4, 4, 5, 2, 2, 3
    p.in_size[:], p.out_size[:] = [4, 5, 6], [2, 3, 3]
    p.x_strides[:] = [s // 8 for s in x.strides]
    p.y_strides[:] = [s // 8 for s in y.strides]
    assert lib.mk_decomp_conv_fwd(ctypes.byref(p)) == 0, lib.mk_last_error()
    np.testing.assert_array_equal(y, flat)
    np.testing.assert_allclose(y, numpy_decomp_conv3d(x, w_d, w_h, w_w, b, 2, 2, 3), rtol=1e-12, atol=1e-12)
    # the backward through the params form, its workspace from the params-form query
    g = np.random.default_rng(72).standard_normal(y.shape)
    bw = new_params(lib, "mk_decomp_conv_bwd_params")
    bw.fwd = p
    bw.grad_y = g.ctypes.data
    bw.grad_y_strides[:] = list(p.y_strides)
    gx, gws, gb = np.empty_like(x), [np.empty_like(w_d) for _ in range(3)], np.empty_like(b)
    bw.grad_x, bw.grad_bias = gx.ctypes.data, gb.ctypes.data
    bw.grad_x_strides[:] = list(p.x_strides)
    bw.grad_w_d, bw.grad_w_h, bw.grad_w_w = (a.ctypes.data for a in gws)
    lib.mk_decomp_conv_bwd_workspace_bytes.restype = ctypes.c_size_t
    nbytes = lib.mk_decomp_conv_bwd_workspace_bytes(ctypes.byref(bw))
    ws = np.empty(max(nbytes, 1), np.uint8)
    bw.workspace, bw.workspace_bytes = ws.ctypes.data, nbytes
    assert lib.mk_decomp_conv_bwd(ctypes.byref(bw)) == 0, lib.mk_last_error()
    flat_g = [np.empty_like(gx), *(np.empty_like(w_d) for _ in range(3)), np.empty_like(b)]
    st = lib.mk_decomp_conv3d_bwd_f64(ptr(g), None, *args[:-1], ctypes.c_int(3), ptr(flat_g[0]), None,
                                      *(ptr(a) for a in flat_g[1:]), ptr(ws), ctypes.c_size_t(nbytes))
    assert st == 0, lib.mk_last_error()
    for got, want in zip((gx, *gws, gb), flat_g):
        np.testing.assert_array_equal(got, want)
    # kernel_size 17: the C++ decomp_conv_check's message from either form (and from the workspace query)
    msg = b"decomp_conv: kernel_size must be odd and in 1..15, got 17"
    p.kernel_size = 17
    assert lib.mk_decomp_conv_fwd(ctypes.byref(p)) == 1 and msg in lib.mk_last_error()
    st = lib.mk_decomp_conv3d_fwd_f64(*args[:8], ctypes.c_int64(17), *args[9:], ptr(flat), None)
    assert st == 1 and msg in lib.mk_last_error()
    lib.mk_decomp_conv3d_bwd_workspace_bytes.restype = ctypes.c_size_t
    assert lib.mk_decomp_conv3d_bwd_workspace_bytes(3, i64s(x.shape), 4, 17, 2, 2) == 0
    assert msg in lib.mk_last_error()
    st = lib.mk_decomp_conv3d_fwd_f64(*args[:8], ctypes.c_int64(1 << 33), *args[9:], ptr(flat), None)
    assert st == 1 and b"kernel_size must fit an int" in lib.mk_last_error()
