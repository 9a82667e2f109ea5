"""``group_norm_act``: GroupNorm + per-(sample, channel) add / FiLM scale-shift + activation, the
norm of the diffusion UNets' ResBlocks, as a torch custom op with autograd.

Backends today: ``cpu`` (our C++/OpenMP: one read of x for the statistics, one read and one
write for the output; the backward reads x and grad_y twice and writes grad_x once) and
``reference`` (PyTorch's ``F.group_norm`` in float32/float64, then the affine, FiLM and
activation as separate ops). The Triton and CUDA kernels of this family are not written yet.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from .. import _dispatch
from .._extension import extension
from ..reference.group_norm import ACTIVATIONS, group_moments_ref, group_norm_act_bwd_ref, group_norm_act_ref
from . import _kit
from ._common import check_int, check_same, check_tensor, describe, dtype_code

_DISPATCH = _dispatch.Dispatcher(
    "group_norm_act",
    (
        # auto skips the C++ kernel for now: on 2 busy cores it measured 1.27x eager GroupNorm+SiLU
        # forward at 1x128x48^3 fp32 NCDHW but 0.27-0.45x elsewhere and 0.24-0.45x fwd+bwd (its
        # statistics and backward loops are scalar); it becomes auto's pick once vectorised and faster.
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("group_norm_fwd_cpu"), auto=lambda **_: False),
        _dispatch.Backend("reference", ("cpu", "cuda")),
    ),
)



def _ncm_strides(t: torch.Tensor):
    """Element strides of t viewed as (N, C, M), M the flattened spatial axes, or None when the
    spatial axes cannot be flattened without a copy (neither NC... contiguous nor channels-last)."""
    C, M = t.shape[1], math.prod(t.shape[2:])
    if t.is_contiguous():
        return [C * M, M, 1]
    if t.permute(0, *range(2, t.dim()), 1).is_contiguous():
        return [M * C, 1, C]
    return None


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _params(x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation):
    C = extension.module
    p = C.GroupNormParams()
    p.dtype = dtype_code(x.dtype)
    p.x, p.weight, p.bias = x.data_ptr(), _ptr(weight), _ptr(bias)
    p.scale, p.shift, p.add = _ptr(scale), _ptr(shift), _ptr(add)
    p.mean, p.rstd = mean.data_ptr(), rstd.data_ptr()
    p.batch, p.channels, p.groups, p.spatial = x.shape[0], x.shape[1], num_groups, math.prod(x.shape[2:])
    p.x_strides = _ncm_strides(x)
    p.eps = eps
    p.activation = getattr(C.Activation, activation or "none")
    return p


def _cpu_fwd(x, weight, bias, scale, shift, add, num_groups, eps, activation, y, mean, rstd):
    p = _params(x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation)
    p.y, p.y_strides = y.data_ptr(), _ncm_strides(y)
    extension.module.group_norm_fwd_cpu(p)


def _reference_fwd(x, weight, bias, scale, shift, add, num_groups, eps, activation, y, mean, rstd):
    y.copy_(group_norm_act_ref(x, num_groups, weight, bias, eps, scale, shift, add, activation))
    _, mu, r = group_moments_ref(x, num_groups, add, eps, mean.dtype)
    mean.copy_(mu.squeeze(-1))
    rstd.copy_(r.squeeze(-1))


def _cpu_bwd(grad_y, x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation, grads):
    C = extension.module
    b = C.GroupNormBwdParams()
    b.fwd = _params(x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation)
    b.grad_y, b.grad_y_strides = grad_y.data_ptr(), _ncm_strides(grad_y)
    gx, gw, gb, gsc, gsh, gad = grads
    b.grad_x, b.grad_x_strides = gx.data_ptr(), _ncm_strides(gx)
    b.grad_weight, b.grad_bias = _ptr(gw), _ptr(gb)
    b.grad_scale, b.grad_shift, b.grad_add = _ptr(gsc), _ptr(gsh), _ptr(gad)
    C.group_norm_bwd_cpu(b)


def _reference_bwd(grad_y, x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation, grads):
    got = group_norm_act_bwd_ref(grad_y, x, num_groups, weight, bias, eps, scale, shift, add, activation)
    for out, g in zip(grads, got):
        if out is not None:
            out.copy_(g)


_FWD = {"cpu": _cpu_fwd, "reference": _reference_fwd}
_BWD = {"cpu": _cpu_bwd, "reference": _reference_bwd}


def _stats(x: torch.Tensor, num_groups: int):
    return [x.new_empty((x.shape[0], num_groups), dtype=_kit.acc_dtype(x.dtype)) for _ in range(2)]


# --- the custom ops: the one compile-safe boundary ----------------------------------------
@torch.library.custom_op("medkernels::group_norm_act", mutates_args=())
def _group_norm_act_op(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor],
    add: Optional[torch.Tensor],
    num_groups: int,
    eps: float,
    activation: str,
    backend: str,
) -> List[torch.Tensor]:
    y = torch.empty_like(x)
    mean, rstd = _stats(x, num_groups)
    _FWD[backend](x, weight, bias, scale, shift, add, num_groups, eps, activation or None, y, mean, rstd)
    return [y, mean, rstd]


@_group_norm_act_op.register_fake
def _(x, weight, bias, scale, shift, add, num_groups, eps, activation, backend):
    return [torch.empty_like(x), *_stats(x, num_groups)]


@torch.library.custom_op("medkernels::group_norm_act_bwd", mutates_args=())
def _group_norm_act_bwd_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor],
    add: Optional[torch.Tensor],
    mean: torch.Tensor,
    rstd: torch.Tensor,
    num_groups: int,
    eps: float,
    activation: str,
    backend: str,
) -> List[torch.Tensor]:
    acc = _kit.acc_dtype(x.dtype)
    grads = [torch.empty_like(x)] + [None if t is None else torch.empty(t.shape, dtype=acc) for t in
                                     (weight, bias, scale, shift, add)]
    _BWD[backend](grad_y, x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation or None, grads)
    # an absent input's gradient is an empty tensor (a custom op returns tensors only)
    return [grads[0]] + [x.new_empty((0,)) if g is None else g.to(t.dtype) for g, t in
                         zip(grads[1:], (weight, bias, scale, shift, add))]


@_group_norm_act_bwd_op.register_fake
def _(grad_y, x, weight, bias, scale, shift, add, mean, rstd, num_groups, eps, activation, backend):
    return [torch.empty_like(x)] + [x.new_empty((0,)) if t is None else torch.empty_like(t)
                                    for t in (weight, bias, scale, shift, add)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, add, num_groups, eps, activation, backend = inputs
    ctx.save_for_backward(x, weight, bias, scale, shift, add, output[1], output[2])
    ctx.options = (num_groups, eps, activation, backend)
    ctx.present = [t is not None for t in (weight, bias, scale, shift, add)]


def _backward(ctx, grads):
    x, weight, bias, scale, shift, add, mean, rstd = ctx.saved_tensors
    num_groups, eps, activation, backend = ctx.options
    gy = grads[0]
    if gy is None:
        gy = torch.zeros_like(x)
    got = _group_norm_act_bwd_op(gy.contiguous() if _ncm_strides(gy) is None else gy, x, weight, bias, scale,
                                 shift, add, mean, rstd, num_groups, eps, activation, backend)
    rest = [g if present else None for g, present in zip(got[1:], ctx.present)]
    return (got[0], *rest, None, None, None, None)


_group_norm_act_op.register_autograd(_backward, setup_context=_setup_context)


# --- the public function -------------------------------------------------------------------
def _per_channel(name: str, t: Optional[torch.Tensor], N: int, C: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    check_tensor(name, t)
    if t.dim() < 2 or tuple(t.shape[:2]) != (N, C) or any(s != 1 for s in t.shape[2:]):
        raise ValueError(f"{name} must be per (sample, channel): ({N}, {C}) or ({N}, {C}, 1, ...), got {describe(t)}")
    return t.reshape(N, C).contiguous()


def _per_feature(name: str, t: Optional[torch.Tensor], C: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    check_tensor(name, t, dim=1)
    if t.shape[0] != C:
        raise ValueError(f"{name} must be ({C},) for x with {C} channels, got {describe(t)}")
    return t.contiguous()


def group_norm_act(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    eps: float = 1e-5,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``act(((x + add - mean) * rstd * weight + bias) * (1 + scale) + shift)``, statistics per
    (sample, group) over the group's channels and all spatial positions.

    Args:
        x: (N, C, *spatial), 1 to 3 spatial axes, NC... contiguous or channels-last (the output
            keeps the layout; other strides are copied to contiguous first).
        num_groups: divides C.
        weight, bias: (C,) GroupNorm affine, or None.
        eps: added to the biased variance.
        scale, shift: per (sample, channel) FiLM (guided-diffusion's ``use_scale_shift_norm``),
            (N, C) or (N, C, 1, ...), or None.
        add: per (sample, channel) bias added before the norm (the time-embedding add of MONAI's
            and Fast-DDPM's ResBlocks), or None.
        activation: None, "silu" or "gelu" (exact erf).
        backend: "auto", "cpu" or "reference".

    Statistics in float64 blocks combined in a fixed order on the cpu backend (float32 for 16-bit
    inputs in the reference); NaN in x stays in its (sample, group)'s outputs.
    """
    check_tensor("x", x)
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"x must be (N, C, *spatial) with 1 to 3 spatial axes, got {describe(x)}")
    if x.numel() == 0:
        raise ValueError(f"x must be non-empty, got {describe(x)}")
    N, C = x.shape[:2]
    num_groups = check_int("num_groups", num_groups)
    if C % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the {C} channels of x ({describe(x)})")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    weight, bias = _per_feature("weight", weight, C), _per_feature("bias", bias, C)
    scale, shift, add = (_per_channel(n, t, N, C) for n, t in (("scale", scale), ("shift", shift), ("add", add)))
    check_same("x", x, weight=weight, bias=bias, scale=scale, shift=shift, add=add)
    if _ncm_strides(x) is None:
        x = x.contiguous()
    name = _DISPATCH.select(backend, x.device, x.dtype, x=x)
    return _group_norm_act_op(x, weight, bias, scale, shift, add, num_groups, float(eps), activation or "", name)[0]
