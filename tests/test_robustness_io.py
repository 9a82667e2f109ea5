"""Regression tests for issue 16's input/output items: layout-independent diffusion noise, schedule
and step argument checks, NIfTI dtype/affine/NaN handling, the embed command and the bench chart
notice."""

from __future__ import annotations

import math

import pytest
import torch

import medkernels  # noqa: F401  (sets the Triton interpreter before kernels load)
from medkernels.diffusion import FastDDPMSchedule, ddim_step, randn
from medkernels.ops.diffusion import _DISPATCH
from medkernels.reference import diffusion as ref


def _backends(op="q_sample"):
    out = []
    for name in ("triton", "cpu", "reference"):
        b = _DISPATCH[op]._by_name[name]
        why = b.not_supported_reasons(torch.device("cpu"), torch.float32)
        out.append(pytest.param(name, marks=pytest.mark.skip(reason="; ".join(why))) if why else name)
    return out + ["auto"]


# --- A: randn follows logical order whatever the layout of `like` -----------------------------
def _layouts():
    shape = (2, 3, 4, 5, 6)
    cl = torch.empty(shape).to(memory_format=torch.channels_last_3d)
    perm = torch.empty(2, 6, 5, 4, 3).permute(0, 4, 3, 2, 1)
    strided = torch.empty(2, 6, 4, 5, 6)[:, ::2]
    expanded = torch.empty(1, 1, 4, 5, 6).expand(shape)
    return shape, {"channels_last_3d": cl, "permuted": perm, "strided": strided, "expanded": expanded}


@pytest.mark.parametrize("backend", _backends())
def test_randn_same_noise_whatever_the_layout(backend):
    shape, layouts = _layouts()
    want = randn(torch.empty(shape), 7, 3, backend=backend)
    assert (want - ref.normal_ref(shape, 7, 3)).abs().max().item() <= 2e-6
    for name, like in layouts.items():
        assert like.shape == shape
        got = randn(like, 7, 3, backend=backend)
        assert got.shape == shape and got.is_contiguous(), name
        assert torch.equal(got, want), f"{backend} {name}: noise depends on the layout of like"
