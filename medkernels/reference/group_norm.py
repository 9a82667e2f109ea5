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

ACTIVATIONS = (None, "silu", "gelu")

_ACT = {None: lambda t: t, "silu": F.silu, "gelu": F.gelu}


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


def group_norm_act_bwd_ref(grad_y, x, num_groups, weight, bias, eps, scale, shift, add, activation):
    """Gradients of ``group_norm_act_ref`` (autograd through it, in its precision), in the order
    (x, weight, bias, scale, shift, add), None for an absent input; each in its input's dtype
    and shape."""
    inputs = [x, weight, bias, scale, shift, add]
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        y = group_norm_act_ref(leaves[0], num_groups, leaves[1], leaves[2], eps, *leaves[3:], activation)
        present = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(y, present, grad_y.to(y.dtype))
    it = iter(grads)
    return tuple(None if t is None else next(it).to(t.dtype) for t in leaves)
