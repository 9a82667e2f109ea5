"""Decomposed 3D convolution: every backend against the float64 reference, forward and every
gradient, across layouts, odd sizes, strides, groups, activations and dtypes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from medkernels import _environment
from medkernels.nn import DecompConv3d
from medkernels.ops import _kit, decomp_conv3d
from medkernels.ops import decomp_conv as dc_ops
from medkernels.reference.decomp_conv import decomp_conv3d_ref
from medkernels.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _backends(device="cpu"):
    """Backends that can run on ``device`` here, from what each declares."""
    out = []
    for b in dc_ops._DISPATCH.backends:
        if not b.not_supported_reasons(torch.device(device), torch.float32):
            out.append(b.name)
    return out


CPU_BACKENDS = _backends("cpu")
GPU = torch.cuda.is_available()
ALL_BACKENDS = sorted(set(CPU_BACKENDS) | ({"cuda", "triton"} if GPU else set()))


def _device(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and GPU) else "cpu"


# (N, C_in, C_out, (D, H, W), k, stride, groups or None for depthwise, activation, layout)
CASES = [
    (1, 4, 4, (5, 6, 7), 3, 1, None, None, "ncdhw"),
    (2, 3, 3, (3, 2, 5), 5, 1, None, "gelu", "ncdhw"),        # D, H < k
    (1, 5, 5, (4, 4, 4), 13, 1, None, "silu", "ndhwc"),       # every axis < k
    (1, 3, 3, (4, 5, 3), 1, 1, None, "relu", "ncdhw"),        # k = 1
    (2, 4, 4, (7, 5, 6), 3, 2, None, "gelu", "ncdhw"),        # stride 2, odd sizes
    (1, 6, 6, (6, 5, 7), 7, 1, None, None, "ndhwc"),
    (1, 6, 6, (5, 6, 9), 5, 1, None, None, "strided"),        # a non-contiguous view
    (1, 1, 4, (9, 8, 11), 7, 4, 1, None, "ncdhw"),            # DCFormer stem: groups 1, stride 4
    (1, 3, 4, (4, 5, 6), 3, 1, 1, "gelu", "ndhwc"),           # groups 1, channels-last
    (1, 4, 6, (3, 4, 5), 3, 1, 2, "silu", "ncdhw"),           # groups 2
]
# C_out >= 8, groups 1: the C++ dense tap kernel (register blocks of rows x channels). Checked on
# the C++ backend only: these sizes are slow in the Triton interpreter, whose groups-1 path the
# cases above cover.
DENSE_CASES = [
    (1, 1, 16, (9, 8, 11), 7, 4, 1, None, "ncdhw"),           # the stem's first layer
    (2, 9, 24, (5, 7, 9), 5, 2, 1, "gelu", "strided"),        # stride 2, a view, 24 = 16 + 8
    (1, 5, 17, (3, 4, 8), 3, 1, 1, "silu", "ndhwc"),          # a channel past the vectors
    (1, 8, 64, (4, 7, 13), 3, 1, 1, None, "ndhwc"),           # the stem's k=3 layers: 13 rows = 6 + 6 + 1
]


def _case_id(c):
    n, ci, co, size, k, s, g, act, layout = c
    return f"{n}x{ci}to{co}x{'x'.join(map(str, size))}-k{k}-s{s}-g{'dw' if g is None else g}-{act}-{layout}"


def _make(case, dtype, device, seed=0):
    n, ci, co, size, k, s, g, act, layout = case
    gen = torch.Generator().manual_seed(seed)
    groups = ci if g is None else g
    if layout == "strided":
        big = torch.randn(n, ci, size[0], size[1], 2 * size[2], generator=gen, dtype=torch.float64)
        x64 = big[..., ::2]
    else:
        x64 = torch.randn(n, ci, *size, generator=gen, dtype=torch.float64)
    ws64 = [torch.randn(co, ci // groups, k, generator=gen, dtype=torch.float64) / k for _ in range(3)]
    b64 = torch.randn(co, generator=gen, dtype=torch.float64)
    def cast(t):
        t = t.to(device=device, dtype=dtype)
        return t
    x = cast(x64) if layout != "strided" else cast(big)[..., ::2]
    if layout == "ndhwc":
        x = x.to(memory_format=torch.channels_last_3d)
    return x64, ws64, b64, x, [cast(w) for w in ws64], cast(b64), groups, s, act


def _grads(fn, x, ws, b, gy):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *ws, b)]
    y = fn(*leaves)
    y.backward(gy)
    return y.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_forward_and_grads(backend, dtype, case):
    _check_forward_and_grads(backend, dtype, case)


@pytest.mark.parametrize("case", DENSE_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b == "cpu"])
def test_dense_tap_kernel(backend, dtype, case):
    _check_forward_and_grads(backend, dtype, case)


def _check_forward_and_grads(backend, dtype, case):
    device = _device(backend)
    x64, ws64, b64, x, ws, b, groups, s, act = _make(case, dtype, device)
    gy64 = torch.randn(decomp_conv3d_ref(x64, *ws64, b64, s, groups, act).shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    y64, g64 = _grads(lambda *t: decomp_conv3d_ref(*t[:4], t[4], s, groups, act), x64, ws64, b64, gy64)
    gy = gy64.to(device=device, dtype=dtype)
    y, g = _grads(lambda *t: decomp_conv3d(t[0], *t[1:4], t[4], s, groups if case[6] else None, act,
                                           backend=backend), x, ws, b, gy)
    if case[8] == "ndhwc":
        assert y.is_contiguous(memory_format=torch.channels_last_3d), "channels-last input must give channels-last out"
    lowp = None
    glow = [None] * 5
    if dtype != torch.float32:
        lowp, glow = _grads(lambda *t: decomp_conv3d_ref(*t[:4], t[4], s, groups, act), x, ws, b, gy)
    assert_close("y", y.cpu(), y64, None if lowp is None else lowp.cpu(), dtype)
    for name, got, want, low in zip(("dx", "dw_d", "dw_h", "dw_w", "dbias"), g, g64, glow):
        assert_close(name, got.cpu(), want, None if low is None else low.cpu(), dtype)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[7], CASES[9]], ids=_case_id)
def test_gradcheck_float64(backend, case):
    n, ci, co, size, k, s, g, act, layout = case
    small = (1, ci, co, tuple(min(v, 4) for v in size), min(k, 5), s, g, act, layout)
    _, _, _, x, ws, b, groups, s, act = _make(small, torch.float64, "cpu")
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *ws, b)]
    f = lambda x_, wd, wh, ww, b_: decomp_conv3d(x_, wd, wh, ww, b_, s, groups, act, backend=backend)
    # the interpreter runs Triton at Python speed: fast mode (random projections) keeps it minutes-cheap
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_through_sum_stride0_grad(backend):
    """``.sum()`` hands backward an expanded, stride-0 gradient; kernels must read it by strides."""
    _, _, _, x, ws, b, groups, s, act = _make(CASES[1], torch.float64, "cpu")
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *ws, b)]
    decomp_conv3d(leaves[0], *leaves[1:4], leaves[4], s, groups, act, backend=backend).sum().backward()
    ref = [t.detach().clone().requires_grad_(True) for t in (x, *ws, b)]
    decomp_conv3d_ref(ref[0], *ref[1:4], ref[4], s, groups, act).sum().backward()
    for a, r in zip(leaves, ref):
        assert_close("grad", a.grad, r.grad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[7]], ids=_case_id)
def test_poisoned_outputs_are_fully_written(backend, case):
    """Every output a backend allocates starts NaN-filled (_kit.poisoned): every element must be written."""
    _, _, _, x, ws, b, groups, s, act = _make(case, torch.float32, "cpu")
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *ws, b)]
    with _kit.poisoned():
        y = decomp_conv3d(leaves[0], *leaves[1:4], leaves[4], s, groups, act, backend=backend)
        grads = torch.autograd.grad(y, leaves, torch.randn(y.shape))
    assert torch.isfinite(y).all()
    for t in grads:
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_weight_grads_are_deterministic(backend):
    _, _, _, x, ws, b, groups, s, act = _make(CASES[5], torch.float32, "cpu")
    runs = []
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, *ws, b)]
        decomp_conv3d(leaves[0], *leaves[1:4], leaves[4], s, None, act, backend=backend).square().sum().backward()
        runs.append([t.grad.clone() for t in leaves])
    for a, c in zip(*runs):
        assert torch.equal(a, c)


def test_opcheck():
    _, _, _, x, ws, b, groups, s, act = _make(CASES[1], torch.float32, "cpu")
    backend = "cpu" if "cpu" in CPU_BACKENDS else "reference"
    x = x.detach().requires_grad_(True)
    op = dc_ops._OP.custom_op
    torch.library.opcheck(op, (x, *ws, b, s, groups, act or "", 0, backend))
    gy = torch.randn(op(x, *ws, b, s, groups, act or "", 0, backend)[0].shape)
    saved = [x.detach(), *ws, b]
    torch.library.opcheck(torch.ops.medkernels.decomp_conv3d_bwd.default,
                          ([gy], saved, [True] * 4 + [b is not None], s, groups, act or "", 0, backend))


def test_torch_compile_fullgraph():
    m = DecompConv3d(4, 4, 5, groups=4, act="gelu").eval()
    x = torch.randn(1, 4, 5, 6, 7)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    assert_close("compiled", compiled(x), m(x).double())
    xg = x.clone().requires_grad_(True)
    compiled(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


# --- the module ----------------------------------------------------------------------------
class _OfficialDecompConv3D(nn.Module):
    """A plain-PyTorch re-creation of DCFormer's DecompConv3D (structure and keys)."""

    def __init__(self, i, o, k, stride=1, groups=1, norm=True, act=None):
        super().__init__()
        self.act = act
        self.norm = nn.ModuleList([nn.BatchNorm3d(o) if norm is not None else nn.Identity() for _ in range(3)])
        p = k // 2
        self.c1 = nn.Sequential(nn.Conv3d(i, o, (k, 1, 1), padding=(p, 0, 0), stride=stride, groups=groups),
                                self.norm[0])
        self.c2 = nn.Sequential(nn.Conv3d(i, o, (1, k, 1), padding=(0, p, 0), stride=stride, groups=groups),
                                self.norm[1])
        self.c3 = nn.Sequential(nn.Conv3d(i, o, (1, 1, k), padding=(0, 0, p), stride=stride, groups=groups),
                                self.norm[2])

    def forward(self, x):
        x = self.c1(x) + self.c2(x) + self.c3(x)
        return self.act(x) if self.act is not None else x


