"""Reference decomposed 3D convolution, as DCFormer's ``DecompConv3D`` computes it.

DCFormer (mirthAI/DCFormer ``models/dcformer.py``)::

    y = act( BN_d(conv_(k,1,1)(x)) + BN_h(conv_(1,k,1)(x)) + BN_w(conv_(1,1,k)(x)) )

each conv with padding k//2 on its axis, the same stride on every axis and the same groups.
With the BNs folded (eval), the three biases sum into one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_ACTIVATIONS = {
    None: lambda t: t,
    "none": lambda t: t,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


def _as_5d(w: torch.Tensor, axis: int) -> torch.Tensor:
    """(C_out, C_in/g, k) or an already 5-D conv weight -> the 5-D weight of that axis."""
    if w.dim() == 5:
        return w
    shape = [w.shape[0], w.shape[1], 1, 1, 1]
    shape[2 + axis] = w.shape[2]
    return w.reshape(shape)


def _branches(w_d: torch.Tensor, w_h: torch.Tensor, w_w: torch.Tensor):
    """(5-D weight, padding) of the D, H and W branches: kernel k and padding k//2 on its own axis."""
    for axis, w in enumerate((w_d, w_h, w_w)):
        w5 = _as_5d(w, axis)
        pad = [0, 0, 0]
        pad[axis] = w5.shape[2 + axis] // 2
        yield w5, tuple(pad)


def decomp_conv3d_ref(
    x: torch.Tensor,
    w_d: torch.Tensor,
    w_h: torch.Tensor,
    w_w: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: int = 1,
    groups: Optional[int] = None,
    activation: Optional[str] = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Three ``F.conv3d`` + sum (+ bias) + activation. ``upcast`` runs it in float64."""
    dtype = x.dtype
    if upcast:
        x, w_d, w_h, w_w = (t.double() for t in (x, w_d, w_h, w_w))
        bias = bias.double() if bias is not None else None
    groups = x.shape[1] if groups is None else groups
    stride = min(stride, max(x.shape[2:]))  # past the volume only position 0 is read (oneDNN refuses 2^63 - 1)
    y = None
    for w5, pad in _branches(w_d, w_h, w_w):
        out = F.conv3d(x, w5, None, stride, pad, 1, groups)
        y = out if y is None else y + out
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1, 1)
    y = _ACTIVATIONS[activation](y)
    return y.to(dtype) if upcast else y


def _act_grad(z: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    if activation == "gelu":
        return 0.5 * (1 + torch.erf(z * 0.7071067811865476)) + z * torch.exp(-0.5 * z * z) * 0.3989422804014327
    if activation == "relu":
        return (~(z <= 0)).to(z.dtype)  # torch.relu's backward (threshold_backward): a NaN z passes the gradient
    if activation == "silu":
        sig = torch.sigmoid(z)
        return sig * (1 + z * (1 - sig))
    return torch.ones_like(z)


def decomp_conv3d_bwd_ref(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    w_d: torch.Tensor,
    w_h: torch.Tensor,
    w_w: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: int = 1,
    groups: Optional[int] = None,
    activation: Optional[str] = None,
):
    """Gradients (dx, dw_d, dw_h, dw_w, dbias) of :func:`decomp_conv3d_ref` without autograd
    (``torch.nn.grad``), so it can run inside a custom op. Weights (C_out, C_in/g, k)."""
    groups = x.shape[1] if groups is None else groups
    stride = min(stride, max(x.shape[2:]))  # as decomp_conv3d_ref
    gz = grad_y
    if activation not in (None, "none"):
        z = decomp_conv3d_ref(x, w_d, w_h, w_w, bias, stride, groups, None)
        gz = grad_y * _act_grad(z, activation)
    dx = torch.zeros_like(x)
    dws = []
    for w, (w5, pad) in zip((w_d, w_h, w_w), _branches(w_d, w_h, w_w)):
        dx = dx + torch.nn.grad.conv3d_input(x.shape, w5, gz, stride, pad, 1, groups)
        dws.append(torch.nn.grad.conv3d_weight(x, w5.shape, gz, stride, pad, 1, groups).reshape(w.shape))
    return (dx, *dws, gz.sum(dim=(0, 2, 3, 4)))


def decomp_conv3d_module_ref(
    x: torch.Tensor,
    convs: Sequence[torch.nn.Conv3d],
    norms: Sequence[torch.nn.Module],
    activation: Optional[str] = None,
) -> torch.Tensor:
    """The module form: conv_i then norm_i per branch, summed, activation (train or eval)."""
    y = sum(n(c(x)) for c, n in zip(convs, norms))
    return _ACTIVATIONS[activation](y)
