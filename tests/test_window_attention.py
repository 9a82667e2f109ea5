"""(Shifted) 3D window attention: every backend against the float64 reference (MONAI's code path),
forward and every gradient (q, k, v, bias table, padding key/value), odd volumes, every shift
combination, windows 2^3..7^3, anisotropic and clamped windows, heads 1..8, dtypes; the nn
modules against a plain-PyTorch re-creation of MONAI's / SwinCross's window attention."""

from __future__ import annotations

import itertools

import emulate
import pytest
import torch
import torch.nn.functional as F

from medkernels import _environment
from medkernels.nn import CrossModalSwinBlock3d, CrossModalWindowAttention3d, SwinBlock3d, WindowAttention3d
from medkernels.ops import _kit, cross_window_attention3d, cross_window_attention3d_separate, window_attention3d
from medkernels.ops import window_attention as wa_ops
from medkernels.reference.window_attention import (
    bias_table_grad,
    cross_window_attention3d_ref,
    relative_position_index,
    shift_region_mask,
    window_attention3d_ref,
    window_geometry,
    window_partition,
    window_reverse,
)
from medkernels.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU = torch.cuda.is_available()


def _backends(device="cpu", dtype=torch.float32):
    return [b.name for b in wa_ops._DISPATCH.backends if not b.not_supported_reasons(torch.device(device), dtype)]


CPU_BACKENDS = _backends("cpu")
BACKENDS = sorted(set(CPU_BACKENDS) | ({"triton"} if GPU else set()))


def _device(backend):
    return "cuda" if backend == "triton" and GPU else "cpu"


# (B, (D, H, W), heads, head_dim, window, shift, mask_value, mask_padded)
CASES = [
    (2, (5, 9, 13), 2, 16, (3, 4, 5), (1, 2, 2), -100.0, False),   # odd volume, anisotropic, padding
    (1, (4, 6, 6), 1, 16, 2, 1, -100.0, False),                    # 2^3 windows, heads 1
    (1, (6, 7, 7), 3, 16, 7, 3, -100.0, False),                    # 7^3 window, D clamped (6 <= 7)
    (1, (9, 5, 13), 2, 16, 7, 3, -100.0, False),                   # H clamped: Swin's index[:n, :n]
    (1, (3, 3, 4), 8, 16, 3, (1, 0, 1), float("-inf"), False),     # heads 8, -inf mask
    (2, (3, 5, 4), 4, 20, 2, 0, -100.0, False),                    # head_dim 20, no shift
    (1, (5, 7, 6), 2, 16, (4, 5, 4), (2, 2, 2), -100.0, True),     # mask the padding keys
    (1, (6, 6, 6), 2, 32, (5, 6, 5), (2, 3, 2), -100.0, False),    # 5/6 windows, head_dim 32
]
# the Triton interpreter is slow: on CPU tensors it runs these in the default tier, all with
# MEDKERNELS_EXTENDED_TESTS=1 (on a GPU it runs all of them)
INTERPRETER_CASES = (1, 2, 3, 4, 6)
LIGHT = (1, (5, 7, 6), 2, 16, (4, 5, 4), (2, 2, 2), -100.0, False)  # padding + shift, few windows


def _skip_heavy(backend, case):
    if backend == "triton" and not GPU and not _environment.EXTENDED_TESTS and CASES.index(case) not in (
        INTERPRETER_CASES
    ):
        pytest.skip("large for the Triton interpreter: MEDKERNELS_EXTENDED_TESTS=1 runs it")


def _case_id(c):
    b, size, heads, e, window, shift, mv, mp = c
    w = "x".join(map(str, window)) if isinstance(window, tuple) else f"{window}c"
    s = "x".join(map(str, shift)) if isinstance(shift, tuple) else str(shift)
    return f"{b}x{'x'.join(map(str, size))}-h{heads}e{e}-w{w}-s{s}-m{'inf' if mv == float('-inf') else int(mv)}" + (
        "-maskpad" if mp else ""
    )


def _make(case, dtype, device, seed=0, layout="qkv_view"):
    b, size, heads, e, window, shift, mv, mp = case
    gen = torch.Generator().manual_seed(seed)
    geom = window_geometry(size, window, shift)
    qkv64 = torch.randn(b, *size, 3, heads, e, generator=gen, dtype=torch.float64)
    table64 = torch.randn(geom.table_rows, heads, generator=gen, dtype=torch.float64)
    pad64 = torch.randn(2, heads, e, generator=gen, dtype=torch.float64)
    qkv = qkv64.to(device=device, dtype=dtype)
    if layout == "contiguous":
        q, k, v = (t.contiguous() for t in qkv.unbind(4))
    else:  # views of one qkv projection, as the modules pass them
        q, k, v = qkv.unbind(4)
    return [t.detach() for t in qkv64.unbind(4)], table64, pad64, (q, k, v), table64.to(device, dtype), pad64.to(
        device, dtype
    )


def _opts(case):
    _, _, _, _, window, shift, mv, mp = case
    return dict(window=window, shift=shift, mask_value=mv, mask_padded=mp)