MODULE_CASES = [(6, 6, 5, 1, 6, True, None), (1, 4, 7, 4, 1, nn.GELU(), None), (4, 4, 3, 1, 4, None, nn.GELU()),
                (3, 5, 3, 2, 1, True, nn.SiLU())]


@pytest.mark.parametrize("args", MODULE_CASES, ids=lambda a: f"{a[0]}to{a[1]}-k{a[2]}-s{a[3]}-g{a[4]}")
def test_module_loads_official_state_dict_and_matches(args):
    torch.manual_seed(0)
    official = _OfficialDecompConv3D(*args).double()
    for m in official.modules():
        if isinstance(m, nn.BatchNorm3d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    ours = DecompConv3d(*args).double()
    sd = official.state_dict()
    assert set(sd) == set(ours.state_dict())
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, args[0], 5, 6, 7, dtype=torch.float64)
    official.eval(), ours.eval()
    assert_close("eval", ours(x), official(x))
    official.train(), ours.train()
    assert_close("train", ours(x), official(x))
    for (name, a), (_, c) in zip(official.named_buffers(), ours.named_buffers()):
        assert torch.allclose(a.double(), c.double(), rtol=1e-12, atol=1e-12), f"buffer {name} differs after train"


def test_module_rejects_wrong_input():
    m = DecompConv3d(4, 4, 3, groups=4)
    with pytest.raises(ValueError, match=r"\(N, 4, D, H, W\)"):
        m(torch.randn(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DecompConv3d(4, 4, 4)


# --- bad input --------------------------------------------------------------------------------
def _good():
    x = torch.randn(1, 4, 5, 5, 5)
    ws = [torch.randn(4, 1, 3) for _ in range(3)]
    return x, ws


@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda x, ws: (x[0], ws, {}), ValueError, r"x must be 5-D, got shape \(4, 5, 5, 5\)"),
        (lambda x, ws: (x.int(), ws, {}), TypeError, "x must be a floating tensor"),
        (lambda x, ws: (x, [torch.randn(4, 1, 4)] * 3, {}), ValueError, "kernel size must be odd.*k=4"),
        (lambda x, ws: (x, [torch.randn(4, 1, 17)] * 3, {}), ValueError, "k=17"),
        (lambda x, ws: (torch.randn(1, 3, 5, 5, 5), ws, {}), ValueError, r"groups=3 must divide .*C_out=4|w_d must"),
        (lambda x, ws: (x, [ws[0], torch.randn(4, 1, 5), ws[2]], {}), ValueError, "w_h must have the shape of w_d"),
        (lambda x, ws: (x, [ws[0].double()] + ws[1:], {}), TypeError, "w_d has dtype float64 but x has float32"),
        (lambda x, ws: (x, [ws[0].to("meta")] + ws[1:], {}), ValueError, "w_d is on meta but x is on cpu"),
        (lambda x, ws: (x, ws, {"bias": torch.randn(5)}), ValueError, r"bias must be \(4,\)"),
        (lambda x, ws: (x, ws, {"activation": "tanh"}), ValueError, "activation must be one of"),
        (lambda x, ws: (x, ws, {"stride": 0}), ValueError, "stride must be >= 1"),
        (lambda x, ws: (x, ws, {"backend": "fast"}), ValueError, "backend must be one of"),
    ],
    ids=["rank", "integer", "even-k", "k-too-big", "channels", "weight-shapes", "dtype", "device", "bias",
         "activation", "stride", "backend-name"],
)
def test_bad_input(mutate, exc, pattern):
    x, ws = _good()
    x, ws, kw = mutate(x, ws)
    with pytest.raises(exc, match=pattern):
        decomp_conv3d(x, *ws, **kw)


