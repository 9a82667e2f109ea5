"""Regression tests for issue 16's kernel items: NaN and Inf propagate through every activation and
clamp on every backend (a diverged model must not sample plausible images), the argument
checks that used to end in a ZeroDivisionError or "'float' object is not iterable", a huge clamped
window (SIGFPE), thread-count-independent sigmoid-loss gradients, a reference that computes
fp16/bf16 in fp32, non-finite sigmoid-loss scale/bias, huge conv strides and a padded copy that
cannot fit."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from test_decomp_conv import CPU_BACKENDS as DC_BACKENDS  # tests/ is on sys.path under pytest
from test_decomp_conv import _backends as _dc_backends
from test_diffusion import _backends as _diffusion_backends
from test_sigmoid_loss import _backends as _sl_backends
from test_window_attention import CPU_BACKENDS as _WA_BACKENDS

import medkernels  # noqa: F401  (sets the Triton interpreter before kernels load)
from medkernels import testing
from medkernels.diffusion import FastDDPMSchedule, ddpm_step
from medkernels.ops import decomp_conv3d, sigmoid_loss, window_attention3d
from medkernels.reference import diffusion as ref_diffusion
from medkernels.reference.sigmoid_loss import sigmoid_loss_ref
from medkernels.reference.window_attention import window_attention3d_ref

NAN, INF = float("nan"), float("inf")


# --- NaN through the decomposed conv's activations, on every backend --------------------------
@pytest.mark.parametrize("backend", DC_BACKENDS)
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"])
@pytest.mark.parametrize("where", ["input", "bias"])
def test_decomp_conv_propagates_nan(backend, activation, where):
    torch.manual_seed(0)
    C, k = 4, 3
    x = torch.randn(1, C, 5, 5, 5)
    w = [torch.randn(C, 1, k) for _ in range(3)]
    bias = torch.randn(C)
    if where == "input":
        x[0, 1, 2, 2, 2] = NAN
    else:
        bias[2] = NAN
    y = decomp_conv3d(x, *w, bias=bias, activation=activation, backend=backend)
    want = decomp_conv3d(x.double(), *(t.double() for t in w), bias=bias.double(), activation=activation,
                         backend="reference")
    assert torch.equal(torch.isnan(y), torch.isnan(want)), (
        f"{backend} {activation}: NaN pattern differs from the reference ({int(torch.isnan(want).sum())} NaN "
        f"expected, {int(torch.isnan(y).sum())} came)")
    assert torch.isnan(y).any()
    if where == "bias":
        assert torch.isnan(y[0, 2]).all() and not torch.isnan(y[0, (0, 1, 3)]).any()


@pytest.mark.parametrize("backend", DC_BACKENDS)
def test_decomp_conv_relu_gradient_matches_torch_at_nan(backend):
    # torch.relu's backward passes the gradient where z is NaN (threshold_backward: z <= 0 -> 0)
    x = torch.randn(1, 2, 3, 3, 3)
    x[0, 0, 1, 1, 1] = NAN
    w = [torch.zeros(2, 1, 1) for _ in range(3)]
    w[0][:, 0, 0] = 1.0  # y = relu(x): the centre tap of the depth branch only
    xr = x.clone().requires_grad_(True)
    decomp_conv3d(xr, *w, activation="relu", backend=backend).sum().backward()
    xt = x.clone().requires_grad_(True)
    torch.relu(xt).sum().backward()
    assert torch.equal(xr.grad, xt.grad), backend


@pytest.mark.parametrize("backend", DC_BACKENDS)
def test_decomp_conv_relu_keeps_inf(backend):
    # positive weights on every branch, so no 0 * inf: +inf stays +inf, -inf becomes relu's 0
    x = torch.zeros(1, 2, 3, 3, 3)
    x[0, 0, 1, 1, 1], x[0, 1, 1, 1, 1] = INF, -INF
    w = [torch.ones(2, 1, 1) for _ in range(3)]
    y = decomp_conv3d(x, *w, activation="relu", backend=backend)
    assert y[0, 0, 1, 1, 1] == INF and y[0, 1, 1, 1, 1] == 0


# --- NaN through the DDPM step's x0 clip, on every backend ------------------------------------
@pytest.mark.parametrize("backend", _diffusion_backends("ddpm_step"))
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_ddpm_clip_propagates_nan_and_clamps_inf(backend, bad):
    sched = FastDDPMSchedule()
    x = torch.randn(2, 1, 4, 4, 4)
    eps = torch.randn(2, 1, 4, 4, 4)
    eps[0, 0, 1, 1, 1] = bad
    noise = torch.randn_like(x)
    t, tn = torch.tensor([999, 500]), torch.tensor([899, 400])
    x_next, x0 = ddpm_step(x, eps, t, tn, schedule=sched, noise=noise, clip=1.0, return_x0=True, backend=backend)
    v = x0[0, 0, 1, 1, 1].item()
    if math.isnan(bad):
        assert math.isnan(v), f"{backend}: a NaN eps became x0 = {v}"
        assert math.isnan(x_next[0, 0, 1, 1, 1].item())
    else:
        assert v == (-1.0 if bad > 0 else 1.0), f"{backend}: clip of {bad} gave {v}"
    others = torch.ones_like(x0, dtype=torch.bool)
    others[0, 0, 1, 1, 1] = False
    assert torch.isfinite(x0[others]).all() and x0[others].abs().max() <= 1.0


def test_ddpm_reference_clip_is_the_same_rule():
    sched = FastDDPMSchedule()
    eps = torch.tensor([[NAN, INF, -INF, 0.0]])
    x = torch.zeros(1, 4)
    _, x0 = ref_diffusion.ddpm_step_ref(x, eps, torch.tensor([999]), torch.tensor([899]), sched.alpha_table(),
                                        torch.zeros(1, 4), clip=1.0)
    assert math.isnan(x0[0, 0]) and x0[0, 1] == -1 and x0[0, 2] == 1


# --- the test oracle itself: a non-finite reference is a failure, not a NaN tolerance ---------
def test_assert_close_rejects_a_non_finite_oracle():
    good = torch.ones(4, dtype=torch.bfloat16)
    bad = torch.tensor([1.0, NAN, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="reference|oracle"):
        testing.assert_close("y", good, bad)
    with pytest.raises(AssertionError, match="reference|oracle"):
        testing.assert_close("y", good, torch.ones(4, dtype=torch.float64), lowp_reference=bad.bfloat16())


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


# --- 1: a window far larger than the volume (clamped) must not crash -----------------------------
@pytest.mark.parametrize("backend", _WA_BACKENDS)
@pytest.mark.parametrize("window", [2**31, 2**33, 2**40, 2**62, 2**63 - 1])
def test_huge_window_is_clamped_not_a_crash(backend, window):
    res = _run(f"""
        import torch, medkernels
        from medkernels.ops import window_attention3d
        torch.manual_seed(0)
        q = torch.randn(1, 3, 3, 3, 1, 4)
        got = window_attention3d(q, q, q, {window}, backend={backend!r})
        want = window_attention3d(q, q, q, 3, backend="reference")
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()
        print("ok")
    """)
    assert res.returncode == 0 and "ok" in res.stdout, f"rc {res.returncode}: {res.stderr[-2000:]}"


# --- 2: NaN and Inf through every activation on the dense path, as the reference -------------
def _dc_inputs(poison_x: float, poison_bias: float):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 4, 5)
    x[0, 0, 1, 2, 3] = poison_x
    w = [torch.randn(3, 2, 3) for _ in range(3)]
    b = torch.randn(3)
    b[1] = poison_bias
    return x, w, b


@pytest.mark.parametrize("backend", _dc_backends())
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"])
@pytest.mark.parametrize("poison", ["nan_x", "nan_bias", "inf_bias", "-inf_bias"])
def test_decomp_conv_nan_and_inf_like_the_reference(backend, activation, poison):
    # every activation with NaN and +-Inf on the dense (groups=1) path; silu(-inf) is NaN as torch
    px = NAN if poison == "nan_x" else 0.5
    pb = {"nan_bias": NAN, "inf_bias": INF, "-inf_bias": -INF}.get(poison, 0.25)
    x, w, b = _dc_inputs(px, pb)
    want = decomp_conv3d(x, *w, b, groups=1, activation=activation, backend="reference")
    got = decomp_conv3d(x, *w, b, groups=1, activation=activation, backend=backend)
    assert torch.equal(got.isnan(), want.isnan()), f"NaN pattern differs: {got.isnan().sum()} vs {want.isnan().sum()}"
    assert torch.equal(got.isinf(), want.isinf())
    fin = want.isfinite()
    assert torch.allclose(got[fin], want[fin], rtol=1e-4, atol=1e-5)
    if poison != "-inf_bias" or activation is None:  # reference: relu/gelu/silu of -inf are 0 / NaN / NaN
        assert want.isfinite().sum() < want.numel()


# --- 7: the CPU sigmoid-loss backward has the same bits at any thread count ----------------------
@pytest.mark.skipif("cpu" not in _sl_backends(), reason="no cpu backend (the C++ extension is not built)")
@pytest.mark.parametrize("n", [65, 200, 640])
def test_sigmoid_loss_grads_independent_of_thread_count(tmp_path, n):
    outs = {}
    for threads in (1, 2, 3, 4, 7):
        path = tmp_path / f"g{threads}.pt"
        res = _run(f"""
            import torch, medkernels
            from medkernels.ops import sigmoid_loss
            torch.set_num_threads({threads})
            g = torch.Generator().manual_seed(0)
            x = torch.randn({n}, 24, generator=g, requires_grad=True)
            y = torch.randn({n}, 24, generator=g, requires_grad=True)
            t = torch.tensor(1.5, requires_grad=True)
            b = torch.tensor(-2.0, requires_grad=True)
            loss = sigmoid_loss(x, y, t, b, backend="cpu")
            loss.backward()
            torch.save([loss.detach(), x.grad, y.grad, t.grad, b.grad], {str(path)!r})
        """)
        assert res.returncode == 0, res.stderr[-2000:]
        outs[threads] = torch.load(path)
    for threads, got in outs.items():
        for name, a, w in zip(("loss", "dx", "dy", "dt", "db"), got, outs[1]):
            assert torch.equal(a, w), f"{name} at {threads} threads differs from 1 thread: {(a - w).abs().max()}"


# --- 8: the reference computes fp16/bf16 in fp32 ---------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_sigmoid_loss_low_precision_in_fp32(dtype):
    torch.manual_seed(0)
    x, y = torch.randn(96, 32).to(dtype), torch.randn(96, 32).to(dtype)
    want = sigmoid_loss_ref(x, y, 2.3, -4.0, upcast=True)
    got = sigmoid_loss_ref(x, y, 2.3, -4.0)
    assert got.dtype == torch.float32
    assert abs(got.double() - want).item() / abs(want).item() < 1e-5
    via_op = sigmoid_loss(x, y, 2.3, -4.0, backend="reference")
    assert abs(via_op.double() - want).item() / abs(want).item() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_window_attention_low_precision_finite(dtype):
    torch.manual_seed(0)
    q = (torch.randn(1, 4, 4, 4, 2, 8) * 60).to(dtype)  # fp16 logits q.k overflow 65504
    want = window_attention3d_ref(q, q, q, 2, upcast=True)
    got = window_attention3d_ref(q, q, q, 2)
    assert got.dtype == dtype and got.isfinite().all()
    assert torch.allclose(got.double(), want.double(), rtol=2e-2, atol=2e-2 * want.abs().max().item())
    for backend in _WA_BACKENDS:
        assert window_attention3d(q, q, q, 2, backend=backend).isfinite().all(), backend


# --- sigmoid loss: t' past exp's range, a NaN/Inf bias, a non-finite incoming gradient -----------
@pytest.mark.parametrize("backend", _sl_backends())
@pytest.mark.parametrize("t_prime,bias", [(1000.0, -10.0), (1.0, NAN), (1.0, INF), (100.0, -10.0)])
def test_sigmoid_loss_non_finite_scale_and_bias_like_the_reference(backend, t_prime, bias):
    torch.manual_seed(0)
    x0, y0 = torch.randn(70, 8), torch.randn(70, 8)

    def run(b):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        t, bb = torch.tensor(t_prime, requires_grad=True), torch.tensor(bias, requires_grad=True)
        loss = sigmoid_loss(x, y, t, bb, backend=b)
        loss.backward()
        return [loss.detach(), x.grad, y.grad, t.grad, bb.grad]

    for name, got, want in zip(("loss", "dx", "dy", "dt", "db"), run(backend), run("reference")):
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN pattern differs"
        assert torch.equal(got.isinf(), want.isinf()), f"{name}: Inf pattern differs"
        fin = want.isfinite()
        assert torch.allclose(got[fin].double(), want[fin].double(), rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("backend", _sl_backends())
def test_sigmoid_loss_non_finite_incoming_gradient(backend):
    # was "sigmoid_loss_bwd: grad_scale must be finite" on cpu (an internal name); now as the others
    torch.manual_seed(0)
    x0 = torch.randn(70, 8)

    def run(b):
        x = x0.clone().requires_grad_()
        (sigmoid_loss(x, x0 + 1, 1.0, -1.0, backend=b) * INF).backward()
        return x.grad

    got, want = run(backend), run("reference")
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())


# --- decomp_conv: a huge legal stride; a padded copy that cannot fit ---------------------------------
@pytest.mark.parametrize("backend", _dc_backends())
@pytest.mark.parametrize("stride", [2**31, 2**40, 2**63 - 1])
def test_decomp_conv_huge_stride(backend, stride):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    w = [torch.randn(2, 1, 3) for _ in range(3)]
    got = decomp_conv3d(x, *w, stride=stride, backend=backend)
    want = decomp_conv3d(x.detach(), *w, stride=5, backend="reference")
    assert got.shape == (1, 2, 1, 1, 1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert x.grad.isfinite().all()


@pytest.mark.skipif("cpu" not in _dc_backends(), reason="no cpu backend (the C++ extension is not built)")
def test_decomp_conv_cpu_refuses_a_padded_copy_that_cannot_fit():
    # an expanded (stride-0) x of 2^39 elements: its zero-padded float32 copy would need ~2 TiB;
    # a huge stride keeps the output at one voxel, so nothing large is ever allocated
    x = torch.zeros(1, 8, 1, 1, 1).expand(1, 8, 4096, 4096, 4096)
    w = [torch.randn(8, 8, 3) for _ in range(3)]
    with pytest.raises(RuntimeError, match=r"zero-padded float32 copy of x needs .* GiB"):
        decomp_conv3d(x, *w, stride=4096, groups=1, backend="cpu")
