"""Reference GroupNorm + time-embedding scale/shift + activation, as the diffusion UNets compute it.

MONAI's ``DiffusionModelUNet`` ResBlock (``monai/networks/nets/diffusion_model_unet.py``) and
Fast-DDPM's ``ResnetBlock`` (``models/diffusion.py``) add the time embedding to the first conv's
output and normalise after it: ``SiLU(GroupNorm(h + temb[:, :, None, ...]))`` — our ``add``.
guided-diffusion's ``use_scale_shift_norm`` (FiLM) applies the embedding after the norm:
``SiLU(GroupNorm(h) * (1 + scale) + shift)`` — our ``scale``/``shift``. Together:

    h       = x + add[n, c]                                   (add: per sample and channel)
    mean, var over (channels of group g, all spatial positions) of h, per sample n (biased var)
    y       = act( ((h - mean) / sqrt(var + eps) * weight[c] + bias[c]) * (1 + scale[n, c]) + shift[n, c] )

Statistics and arithmetic run in float32 for 16-bit inputs (float64 for float64 inputs, or with
``upcast=True``); the result is cast once to x's dtype. ``torch.nn.functional.group_norm`` computes
the moments (PyTorch's CPU and CUDA kernels both use Welford-style cascades, stable for a large
mean), so this is the layer a user would write, step by step.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .decomp_conv import _ACTIVATIONS as _ACT
from .decomp_conv import _act_grad

ACTIVATIONS = (None, "silu", "gelu")



def _per_channel(t: Optional[torch.Tensor], x: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """(N, C) or (N, C, 1, ..., 1) -> (N, C, 1, ..., 1) broadcastable against x, in ``dtype``."""
    if t is None:
        return None
    return t.reshape(t.shape[0], t.shape[1], *([1] * (x.dim() - 2))).to(dtype)


def group_norm_act_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    upcast: bool = False,
) -> torch.Tensor:
    """The formula above in plain PyTorch; differentiable in every input (the oracle's gradients)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    dtype = torch.float64 if upcast or x.dtype == torch.float64 else torch.float32
    h = x.to(dtype)
    if add is not None:
        h = h + _per_channel(add, x, dtype)
    h = F.group_norm(
        h, num_groups,
        None if weight is None else weight.to(dtype),
        None if bias is None else bias.to(dtype),
        eps,
    )
    if scale is not None:
        h = h * (1 + _per_channel(scale, x, dtype))
    if shift is not None:
        h = h + _per_channel(shift, x, dtype)
    return _ACT[activation](h).to(x.dtype)


def group_moments_ref(x, num_groups, add, eps, dtype):
    """(h, mean, rstd): h = x + add in ``dtype``; mean and rstd (N, num_groups, 1) of h over each
    (sample, group), biased variance."""
    h = x.to(dtype)
    if add is not None:
        h = h + _per_channel(add, x, dtype)
    var, mean = torch.var_mean(h.reshape(x.shape[0], num_groups, -1), dim=-1, unbiased=False, keepdim=True)
    return h, mean, torch.rsqrt(var + eps)


def group_norm_act_bwd_ref(grad_y, x, num_groups, weight, bias, eps, scale, shift, add, activation):
    """Gradients of ``group_norm_act_ref`` written out (no autograd, so it runs inside a custom
    op), in its precision, in the order (x, weight, bias, scale, shift, add), None for an absent
    input; each in its input's dtype and shape::

        dz = dy act'(z);  dshift = sum_m dz;  dscale = sum_m dz y0;  dy0 = dz (1 + scale)
        dweight = sum_{n,m} dy0 xhat;  dbias = sum_{n,m} dy0;  dxhat = dy0 weight
        dx = rstd (dxhat - mean_g(dxhat) - xhat mean_g(dxhat xhat));  dadd = sum_m dx
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    N, C = x.shape[:2]
    spatial = tuple(range(2, x.dim()))
    h, mean, rstd = group_moments_ref(x, num_groups, add, eps, dtype)
    xhat = ((h.reshape(N, num_groups, -1) - mean) * rstd).reshape(h.shape)
    ones = [1] * len(spatial)
    w = weight.to(dtype).reshape(1, C, *ones) if weight is not None else torch.ones((), dtype=dtype)
    y0 = xhat * w + (bias.to(dtype).reshape(1, C, *ones) if bias is not None else 0)
    s1 = 1 + _per_channel(scale, x, dtype) if scale is not None else torch.ones((), dtype=dtype)
    z = y0 * s1 + (_per_channel(shift, x, dtype) if shift is not None else 0)
    dz = grad_y.to(dtype) * _act_grad(z, activation)
    dy0 = dz * s1
    dxhat = (dy0 * w).reshape(N, num_groups, -1)
    xg = xhat.reshape(N, num_groups, -1)
    dx = (rstd * (dxhat - dxhat.mean(-1, keepdim=True) - xg * (dxhat * xg).mean(-1, keepdim=True))).reshape(x.shape)
    per_nc = lambda t: t.sum(dim=spatial)  # noqa: E731
    grads = (
        dx,
        None if weight is None else (dy0 * xhat).sum(dim=(0, *spatial)),
        None if bias is None else dy0.sum(dim=(0, *spatial)),
        None if scale is None else per_nc(dz * y0).reshape(scale.shape),
        None if shift is None else per_nc(dz).reshape(shift.shape),
        None if add is None else per_nc(dx).reshape(add.shape),
    )
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, (x, weight, bias, scale, shift, add)))