@pytest.mark.parametrize("k", [15, 17, 4, 0])
def test_core_check_limits_kernel_size(k):
    """kernel_size's limit (odd, 1..15) is the C++ decomp_conv_check's, the validator every compiled entry
    point runs (the Python glue here, the C ABI, CUDA): k=17 is refused there with its message."""
    _C = pytest.importorskip("medkernels._C")
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 1, max(k, 1), dtype=torch.float64)
    y = torch.empty(1, 2, 4, 4, 4, dtype=torch.float64)
    p = _C.DecompConvParams()
    p.dtype = _C.DType.float64
    p.x, p.w_d, p.w_h, p.w_w, p.y = x.data_ptr(), w.data_ptr(), w.data_ptr(), w.data_ptr(), y.data_ptr()
    p.batch, p.in_channels, p.out_channels, p.groups, p.kernel_size = 1, 2, 2, 2, k
    p.in_size = p.out_size = [4, 4, 4]
    p.x_strides, p.y_strides = list(x.stride()), list(y.stride())
    if k == 15:
        _C.decomp_conv_fwd_cpu(p)
        want = decomp_conv3d_ref(x, w, w, w, None, 1, 2, None)
        assert_close("k=15", y, want)
        return
    with pytest.raises(ValueError, match=rf"decomp_conv: kernel_size must be odd and in 1\.\.15, got {k}$"):
        _C.decomp_conv_fwd_cpu(p)


