"""The CUDA group-norm kernels without a GPU: tests/group_norm_emulate.cpp runs the launch plans of
medkernels/cuda/group_norm.cuh (medkernels/detail/group_norm_kernels.h) on the host, block by block
with NaN shared memory and NaN outputs, and is checked here against the float64 reference; nvcc
compiles the library entry points. On a GPU the cuda backend itself is compared in
tests/test_group_norm.py."""

from __future__ import annotations

import math
import shutil
import subprocess

import emulate
import pytest
import torch

from medkernels.reference.group_norm import group_norm_act_bwd_ref, group_norm_act_ref

_ACT = {None: 0, "gelu": 1, "silu": 3}


@pytest.fixture(scope="module")
def gn_emulator(tmp_path_factory):
    return emulate.build("group_norm", tmp_path_factory)


def _ncm(t):
    C, M = t.shape[1], math.prod(t.shape[2:])
    if t.is_contiguous():
        return [C * M, M, 1]
    assert t.permute(0, *range(2, t.dim()), 1).is_contiguous()
    return [M * C, 1, C]


def _cl(t):
    return t.to(memory_format=torch.channels_last_3d if t.dim() == 5 else torch.channels_last)


def _emulate(exe, d, x, G, w, b, sc, sh, ad, act, eps=1e-5, gy=None, needs=(True,) * 6):
    """(y, mean, rstd[, grads (x, w, b, scale, shift, add)]) from the emulated CUDA plans."""
    N, C = x.shape[:2]
    M = math.prod(x.shape[2:])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    for name, t in (("x", x), ("weight", w), ("bias", b), ("scale", sc), ("shift", sh), ("add", ad), ("gy", gy)):
        if t is not None:
            emulate.write(d / f"{name}.bin", t if name in ("x", "gy") else t.contiguous())
    xs = _ncm(x)
    params = [emulate.DTYPE_CODE[x.dtype], N, C, G, M, *xs, *xs, float(eps), _ACT[act],
              *(t is not None for t in (w, b, sc, sh, ad)), gy is not None]
    if gy is not None:
        params += [*_ncm(gy), *xs, *needs]
    lines = emulate.run(exe, d, params)
    y = emulate.read(d / "y.bin", x.dtype, x.shape, x.stride())
    mean, rstd = (emulate.read(d / f"{n}.bin", acc, (N, G)) for n in ("mean", "rstd"))
    if gy is None:
        return y, mean, rstd, lines
    shapes = [(x.dtype, x.shape, x.stride()), (acc, (C,), None), (acc, (C,), None), (acc, (N, C), None),
              (acc, (N, C), None), (acc, (N, C), None)]
    grads = [emulate.read(d / f"{n}.bin", dt, s, st) if need else None
             for n, need, (dt, s, st) in zip(("gx", "gw", "gb", "gscale", "gshift", "gadd"), needs, shapes)]
    return y, mean, rstd, grads, lines


