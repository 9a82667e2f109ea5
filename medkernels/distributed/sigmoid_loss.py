"""The pairwise sigmoid (SigLIP) loss over the global batch of a ``torch.distributed`` group.

Each rank holds its block of images x_r (N_r, d) and texts y_r (M_r, d). The loss of rank r is
its images against every text of the group:

    loss_r = W * scale * sum_{i in r, all j} softplus(-z_ij L_ij)

with the *global* reduction (``scale`` = 1/N, 1 or 1/(N M) of the concatenated batch) times the
world size W, so that the mean of ``loss_r`` over the ranks (what DDP's gradient averaging
computes) is exactly the single-process loss on the concatenated batch, and so are the
rank-averaged gradients. With equal local batches and ``reduction="mean"`` this is SigLIP's
per-device loss (sum / local batch), as big_vision and open_clip compute it.

``exchange="ring"`` (SigLIP's chunked implementation): the text blocks travel around the ring
with point-to-point ``isend``/``irecv``, the transfer of the next block overlapping the loss of
the current one. The backward recirculates them, each block carrying its gradient accumulator,
which returns to its owner after W hops. A rank never holds more than two text blocks and two
gradient blocks: memory O(local batch * d) whatever the world size. ``exchange="all_gather"``
gathers every text block on every rank (memory O(global batch * d)), for comparison.

Positive pairs: the global diagonal (needs N_r == M_r on every rank) or labels (``labels`` for
the local images, ``labels_y`` for the local texts, default ``labels``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from ..ops._kit import acc_dtype as _acc_dtype
from ..ops._kit import wants_grad as _wants_grad
from ..ops.sigmoid_loss import (
    _DISPATCH,
    _OP,
    LossOptions,
    _check_t_prime,
    prepare_sigmoid_loss_inputs,
    sigmoid_loss_sum_bwd,
    sigmoid_loss_sum_fwd,
)
from ..reference.sigmoid_loss import REDUCTIONS, sigmoid_loss_scale

EXCHANGES = ("ring", "all_gather")


def _sizes(n: int, m: int, device, group) -> Tuple[List[int], List[int]]:
    local = torch.tensor([n, m], dtype=torch.int64, device=device)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, local, group=group)
    return [int(t[0]) for t in out], [int(t[1]) for t in out]


# dtype / device codes for the handshake; an unknown one gets a code of its own below
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")


def _handshake(x: torch.Tensor, y: torch.Tensor, labels_x, group) -> Tuple[List[int], List[int]]:
    """Exchange (N_r, M_r, d, dtype, device type, labels given) across the group; every rank
    raises the same ValueError when the ranks disagree on anything but the batch sizes, before a
    mismatched exchange can abort gloo or fill a buffer half. Returns (n_sizes, m_sizes)."""
    dtype_code = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else len(_DTYPES)
    dev = x.device.type
    dev_code = _DEVICE_TYPES.index(dev) if dev in _DEVICE_TYPES else len(_DEVICE_TYPES)
    local = torch.tensor([x.shape[0], y.shape[0], x.shape[1], dtype_code, dev_code, labels_x is not None],
                         dtype=torch.int64, device=x.device)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, local, group=group)
    rows = [[int(v) for v in t] for t in out]
    names = {
        2: ("d (the embedding width)", lambda c: c),
        3: ("dtype", lambda c: _DTYPES[c] if c < len(_DTYPES) else "another dtype"),
        4: ("device type", lambda c: _DEVICE_TYPES[c] if c < len(_DEVICE_TYPES) else "another device"),
        5: ("labels", lambda c: "given" if c else "None"),
    }
    for col, (what, show) in names.items():
        if len({row[col] for row in rows}) > 1:
            per_rank = ", ".join(f"rank {r}: {show(row[col])}" for r, row in enumerate(rows))
            raise ValueError(
                f"medkernels.distributed.sigmoid_loss: every rank must pass the same {what}, got {per_rank}"
            )
    return [row[0] for row in rows], [row[1] for row in rows]


def _offsets(sizes: List[int]) -> List[int]:
    off = [0]
    for s in sizes[:-1]:
        off.append(off[-1] + s)
    return off


class _Ring:
    """Point-to-point neighbours of this rank in ``group`` (global ranks for isend/irecv)."""

    def __init__(self, group) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        ranks = dist.get_process_group_ranks(group) if group is not None else list(range(self.world))
        self.next = ranks[(self.rank + 1) % self.world]
        self.prev = ranks[(self.rank - 1) % self.world]

    def exchange(self, send: List[torch.Tensor], recv: List[torch.Tensor]):
        """Post sends to the next rank and receives from the previous one; returns the works."""
        works = [dist.isend(t.contiguous(), self.next, group=self.group) for t in send]
        works += [dist.irecv(t, self.prev, group=self.group) for t in recv]
        return works

    def pass_text_block(self, k: int, cur_y, cur_l, m_sizes: List[int]):
        """Step k of the ring: unless it is the last, send this rank's current text block (and
        its labels, when given) on and post the receive of the one ``k + 1`` ranks back.
        Returns (works, next_y, next_labels); the works overlap the caller's loss on cur_y."""
        if k == self.world - 1:
            return [], None, None
        src = (self.rank - k - 1) % self.world
        nxt_y = cur_y.new_empty((m_sizes[src], cur_y.shape[1]))
        send, recv, nxt_l = [cur_y], [nxt_y], None
        if cur_l is not None:
            nxt_l = cur_l.new_empty((m_sizes[src],))
            send.append(cur_l)
            recv.append(nxt_l)
        return self.exchange(send, recv), nxt_y, nxt_l


