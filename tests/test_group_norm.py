"""The group-norm family's reference (issue 13, first step): ``group_norm_act_ref`` against the
formula written out independently in float64, its gradients by gradcheck, and its low-precision
contract (float32 statistics for 16-bit inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medkernels.reference.group_norm import group_norm_act_bwd_ref, group_norm_act_ref


def _formula(x, G, weight, bias, eps, scale, shift, add, activation):
    """mean/var per (sample, group) by torch.mean/var, in float64, broadcast by hand."""
    x = x.double()
    N, C = x.shape[:2]
    ones = [1] * (x.dim() - 2)
    h = x + (add.double().reshape(N, C, *ones) if add is not None else 0)
    hg = h.reshape(N, G, -1)
    mean = hg.mean(-1, keepdim=True)
    var = hg.var(-1, unbiased=False, keepdim=True)
    y = ((hg - mean) / torch.sqrt(var + eps)).reshape(h.shape)
    if weight is not None:
        y = y * weight.double().reshape(1, C, *ones)
    if bias is not None:
        y = y + bias.double().reshape(1, C, *ones)
    if scale is not None:
        y = y * (1 + scale.double().reshape(N, C, *ones))
    if shift is not None:
        y = y + shift.double().reshape(N, C, *ones)
    return {None: lambda t: t, "silu": F.silu, "gelu": F.gelu}[activation](y)


def _inputs(shape, G, dtype=torch.float64, mean=0.0, with_film=True, with_add=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C = shape[:2]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) + mean).to(dtype)
    w = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    film = [torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype) if with_film else None for _ in range(2)]
    add = torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype) if with_add else None
    return x, w, b, film[0], film[1], add


@pytest.mark.parametrize("shape,G", [((2, 6, 5, 3, 7), 3), ((1, 4, 9, 10), 2), ((3, 8, 2, 3, 1), 8), ((2, 5, 7), 1)])
@pytest.mark.parametrize("activation", [None, "silu", "gelu"])
@pytest.mark.parametrize("film,add", [(True, True), (False, True), (True, False), (False, False)])
def test_reference_is_the_formula(shape, G, activation, film, add):
    x, w, b, sc, sh, ad = _inputs(shape, G, with_film=film, with_add=add)
    got = group_norm_act_ref(x, G, w, b, 1e-6, sc, sh, ad, activation)
    want = _formula(x, G, w, b, 1e-6, sc, sh, ad, activation)
    assert (got - want).abs().max().item() <= 1e-12 * want.abs().max().item()


def test_reference_channels_last_and_no_affine():
    x, _, _, sc, sh, ad = _inputs((2, 6, 4, 5, 3), 2)
    cl = x.to(memory_format=torch.channels_last_3d)
    got = group_norm_act_ref(cl, 2, None, None, 1e-5, sc, sh, ad, "silu")
    assert torch.allclose(got, _formula(x, 2, None, None, 1e-5, sc, sh, ad, "silu"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision_computes_in_float32(dtype):
    # the oracle is the most careful backend: 16-bit inputs get float32 statistics and arithmetic,
    # one cast at the end, so its error is the output rounding (half an ulp), not bf16 arithmetic's
    x, w, b, sc, sh, ad = _inputs((2, 8, 6, 6, 6), 4, dtype=dtype, mean=3.0)
    got = group_norm_act_ref(x, 4, w, b, 1e-5, sc, sh, ad, "silu")
    assert got.dtype == dtype
    want = _formula(x, 4, w, b, 1e-5, sc, sh, ad, "silu")
    ulp = torch.finfo(dtype).eps
    assert ((got.double() - want).abs() <= ulp * want.abs() + 1e-6).all()


def test_reference_is_stable_for_a_large_mean():
    # a CT volume in HU: mean 1000, spread 1; E[x^2] - E[x]^2 in float32 would lose all digits
    x, w, b, sc, sh, ad = _inputs((1, 4, 16, 16, 16), 2, mean=1000.0)
    got = group_norm_act_ref(x.float(), 2, w.float(), b.float(), 1e-6, sc.float(), sh.float(), ad.float(), None)
    want = _formula(x.float(), 2, w, b, 1e-6, sc, sh, ad, None)
    assert (got.double() - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_reference_nan_stays_in_its_group():
    x, w, b, sc, sh, ad = _inputs((2, 6, 3, 3, 3), 3)
    x[1, 2, 0, 1, 2] = float("nan")  # sample 1, group 1 (channels 2, 3)
    y = group_norm_act_ref(x, 3, w, b, 1e-5, sc, sh, ad, "silu")
    nan = torch.isnan(y)
    assert nan[1, 2:4].all() and nan.sum() == 2 * 27


@pytest.mark.parametrize("activation", [None, "silu", "gelu"])
def test_reference_backward_gradcheck(activation):
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 2, 3), 2)
    args = [t.requires_grad_(True) for t in (x, w, b, sc, sh, ad)]
    assert torch.autograd.gradcheck(
        lambda *a: group_norm_act_ref(a[0], 2, a[1], a[2], 1e-5, *a[3:], activation), args)
    gy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = group_norm_act_bwd_ref(gy, args[0].detach(), 2, args[1].detach(), args[2].detach(), 1e-5,
                                   *(t.detach() for t in args[3:]), activation)
    want = torch.autograd.grad(group_norm_act_ref(args[0], 2, args[1], args[2], 1e-5, *args[3:], activation),
                               args, gy)
    for g, e in zip(grads, want):
        # two float64 sums in different orders: equal to a few ulps of the gradient's scale
        # (an absolute 1e-14 failed one run in six on a dweight of magnitude 30)
        assert testing.rel_err(g, e) <= 1e-13
    absent = group_norm_act_bwd_ref(gy, x.detach(), 2, None, None, 1e-5, None, None, None, activation)
    assert absent[1:] == (None,) * 5 and absent[0].shape == x.shape


# --- the op: every backend against the float64 oracle ----------------------------------------
from medkernels import testing  # noqa: E402
from medkernels.ops import group_norm as gn_ops  # noqa: E402
from medkernels.ops import group_norm_act  # noqa: E402

BACKENDS = [b.name for b in gn_ops._DISPATCH.backends
            if not b.not_supported_reasons(torch.device("cpu"), torch.float32)]
CASES = [((2, 6, 5, 3, 7), 3, "ncdhw"), ((2, 6, 5, 3, 7), 2, "cl"), ((1, 4, 9, 10), 2, "ncdhw"),
         ((3, 8, 2, 3, 1), 8, "cl"), ((2, 5, 7), 1, "ncdhw"), ((1, 3, 4, 4, 4), 3, "permuted")]
# the Triton interpreter is slow: its 16-bit and float64 sweep runs on a 3D channels-last and a 2D
# NC... case (every shape, layout and option combination runs in float32)
INTERPRETED_DTYPE_CASES = (CASES[1], CASES[2])


def _interpreted(backend):
    return backend == "triton" and not torch.cuda.is_available()


def _sweep():
    for backend in BACKENDS:
        for shape, G, layout in CASES:
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                trimmed = (shape, G, layout) not in INTERPRETED_DTYPE_CASES and dtype != torch.float32
                if trimmed and _interpreted(backend):
                    continue
                name = "x".join(map(str, shape))
                yield pytest.param(backend, shape, G, layout, dtype,
                                   id=f"{backend}-{str(dtype)[6:]}-{name}-g{G}-{layout}")


def _layout(t, layout):
    if layout == "cl":
        return t.to(memory_format=torch.channels_last_3d if t.dim() == 5 else torch.channels_last)
    if layout == "permuted":  # neither layout: the op copies to contiguous
        return t.transpose(2, 4).contiguous().transpose(2, 4)
    return t


@pytest.mark.parametrize("backend,shape,G,layout,dtype", list(_sweep()))
@pytest.mark.parametrize("activation,film,add", [("silu", True, True), (None, False, True), ("gelu", True, False),
                                                 ("silu", False, False)])
def test_forward_and_grads(backend, shape, G, layout, dtype, activation, film, add):
    x64, w64, b64, sc64, sh64, ad64 = _inputs(shape, G, mean=2.0, with_film=film, with_add=add, seed=1)
    inputs64 = [x64, w64, b64, sc64, sh64, ad64]
    leaves = [None if t is None else t.to(dtype).requires_grad_(True) for t in inputs64]
    leaves[0] = _layout(leaves[0].detach(), layout).requires_grad_(True)
    y = group_norm_act(leaves[0], G, leaves[1], leaves[2], eps=1e-5, scale=leaves[3], shift=leaves[4],
                       add=leaves[5], activation=activation, backend=backend)
    assert y.dtype == dtype and y.shape == x64.shape
    if layout == "cl":
        assert _ncm(y) == _ncm(leaves[0]), "the output keeps x's layout"
    # oracle: the reference in float64 on the same (rounded) inputs; low precision is judged
    # against the reference's own error
    exact = [None if t is None else t.detach().double().requires_grad_(True) for t in leaves]
    want = group_norm_act_ref(exact[0], G, exact[1], exact[2], 1e-5, *exact[3:], activation)
    lowp = group_norm_act_ref(*(t.detach() if t is not None else None for t in leaves[:1]), G,
                              *(None if t is None else t.detach() for t in leaves[1:3]), 1e-5,
                              *(None if t is None else t.detach() for t in leaves[3:]), activation)
    testing.assert_close("y", y, want, lowp_reference=lowp)
    gy = torch.randn(x64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    present = [t for t in leaves if t is not None]
    got = torch.autograd.grad(y, present, gy.to(dtype))
    exp = torch.autograd.grad(want, [t for t in exact if t is not None], gy)
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    names = [n for n, t in zip(["x", "weight", "bias", "scale", "shift", "add"], leaves) if t is not None]
    for name, g, e in zip(names, got, exp):
        assert g.dtype == dtype
        # relative to the larger of its own and dx's scale: d add sums dx over a group and is 0
        # in exact arithmetic when a group has one channel
        den = max(e.abs().max().item(), exp[0].abs().max().item())
        err = (g.double() - e).abs().max().item() / den
        assert err <= tol, f"grad {name}: relative error {err:.2e} > {tol:.0e}"


def _ncm(t):
    return gn_ops._ncm_strides(t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stride0_and_noncontiguous_gradients(backend):
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 4, 5), 2)
    leaves = [t.requires_grad_(True) for t in (x, w, b, sc, sh, ad)]
    y = group_norm_act(leaves[0], 2, leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], add=leaves[5],
                       activation="silu", backend=backend)
    got = torch.autograd.grad(y.sum(), leaves)  # an expanded stride-0 gradient
    exact = [t.detach().clone().requires_grad_(True) for t in leaves]
    exp = torch.autograd.grad(group_norm_act_ref(exact[0], 2, exact[1], exact[2], 1e-5, *exact[3:], "silu").sum(),
                              exact)
    for g, e in zip(got, exp):
        assert testing.rel_err(g, e) <= 1e-10
    gy = torch.randn(2, 4, 5, 4, 3, dtype=torch.float64).transpose(2, 4)  # a non-contiguous gradient
    got = torch.autograd.grad(group_norm_act(leaves[0], 2, leaves[1], leaves[2], activation="gelu",
                                             backend=backend), leaves[:3], gy)
    exp = torch.autograd.grad(group_norm_act_ref(exact[0], 2, exact[1], exact[2], 1e-5, activation="gelu"),
                              exact[:3], gy)
    for g, e in zip(got, exp):
        assert testing.rel_err(g, e) <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 2, 3), 2)
    args = [t.requires_grad_(True) for t in (x, w, b, sc, sh, ad)]
    assert torch.autograd.gradcheck(
        lambda *a: group_norm_act(a[0], 2, a[1], a[2], scale=a[3], shift=a[4], add=a[5], activation="silu",
                                  backend=backend), args, fast_mode=_interpreted(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_group(backend):
    x, w, b, sc, sh, ad = _inputs((2, 6, 3, 3, 3), 3, dtype=torch.float32)
    x[1, 2, 0, 1, 2] = float("nan")
    y = group_norm_act(x, 3, w, b, scale=sc, shift=sh, add=ad, activation="silu", backend=backend)
    nan = torch.isnan(y)
    assert nan[1, 2:4].all() and int(nan.sum()) == 2 * 27


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_bits_whatever_the_thread_count(backend):
    x, w, b, sc, sh, ad = _inputs((2, 8, 9, 10, 11), 4, dtype=torch.float32)
    xs = x.requires_grad_(True)
    outs = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = group_norm_act(xs, 4, w, b, scale=sc, add=ad, activation="silu", backend=backend)
            outs.append((y.detach(), torch.autograd.grad(y.square().sum(), xs)[0]))
    finally:
        torch.set_num_threads(before)
    for y, g in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(g, outs[0][1])


def test_bad_input_is_named():
    x = torch.randn(2, 6, 3, 3, 3)
    with pytest.raises(ValueError, match="num_groups=4 must divide the 6 channels"):
        group_norm_act(x, 4)
    with pytest.raises(ValueError, match=r"scale must be per \(sample, channel\): \(2, 6\)"):
        group_norm_act(x, 3, scale=torch.randn(6))
    with pytest.raises(ValueError, match=r"weight must be \(6,\)"):
        group_norm_act(x, 3, torch.randn(5))
    with pytest.raises(TypeError, match="shift has dtype float64 but x has float32"):
        group_norm_act(x, 3, shift=torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="activation must be one of"):
        group_norm_act(x, 3, activation="relu6")
    with pytest.raises(ValueError, match="eps must be a finite number"):
        group_norm_act(x, 3, eps=float("nan"))
    with pytest.raises(TypeError, match="num_groups must be an int"):
        group_norm_act(x, 2.0)
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        group_norm_act(torch.randn(2, 6), 3)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run these inputs: .*runs on cuda tensors"):
        group_norm_act(x, 3, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_compile(backend):
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 2, 3), 2, dtype=torch.float32)
    args = (x.requires_grad_(True), w.requires_grad_(True), b, sc, None, ad, 2, 1e-5, "silu", backend)
    torch.library.opcheck(gn_ops._OP.custom_op, args)

    def f(x, w, b, sc, ad):
        return group_norm_act(x, 2, w, b, scale=sc, add=ad, activation="silu", backend=backend)

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x, w, b, sc, ad), f(x, w, b, sc, ad), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
def test_every_output_and_gradient_is_written(backend, layout):
    # outputs and gradients allocated NaN-filled: a backend that skips an element shows it
    x, w, b, sc, sh, ad = _inputs((2, 6, 3, 4, 5), 3, dtype=torch.float32)
    leaves = [_layout(x, layout).requires_grad_(True)] + [t.requires_grad_(True) for t in (w, b, sc, sh, ad)]
    with gn_ops._kit.poisoned():
        y = group_norm_act(leaves[0], 3, leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], add=leaves[5],
                           activation="silu", backend=backend)
        grads = torch.autograd.grad(y, leaves, torch.randn_like(y))
    assert torch.isfinite(y).all()
    for name, g in zip(["x", "weight", "bias", "scale", "shift", "add"], grads):
        assert torch.isfinite(g).all(), f"grad {name} has unwritten elements"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_lane_and_custom_ops_give_the_same_bits(backend):
    x, w, b, sc, sh, ad = _inputs((2, 4, 3, 2, 5), 2, dtype=torch.float32)

    def run(needs):
        leaves = [t.detach().clone().requires_grad_(n) for t, n in zip((x, w, b, sc, sh, ad), needs)]
        y = group_norm_act(leaves[0], 2, leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], add=leaves[5],
                           activation="gelu", backend=backend)
        wanted = [t for t in leaves if t.requires_grad]
        return [y, *torch.autograd.grad(y, wanted, torch.ones_like(y) * 0.5)]

    for needs in ([True] * 6, [True, False, False, False, False, True], [False, True, True, False, False, False]):
        eager = run(needs)
        with gn_ops._kit.custom_ops_only():
            custom = run(needs)
        for e, c in zip(eager, custom):
            assert torch.equal(e, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_for_a_large_mean(backend):
    # a CT volume in HU: mean 1000, spread 1. E[x^2] - E[x]^2 in float32 would be off by ~1e-1;
    # h = x + add in float32 already rounds at 1000 ulp(1), so d weight is off by 1.7e-4 on the
    # cpu, reference and triton backends (PyTorch's float32 autograd of the reference: 2.4e-3)
    x, w, b, sc, sh, ad = _inputs((1, 4, 12, 11, 13), 2, dtype=torch.float32, mean=1000.0)
    leaves = [t.requires_grad_(True) for t in (x, w, b, sc, sh, ad)]
    y = group_norm_act(leaves[0], 2, leaves[1], leaves[2], eps=1e-6, scale=leaves[3], shift=leaves[4], add=leaves[5],
                       backend=backend)
    exact = [t.detach().double().requires_grad_(True) for t in leaves]
    want = group_norm_act_ref(exact[0], 2, exact[1], exact[2], 1e-6, *exact[3:], None)
    assert testing.rel_err(y, want) <= 2e-5
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad(y, leaves, gy)
    exp = torch.autograd.grad(want, exact, gy.double())
    for name, g, e in zip(["x", "weight", "bias", "scale", "shift", "add"], got, exp):
        err = (g.double() - e).abs().max().item() / max(e.abs().max().item(), exp[0].abs().max().item())
        assert err <= 5e-4, f"grad {name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_gradients_stay_in_their_group(backend):
    x, w, b, sc, sh, ad = _inputs((2, 6, 3, 3, 3), 3, dtype=torch.float32)
    x[1, 2, 0, 1, 2] = float("nan")  # sample 1, group 1 (channels 2, 3)
    leaves = [t.requires_grad_(True) for t in (x, w, b, sc, sh, ad)]
    y = group_norm_act(leaves[0], 3, leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], add=leaves[5],
                       activation="silu", backend=backend)
    gx, gw, gb, gsc, gsh, gad = torch.autograd.grad(y, leaves, torch.ones_like(y))
    nan = torch.isnan(gx)
    assert nan[1, 2:4].all() and int(nan.sum()) == 2 * 27
    for g in (gw, gb):  # summed over the samples: NaN in the group's channels only
        assert torch.isnan(g[2:4]).all() and torch.isfinite(g[[0, 1, 4, 5]]).all()
    for g in (gsc, gsh, gad):
        assert torch.isnan(g[1, 2:4]).all() and int(torch.isnan(g).sum()) == 2


@pytest.mark.skipif("triton" not in BACKENDS, reason="the triton backend is not runnable here")
@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_many_tiles_and_splits(monkeypatch, layout, dtype):
    # small tiles and programs: the statistics merge many tiles and splits, the backward sums
    # many splits (the shapes above fit one tile and one split)
    from medkernels.triton import group_norm as gn_triton

    monkeypatch.setattr(gn_triton, "TILE", 16)
    monkeypatch.setattr(gn_triton, "ELEMS_PER_PROGRAM", 40)
    for strides in ([126, 42, 1], [252, 1, 6]):
        bc, bm = gn_triton._tiles(strides, 2, 42)
        assert gn_triton._splits(2, 42, bm)[1] == 3 and bm < 42
    x, w, b, sc, sh, ad = _inputs((2, 6, 3, 2, 7), 3, dtype=dtype, mean=2.0, seed=5)
    leaves = [_layout(x, layout).requires_grad_(True)] + [t.requires_grad_(True) for t in (w, b, sc, sh, ad)]
    y = group_norm_act(leaves[0], 3, leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], add=leaves[5],
                       activation="gelu", backend="triton")
    exact = [t.detach().double().requires_grad_(True) for t in leaves]
    want = group_norm_act_ref(exact[0], 3, exact[1], exact[2], 1e-5, *exact[3:], "gelu")
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert testing.rel_err(y, want) <= tol
    gy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    got = torch.autograd.grad(y, leaves, gy.to(dtype))
    exp = torch.autograd.grad(want, exact, gy)
    for name, g, e in zip(["x", "weight", "bias", "scale", "shift", "add"], got, exp):
        err = (g.double() - e).abs().max().item() / max(e.abs().max().item(), exp[0].abs().max().item())
        assert err <= 10 * tol, f"grad {name}: relative error {err:.2e}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")
@pytest.mark.parametrize("shape,G,layout", [((2, 32, 9, 17, 23), 8, "ncdhw"), ((2, 32, 9, 17, 23), 8, "cl"),
                                            ((1, 64, 40, 33), 32, "ncdhw"), ((3, 12, 301), 1, "ncdhw"),
                                            ((1, 128, 24, 24, 24), 32, "cl")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends(backend, shape, G, layout, dtype):
    # the compiled Triton kernels (the tests above run CPU tensors, so the interpreter) and our CUDA
    # kernels (emulated on the host in tests/test_group_norm_cuda.py) on CUDA tensors against the
    # float64 oracle, and the same bits twice
    why = gn_ops._DISPATCH._by_name[backend].not_supported_reasons(torch.device("cuda"), dtype)
    if why:
        pytest.skip(f"{backend}: {why}")
    x64, w64, b64, sc64, sh64, ad64 = _inputs(shape, G, mean=3.0, seed=7)
    leaves = [t.to(dtype).cuda() for t in (x64, w64, b64, sc64, sh64, ad64)]
    leaves = [_layout(leaves[0], layout)] + leaves[1:]
    leaves = [t.requires_grad_(True) for t in leaves]
    gy = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def run():
        y = group_norm_act(leaves[0], G, leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], add=leaves[5],
                           activation="silu", backend=backend)
        return [y, *torch.autograd.grad(y, leaves, gy.to(dtype).cuda())]

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    exact = [t.detach().cpu().double().requires_grad_(True) for t in leaves]
    want = group_norm_act_ref(exact[0], G, exact[1], exact[2], 1e-5, *exact[3:], "silu")
    lowp = group_norm_act_ref(*(t.detach().cpu() for t in leaves[:1]), G, leaves[1].detach().cpu(),
                              leaves[2].detach().cpu(), 1e-5, *(t.detach().cpu() for t in leaves[3:]), "silu")
    testing.assert_close("y", first[0].cpu(), want, lowp_reference=lowp)
    exp = torch.autograd.grad(want, exact, gy)
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    for name, g, e in zip(["x", "weight", "bias", "scale", "shift", "add"], first[1:], exp):
        err = (g.cpu().double() - e).abs().max().item() / max(e.abs().max().item(), exp[0].abs().max().item())
        assert err <= tol, f"grad {name}: relative error {err:.2e} > {tol:.0e}"


# --- the cpu backend's vector path: shapes that cut into several units, lane tails, layouts ----
def _check_cpu_against_float64(x, G, w, b, sc, sh, ad, activation, gy_layout=None, tol=None):
    dtype = x.dtype
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in (x, w, b, sc, sh, ad)]
    y = group_norm_act(leaves[0], G, leaves[1], leaves[2], eps=1e-5, scale=leaves[3], shift=leaves[4],
                       add=leaves[5], activation=activation, backend="cpu")
    exact = [None if t is None else t.detach().double().requires_grad_(True) for t in leaves]
    want = group_norm_act_ref(exact[0], G, exact[1], exact[2], 1e-5, *exact[3:], activation)
    ftol = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype] if tol is None else tol[0]
    assert testing.rel_err(y, want) <= ftol
    gy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    if gy_layout is not None:
        gy = _layout(gy, gy_layout)
    present = [t for t in leaves if t is not None]
    got = torch.autograd.grad(y, present, gy.to(dtype))
    exp = torch.autograd.grad(want, [t for t in exact if t is not None], gy)
    gtol = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype] if tol is None else tol[1]
    for g, e in zip(got, exp):
        den = max(e.abs().max().item(), exp[0].abs().max().item())
        assert (g.double() - e).abs().max().item() / den <= gtol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,G,layout", [
    ((1, 4, 13, 17, 19), 2, "ncdhw"),   # M = 4199: two units, the second with a 7-lane tail
    ((2, 24, 13, 17, 19), 4, "cl"),     # C = 24: lane period 48 (two rows), 25 units, an odd last one
    ((1, 20, 9, 11, 5), 5, "cl"),       # C = 20: lane period 80
    ((2, 6, 7, 9, 11), 3, "cl"),        # C = 6: lane period 48 (8 rows), channel vectors shorter than a register
    ((1, 4100, 3, 1, 1), 41, "cl"),     # lcm(C, 16) too long: the period is C itself, 4 lanes past the last vector
    ((2, 8, 70, 70), 4, "ncdhw"),       # 2D, M = 4900
])
@pytest.mark.parametrize("activation,film", [("silu", True), ("gelu", False), (None, True)])
def test_cpu_units_tails_and_layouts(dtype, shape, G, layout, activation, film):
    x, w, b, sc, sh, ad = _inputs(shape, G, dtype=dtype, mean=1.5, with_film=film, seed=7)
    _check_cpu_against_float64(_layout(x, layout), G, w, b, sc, sh, ad, activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_layout,gy_layout", [("cl", "ncdhw"), ("ncdhw", "cl")])
def test_cpu_grad_y_in_the_other_layout(x_layout, gy_layout, dtype):
    # the output gradient's layout need not be x's: the cpu kernel gathers it per unit (and
    # bfloat16 leaves the in-register conversion path for the buffered one)
    x, w, b, sc, sh, ad = _inputs((2, 16, 9, 17, 31), 4, dtype=dtype, seed=8)
    _check_cpu_against_float64(_layout(x, x_layout), 4, w, b, sc, sh, ad, "silu", gy_layout=gy_layout)


@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_is_stable_for_a_large_mean(layout, dtype):
    # a CT volume in HU: mean 1000, spread 1, over several units; the mean enters the element
    # formula as two floats, so the output keeps float32 accuracy (one float would cost 3e-5)
    x, w, b, sc, sh, ad = _inputs((1, 8, 17, 16, 16), 2, dtype=dtype, mean=1000.0, seed=9)
    if dtype == torch.float32:
        tol = (2e-6, 2e-4)  # the backward gets the mean saved in float32, as the contract says
    else:
        tol = (4e-3, 8e-2)  # bf16 x rounds 1000 +- 1 to steps of 4: the data, not the kernel
    _check_cpu_against_float64(_layout(x, layout), 2, w, b, sc, sh, ad, "silu", tol=tol)


@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
def test_cpu_nan_stays_in_its_group_over_units(layout):
    x, w, b, sc, sh, ad = _inputs((2, 8, 13, 17, 19), 4, dtype=torch.float32, seed=10)
    x[1, 5, 12, 16, 18] = float("nan")  # sample 1, group 2 (channels 4, 5), the last unit
    y = group_norm_act(_layout(x, layout), 4, w, b, scale=sc, shift=sh, add=ad, activation="silu", backend="cpu")
    nan = torch.isnan(y)
    assert nan[1, 4:6].all() and int(nan.sum()) == 2 * 13 * 17 * 19


@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_same_bits_whatever_the_thread_count_over_units(layout, dtype):
    # several units per channel / sample; 1-3 threads run whole groups per thread, 5 threads
    # run each group by the team (another schedule, the same fixed-order sums)
    x, w, b, sc, sh, ad = _inputs((2, 8, 13, 17, 19), 4, dtype=dtype, seed=11)
    xs = _layout(x, layout).requires_grad_(True)
    leaves = [t.requires_grad_(True) for t in (w, b, sc, sh, ad)]
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(12)).to(dtype)
    outs = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            y = group_norm_act(xs, 4, leaves[0], leaves[1], scale=leaves[2], shift=leaves[3], add=leaves[4],
                               activation="silu", backend="cpu")
            outs.append([y.detach(), *torch.autograd.grad(y, [xs, *leaves], gy)])
    finally:
        torch.set_num_threads(before)
    for got in outs[1:]:
        for a, e in zip(got, outs[0]):
            assert torch.equal(a, e)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
def test_cpu_activation_far_out(activation, layout):
    # pre-activations far past the exp range (|z| ~ 200) through the vector kernels: no NaN,
    # silu(-200) = -0 and silu'(-200) = 0 as torch gives, large positive z passed through
    x, _, _, _, _, _ = _inputs((1, 32, 5, 6, 7), 2, dtype=torch.float32, seed=13)
    w = torch.full((32,), 1.0)
    b = torch.tensor([-200.0, 200.0] * 16)
    xs = _layout(x, layout).requires_grad_(True)
    y = group_norm_act(xs, 2, w, b, activation=activation, backend="cpu")
    want = {"silu": F.silu, "gelu": F.gelu}[activation](F.group_norm(x.double(), 2, w.double(), b.double()))
    assert torch.isfinite(y).all()
    assert testing.rel_err(y, want) <= 1e-6
    g = torch.autograd.grad(y.sum(), xs)[0]
    xd = x.double().requires_grad_(True)
    gw = torch.autograd.grad({"silu": F.silu, "gelu": F.gelu}[activation](
        F.group_norm(xd, 2, w.double(), b.double())).sum(), xd)[0]
    assert torch.isfinite(g).all() and (g.double() - gw).abs().max().item() <= 1e-5


def test_auto_rule_on_cpu():
    # the measured rule (ops/group_norm.py _cpu_auto): cpu for float32 and bfloat16, both layouts,
    # from 4096 positions per channel forward only and from 256 with a backward to follow
    def pick(x, grad=False):
        return gn_ops._DISPATCH.select("auto", x.device, x.dtype, x=x, grad=grad)

    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("ncdhw", "cl"):
            x = _layout(torch.randn(1, 8, 16, 16, 16).to(dtype), layout)
            assert pick(x) == "cpu" and pick(x, grad=True) == "cpu"
    small = torch.randn(2, 8, 32, 32)
    assert pick(small) == "reference" and pick(small, grad=True) == "cpu"
    assert pick(torch.randn(2, 8, 8, 8), grad=True) == "reference"
    for dtype in (torch.float16, torch.float64):
        x = torch.randn(1, 8, 16, 16, 16).to(dtype)
        assert pick(x) == "reference"
