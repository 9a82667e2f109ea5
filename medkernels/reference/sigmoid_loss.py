"""Reference pairwise sigmoid (SigLIP) loss: the N x M logits matrix in plain PyTorch.

SigLIP (Zhai et al. 2023, big_vision ``sigmoid_loss``; open_clip ``SigLipLoss``)::

    logits = exp(t') * x @ y.T + b                   # (N, M)
    z      = +1 on positive pairs, -1 elsewhere       # i == j by default
    loss   = -sum(log_sigmoid(z * logits)) / N

Med3DVLM (``variant="med3dvlm"``) symmetrises the logits, ``(L + L.T) / 2``, before the loss
(square batches only). Med3DVLM's code has two branches that disagree: its single-GPU path
scales by t' itself (no exp) and does not divide by N, its distributed path uses exp(t') and
divides by N. We follow the distributed path (SigLIP's definition) in every case.

This module is the oracle of the tests, the baseline of the benchmarks and the
``backend="reference"`` implementation; it materialises the whole logits matrix on purpose.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "mean_pairs")
VARIANTS = ("siglip", "med3dvlm")


def sigmoid_loss_scale(reduction: str, n: int, m: int) -> float:
    """The factor the summed pair losses are multiplied by: 1/N, 1 or 1/(N*M)."""
    if reduction == "mean":
        return 1.0 / n
    if reduction == "sum":
        return 1.0
    if reduction == "mean_pairs":
        return 1.0 / (n * m)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def sigmoid_loss_positives_ref(
    n: int,
    m: int,
    *,
    labels: Optional[torch.Tensor] = None,
    labels_y: Optional[torch.Tensor] = None,
    positive_mask: Optional[torch.Tensor] = None,
    diag_offset: int = 0,
    device=None,
) -> torch.Tensor:
    """(N, M) bool: the positive pairs. Precedence: ``positive_mask``, then labels
    (``labels[i] == labels_y[j]``, ``labels_y`` defaulting to ``labels``), then the diagonal
    ``i - j == diag_offset`` (0: the matching pairs of one batch)."""
    if positive_mask is not None:
        return positive_mask.to(torch.bool)
    if labels is not None:
        ly = labels if labels_y is None else labels_y
        return labels.reshape(-1, 1) == ly.reshape(1, -1)
    i = torch.arange(n, device=device).reshape(-1, 1)
    j = torch.arange(m, device=device).reshape(1, -1)
    return (i - j) == diag_offset


def sigmoid_loss_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime,
    bias,
    *,
    labels: Optional[torch.Tensor] = None,
    labels_y: Optional[torch.Tensor] = None,
    positive_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    variant: str = "siglip",
    normalize: bool = False,
    diag_offset: int = 0,
    upcast: bool = False,
) -> torch.Tensor:
    """The loss, step by step as SigLIP computes it. ``upcast`` runs it in float64.

    x (N, d), y (M, d); t_prime, bias: scalars (0-d tensors or numbers). Differentiable by
    autograd in every input. Returns a 0-d tensor in x's dtype (float64 with ``upcast``; float32
    for float16/bfloat16 inputs, whose sum is accumulated in float32).
    """
    t_prime = torch.as_tensor(t_prime, device=x.device)
    bias = torch.as_tensor(bias, device=x.device)
    if upcast:
        x, y, t_prime, bias = x.double(), y.double(), t_prime.double(), bias.double()
    else:
        # 16-bit inputs are computed in fp32 (as every other backend accumulates): the oracle is
        # the most careful backend, not the least
        if x.dtype in (torch.float16, torch.bfloat16):
            x, y = x.float(), y.float()
        t_prime, bias = t_prime.to(x.dtype), bias.to(x.dtype)
    if normalize:
        x = F.normalize(x, dim=-1)
        y = F.normalize(y, dim=-1)
    n, m = x.shape[0], y.shape[0]
    logits = t_prime.exp() * (x @ y.T) + bias
    if variant == "med3dvlm":
        logits = (logits + logits.T) / 2
    elif variant != "siglip":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    pos = sigmoid_loss_positives_ref(
        n, m, labels=labels, labels_y=labels_y, positive_mask=positive_mask, diag_offset=diag_offset, device=x.device
    )
    z = pos.to(logits.dtype) * 2 - 1
    # 16-bit inputs: the sum of N M pair losses overflows float16, so it accumulates in fp32
    acc = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    return -F.logsigmoid(z * logits).sum(dtype=acc) * sigmoid_loss_scale(reduction, n, m)


def sigmoid_loss_bwd_ref(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    positives: torch.Tensor,
    scale: float,
    symmetric: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dx, dy, dt', db) of ``scale * sum(-log_sigmoid(z * logits))`` without
    autograd (so it can run inside a custom op), for already normalised x and y.

    With G = grad * scale * dloss/dlogits = -grad * scale * z * sigmoid(-z * logits),
    siglip: dx = e^t' G y, dy = e^t' G^T x; med3dvlm: G -> (G + G^T)/2 in both;
    dt' = sum(G * (logits - b)), db = sum(G). Computed in x's dtype, fp32 for fp16/bf16 (dx, dy
    cast back to x's dtype at the end).
    """
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x, y = x.float(), y.float()
    t = t_prime.to(x.dtype)
    b = bias.to(x.dtype)
    s = t.exp()
    dots = x @ y.T
    if symmetric:
        dots = (dots + dots.T) / 2
    logits = s * dots + b
    z = positives.to(x.dtype) * 2 - 1
    g = -(grad.to(x.dtype) * scale) * z * torch.sigmoid(-z * logits)
    if symmetric:
        g = (g + g.T) / 2
    dx = s * (g @ y)
    dy = s * (g.T @ x)
    dt = (g * dots).sum() * s
    db = g.sum()
    return dx.to(out_dtype), dy.to(out_dtype), dt.to(t_prime.dtype), db.to(bias.dtype)