class _RingSigmoidLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, t_prime, bias, labels_x, labels_y, factor, backend, group):
        ring = _Ring(group)
        n_sizes, m_sizes = _sizes(x.shape[0], y.shape[0], x.device, group)
        off_n, off_m = _offsets(n_sizes), _offsets(m_sizes)
        r, w = ring.rank, ring.world
        total = torch.zeros((), dtype=_acc_dtype(x.dtype), device=x.device)
        cur_y, cur_l = y.contiguous(), labels_y
        for k in range(w):
            c = (r - k) % w
            works, nxt_y, nxt_l = ring.pass_text_block(k, cur_y, cur_l, m_sizes)
            total = total + sigmoid_loss_sum_fwd(
                backend, x, cur_y, t_prime, bias, labels_x, cur_l, None, off_m[c] - off_n[r], False
            )
            for wk in works:
                wk.wait()
            cur_y, cur_l = nxt_y, nxt_l
        ctx.save_for_backward(x, y, t_prime, bias, labels_x, labels_y)
        ctx.options = (factor, backend, group, m_sizes, off_n, off_m)
        return total * factor

    @staticmethod
    def backward(ctx, grad):
        x, y, t_prime, bias, labels_x, labels_y = ctx.saved_tensors
        factor, backend, group, m_sizes, off_n, off_m = ctx.options
        ring = _Ring(group)
        r, w = ring.rank, ring.world
        acc = _acc_dtype(x.dtype)
        c_scale = (grad.to(acc) * factor).reshape(())
        dx = torch.zeros(x.shape, dtype=acc, device=x.device)
        dt = torch.zeros((), dtype=acc, device=x.device)
        db = torch.zeros((), dtype=acc, device=x.device)
        cur_y, cur_l = y.contiguous(), labels_y
        cur_dy = torch.zeros(y.shape, dtype=acc, device=y.device)
        dy_works, dy_next, sent = [], None, None
        for k in range(w):
            c = (r - k) % w
            works, nxt_y, nxt_l = ring.pass_text_block(k, cur_y, cur_l, m_sizes)
            gx, gy, gt, gb = sigmoid_loss_sum_bwd(
                backend, c_scale, x, cur_y, t_prime, bias, labels_x, cur_l, None, off_m[c] - off_n[r], False
            )
            dx += gx
            dt += gt
            db += gb
            # this block's accumulator, sent by the previous rank during the compute above
            for wk in dy_works:
                wk.wait()
            if dy_next is not None:
                cur_dy = dy_next
            cur_dy += gy
            # it follows its block to the next rank (after W hops it is home); the transfer
            # overlaps the next block's compute
            sent = cur_dy
            if w > 1:
                dy_next = torch.empty((m_sizes[(r - k - 1) % w], y.shape[1]), dtype=acc, device=y.device)
                dy_works = ring.exchange([sent], [dy_next])
            else:
                dy_next = cur_dy
            for wk in works:
                wk.wait()
            cur_y, cur_l = nxt_y, nxt_l
        for wk in dy_works:
            wk.wait()
        del sent
        cur_dy = dy_next
        dy = cur_dy
        return (dx.to(x.dtype), dy.to(y.dtype), dt.to(t_prime.dtype).reshape(t_prime.shape),
                db.to(bias.dtype).reshape(bias.shape), None, None, None, None, None)


