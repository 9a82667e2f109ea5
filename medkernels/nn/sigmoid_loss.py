"""``SigLIPLoss``: the pairwise sigmoid loss as a module that owns t' and b."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..ops.sigmoid_loss import sigmoid_loss
from ..reference.sigmoid_loss import REDUCTIONS, VARIANTS


class SigLIPLoss(nn.Module):
    """SigLIP's loss with its learnable log-temperature ``t_prime`` and bias ``bias``.

    ``forward(x, y, labels=None, labels_y=None, positive_mask=None)`` returns
    :func:`medkernels.ops.sigmoid_loss` of x (N, d) and y (M, d) with this module's t' and b.
    With ``distributed=True`` (an initialised ``torch.distributed`` process group) x and y are
    this rank's blocks and the loss runs over the global batch:
    :func:`medkernels.distributed.sigmoid_loss` (``"ring"``: text blocks passed around the ring,
    or ``"all_gather"``).

    Args:
        init_t_prime: initial log-temperature (SigLIP: log 10).
        init_bias: initial bias (SigLIP: -10).
        learnable: t' and b are Parameters (else buffers).
        distributed: global-batch loss across the ranks of ``process_group``.
        variant: "siglip" or "med3dvlm" (symmetrised logits; not with ``distributed``).
        reduction: "mean" (SigLIP: sum / N), "sum" or "mean_pairs".
        normalize: L2-normalise x and y inside the loss.
        backend: op backend ("auto", "cuda", "triton", "cpu", "reference").
        exchange: "ring" or "all_gather" (distributed only).
        process_group: the group (None: the default group).
    """

    def __init__(
        self,
        init_t_prime: float = math.log(10.0),
        init_bias: float = -10.0,
        learnable: bool = True,
        distributed: bool = False,
        variant: str = "siglip",
        reduction: str = "mean",
        normalize: bool = False,
        backend: str = "auto",
        exchange: str = "ring",
        process_group=None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if distributed and variant != "siglip":
            raise ValueError("distributed=True supports variant='siglip' only (the symmetrised logits need the "
                             "whole square batch on one rank)")
        t = torch.tensor(float(init_t_prime))
        b = torch.tensor(float(init_bias))
        if learnable:
            self.t_prime = nn.Parameter(t)
            self.bias = nn.Parameter(b)
        else:
            self.register_buffer("t_prime", t)
            self.register_buffer("bias", b)
        self.distributed = distributed
        self.variant = variant
        self.reduction = reduction
        self.normalize = normalize
        self.backend = backend
        self.exchange = exchange
        self.process_group = process_group

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        labels_y: Optional[torch.Tensor] = None,
        positive_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self.distributed:
            from ..distributed.sigmoid_loss import sigmoid_loss as dist_sigmoid_loss

            if positive_mask is not None:
                raise ValueError("distributed=True takes labels, not positive_mask")
            return dist_sigmoid_loss(
                x, y, self.t_prime, self.bias, labels=labels, labels_y=labels_y, reduction=self.reduction,
                normalize=self.normalize, exchange=self.exchange, backend=self.backend, group=self.process_group,
            )
        return sigmoid_loss(
            x, y, self.t_prime, self.bias, labels=labels, labels_y=labels_y, positive_mask=positive_mask,
            reduction=self.reduction, variant=self.variant, normalize=self.normalize, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, reduction={self.reduction!r}, distributed={self.distributed}, "
                f"normalize={self.normalize}")
