"""``DecompConv3d``: DCFormer's ``DecompConv3D`` as a drop-in module over the fused kernel.

State-dict keys are DCFormer's (mirthAI/DCFormer ``models/dcformer.py``): the three branch
convs are ``c{1,2,3}.0``, their BatchNorms ``c{1,2,3}.1``, and the same BN modules are also held
in the ModuleList ``norm``, so an official state dict stores each BN twice
(``norm.{0,1,2}.*`` and ``c{1,2,3}.1.*``). With ``norm=None`` only the conv keys exist.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.decomp_conv import MAX_KERNEL, decomp_conv3d, decomp_conv3d_uses_torch_convs

_ACT_MODULES = {nn.ReLU: "relu", nn.SiLU: "silu"}


def _activation_name(act) -> Optional[str]:
    """An activation the kernel fuses ("gelu", "relu", "silu"), or None (none, or not fusable)."""
    if act is None:
        return None
    if isinstance(act, str):
        if act not in ("gelu", "relu", "silu"):
            raise ValueError(f"act must be None, 'gelu', 'relu', 'silu' or an nn.Module, got {act!r}")
        return act
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    for cls, name in _ACT_MODULES.items():
        if type(act) is cls:
            return name
    return None


class DecompConv3d(nn.Module):
    """y = act(BN_d(conv_(k,1,1)(x)) + BN_h(conv_(1,k,1)(x)) + BN_w(conv_(1,1,k)(x))).

    Args:
        in_dim, out_dim: channels. kernel_size: odd, 1..15. stride: on every axis.
        groups: as ``nn.Conv3d`` (``groups=in_dim`` is the depthwise hot path).
        norm: anything but None gives each branch a ``BatchNorm3d`` (DCFormer passes
            ``nn.GELU()`` in this slot in its stem: that means BN, not GELU).
        act: None, "gelu"/"relu"/"silu", or an ``nn.Module`` applied to the sum.
        backend: the kernel backend (see ``medkernels.ops.decomp_conv3d``).

    Eval mode folds each BN into its branch's weights and runs one fused kernel. Train mode
    normalises each branch with its batch statistics exactly as ``BatchNorm3d`` does (running
    statistics updated the same), each branch's conv running through the fused kernel.
    Input (N, in_dim, D, H, W), NCDHW or channels-last; output keeps the layout.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 norm=True, act: Union[None, str, nn.Module] = None, backend: str = "auto") -> None:
        super().__init__()
        if kernel_size % 2 == 0 or not 1 <= kernel_size <= MAX_KERNEL:
            raise ValueError(f"kernel_size must be odd and in 1..{MAX_KERNEL}, got {kernel_size}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if in_dim % groups or out_dim % groups:
            raise ValueError(f"groups={groups} must divide in_dim={in_dim} and out_dim={out_dim}")
        self.in_dim, self.out_dim, self.kernel_size = in_dim, out_dim, kernel_size
        self.stride, self.groups, self.backend = stride, groups, backend
        self.act = act if isinstance(act, nn.Module) or act is None else None
        self._act_name = _activation_name(act)
        self._act_fn = act if isinstance(act, nn.Module) and self._act_name is None else None
        self.norm = nn.ModuleList([nn.BatchNorm3d(out_dim) if norm is not None else nn.Identity() for _ in range(3)])
        p = kernel_size // 2
        shapes = [((kernel_size, 1, 1), (p, 0, 0)), ((1, kernel_size, 1), (0, p, 0)), ((1, 1, kernel_size), (0, 0, p))]
        for i, (ks, pad) in enumerate(shapes):
            conv = nn.Conv3d(in_dim, out_dim, kernel_size=ks, padding=pad, stride=stride, groups=groups)
            setattr(self, f"c{i + 1}", nn.Sequential(conv, self.norm[i]))

    @property
    def convs(self):
        return (self.c1[0], self.c2[0], self.c3[0])

    def _branch_weight(self, i: int) -> torch.Tensor:
        w = self.convs[i].weight
        return w.reshape(w.shape[0], w.shape[1], self.kernel_size)

    def folded(self):
        """(w_d, w_h, w_w, bias): eval-mode BNs folded into the branch weights and one bias."""
        ws, bias = [], 0
        for i, (conv, bn) in enumerate(zip(self.convs, self.norm)):
            w = self._branch_weight(i)
            b = conv.bias if conv.bias is not None else torch.zeros_like(w[:, 0, 0])
            if isinstance(bn, nn.BatchNorm3d):
                mean = bn.running_mean if bn.track_running_stats and bn.running_mean is not None else None
                if mean is None:
                    raise RuntimeError("folding needs running statistics (track_running_stats=True)")
                s = torch.rsqrt(bn.running_var + bn.eps)
                if bn.weight is not None:
                    s = s * bn.weight
                w = w * s[:, None, None]
                b = (b - mean) * s + (bn.bias if bn.bias is not None else 0)
            ws.append(w)
            bias = bias + b
        return ws[0], ws[1], ws[2], bias

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != self.in_dim:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DecompConv3d expects x of shape (N, {self.in_dim}, D, H, W), got {got}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        has_bn = isinstance(self.norm[0], nn.BatchNorm3d)
        batch_stats = has_bn and (self.training or not self.norm[0].track_running_stats)
        dtype = x.dtype
        if not batch_stats:
            w_d, w_h, w_w, bias = (t.to(dtype) for t in self.folded())
            y = decomp_conv3d(x, w_d, w_h, w_w, bias, stride=self.stride, groups=self.groups,
                              activation=self._act_name, backend=self.backend)
        elif decomp_conv3d_uses_torch_convs(x, self.kernel_size, self.groups, self.stride, self.backend,
                                            self.out_dim, grad=torch.is_grad_enabled()):
            # batch statistics need each branch's own output: the plain branch convs then, not
            # three fused calls that each pay for all three branches
            y = self.c1(x) + self.c2(x) + self.c3(x)
            if self._act_name is not None:
                y = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[self._act_name](y)
        else:
            y = 0
            for i, bn in enumerate(self.norm):
                ws = [torch.zeros_like(self._branch_weight(i), dtype=dtype) for _ in range(3)]
                ws[i] = self._branch_weight(i).to(dtype)
                conv_bias = self.convs[i].bias
                u = decomp_conv3d(x, *ws, conv_bias.to(dtype) if conv_bias is not None else None,
                                  stride=self.stride, groups=self.groups, backend=self.backend)
                y = y + bn(u)
            if self._act_name is not None:
                y = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[self._act_name](y)
        if self._act_fn is not None:
            y = self._act_fn(y)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_dim}, {self.out_dim}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, act={self._act_name or self._act_fn}, backend={self.backend!r}")
