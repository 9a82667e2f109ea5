"""Our sigmoid (SigLIP) loss against open_clip's ``SigLipLoss``: the loss and its four gradients
(x, y, t', b) on every backend, float64 and float32.

open_clip is not in the test extras and is not installed here: its torchvision replaces a CPU torch
with a multi-GB CUDA build. This file skips without it and runs wherever it is installed.

open_clip's ``SigLipLoss()(image_features, text_features, logit_scale, logit_bias)`` takes the
scale itself (open_clip models return ``logit_scale.exp()``), so it gets ``exp(t')`` and our op
gets ``t'``; both divide the sum over the N x N pairs by N, with positives on the diagonal. On more
than one rank open_clip's per-rank loss is its local-block ``_loss`` plus ``negative_only=True``
losses against every other rank's text block (the 'bidir'/'shift' exchanges just deliver those
blocks); ``test_per_rank_loss_matches_open_clip_blocks`` rebuilds that sum without a process
group and compares our loss with a positive mask on this rank's columns.
"""

from __future__ import annotations

import pytest
import torch

import medkernels  # noqa: F401  (imported before open_clip, which imports triton)
from medkernels.ops import sigmoid_loss
from medkernels.ops.sigmoid_loss import _DISPATCH
from medkernels.testing import assert_close

open_clip_loss = pytest.importorskip("open_clip.loss", reason="open_clip is not installed (kept out of the extras)")
SigLipLoss = open_clip_loss.SigLipLoss


def _cases():
    out = []
    for b in _DISPATCH.backends:
        for dtype in (torch.float64, torch.float32):
            why = b.not_supported_reasons(torch.device("cpu"), dtype)
            marks = [pytest.mark.skip(reason="; ".join(why))] if why else []
            out.append(pytest.param(b.name, dtype, marks=marks, id=f"{b.name}-{str(dtype)[6:]}"))
    return out


def _features(n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return x.to(dtype), y.to(dtype)


def _grads(loss, leaves):
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("n, d, t_prime, bias", [(1, 1, 2.3, -10.0), (37, 33, 2.3, -10.0), (64, 16, 0.5, 1.5),
                                                 (29, 7, 4.0, -3.0)], ids=["1x1", "37x33", "64x16", "29x7"])
@pytest.mark.parametrize("backend, dtype", _cases())
def test_loss_and_grads_match_open_clip(backend, dtype, n, d, t_prime, bias):
    x, y = _features(n, d, dtype, seed=n)
    t = torch.tensor(t_prime, dtype=dtype)
    b = torch.tensor(bias, dtype=dtype)
    leaves = [v.clone().requires_grad_() for v in (x, y, t, b)]
    ours = sigmoid_loss(*leaves, backend=backend)
    got = [ours, *_grads(ours, leaves)]
    ref = [v.detach().double().requires_grad_() for v in (x, y, t, b)]
    theirs = SigLipLoss()(ref[0], ref[1], ref[2].exp(), ref[3])
    want = [theirs, *_grads(theirs, ref)]
    for name, a, w in zip(("loss", "dx", "dy", "dt'", "db"), got, want):
        assert_close(name, a, w, dtype=dtype)


@pytest.mark.parametrize("world, n", [(2, 5), (4, 3)])
@pytest.mark.parametrize("backend, dtype", _cases())
def test_per_rank_loss_matches_open_clip_blocks(backend, dtype, world, n):
    d = 11
    x, y = _features(world * n, d, dtype, seed=world)
    t, b = torch.tensor(1.7, dtype=dtype), torch.tensor(-2.0, dtype=dtype)
    oc = SigLipLoss(rank=0, world_size=1)
    for rank in range(world):
        rows = slice(rank * n, (rank + 1) * n)
        xr = x[rows].double()
        want = oc._loss(xr, y[rows].double(), t.double().exp(), b.double())
        for other in range(world):
            if other != rank:
                ys = y[other * n:(other + 1) * n].double()
                want = want + oc._loss(xr, ys, t.double().exp(), b.double(), negative_only=True)
        mask = torch.zeros(n, world * n, dtype=torch.bool)
        mask[torch.arange(n), rank * n + torch.arange(n)] = True
        got = sigmoid_loss(x[rows], y, t, b, positive_mask=mask, backend=backend)
        assert_close(f"rank {rank} of {world}", got, want, dtype=dtype)
