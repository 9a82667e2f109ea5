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
    gy = torch.randn(x.shape, dtype=torch.float64)
    grads = group_norm_act_bwd_ref(gy, args[0].detach(), 2, args[1].detach(), args[2].detach(), 1e-5,
                                   *(t.detach() for t in args[3:]), activation)
    want = torch.autograd.grad(group_norm_act_ref(args[0], 2, args[1], args[2], 1e-5, *args[3:], activation),
                               args, gy)
    for g, e in zip(grads, want):
        assert torch.allclose(g, e, rtol=0, atol=1e-14)
    absent = group_norm_act_bwd_ref(gy, x.detach(), 2, None, None, 1e-5, None, None, None, activation)
    assert absent[1:] == (None,) * 5 and absent[0].shape == x.shape