def _inputs(shape, dtype, film=True, add=True, affine=True, mean=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C = shape[:2]
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = (r(*shape) + mean).to(dtype)
    w, b = (r(C).to(dtype) if affine else None for _ in range(2))
    sc, sh = (r(N, C).mul(0.5).to(dtype) if film else None for _ in range(2))
    ad = r(N, C).to(dtype) if add else None
    return x, w, b, sc, sh, ad


_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# shapes: odd sizes, one group, Cg = 1, more than one split in each layout (NC...: M > 4096;
# channels-last with 32 lanes: M > 128), C not a power of two in channels-last
_CASES = [
    ((2, 6, 5, 3, 7), 3, "ncdhw", torch.float32, "silu", True, True),
    ((2, 6, 5, 3, 7), 3, "cl", torch.float32, "gelu", True, False),
    ((1, 4, 81, 61), 2, "ncdhw", torch.float32, None, False, True),  # M = 4941: two splits
    ((2, 40, 9, 5, 4), 8, "cl", torch.float32, "silu", True, True),  # 180 positions, 2 splits
    ((3, 5, 7), 5, "ncdhw", torch.float64, "silu", True, True),
    ((2, 12, 3, 4, 5), 4, "cl", torch.float64, "gelu", False, True),
    ((2, 8, 6, 5, 3), 2, "ncdhw", torch.float16, "silu", True, True),
    ((2, 8, 6, 5, 3), 2, "cl", torch.bfloat16, "silu", True, True),
]


def _rel(got, want):
    den = want.abs().max().item() or 1.0
    return (got.double() - want).abs().max().item() / den


@pytest.mark.parametrize("shape,G,layout,dtype,act,film,add", _CASES)
def test_emulated_forward_and_backward_match_the_reference(gn_emulator, tmp_path, shape, G, layout, dtype, act, film,
                                                           add):
    x, w, b, sc, sh, ad = _inputs(shape, dtype, film, add, mean=3.0, seed=1)
    if layout == "cl":
        x = _cl(x)
    gy = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype)
    y, mean, rstd, grads, lines = _emulate(gn_emulator, tmp_path, x, G, w, b, sc, sh, ad, act, gy=gy)
    assert any(line.startswith("group_norm_sums") for line in lines)
    ex = [None if t is None else t.double() for t in (x, w, b, sc, sh, ad)]
    want = group_norm_act_ref(ex[0], G, ex[1], ex[2], 1e-5, *ex[3:], act)
    tol = _TOL[dtype]
    assert y.stride() == x.stride()
    assert torch.isfinite(y).all(), "an output element was not written (NaN poison)"
    assert _rel(y, want) <= tol
    h = ex[0] + (ex[5].reshape(*ex[5].shape, *([1] * (x.dim() - 2))) if ad is not None else 0)
    var, mu = torch.var_mean(h.reshape(shape[0], G, -1), dim=-1, unbiased=False)
    assert _rel(mean, mu) <= max(tol, 1e-6)
    assert _rel(rstd, torch.rsqrt(var + 1e-5)) <= max(tol, 1e-6)
    exp = group_norm_act_bwd_ref(gy.double(), ex[0], G, ex[1], ex[2], 1e-5, ex[3], ex[4], ex[5], act)
    dx_scale = exp[0].abs().max().item()
    for name, g, e in zip(("x", "weight", "bias", "scale", "shift", "add"), grads, exp):
        if e is None:
            continue
        assert torch.isfinite(g).all(), f"grad {name} not written"
        # d add sums dx over a group: 0 in exact arithmetic for a one-channel group
        den = max(e.abs().max().item(), dx_scale)
        err = (g.double().reshape(e.shape) - e).abs().max().item() / den
        assert err <= 4 * tol, f"grad {name}: relative error {err:.2e}"


def test_emulated_backward_writes_only_what_is_asked(gn_emulator, tmp_path):
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 5), torch.float32)
    gy = torch.randn(x.shape)
    needs = (False, True, False, False, True, True)
    *_, grads, _ = _emulate(gn_emulator, tmp_path, x, 2, w, b, sc, sh, ad, "silu", gy=gy, needs=needs)
    assert [g is not None for g in grads] == list(needs)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_emulated_is_stable_for_a_large_mean(gn_emulator, tmp_path):
    """Shifted double sums: float32 inputs around 1e4 with unit spread keep their variance."""
    x, w, b, _, _, _ = _inputs((1, 4, 4096 + 37), torch.float32, film=False, add=False, mean=1e4, seed=3)
    y, mean, rstd, _ = _emulate(gn_emulator, tmp_path, x, 2, w, b, None, None, None, None)
    want = group_norm_act_ref(x.double(), 2, w.double(), b.double(), 1e-5)
    assert _rel(y, want) <= 1e-4