@pytest.mark.skipif(GPU, reason="checks the error on a machine without a GPU")
def test_unavailable_backend_says_why():
    x, ws = _good()
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run these inputs"):
        decomp_conv3d(x, *ws, backend="cuda")


def test_five_d_weights_accepted():
    x, ws = _good()
    w5 = [ws[0].reshape(4, 1, 3, 1, 1), ws[1].reshape(4, 1, 1, 3, 1), ws[2].reshape(4, 1, 1, 1, 3)]
    assert torch.equal(decomp_conv3d(x, *w5, backend="reference"), decomp_conv3d(x, *ws, backend="reference"))
    with pytest.raises(ValueError, match=r"w_h as a 5-D conv weight must be \(C_out, C_in/groups, 1, k, 1\)"):
        decomp_conv3d(x, w5[0], w5[0], w5[2])


# --- extended tier: seeded random sweep -------------------------------------------------------
@pytest.mark.skipif(not _environment.EXTENDED_TESTS, reason="set MEDKERNELS_EXTENDED_TESTS=1 for the sweep")
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_random_sweep(backend, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))
    k = 2 * r(0, 7) + 1
    c = r(1, 8)
    layout = ["ncdhw", "ndhwc", "strided"][r(0, 2)]
    case = (r(1, 3), c, c, (r(1, 12), r(1, 12), r(1, 12)), k, [1, 2, 4][r(0, 2)], None,
            [None, "gelu", "relu", "silu"][r(0, 3)], layout)
    test_forward_and_grads(backend, torch.float32, case)


def test_case_ids_are_unique():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    pattern = re.compile(r"\d+x\d+to\d+x\d+x\d+x\d+-k\d+-s\d+-g(dw|\d+)-(None|gelu|relu|silu)-(ncdhw|ndhwc|strided)")
    bad = [i for i in ids if not pattern.fullmatch(i)]
    assert ids and not bad, f"unreadable case ids: {bad}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_output_option(backend):
    """``channels_last`` picks the output layout whatever x's is (a 1-channel x is ambiguous);
    values, gradients and the fake tensor agree with the default."""
    x = torch.randn(1, 1, 9, 8, 11).permute(0, 1, 3, 4, 2)  # DCFormer's permuted 1-channel input
    ws = [torch.randn(3, 1, 7) for _ in range(3)]  # few output channels: the Triton interpreter's backward
    want = decomp_conv3d_ref(x.double(), *[w.double() for w in ws], None, 4, 1, None)
    for cl in (None, True, False):
        y = decomp_conv3d(x, *ws, stride=4, groups=1, backend=backend, channels_last=cl)
        assert y.is_contiguous(memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
        assert_close(f"y-{cl}", y, want)
    xg = x.detach().requires_grad_(True)
    decomp_conv3d(xg, *ws, stride=4, groups=1, backend=backend, channels_last=True).sum().backward()
    assert xg.grad.shape == x.shape and torch.isfinite(xg.grad).all()
    with pytest.raises(ValueError, match="channels_last must be None, True or False"):
        decomp_conv3d(x, *ws, stride=4, groups=1, backend=backend, channels_last="yes")