class _AllGatherRows(torch.autograd.Function):
    """Concatenation of every rank's rows; backward: the all-reduced gradient's own slice."""

    @staticmethod
    def forward(ctx, t, sizes, group):
        width = max(sizes)
        padded = t.new_zeros((width, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.sizes, ctx.group = sizes, group
        ctx.rank = dist.get_rank(group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None, None


def sigmoid_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime,
    bias,
    *,
    labels: Optional[torch.Tensor] = None,
    labels_y: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    normalize: bool = False,
    exchange: str = "ring",
    backend: str = "auto",
    group=None,
) -> torch.Tensor:
    """This rank's share of the global-batch SigLIP loss, times the world size (see the module
    docstring): the mean over ranks is the single-process loss of the concatenated batch.

    Args:
        x: (N_r, d) this rank's image embeddings; y: (M_r, d) its text embeddings.
        t_prime, bias: the (replicated) log-temperature and bias.
        labels, labels_y: optional integer labels of the local rows (positives: equal labels);
            without them the positives are the pairs of equal global index (needs N_r == M_r).
        reduction: "mean" (global sum / global N), "sum" or "mean_pairs".
        normalize: L2-normalise x and y first.
        exchange: "ring" (P2P, O(local batch d) memory) or "all_gather".
        backend: the op backend for the blocks ("auto", "cuda", "triton", "cpu", "reference").
        group: the process group (None: the default group).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("medkernels.distributed.sigmoid_loss needs an initialised torch.distributed process group")
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    x, y, t_prime, bias, labels_x, labels_y, _, _ = prepare_sigmoid_loss_inputs(
        x, y, t_prime, bias, labels, labels_y, None, "siglip", normalize, square_required=False
    )
    if labels_x is None and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"without labels every rank needs as many texts as images (the positives are the pairs of equal "
            f"global index), got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    world = dist.get_world_size(group)
    name = _DISPATCH.select(backend, x.device, x.dtype, x=x, y=y, grad=_wants_grad(x, y, t_prime, bias))
    n_sizes, m_sizes = _handshake(x, y, labels_x, group)
    if exchange == "ring":
        _check_t_prime(t_prime)
        factor = world * sigmoid_loss_scale(reduction, sum(n_sizes), sum(m_sizes))
        return _RingSigmoidLoss.apply(x, y, t_prime, bias, labels_x, labels_y, factor, name, group)
    factor = world * sigmoid_loss_scale(reduction, sum(n_sizes), sum(m_sizes))
    y_all = _AllGatherRows.apply(y, m_sizes, group)
    ly_all = None
    if labels_x is not None:
        ly_all = _AllGatherRows.apply(labels_y, m_sizes, group)
    rank = dist.get_rank(group)
    offset = _offsets(m_sizes)[0] - _offsets(n_sizes)[rank]  # i - j == -(global offset of my rows)
    return _OP(LossOptions(offset, False, factor), name, x, y_all, t_prime, bias, labels_x, ly_all, None)[0]