def test_emulated_nan_stays_in_its_group(gn_emulator, tmp_path):
    x, w, b, sc, sh, ad = _inputs((2, 6, 4, 3, 5), torch.float32)
    x[1, 2, 1, 1, 1] = float("nan")  # sample 1, group 1 of 3
    gy = torch.randn(x.shape)
    y, mean, rstd, grads, _ = _emulate(gn_emulator, tmp_path, _cl(x), 3, w, b, sc, sh, ad, "silu", gy=gy)
    bad = torch.zeros(2, 6, dtype=torch.bool)
    bad[1, 2:4] = True
    assert y[bad].isnan().all() and not y[~bad].isnan().any()
    assert grads[0][bad].isnan().all() and not grads[0][~bad].isnan().any()
    assert mean[1, 1].isnan() and mean.isnan().sum() == 1


def test_emulated_nan_in_the_shift_element_and_one_position(gn_emulator, tmp_path):
    """The sums are shifted by each group's first element: NaN or Inf there poisons only that
    group. One spatial position (M = 1) is a group of Cg values."""
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 5), torch.float32, seed=4)
    x[0, 2, 0, 0] = float("nan")  # the first element of sample 0, group 1 (of 2)
    x[1, 0, 0, 0] = float("inf")  # the first element of sample 1, group 0
    y, mean, _, _ = _emulate(gn_emulator, tmp_path, x, 2, w, b, sc, sh, ad, "silu")
    bad = torch.zeros(2, 4, dtype=torch.bool)
    bad[0, 2:], bad[1, :2] = True, True
    assert y[bad].isnan().all() and torch.isfinite(y[~bad]).all()
    x1, w1, b1, sc1, sh1, ad1 = _inputs((3, 6, 1), torch.float64, seed=6)
    gy = torch.randn(x1.shape, dtype=torch.float64)
    y1, _, _, grads, _ = _emulate(gn_emulator, tmp_path, x1, 2, w1, b1, sc1, sh1, ad1, "gelu", gy=gy)
    assert _rel(y1, group_norm_act_ref(x1, 2, w1, b1, 1e-5, sc1, sh1, ad1, "gelu")) <= 1e-12
    exp = group_norm_act_bwd_ref(gy, x1, 2, w1, b1, 1e-5, sc1, sh1, ad1, "gelu")
    for g, e in zip(grads, exp):
        assert (g.reshape(e.shape) - e).abs().max().item() <= 1e-11 * max(e.abs().max().item(), 1.0)


def test_workspace_size_of_the_cupy_entry_is_the_headers():
    """medkernels.cupy sizes its workspace with a Python copy of gn_geom: it must agree with the
    header's (the library's CUDA size query) on every layout and size class."""
    from medkernels._extension import extension
    from medkernels.cupy import group_norm as cgn

    if extension.unavailable_reason:
        pytest.skip(f"the C++ extension: {extension.unavailable_reason}")
    C_ = extension.module
    for N, C, G, M, cl in [(1, 128, 32, 48**3, False), (1, 128, 32, 48**3, True), (2, 40, 8, 180, True),
                           (2, 5, 5, 7, True), (3, 6, 2, 1, False), (1, 4, 2, 4941, False), (1, 1, 1, 70000, True)]:
        p = C_.GroupNormParams()
        p.batch, p.channels, p.groups, p.spatial = N, C, G, M
        p.x_strides = [M * C, 1, C] if cl else [C * M, M, 1]
        tiles, splits = cgn._geometry(C, M, cl and C > 1)
        assert C_.group_norm_fwd_workspace_bytes_cuda(p) == N * C * splits * 2 * 8, (N, C, M, cl)
    p = C_.GroupNormParams()
    p.batch, p.channels, p.groups, p.spatial = 1, 4, 2, 0  # refused sizes: 0, never a division by zero
    assert C_.group_norm_fwd_workspace_bytes_cuda(p) == 0


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_nvcc_compiles_group_norm_cu(tmp_path):
    cmd = [NVCC, "-std=c++17", "-arch=sm_90", "-O3", "--expt-relaxed-constexpr", f"-I{emulate.INCLUDE}", "-c",
           str(emulate.ROOT / "csrc" / "cuda" / "group_norm.cu"), "-o", str(tmp_path / "group_norm.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "warning" not in res.stderr.lower(), res.stderr[-4000:]
