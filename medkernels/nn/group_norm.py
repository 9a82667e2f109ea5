"""``GroupNormAct``: ``nn.GroupNorm`` followed by SiLU/GELU, with the diffusion UNets' per-(sample,
channel) time-embedding add and FiLM scale/shift, as one fused op.

It *is* an ``nn.GroupNorm`` (a subclass: the same ``weight``/``bias`` keys, ``num_groups``,
``num_channels``, ``eps``, ``affine``), so it replaces a ``GroupNorm`` + ``SiLU`` pair in any state
dict unchanged; :meth:`GroupNormAct.from_group_norm` wraps an existing one and shares its
parameters (an optimizer holding them keeps working).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.group_norm import group_norm_act
from ..reference.group_norm import ACTIVATIONS


class GroupNormAct(nn.GroupNorm):
    """``act(GroupNorm(x + add) * (1 + scale) + shift)``.

    Args:
        num_groups, num_channels, eps, affine, device, dtype: as ``nn.GroupNorm``.
        activation: "silu" (default), "gelu" (exact erf) or None.
        backend: see :func:`medkernels.ops.group_norm_act`.

    forward(x, scale=None, shift=None, add=None): x (N, C, *spatial) with 1 to 3 spatial axes;
    scale, shift, add per (sample, channel): (N, C) or (N, C, 1, ...).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 activation: Optional[str] = "silu", backend: str = "auto", device=None, dtype=None) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        self.activation, self.backend = activation, backend

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, activation: Optional[str] = "silu",
                        backend: str = "auto") -> GroupNormAct:
        """A GroupNormAct computing ``act(norm(x))`` with ``norm``'s parameter objects (shared, not copied)."""
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"norm must be an nn.GroupNorm, got {type(norm).__name__}")
        new = cls(norm.num_groups, norm.num_channels, norm.eps, affine=False, activation=activation, backend=backend)
        new.affine = norm.affine
        new.weight, new.bias = norm.weight, norm.bias  # the same Parameters (None when not affine)
        new.train(norm.training)
        return new

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                add: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != self.num_channels:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (N, C={self.num_channels}, *spatial), got {got}")
        return group_norm_act(x, self.num_groups, self.weight, self.bias, eps=self.eps, scale=scale, shift=shift,
                              add=add, activation=self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"