def _ref_grads(qkv, table, pad, opts, go, upcast=True):
    xs = [t.detach().clone().requires_grad_() for t in (*qkv, table, pad)]
    out = window_attention3d_ref(*xs[:3], rel_bias_table=xs[3], pad_kv=xs[4], upcast=upcast, **opts)
    grads = torch.autograd.grad(out, xs, go.to(out.dtype), allow_unused=True)
    return out, [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


GRAD_NAMES = ("q", "k", "v", "rel_bias_table", "pad_kv")


def _check_all(backend, case, dtype, seed=0):
    device = _device(backend)
    qkv64, table64, pad64, qkv, table, pad = _make(case, dtype, device, seed)
    opts = _opts(case)
    xs = [t.detach().clone().requires_grad_() for t in (*qkv, table, pad)]
    out = window_attention3d(*xs[:3], rel_bias_table=xs[3], pad_kv=xs[4], backend=backend, **opts)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grads = torch.autograd.grad(out, xs, go.to(device, dtype))
    out64, grads64 = _ref_grads(qkv64, table64, pad64, opts, go)
    lowp_out = lowp_grads = None
    if dtype in (torch.float16, torch.bfloat16):
        lowp_out, lowp_grads = _ref_grads([t.to(dtype) for t in qkv64], table64.to(dtype), pad64.to(dtype), opts, go,
                                          upcast=False)
    assert_close(f"{backend} out", out.cpu(), out64, lowp_out, dtype)
    for i, name in enumerate(GRAD_NAMES):
        if case[-1] and name == "pad_kv":  # masked padding keys: no gradient reaches pad_kv
            assert float(grads[i].abs().max()) == 0.0
            continue
        assert_close(f"{backend} grad {name}", grads[i].cpu(), grads64[i], lowp_grads[i] if lowp_grads else None,
                     dtype)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_grads_fp32(backend, case):
    _skip_heavy(backend, case)
    _check_all(backend, case, torch.float32)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_grads_low_precision(backend, dtype, case):
    _skip_heavy(backend, case)
    _check_all(backend, case, dtype)


SHIFTS = list(itertools.product((0, 1), (0, 1), (0, 2)))


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: "s" + "x".join(map(str, s)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_shift_combination(backend, shift):
    _check_all(backend, (1, (3, 5, 7), 1, 16, (2, 3, 4), shift, -100.0, False), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_modal_both_directions(backend):
    device = _device(backend)
    case = (2, (5, 6, 7), 2, 16, (3, 3, 4), (1, 1, 2), -100.0, False)
    geom = window_geometry(case[1], case[4], case[5])
    gen = torch.Generator().manual_seed(3)
    batch = 1 if backend == "triton" and not GPU else 2
    t64 = [torch.randn(batch, *case[1], 2, 16, generator=gen, dtype=torch.float64) for _ in range(6)]
    table64 = torch.randn(geom.table_rows, 2, generator=gen, dtype=torch.float64)
    pad64 = torch.randn(2, 2, 16, generator=gen, dtype=torch.float64)
    xs = [t.to(device, torch.float32).requires_grad_() for t in (*t64, table64, pad64)]
    opts = _opts(case)
    out_a, out_b = cross_window_attention3d_separate(*xs[:6], rel_bias_table=xs[6], pad_kv=xs[7], backend=backend,
                                                     **opts)
    ga, gb = (torch.randn(out_a.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    grads = torch.autograd.grad((out_a, out_b), xs, (ga.to(device, torch.float32), gb.to(device, torch.float32)))
    ys = [t.clone().requires_grad_() for t in (*t64, table64, pad64)]
    ra, rb = cross_window_attention3d_ref(*ys[:6], rel_bias_table=ys[6], pad_kv=ys[7], **opts)
    rgrads = torch.autograd.grad((ra, rb), ys, (ga, gb), allow_unused=True)
    rgrads = [torch.zeros_like(y) if g is None else g for y, g in zip(ys, rgrads)]
    assert_close("out_a", out_a.cpu(), ra)
    assert_close("out_b", out_b.cpu(), rb)
    for name, g, r in zip(("q_a", "k_a", "v_a", "q_b", "k_b", "v_b", "table", "pad_kv"), grads, rgrads):
        assert_close(f"grad {name}", g.cpu(), r)


def _packed_pair(gen, batch, size, heads, e, layout):
    """qkv_a, qkv_b (B, D, H, W, 3*C) in float64: contiguous, or slices of wider tensors with
    different strides for the two streams (non-contiguous, as a fused Linear's output slice)."""
    c3 = 3 * heads * e
    if layout == "contiguous":
        return [torch.randn(batch, *size, c3, generator=gen, dtype=torch.float64) for _ in range(2)]
    wide_a = torch.randn(batch, *size, c3 + 8, generator=gen, dtype=torch.float64)
    wide_b = torch.randn(batch, size[2], size[1], size[0], c3, generator=gen, dtype=torch.float64)
    return [wide_a[..., 4:4 + c3], wide_b.transpose(1, 3)]


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_packed_qkv_form(backend, layout):
    """cross_window_attention3d(qkv_a, qkv_b, heads, ...) on the qkv Linear's outputs equals the
    six-tensor form and the reference, values and gradients (qkv_a, qkv_b, table, pad_kv)."""
    device = _device(backend)
    size, heads, e, window, shift = (5, 6, 7), 2, 8, (3, 3, 4), (1, 1, 2)
    gen = torch.Generator().manual_seed(5)
    qkv64 = _packed_pair(gen, 1, size, heads, e, layout)
    geom = window_geometry(size, window, shift)
    table64 = torch.randn(geom.table_rows, heads, generator=gen, dtype=torch.float64)
    pad64 = torch.randn(2, heads, e, generator=gen, dtype=torch.float64)
    dtype = torch.float32 if backend == "triton" else torch.float64
    # float64 keeps the slices' strides (.to is then a no-op); float32 copies them contiguous
    leaves = [t.detach().to(device, dtype).requires_grad_() for t in (*qkv64, table64, pad64)]
    opts = dict(window=window, shift=shift, rel_bias_table=leaves[2], pad_kv=leaves[3], backend=backend)
    out_a, out_b = cross_window_attention3d(leaves[0], leaves[1], heads, **opts)
    g_a, g_b = (torch.randn(out_a.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    grads = torch.autograd.grad((out_a, out_b), leaves, (g_a.to(device, dtype), g_b.to(device, dtype)))
    ref_leaves = [t.clone().requires_grad_() for t in (*qkv64, table64, pad64)]
    (qa, ka, va), (qb, kb, vb) = (t.unflatten(-1, (3, heads, e)).unbind(-3) for t in ref_leaves[:2])
    ra, rb = cross_window_attention3d_ref(qa, ka, va, qb, kb, vb, window=window, shift=shift,
                                          rel_bias_table=ref_leaves[2], pad_kv=ref_leaves[3])
    rgrads = torch.autograd.grad((ra, rb), ref_leaves, (g_a, g_b))
    assert_close("out_a", out_a.cpu(), ra)
    assert_close("out_b", out_b.cpu(), rb)
    for name, g, r in zip(("qkv_a", "qkv_b", "table", "pad_kv"), grads, rgrads):
        assert_close(f"grad {name}", g.cpu(), r)
    # the six-tensor form under its own name
    (sa, ska, sva), (sb, skb, svb) = (t.unflatten(-1, (3, heads, e)).unbind(-3) for t in leaves[:2])
    with torch.no_grad():
        six_a, six_b = cross_window_attention3d_separate(sa, ska, sva, sb, skb, svb, **opts)
    assert torch.equal(six_a, out_a.detach()) and torch.equal(six_b, out_b.detach())


def test_cross_packed_qkv_form_bad_input():
    x = torch.randn(1, 3, 4, 5, 3 * 16)
    with pytest.raises(ValueError, match="qkv_a must be .*divisible by num_heads=5"):
        cross_window_attention3d(x, x, 5, 2)
    with pytest.raises(ValueError, match="qkv_b must have the shape of qkv_a"):
        cross_window_attention3d(x, x[:, :2], 2, 2)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        cross_window_attention3d(x, x, 0, 2)
    q = torch.randn(1, 3, 4, 5, 2, 8)  # the six-tensor form has its own name: a clear error, not a shape error
    with pytest.raises(TypeError, match="call cross_window_attention3d_separate"):
        cross_window_attention3d(q, q, q, q, q, q, 2)
    with pytest.raises(TypeError, match="call cross_window_attention3d_separate"):
        cross_window_attention3d(q.numpy(), q.numpy(), q.numpy(), q.numpy(), q.numpy(), q.numpy(), 2)


def test_cross_packed_qkv_form_compiles():
    torch._dynamo.reset()
    backend = "cpu" if "cpu" in CPU_BACKENDS else "reference"
    mod = CrossModalWindowAttention3d(16, 2, (3, 4, 5), (1, 2, 2), backend=backend)
    x_a, x_b = torch.randn(1, 5, 9, 7, 16), torch.randn(1, 5, 9, 7, 16)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x_a, x_b), mod(x_a, x_b)):
        assert_close("compiled", got, want.double())
    xg = x_a.clone().requires_grad_()
    sum(o.sum() for o in compiled(xg, x_b)).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs_and_stride0_grad(backend):
    device = _device(backend)
    case = LIGHT
    qkv64, table64, pad64, _, table, pad = _make(case, torch.float32, device)
    # q, k, v as permuted views (head_dim not innermost) and a sliced view
    base = torch.stack(qkv64, 0).to(device, torch.float32)  # 3, B, D, H, W, heads, e
    perm = base.permute(0, 1, 2, 3, 4, 6, 5).contiguous().permute(0, 1, 2, 3, 4, 6, 5)
    q, k, v = (t.requires_grad_() for t in (perm[0].detach(), perm[1].detach(), perm[2].detach()))
    assert not q.is_contiguous()
    out = window_attention3d(q, k, v, rel_bias_table=table, pad_kv=pad, backend=backend, **_opts(case))
    out.sum().backward()  # the gradient arrives as an expanded stride-0 tensor
    out64, grads64 = _ref_grads(qkv64, table64, pad64, _opts(case), torch.ones(out.shape, dtype=torch.float64))
    assert_close("out", out.detach().cpu(), out64)
    for name, g, r in zip(("q", "k", "v"), (q.grad, k.grad, v.grad), grads64):
        assert_close(f"grad {name}", g.cpu(), r)


# --- the CUDA kernels' per-thread code on the host: tests/window_attention_emulate.cpp ----------
@pytest.fixture(scope="module")
def wa_emulator(tmp_path_factory):
    return emulate.build("window_attention", tmp_path_factory)


def _emulate_cuda(exe, d, case, dtype, seed=0):
    """Forward and every gradient through the CUDA kernels' per-thread code run on the host, every
    launch of the .cuh in its order, outputs and workspace NaN first. The table gradient comes
    from the kernels' summed dS through bias_table_grad, as the cuda backend forms it."""
    qkv64, table64, pad64, (q, k, v), table, pad = _make(case, dtype, "cpu", seed, layout="contiguous")
    _, _, _, _, window, shift, mv, mp = case
    geom = window_geometry(q.shape[1:4], window, shift)
    go = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    g = go.to(dtype)
    for name, t in (("q", q), ("k", k), ("v", v), ("table", table), ("pad", pad), ("g", g)):
        emulate.write(d / f"{name}.bin", t)
    heads, n = q.shape[4], geom.tokens
    params = [emulate.DTYPE_CODE[dtype], q.shape[0], heads, q.shape[5], *geom.size, *geom.window, *geom.eff_window,
              *geom.shift, *geom.padded, q.shape[-1] ** -0.5, float(mv), mp, True, True, *q.stride(), *k.stride(),
              *v.stride(), *g.stride()]
    lines = emulate.run(exe, d, [*params, 0])
    assert [ln.split()[0] for ln in lines] == ["fwd"], lines
    out = emulate.read(d / "o.bin", dtype, q.shape)
    lines = emulate.run(exe, d, [*params, 1])
    assert [ln.split()[0] for ln in lines] == ["delta", "dkdv", "dq", "pair", "reduce_pair", "reduce_pad"], lines
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    grads = [emulate.read(d / f"{name}.bin", dtype, q.shape) for name in ("dq", "dk", "dv")]
    d_table = bias_table_grad(emulate.read(d / "pair.bin", acc, (heads, n, n)), geom.window, n)
    d_pad = emulate.read(d / "dpad.bin", acc, pad.shape)
    out64, grads64 = _ref_grads(qkv64, table64, pad64, _opts(case), go)
    return out, [*grads, d_table, d_pad], out64, grads64


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cuda_kernels_emulated_on_host(wa_emulator, tmp_path, case):
    out, grads, out64, grads64 = _emulate_cuda(wa_emulator, tmp_path, case, torch.float32)
    assert_close("cuda out", out, out64)
    for name, g, r in zip(GRAD_NAMES, grads, grads64):
        assert_close(f"cuda grad {name}", g, r)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_cuda_kernels_emulated_dtypes(wa_emulator, tmp_path, dtype):
    out, grads, out64, grads64 = _emulate_cuda(wa_emulator, tmp_path, LIGHT, dtype)
    if dtype == torch.float64:
        assert_close("cuda out", out, out64)
        for name, g, r in zip(GRAD_NAMES, grads, grads64):
            assert_close(f"cuda grad {name}", g, r)
        return
    qkv64, table64, pad64, *_ = _make(LIGHT, dtype, "cpu")
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lowp_out, lowp_grads = _ref_grads([t.to(dtype) for t in qkv64], table64.to(dtype), pad64.to(dtype), _opts(LIGHT),
                                      go, upcast=False)
    assert_close("cuda out", out, out64, lowp_out, dtype)
    for name, g, r, lp in zip(GRAD_NAMES, grads, grads64, lowp_grads):
        assert_close(f"cuda grad {name}", g.to(dtype), r, lp, dtype)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_poisoned_outputs_are_fully_written(backend):
    """The kernels write every output element (dropped padding queries included nowhere)."""
    device = _device(backend)
    _, _, _, (q, k, v), table, pad = _make(LIGHT, torch.float32, device, layout="contiguous")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with _kit.poisoned():  # every output the backend allocates starts as NaN
        out = window_attention3d(*leaves, LIGHT[4], LIGHT[5], rel_bias_table=table, pad_kv=pad, backend=backend)
        grads = torch.autograd.grad(out, leaves, torch.randn_like(out))
    assert torch.isfinite(out).all()
    for name, g in zip("qkv", grads):
        assert torch.isfinite(g).all(), f"d{name} has unwritten (NaN) elements"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_bias_table_grad_is_deterministic(backend):
    device = _device(backend)
    case = LIGHT
    _, _, _, qkv, table, pad = _make(case, torch.float32, device)
    runs = []
    for _ in range(2):
        t = table.clone().requires_grad_()
        out = window_attention3d(*qkv, rel_bias_table=t, pad_kv=pad, backend=backend, **_opts(case))
        (g,) = torch.autograd.grad(out, t, torch.ones_like(out))
        runs.append(g)
    assert torch.equal(runs[0], runs[1]), "two runs gave different bits for the bias-table gradient"


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpu", "reference")])
def test_gradcheck_float64(backend):
    case = (1, (3, 3, 2), 2, 2, (2, 2, 2), (1, 1, 1), -100.0, False)
    _, size, heads, e, window, shift, _, _ = case
    geom = window_geometry(size, window, shift)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(1, *size, heads, e, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]
    table = torch.randn(geom.table_rows, heads, generator=gen, dtype=torch.float64).requires_grad_()
    pad = torch.randn(2, heads, e, generator=gen, dtype=torch.float64).requires_grad_()
    fn = lambda q, k, v, t, p: window_attention3d(  # noqa: E731
        q, k, v, window, shift, rel_bias_table=t, pad_kv=p, backend=backend
    )
    assert torch.autograd.gradcheck(fn, (*xs, table, pad), eps=1e-6, atol=1e-7, fast_mode=True)


def test_window_clamp_follows_monai():
    g = window_geometry((5, 9, 3), (7, 4, 3), (3, 2, 1))
    assert g.eff_window == (5, 4, 3) and g.shift == (0, 2, 0) and g.padded == (5, 12, 3)
    g = window_geometry((8, 8, 8), 7, 3)
    assert g.eff_window == (7, 7, 7) and g.shift == (3, 3, 3) and g.padded == (14, 14, 14)


@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda a: a.update(k=a["k"][..., :8]), ValueError, "k must have the shape of q"),
        (lambda a: a.update(q=a["q"][0]), ValueError, "q must be 6-D"),
        (lambda a: a.update(rel_bias_table=a["rel_bias_table"][:, :1]), ValueError, "rel_bias_table must be"),
        (lambda a: a.update(pad_kv=a["pad_kv"][:1]), ValueError, "pad_kv must be"),
        (lambda a: a.update(shift=3), ValueError, "shift must be in"),
        (lambda a: a.update(window=(2, 2)), ValueError, "window must be an int or 3 ints"),
        (lambda a: a.update(v=a["v"].double()), TypeError, "v has dtype float64"),
        (lambda a: a.update(mask_value=1.0), ValueError, "mask_value must be <= 0"),
    ],
    ids=["k-shape", "q-5d", "table-heads", "pad-kv", "shift", "window", "dtype", "mask-value"],
)
def test_bad_input(mutate, exc, pattern):
    case = CASES[0]
    _, _, _, (q, k, v), table, pad = _make(case, torch.float32, "cpu")
    args = dict(q=q, k=k, v=v, window=(3, 4, 5), shift=(1, 2, 2), rel_bias_table=table, pad_kv=pad)
    window_attention3d(**args, backend="reference")  # a cached plan for the good signature changes nothing
    mutate(args)
    for _ in range(2):  # nor does a second bad call (bad signatures are never cached)
        with pytest.raises(exc, match=pattern):
            window_attention3d(**args, backend="reference")


def test_plan_cache_keys_on_exact_options():
    """The checks run once per signature; a cached plan never answers a call whose options differ
    only in type (window=True is not window=1) or whose tensors differ in strides."""
    q = torch.randn(1, 3, 4, 5, 2, 8)
    window_attention3d(q, q, q, 1)
    with pytest.raises(TypeError, match="window must be an int or 3 ints .*got bool True"):
        window_attention3d(q, q, q, True)
    table = torch.randn(27, 2)
    a = window_attention3d(q, q, q, 2, rel_bias_table=table)
    b = window_attention3d(q, q, q, 2, rel_bias_table=table.t().contiguous().t())  # strided: copied, same numbers
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        window_attention3d(q, q, [1.0], 2)


# (window, shift) -> (exception, message): issue 16 found 2.0 / 0.5 ending in "'float' object is not
# iterable" and a negative window_size reported as a bad shift_size
BAD_WINDOW_ARGS = [
    ((2.0, 0), TypeError, r"{w} must be an int or 3 ints \(d, h, w\), got float 2.0"),
    ((2, 0.5), TypeError, r"{s} must be an int or 3 ints \(d, h, w\), got float 0.5"),
    ((2.5, 1), TypeError, r"{w} must be an int or 3 ints \(d, h, w\), got float 2.5"),
    (((2, 2, 2.0), 0), TypeError, r"{w} must be .*got float 2.0 for w in \(2, 2, 2.0\)"),
    (((2, 2, 2), (0, 1.0, 0)), TypeError, r"{s} must be .*got float 1.0 for h in"),
    ((True, 0), TypeError, r"{w} must be an int or 3 ints \(d, h, w\), got bool True"),
    ((2, False), TypeError, r"{s} must be an int or 3 ints \(d, h, w\), got bool False"),
    (("222", 0), TypeError, r"{w} must be an int or 3 ints \(d, h, w\), got str '222'"),
    ((None, 0), TypeError, r"{w} must be an int or 3 ints \(d, h, w\), got NoneType None"),
    (((2, 2), 0), ValueError, r"{w} must be an int or 3 ints \(d, h, w\), got 2 values \(2, 2\)"),
    ((2, (1, 1, 1, 1)), ValueError, r"{s} must be an int or 3 ints \(d, h, w\), got 4 values"),
    ((-2, 0), ValueError, r"{w} must be >= 1 on every axis \(d, h, w\), got \(-2, -2, -2\)"),
    (((2, 0, 2), 0), ValueError, r"{w} must be >= 1 on every axis \(d, h, w\), got \(2, 0, 2\)"),
    ((2, -1), ValueError, r"{s} must be in \[0, {w}\)"),
]
_BAD_IDS = ["float-window", "float-shift", "frac-window", "float-in-window", "float-in-shift", "bool-window",
            "bool-shift", "str-window", "none-window", "short-window", "long-shift", "neg-window", "zero-axis",
            "neg-shift"]


@pytest.mark.parametrize("args, exc, pattern", BAD_WINDOW_ARGS, ids=_BAD_IDS)
def test_bad_window_and_shift_name_the_argument(args, exc, pattern):
    window, shift = args
    q = torch.randn(1, 3, 3, 3, 2, 4)
    qkv = torch.randn(1, 3, 3, 3, 3 * 8)
    names = {"w": "window", "s": "shift"}
    for _ in range(2):  # a bad signature is never cached: the second call gives the same error
        with pytest.raises(exc, match=pattern.format(**names)):
            window_attention3d(q, q, q, window, shift, backend="reference")
    with pytest.raises(exc, match=pattern.format(**names)):
        cross_window_attention3d(qkv, qkv, 2, window, shift, backend="reference")
    with pytest.raises(exc, match=pattern.format(**names)):
        window_geometry((3, 3, 3), window, shift)
    names = {"w": "window_size", "s": "shift_size"}
    for module in (WindowAttention3d, CrossModalWindowAttention3d, SwinBlock3d, CrossModalSwinBlock3d):
        with pytest.raises(exc, match=pattern.format(**names)):
            module(8, 2, window, shift)


def test_cupy_window_parser_refuses_floats_instead_of_truncating():
    from medkernels.cupy import window_attention as mkc  # imports no cupy: the parser runs without it

    with pytest.raises(TypeError, match=r"window must be an int or 3 ints \(d, h, w\), got float 2.5"):
        mkc._triple("window", 2.5)
    with pytest.raises(TypeError, match="got bool True for w"):
        mkc._triple("shift", (0, 1, True))
    assert mkc._triple("window", [2, 3, 4]) == (2, 3, 4)


def test_window_accepts_numpy_ints_and_lists():
    import numpy as np

    q = torch.randn(1, 3, 4, 5, 2, 4)
    want = window_attention3d(q, q, q, (2, 2, 2), (1, 1, 1), backend="reference")
    got = window_attention3d(q, q, q, np.int64(2), [1, np.int32(1), 1], backend="reference")
    assert torch.equal(got, want)
    assert WindowAttention3d(8, 2, [np.int64(2), 2, 2], 1).window_size == (2, 2, 2)


def test_triton_refuses_float64_and_says_why():
    q = torch.randn(1, 2, 2, 2, 1, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="triton.*dtypes"):
        window_attention3d(q, q, q, 2, backend="triton")


def test_opcheck():
    case = LIGHT
    _, _, _, (q, k, v), table, pad = _make(case, torch.float32, "cpu", layout="contiguous")
    q, k, v, table, pad = (t.requires_grad_() for t in (q, k, v, table, pad))
    for backend in [b for b in CPU_BACKENDS if b in ("cpu", "reference")]:
        args = (q, k, v, table, pad, [4, 5, 4], [2, 2, 2], -100.0, 0.25, False, True, backend)
        torch.library.opcheck(wa_ops._SELF_OP.custom_op, args)
        out, lse = wa_ops._SELF_OP.custom_op(*args)
        go = torch.randn_like(out)
        saved = [q.detach(), k.detach(), v.detach(), table.detach(), pad.detach(), out.detach(), lse]
        bargs = ([go, None], saved, [True] * 5, [4, 5, 4], [2, 2, 2], -100.0, 0.25, False, True, backend)
        torch.library.opcheck(torch.ops.medkernels.window_attention3d_bwd.default, bargs)
        cargs = (q, k, v, k.detach().clone().requires_grad_(), v.detach().clone(), q.detach().clone(), table, pad,
                 [4, 5, 4], [2, 2, 2], -100.0, 0.25, False, True, backend)
        torch.library.opcheck(wa_ops._CROSS_OP.custom_op, cargs)
        # the packed form's arguments: q, k, v as views of two (B, D, H, W, 3*C) qkv tensors
        packed = [torch.randn(*q.shape[:4], 3 * q.shape[4] * q.shape[5], requires_grad=True) for _ in range(2)]
        views = [t for p in packed for t in p.unflatten(-1, (3, q.shape[4], q.shape[5])).unbind(-3)]
        pargs = (*views, table, pad, [4, 5, 4], [2, 2, 2], -100.0, 0.25, False, True, backend)
        torch.library.opcheck(wa_ops._CROSS_OP.custom_op, pargs)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpu", "reference")])
def test_eager_path_equals_custom_ops(backend):
    """Eager calls on plain tensors skip torch.library's Python layers (an autograd.Function over
    the same _run_fwd / _run_bwd): outputs and every gradient equal the custom ops' bit for bit."""
    _, _, _, (q, k, v), table, pad = _make(LIGHT, torch.float64, "cpu", layout="contiguous")
    opts = dict(window=(4, 5, 4), shift=(2, 2, 2), backend=backend)

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, table, pad)]
        out = window_attention3d(*leaves[:3], rel_bias_table=leaves[3], pad_kv=leaves[4], **opts)
        oa, ob = cross_window_attention3d_separate(*leaves[:3], leaves[2], leaves[0], leaves[1],
                                                   rel_bias_table=leaves[3], pad_kv=leaves[4], **opts)
        grads = torch.autograd.grad((out.sum(), (oa * ob).sum()), leaves)
        return (out, oa, ob, *grads)

    fast = run()
    with _kit.custom_ops_only():
        slow = run()
        assert _kit.eager_ok([q]) is False
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert torch.equal(a, b), f"tensor {i} differs between the eager path and the custom ops"
    assert _kit.eager_ok([q, None]) and not _kit.eager_ok([q.to("meta")])


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the C++ extension is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("size, window", [((4, 5, 6), (4, 5, 6)), ((3, 5, 2), (4, 5, 3))], ids=["full", "clamped"])
def test_cpu_table_grad_equals_bincount(size, window, dtype):
    """The C++ bias-table gradient (heads in parallel, fixed order) sums pair_grad as the
    reference's bincount does, for full and clamped windows (Swin's index[:n, :n])."""
    from medkernels._extension import extension

    geom = window_geometry(size, window, 0)
    heads, n = 3, geom.tokens
    pair = torch.randn(heads, n, n, dtype=dtype, generator=torch.Generator().manual_seed(4))
    q = torch.zeros(1, *size, heads, 8, dtype=dtype)
    o = wa_ops.WindowOptions(geom.window, geom.shift, -100.0, 1.0, False)
    p, _ = wa_ops._DISPATCH.impl("cpu")._params(o, geom, [q], [q], [q], None, None)
    out = torch.empty(geom.table_rows, heads, dtype=dtype)
    extension.module.window_attention_table_grad_cpu(p, pair.data_ptr(), out.data_ptr())
    assert_close("table grad", out, bias_table_grad(pair.double(), geom.window, n))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    mod = WindowAttention3d(16, 2, (3, 4, 5), (1, 2, 2), backend="cpu" if "cpu" in CPU_BACKENDS else "reference")
    x = torch.randn(1, 5, 9, 7, 16)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    assert_close("compiled", compiled(x), mod(x).double())
    xg = x.clone().requires_grad_()
    compiled(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


# --- the modules against a plain-PyTorch re-creation of MONAI's window attention ----------------
def _monai_window_attention(mod, x, x_kv=None):
    """MONAI ``SwinTransformerBlock.forward_part1`` after norm1 with ``WindowAttention.forward``,
    re-created from the reference helpers and ``mod``'s weights (F.pad of zero features, roll,
    partition, qkv, scaled q, bias from the index buffer, mask, softmax, proj, reverse). With
    ``x_kv``, SwinCross's ``WindowAttention_crossModality`` direction: q from x, k and v from x_kv."""
    b, d, h, w, c = x.shape
    geom = window_geometry((d, h, w), mod.window_size, mod.shift_size)
    pads = [p - s for p, s in zip(geom.padded, (d, h, w))]

    def windows(t):
        t = F.pad(t, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        if geom.shifted:
            t = torch.roll(t, shifts=tuple(-s for s in geom.shift), dims=(1, 2, 3))
        return window_partition(t, geom.eff_window)

    xw = windows(x)
    bn, n, _ = xw.shape
    heads = mod.num_heads
    qkv = mod.qkv(xw).reshape(bn, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    if x_kv is not None:
        qkv_other = mod.qkv(windows(x_kv)).reshape(bn, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        qkv = torch.stack([qkv[0], qkv_other[1], qkv_other[2]])
    q, k, v = qkv[0] * mod.scale, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    idx = mod.relative_position_index.clone()[:n, :n].reshape(-1)
    attn = attn + mod.relative_position_bias_table[idx].reshape(n, n, -1).permute(2, 0, 1)[None]
    mask = shift_region_mask(geom, mod.mask_value)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(bn // nw, nw, heads, n, n) + mask.to(attn.dtype)[None, :, None]).view(-1, heads, n, n)
    out = mod.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bn, n, c))
    out = window_reverse(out, geom.eff_window, (b, *geom.padded))
    if geom.shifted:
        out = torch.roll(out, shifts=geom.shift, dims=(1, 2, 3))
    return out[:, :d, :h, :w]


MODULE_CASES = [((5, 7, 6), (4, 5, 4), (2, 2, 2)), ((9, 5, 8), 7, 3), ((4, 6, 6), 2, 0)]


@pytest.mark.parametrize("size, window, shift", MODULE_CASES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("backend", BACKENDS)
def test_window_attention_module_matches_monai(backend, size, window, shift):
    torch.manual_seed(0)
    mod = WindowAttention3d(24, 3, window, shift, backend=backend).double()
    if backend == "triton":
        mod = mod.float()
    with torch.no_grad():
        mod.qkv.bias.normal_()
        mod.relative_position_bias_table.normal_()
    x = torch.randn(1, *size, 24, dtype=next(mod.parameters()).dtype, device=_device(backend))
    expected = _monai_window_attention(mod.double().cpu(), x.double().cpu())
    mod = mod.to(x.device, x.dtype)
    assert_close("module", mod(x).cpu(), expected)
    keys = set(mod.state_dict())
    assert {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table",
            "relative_position_index"} == keys


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_modal_module_matches_swincross(backend):
    torch.manual_seed(1)
    mod = CrossModalWindowAttention3d(16, 2, (3, 3, 4), (1, 1, 2), backend=backend)
    with torch.no_grad():
        mod.qkv.bias.normal_()
        mod.relative_position_bias_table.normal_()
    x_a, x_b = (torch.randn(1, 5, 6, 7, 16, device=_device(backend)) for _ in range(2))
    out_a, out_b = mod.to(x_a.device)(x_a, x_b)
    # SwinCross: q from its own stream, k and v from the other, shared qkv / proj / table
    ref = mod.double().cpu()
    c = 16
    geom = window_geometry((5, 6, 7), (3, 3, 4), (1, 1, 2))
    qkv = [ref.qkv(t.double().cpu()).view(1, 5, 6, 7, 3, 2, c // 2).unbind(4) for t in (x_a, x_b)]
    pad = ref.qkv.bias.view(3, 2, c // 2)[1:]
    opts = dict(window=geom.window, shift=(1, 1, 2), rel_bias_table=ref.relative_position_bias_table, pad_kv=pad)
    ea = ref.proj(window_attention3d_ref(qkv[0][0], qkv[1][1], qkv[1][2], **opts).reshape(1, 5, 6, 7, c))
    eb = ref.proj(window_attention3d_ref(qkv[1][0], qkv[0][1], qkv[0][2], **opts).reshape(1, 5, 6, 7, c))
    assert_close("out_a", out_a.cpu(), ea)
    assert_close("out_b", out_b.cpu(), eb)


def test_swin_block_keys_and_residuals():
    blk = SwinBlock3d(24, 3, 7, 3, backend="reference")
    keys = set(blk.state_dict())
    for k in ("norm1.weight", "norm2.bias", "attn.qkv.weight", "attn.relative_position_bias_table",
              "attn.relative_position_index", "mlp.linear1.weight", "mlp.linear2.bias"):
        assert k in keys
    x = torch.randn(1, 5, 6, 7, 24, dtype=torch.float64)
    blk = blk.double()
    h = x + _monai_window_attention(blk.attn, blk.norm1(x))
    expected = h + blk.mlp.linear2(F.gelu(blk.mlp.linear1(blk.norm2(h))))
    assert_close("block", blk(x), expected)


def _swincross_block(blk, x_a, x_b, shortcut_b=None):
    """SwinCross's ``SwinTransformerBlock_crossModality.forward`` re-created in plain PyTorch with
    ``blk``'s weights: shared norm1, cross window attention, stream a's shortcut added to both
    outputs (``shortcut_b`` replaces it for stream b), shared norm2 + MLP per stream."""
    na, nb = blk.norm1(x_a), blk.norm1(x_b)
    a = x_a + _monai_window_attention(blk.attn, na, nb)
    b = (x_a if shortcut_b is None else shortcut_b) + _monai_window_attention(blk.attn, nb, na)
    mlp = lambda t: blk.mlp.linear2(F.gelu(blk.mlp.linear1(blk.norm2(t))))  # noqa: E731
    return a + mlp(a), b + mlp(b)


@pytest.mark.parametrize("residual", ["swincross", "per_stream"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cross_modal_block_matches_swincross(backend, residual):
    torch.manual_seed(2)
    blk = CrossModalSwinBlock3d(24, 3, (4, 3, 7), (2, 1, 3), backend=backend, residual=residual).double()
    with torch.no_grad():
        blk.attn.qkv.bias.normal_()
        blk.attn.relative_position_bias_table.normal_()
    x_a, x_b = (torch.randn(1, 5, 6, 7, 24, dtype=torch.float64) for _ in range(2))
    out_a, out_b = blk(x_a, x_b)
    ea, eb = _swincross_block(blk, x_a, x_b, shortcut_b=x_b if residual == "per_stream" else None)
    assert_close("out_a", out_a, ea)
    assert_close("out_b", out_b, eb)
    with pytest.raises(ValueError, match="residual must be one of"):
        CrossModalSwinBlock3d(24, 3, 7, residual="own")


@pytest.mark.parametrize("use_flash_attention", [False, True], ids=["monai-eager", "monai-sdpa"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_swin_block_matches_installed_monai(backend, use_flash_attention):
    """Against MONAI's own SwinTransformerBlock (when MONAI is installed): its state dict loads
    strictly and the outputs agree, padding, shift and a clamped axis included."""
    swin = pytest.importorskip("monai.networks.nets.swin_unetr")
    import inspect

    if use_flash_attention and "use_flash_attention" not in inspect.signature(swin.SwinTransformerBlock).parameters:
        pytest.skip("this MONAI has no use_flash_attention")
    torch.manual_seed(0)
    size, window, shift = (5, 9, 6), (4, 4, 7), (2, 2, 3)  # W clamped (6 <= 7): Swin's index[:n, :n]
    kw = {"use_flash_attention": True} if use_flash_attention else {}
    ref = swin.SwinTransformerBlock(24, 3, window, shift, **kw).double().eval()
    with torch.no_grad():
        ref.attn.relative_position_bias_table.normal_()
        ref.attn.qkv.bias.normal_()
    ours = SwinBlock3d(24, 3, window, shift, backend=backend).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, *size, 24, dtype=torch.float64)
    ws, ss = swin.get_window_size(size, window, shift)
    dims = [-(-s // w) * w for s, w in zip(size, ws)]
    expected = ref(x, swin.compute_mask(dims, ws, ss, x.device).double())
    dtype = torch.float32 if backend == "triton" else torch.float64
    out = ours.to(_device(backend), dtype)(x.to(_device(backend), dtype))
    assert_close("block", out.cpu(), expected)


def test_module_rejects_wrong_input():
    mod = WindowAttention3d(16, 2, 3)
    with pytest.raises(ValueError, match=r"\(B, D, H, W, C=16\)"):
        mod(torch.randn(1, 16, 4, 4, 4))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        WindowAttention3d(10, 3, 3)


@pytest.mark.skipif(not _environment.EXTENDED_TESTS, reason="set MEDKERNELS_EXTENDED_TESTS=1 for the sweep")
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_sweep(backend, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    window = (r(2, 7), r(2, 7), r(2, 7))
    size = tuple(r(2, 16) for _ in range(3))
    shift = tuple(r(0, w - 1) for w in window)
    heads = r(1, 8)
    case = (r(1, 2), size, heads, 16 * r(1, 4), window, shift, -100.0, bool(seed % 2))
    _check_all(backend, case, torch.float32, seed)


def test_case_ids_are_unique():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids))
    assert relative_position_index(3).shape == (27, 27)


def test_cached_indices_stay_on_the_cpu_under_a_meta_default_device():
    """A model first built under ``torch.device("meta")`` (parameter counts) must not leave meta
    tensors in the cached bias indices that later CPU models use."""
    from medkernels.reference import window_attention as ref

    window = (2, 3, 5)  # a window no other test caches first
    for f in (ref._relative_position_index_cpu, ref._table_gather_cpu, ref._table_slot_cpu):
        f.cache_clear()
    with torch.device("meta"):
        ref.relative_position_index(window)
        ref._table_gather_cpu(window, 30)
        ref._table_slot_cpu(window, 30, 2)
    assert ref.relative_position_index(window).device.type == "cpu"
    assert ref._table_gather_cpu(window, 30).device.type == "cpu"
    assert ref._table_slot_cpu(window, 30, 2).device.type == "cpu"
