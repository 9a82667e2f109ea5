"""Regression tests for issue 16's kernel items: NaN and Inf propagate through every activation and
clamp on every backend (a diverged model must not sample plausible images), and the argument
checks that used to end in a ZeroDivisionError or "'float' object is not iterable"."""

from __future__ import annotations

import math

import pytest
import torch
from test_decomp_conv import CPU_BACKENDS as DC_BACKENDS  # tests/ is on sys.path under pytest
from test_diffusion import _backends as _diffusion_backends

import medkernels  # noqa: F401  (sets the Triton interpreter before kernels load)
from medkernels import testing
from medkernels.diffusion import FastDDPMSchedule, ddpm_step
from medkernels.ops import decomp_conv3d
from medkernels.reference import diffusion as ref_diffusion

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
