"""Pairwise sigmoid (SigLIP) loss in Triton: the N x M logits never exist in memory.

    L_ij = e^t' x_i . y_j + b          (med3dvlm: e^t' (x_i . y_j + x_j . y_i) / 2 + b)
    loss = scale * sum_ij softplus(-z_ij L_ij),   z_ij = +1 on positive pairs, -1 elsewhere

Forward: one program per block of rows of x walks the column blocks of y; each (BLOCK_M x
BLOCK_N) tile of logits is a ``tl.dot`` over d, consumed by the softplus and dropped. The
program writes one partial sum; the partials are summed afterwards in a fixed order, so the
loss has the same bits on every run (no atomics).

Backward (flash-style, recomputing the tiles), with G_ij = c * dloss_ij/dL_ij =
-c z_ij sigmoid(-z_ij L_ij) and c = grad * scale:
  dx_I = e^t' sum_J G_IJ y_J        one program per (row block of x, block of d)
  dy_J = e^t' sum_I G_IJ^T x_I      the same kernel with x and y (and the positives) swapped
  dt'  = sum G * (L - b),  db = sum G   per-program partials from the first pass, d block 0
med3dvlm: G is symmetrised, G_s = (G + G^T)/2, so dx_I = e^t' sum_J G_s,IJ y_J and
dy_I = e^t' sum_J G_s,IJ x_J both come from one pass over the row blocks.
Each program owns its output rows, accumulates them in fp32 registers over the whole walk
and stores them once: deterministic, no atomics. Memory: O((N + M) d) plus the partials.

Positive pairs (POS constexpr): 0 the diagonal i - j == diag_offset, 1 labels
``lx[i] == ly[j]`` (int64), 2 an explicit (N, M) uint8 mask read through its strides.
Swapping x and y swaps lx/ly, transposes the mask strides and negates diag_offset.
fp16/bf16 inputs feed the tensor cores and accumulate in fp32; fp32 uses IEEE dots.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _log1p(e):
    # Goldberg's log1p: exact to a few ulp for the tiny e = exp(-|u|) of confident pairs
    # (log(1 + e) alone loses all digits below 1e-7 in fp32).
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _positives(rows, cols, row_m, col_m, lx_ptr, ly_ptr, mask_ptr, smr, smc, diag_offset, POS: tl.constexpr):
    if POS == 0:
        pos = (rows[:, None] - cols[None, :]) == diag_offset
    elif POS == 1:
        lr = tl.load(lx_ptr + rows, mask=row_m, other=0)
        lc = tl.load(ly_ptr + cols, mask=col_m, other=-1)
        pos = lr[:, None] == lc[None, :]
    else:
        mv = tl.load(mask_ptr + rows[:, None] * smr + cols[None, :] * smc,
                     mask=row_m[:, None] & col_m[None, :], other=0)
        pos = mv != 0
    return pos


@triton.jit
def _dots(a_ptr, b_ptr, rows, cols, row_m, col_m, D, sa0, sa1, sb0, sb1,
          ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # (BLOCK_M x BLOCK_N) tile of a[rows] . b[cols] over the whole of d
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_m = k < D
        a = tl.load(a_ptr + rows[:, None] * sa0 + k[None, :] * sa1, mask=row_m[:, None] & k_m[None, :], other=0.0)
        b = tl.load(b_ptr + cols[:, None] * sb0 + k[None, :] * sb1, mask=col_m[:, None] & k_m[None, :], other=0.0)
        if UPCAST:  # the interpreter's 16-bit arithmetic is wrong: fp32 operands there
            a = a.to(ACC)
            b = b.to(ACC)
        acc += tl.dot(a, tl.trans(b), input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _sigmoid_loss_fwd_kernel(
    x_ptr, y_ptr, tp_ptr, b_ptr, lx_ptr, ly_ptr, mask_ptr, part_ptr,
    N, M, D, diag_offset,
    sxn, sxd, syn, syd, smr, smc,
    POS: tl.constexpr, SYMMETRIC: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_m = rows < N
    s = tl.exp(tl.load(tp_ptr).to(ACC))
    bias = tl.load(b_ptr).to(ACC)
    total = tl.zeros([BLOCK_M], dtype=ACC)
    for c0 in range(0, M, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_m = cols < M
        dots = _dots(x_ptr, y_ptr, rows, cols, row_m, col_m, D, sxn, sxd, syn, syd,
                     ACC, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
        if SYMMETRIC:
            # (x_j . y_i) for the transposed half: y rows against x columns
            dots = 0.5 * (dots + _dots(y_ptr, x_ptr, rows, cols, row_m, col_m, D, syn, syd, sxn, sxd,
                                       ACC, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K))
        logits = s * dots + bias
        pos = _positives(rows, cols, row_m, col_m, lx_ptr, ly_ptr, mask_ptr, smr, smc, diag_offset, POS)
        u = tl.where(pos, -logits, logits)  # -z L
        sp = tl.maximum(u, 0.0) + _log1p(tl.exp(-tl.abs(u)))
        sp = tl.where(row_m[:, None] & col_m[None, :], sp, 0.0)
        total += tl.sum(sp, axis=1)
    tl.store(part_ptr + pid, tl.sum(total, axis=0))


@triton.jit
def _grad_tile(a_ptr, b_ptr, la_ptr, lb_ptr, mask_ptr, rows, cols, row_m, col_m, D,
               sa0, sa1, sb0, sb1, smr, smc, diag_offset, s, bias, c,
               POS: tl.constexpr, SYMMETRIC: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
               UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One recomputed tile of the backward: (dots, G) with dots = a_i . b_j (symmetrised for
    med3dvlm) and G = dloss/dlogit scaled by c, -c z sigmoid(-z L) (for med3dvlm the mean of G
    and G^T, whose (i, j) uses the positive flag of the pair (j, i)); zero outside the tile."""
    dots = _dots(a_ptr, b_ptr, rows, cols, row_m, col_m, D, sa0, sa1, sb0, sb1,
                 ACC, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    if SYMMETRIC:
        dots = 0.5 * (dots + _dots(b_ptr, a_ptr, rows, cols, row_m, col_m, D, sb0, sb1, sa0, sa1,
                                   ACC, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K))
    logits = s * dots + bias
    pos = _positives(rows, cols, row_m, col_m, la_ptr, lb_ptr, mask_ptr, smr, smc, diag_offset, POS)
    z = tl.where(pos, 1.0, -1.0)
    g = -c * z / (1.0 + tl.exp(z * logits))
    if SYMMETRIC:
        pos_t = tl.trans(_positives(cols, rows, col_m, row_m, la_ptr, lb_ptr, mask_ptr, smr, smc, diag_offset, POS))
        z_t = tl.where(pos_t, 1.0, -1.0)
        g = 0.5 * (g - c * z_t / (1.0 + tl.exp(z_t * logits)))
    return dots, tl.where(row_m[:, None] & col_m[None, :], g, 0.0)


@triton.jit
def _sigmoid_loss_bwd_kernel(
    a_ptr, b_ptr, tp_ptr, bias_ptr, c_ptr, la_ptr, lb_ptr, mask_ptr, da_ptr, db_ptr, part_ptr,
    NA, NB, D, diag_offset,
    sa0, sa1, sb0, sb1, smr, smc, sda0, sda1, sdb0, sdb1,
    POS: tl.constexpr, SYMMETRIC: tl.constexpr, PARTIALS: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # rows: the side whose gradient this program owns (a); cols: the other side (b).
    pid = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_m = rows < NA
    dcol = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_m = dcol < D
    s = tl.exp(tl.load(tp_ptr).to(ACC))
    bias = tl.load(bias_ptr).to(ACC)
    c = tl.load(c_ptr).to(ACC)
    acc_a = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    acc_b = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    g_sum = tl.zeros([BLOCK_M], dtype=ACC)
    gd_sum = tl.zeros([BLOCK_M], dtype=ACC)
    for c0 in range(0, NB, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_m = cols < NB
        dots, g = _grad_tile(a_ptr, b_ptr, la_ptr, lb_ptr, mask_ptr, rows, cols, row_m, col_m, D,
                             sa0, sa1, sb0, sb1, smr, smc, diag_offset, s, bias, c,
                             POS, SYMMETRIC, ACC, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
        if PARTIALS:
            g_sum += tl.sum(g, axis=1)
            gd_sum += tl.sum(g * dots, axis=1)
        bt = tl.load(b_ptr + cols[:, None] * sb0 + dcol[None, :] * sb1, mask=col_m[:, None] & d_m[None, :], other=0.0)
        if UPCAST:
            bt = bt.to(ACC)
        acc_a += tl.dot(g.to(bt.dtype), bt, input_precision=PREC, out_dtype=ACC)
        if SYMMETRIC:
            at = tl.load(a_ptr + cols[:, None] * sa0 + dcol[None, :] * sa1,
                         mask=col_m[:, None] & d_m[None, :], other=0.0)
            if UPCAST:
                at = at.to(ACC)
            acc_b += tl.dot(g.to(at.dtype), at, input_precision=PREC, out_dtype=ACC)
    out_m = row_m[:, None] & d_m[None, :]
    tl.store(da_ptr + rows[:, None] * sda0 + dcol[None, :] * sda1, (s * acc_a).to(da_ptr.dtype.element_ty), mask=out_m)
    if SYMMETRIC:
        tl.store(db_ptr + rows[:, None] * sdb0 + dcol[None, :] * sdb1, (s * acc_b).to(db_ptr.dtype.element_ty),
                 mask=out_m)
    if PARTIALS:
        # only the programs of d block 0 write; the others leave their slots unused
        zero = tl.zeros([BLOCK_M], dtype=tl.int64)
        first = (zero + pid_d) == 0
        slot = tl.arange(0, BLOCK_M) == 0
        tl.store(part_ptr + pid * 2 + zero, zero.to(ACC) + tl.sum(g_sum, axis=0), mask=first & slot)
        tl.store(part_ptr + pid * 2 + 1 + zero, zero.to(ACC) + s * tl.sum(gd_sum, axis=0), mask=first & slot)


@triton.jit
def _sigmoid_loss_bwd_stripe_kernel(
    x_ptr, y_ptr, tp_ptr, b_ptr, c_ptr, lx_ptr, ly_ptr, mask_ptr, g_ptr, part_ptr,
    row0, R, M, D, diag_offset,
    sxn, sxd, syn, syd, smr, smc, sgr, sgc,
    POS: tl.constexpr, SYMMETRIC: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One tile of e^t' G for the stripe of rows row0 .. row0 + R of x (G_s for med3dvlm), stored
    # in the stripe buffer; sum G and e^t' sum G dots as this tile's partials.
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row0 + local
    row_m = local < R
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    col_m = cols < M
    tile_m = row_m[:, None] & col_m[None, :]
    s = tl.exp(tl.load(tp_ptr).to(ACC))
    bias = tl.load(b_ptr).to(ACC)
    c = tl.load(c_ptr).to(ACC)
    dots, g = _grad_tile(x_ptr, y_ptr, lx_ptr, ly_ptr, mask_ptr, rows, cols, row_m, col_m, D,
                         sxn, sxd, syn, syd, smr, smc, diag_offset, s, bias, c,
                         POS, SYMMETRIC, ACC, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(g_ptr + local[:, None] * sgr + cols[None, :] * sgc, (s * g).to(g_ptr.dtype.element_ty), mask=tile_m)
    slot = (pid_m * tl.num_programs(1) + pid_n) * 2
    tl.store(part_ptr + slot, tl.sum(tl.sum(g, axis=1), axis=0))
    tl.store(part_ptr + slot + 1, s * tl.sum(tl.sum(g * dots, axis=1), axis=0))


# --- launchers -------------------------------------------------------------------------------
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _prec(dtype: torch.dtype) -> str:
    # fp32 operands would otherwise run as tf32 on tensor cores (~1e-3 error)
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _blocks(x: torch.Tensor, d: int) -> Tuple[int, int, int, int]:
    if x.is_cuda:
        bk = 64 if x.dtype != torch.float64 else 32
        # each d block of the backward recomputes the logits tiles: wide d blocks (d = 768: three
        # of 256) keep that recompute down, at 64 x 256 fp32 accumulators over 8 warps
        return 64, 64, bk, max(16, min(triton.next_power_of_2(d), 256 if x.dtype != torch.float64 else 64))
    # the interpreter: a few big tiles are far cheaper than many small ones
    big = max(16, min(triton.next_power_of_2(d), 128))
    return 32, 32, big, big


def _pos_args(n, m, labels_x, labels_y, mask, diag_offset, swap: bool):
    """POS code and the positive-pair arguments, for x-rows (swap=False) or y-rows (swap=True)."""
    dummy = torch.empty(1, dtype=torch.int64)
    if mask is not None:
        smr, smc = mask.stride()
        return 2, dummy, dummy, mask, (smc, smr) if swap else (smr, smc), 0
    if labels_x is not None:
        la, lb = (labels_y, labels_x) if swap else (labels_x, labels_y)
        return 1, la, lb, dummy, (0, 0), 0
    return 0, dummy, dummy, dummy, (0, 0), (-diag_offset if swap else diag_offset)


def _dev(t: torch.Tensor, device) -> torch.Tensor:
    return t.to(device) if t.device != device else t


def sigmoid_loss_fwd(
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    labels_x: Optional[torch.Tensor],
    labels_y: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    diag_offset: int,
    symmetric: bool,
) -> torch.Tensor:
    """The unscaled sum of the pair losses, a 0-d fp32 (fp64 for fp64 inputs) tensor.

    mask: (N, M) uint8 or None; labels: int64 or None. t_prime, bias: 1-element tensors.
    """
    n, d = x.shape
    m = y.shape[0]
    bm, bn, bk, _ = _blocks(x, d)
    pos, la, lb, mk, (smr, smc), off = _pos_args(n, m, labels_x, labels_y, mask, diag_offset, False)
    la, lb, mk = (_dev(t, x.device) for t in (la, lb, mk))
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(triton.cdiv(n, bm), dtype=acc_dtype, device=x.device)
    _sigmoid_loss_fwd_kernel[(triton.cdiv(n, bm),)](
        x, y, t_prime, bias, la, lb, mk, part,
        n, m, d, off,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), smr, smc,
        POS=pos, SYMMETRIC=symmetric, ACC=_acc(x.dtype), PREC=_prec(x.dtype), UPCAST=not x.is_cuda,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
    )
    return part.sum()


def sigmoid_loss_bwd(
    c: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    labels_x: Optional[torch.Tensor],
    labels_y: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    diag_offset: int,
    symmetric: bool,
    dx: Optional[torch.Tensor] = None,
    dy: Optional[torch.Tensor] = None,
    stripes: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dy, dt', db) of ``c * sum pair losses``; c a 1-element tensor (grad * scale).
    dx, dy in the inputs' dtype (written into ``dx``/``dy`` when given, any strides); dt', db 0-d
    in the accumulation dtype.

    ``stripes`` (default: on GPU tensors) picks the striped backward: G for a stripe of R rows
    of x at a time (R M <= (N + M) d elements, so memory stays O((N + M) d)), then dx and dy
    from two GEMMs per stripe (``torch.mm``, tensor cores): three GEMM-sized passes in all,
    where the flash-style kernels recompute the logits once per d block and pass."""
    n, d = x.shape
    m = y.shape[0]
    if stripes is None:
        stripes = x.is_cuda
    if stripes:
        return _bwd_stripes(c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric, dx, dy)
    bm, bn, bk, bd = _blocks(x, d)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if dx is None else dx
    dy = torch.empty_like(y, memory_format=torch.contiguous_format) if dy is None else dy
    c = c.to(acc_dtype).reshape(1)
    grid_n = triton.cdiv(n, bm)
    part = torch.zeros(grid_n, 2, dtype=acc_dtype, device=x.device)
    common = dict(ACC=_acc(x.dtype), PREC=_prec(x.dtype), UPCAST=not x.is_cuda,
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd)
    pos, la, lb, mk, (smr, smc), off = _pos_args(n, m, labels_x, labels_y, mask, diag_offset, False)
    la, lb, mk = (_dev(t, x.device) for t in (la, lb, mk))
    warps = 8 if x.is_cuda and bd >= 256 else 4
    _sigmoid_loss_bwd_kernel[(grid_n, triton.cdiv(d, bd))](
        x, y, t_prime, bias, c, la, lb, mk, dx, dy, part,
        n, m, d, off,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), smr, smc,
        dx.stride(0), dx.stride(1), dy.stride(0), dy.stride(1),
        POS=pos, SYMMETRIC=symmetric, PARTIALS=True, **common, num_warps=warps,
    )
    if not symmetric:
        pos, la, lb, mk, (smr, smc), off = _pos_args(n, m, labels_x, labels_y, mask, diag_offset, True)
        la, lb, mk = (_dev(t, x.device) for t in (la, lb, mk))
        _sigmoid_loss_bwd_kernel[(triton.cdiv(m, bm), triton.cdiv(d, bd))](
            y, x, t_prime, bias, c, la, lb, mk, dy, dx, part,
            m, n, d, off,
            y.stride(0), y.stride(1), x.stride(0), x.stride(1), smr, smc,
            dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
            POS=pos, SYMMETRIC=False, PARTIALS=False, **common, num_warps=warps,
        )
    sums = part.sum(0)
    return dx, dy, sums[1], sums[0]


def stripe_rows(n: int, m: int, d: int, block: int = 64) -> int:
    """Rows of x per backward stripe: R M <= (N + M) d elements, at least one block."""
    r = (n + m) * d // m // block * block
    return int(max(block, min(r, triton.cdiv(n, block) * block)))


def _bwd_stripes(c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric, dx, dy):
    n, d = x.shape
    m = y.shape[0]
    bm, bn, bk, _ = _blocks(x, d)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    c = c.to(acc_dtype).reshape(1)
    rows = stripe_rows(n, m, d, bm)
    # G in the inputs' dtype feeds the GEMMs (fp32 accumulation), as flash-attention's P
    g = torch.empty(rows, m, dtype=x.dtype, device=x.device)
    grid_m, grid_n = triton.cdiv(rows, bm), triton.cdiv(m, bn)
    part = torch.zeros(triton.cdiv(n, rows), grid_m * grid_n, 2, dtype=acc_dtype, device=x.device)
    pos, la, lb, mk, (smr, smc), off = _pos_args(n, m, labels_x, labels_y, mask, diag_offset, False)
    la, lb, mk = (_dev(t, x.device) for t in (la, lb, mk))
    dx_out = torch.empty_like(x, memory_format=torch.contiguous_format) if dx is None else dx
    dy_out = torch.empty_like(y, memory_format=torch.contiguous_format) if dy is None else dy
    dy_acc = None if symmetric else torch.zeros(m, d, dtype=acc_dtype, device=x.device)
    for k, r0 in enumerate(range(0, n, rows)):
        rr = min(rows, n - r0)
        _sigmoid_loss_bwd_stripe_kernel[(triton.cdiv(rr, bm), grid_n)](
            x, y, t_prime, bias, c, la, lb, mk, g, part[k],
            r0, rr, m, d, off,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1), smr, smc, g.stride(0), g.stride(1),
            POS=pos, SYMMETRIC=symmetric, ACC=_acc(x.dtype), PREC=_prec(x.dtype), UPCAST=not x.is_cuda,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        )
        gs = g[:rr]
        dx_out[r0:r0 + rr] = torch.mm(gs, y)
        if symmetric:
            dy_out[r0:r0 + rr] = torch.mm(gs, x)  # G_s is symmetric: dy_I = e^t' G_s,I x
        else:
            dy_acc += torch.mm(gs.t(), x[r0:r0 + rr]).to(acc_dtype)
    if not symmetric:
        dy_out.copy_(dy_acc)
    sums = part.sum((0, 1))
    return dx_out, dy_out, sums[1], sums[0]


def lowering_specs():
    """(kernel, signature, constexprs) for compiling every kernel here for sm_90 (no GPU needed)."""
    specs = []
    fwd_sig = {
        "x_ptr": "*bf16", "y_ptr": "*bf16", "tp_ptr": "*fp32", "b_ptr": "*fp32", "lx_ptr": "*i64", "ly_ptr": "*i64",
        "mask_ptr": "*u8", "part_ptr": "*fp32",
        "N": "i32", "M": "i32", "D": "i32", "diag_offset": "i64",
        "sxn": "i64", "sxd": "i64", "syn": "i64", "syd": "i64", "smr": "i64", "smc": "i64",
    }
    bwd_sig = {
        "a_ptr": "*bf16", "b_ptr": "*bf16", "tp_ptr": "*fp32", "bias_ptr": "*fp32", "c_ptr": "*fp32",
        "la_ptr": "*i64", "lb_ptr": "*i64", "mask_ptr": "*u8", "da_ptr": "*bf16", "db_ptr": "*bf16",
        "part_ptr": "*fp32",
        "NA": "i32", "NB": "i32", "D": "i32", "diag_offset": "i64",
        "sa0": "i64", "sa1": "i64", "sb0": "i64", "sb1": "i64", "smr": "i64", "smc": "i64",
        "sda0": "i64", "sda1": "i64", "sdb0": "i64", "sdb1": "i64",
    }
    stripe_sig = {
        "x_ptr": "*bf16", "y_ptr": "*bf16", "tp_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32",
        "lx_ptr": "*i64", "ly_ptr": "*i64", "mask_ptr": "*u8", "g_ptr": "*bf16", "part_ptr": "*fp32",
        "row0": "i64", "R": "i32", "M": "i32", "D": "i32", "diag_offset": "i64",
        "sxn": "i64", "sxd": "i64", "syn": "i64", "syd": "i64", "smr": "i64", "smc": "i64", "sgr": "i64", "sgc": "i64",
    }
    # every kernel and every code path (positive modes, symmetric, IEEE fp32) once, kept short:
    # each fp32 IEEE variant takes seconds to compile
    for dt, prec, pos, sym in (
        ("bf16", "tf32", 0, False), ("bf16", "tf32", 1, False), ("bf16", "tf32", 2, False),
        ("bf16", "tf32", 2, True), ("fp32", "ieee", 0, False),
    ):
        cx = dict(POS=pos, SYMMETRIC=sym, ACC=tl.float32, PREC=prec, UPCAST=False, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)
        sig = {k: v.replace("bf16", dt) for k, v in fwd_sig.items()}
        sig.update({k: "constexpr" for k in cx})
        specs.append((_sigmoid_loss_fwd_kernel, sig, cx))
        cx = dict(cx, PARTIALS=not sym, BLOCK_D=256 if dt == "bf16" else 128)
        sig = {k: v.replace("bf16", dt) for k, v in bwd_sig.items()}
        sig.update({k: "constexpr" for k in cx})
        specs.append((_sigmoid_loss_bwd_kernel, sig, cx))
        sig = {k: v.replace("bf16", dt) for k, v in stripe_sig.items()}
        scx = {k: v for k, v in cx.items() if k not in ("PARTIALS", "BLOCK_D")}
        sig.update({k: "constexpr" for k in scx})
        specs.append((_sigmoid_loss_bwd_stripe_kernel, sig, scx))
    return specs
