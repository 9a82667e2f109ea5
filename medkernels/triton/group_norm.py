"""GroupNorm + per-(sample, channel) add / FiLM scale-shift + activation in Triton, forward and
backward (``medkernels.reference.group_norm`` is the maths, written step by step).

x is addressed as (N, C, M) by element strides (sxn, sxc, sxm), M the flattened spatial axes, so
NC... contiguous and channels-last (sxc = 1) need no copy; G groups of CG = C / G channels.

    h = x + add[n, c];  mean, var of h per (n, g) (biased);  rstd = 1 / sqrt(var + eps)
    xhat = (h - mean) rstd;  y0 = xhat w[c] + b[c];  z = y0 (1 + scale[n, c]) + shift[n, c];  y = act(z)

Forward, three launches:
  stats    one program per (n, g, split of M): its mean and M2 by Chan's merge of two-pass tile
           moments (the tile in registers), tile after tile in a fixed order (one read of x);
  combine  the splits of each (n, g) merged in a fixed order: mean, rstd (no float atomics, so
           the same inputs give the same bits; NaN in h makes its group's mean and rstd NaN);
  apply    y from x, mean, rstd and the per-channel parameters (one read, one write).
Backward, four launches, with dz = dy act'(z), s1 = 1 + scale, and per (n, c) sums over m
S1 = sum dz, S2 = sum dz xhat, S0 = sum xhat:
  sums     per (channel block, split of M, n): the split's S1, S2, S0 (a read of x and grad_y);
  reduce   per (channel block, n): the splits summed in a fixed order;
  combine  per group, the samples in order: dshift = S1, dscale = w S2 + b S1,
           dweight = sum_n s1 S2, dbias = sum_n s1 S1, D1 = sum_{c in g} s1 w S1,
           D2 = sum_{c in g} s1 w S2, dadd = sum_m dx = rstd (s1 w S1 - M D1 / K - S0 D2 / K), K = CG M;
  dx       rstd (dz s1 w - D1 / K - xhat D2 / K) (a second read of x and grad_y, one write).
Statistics and arithmetic in fp32 (fp64 for float64); 16-bit values are upcast right after the
load and rounded once (to nearest even) at the store. The split counts are a function of the shape
only (:func:`_splits`), so the bits do not depend on the device. Reuses decomp_conv's activations
and diffusion's bf16 store, so it is vendored with those two modules.
"""

from __future__ import annotations

import struct
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._common import _ACT_CODES, _act_fwd, _act_grad, _cast_out

TILE = 2048  # elements per tile
ELEMS_PER_PROGRAM = 16384  # elements of one (n, g) per statistics / backward-sum program (sets the splits)


@triton.jit
def _div(a, b, ACC: tl.constexpr):
    """a / b rounded to nearest (fp32 "/" lowers to the 2-ulp div.full on NVIDIA GPUs)."""
    if ACC == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _chan_merge(na, ma, m2a, nb, mb, m2b, ACC: tl.constexpr):
    """(count, mean, M2) of the union of two sets (Chan et al.); counts are int64."""
    n = na + nb
    f = _div(nb.to(ACC), n.to(ACC), ACC)
    delta = mb - ma
    return n, ma + delta * f, m2a + m2b + delta * delta * (na.to(ACC) * f)


@triton.jit
def _group_norm_stats_kernel(
    x_ptr, add_ptr, part_ptr,
    C, M, CG, G, M_PER_SPLIT, SPLITS,
    sxn, sxc, sxm,
    HAS_ADD: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # part: (N * G, SPLITS, 2) mean and M2 of h over the split's positions of the group's channels
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    n = row // G
    g = row % G
    m0 = split * M_PER_SPLIT
    m1 = tl.minimum(m0 + M_PER_SPLIT, M)
    c0 = g * CG
    cnt = tl.zeros([], tl.int64)
    mean = tl.zeros([], ACC)
    m2 = tl.zeros([], ACC)
    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C).to(tl.int64)
        c_m = c < CG
        if HAS_ADD:
            a = tl.load(add_ptr + n * C + c0 + c, mask=c_m, other=0.0).to(ACC)
        x_c = x_ptr + n * sxn + (c0 + c)[:, None] * sxc
        for mb in range(m0, m1, BLOCK_M):
            m = mb + tl.arange(0, BLOCK_M).to(tl.int64)
            mask = c_m[:, None] & (m < m1)[None, :]
            v = tl.load(x_c + m[None, :] * sxm, mask=mask, other=0.0).to(ACC)
            if HAS_ADD:
                v = v + a[:, None]
            nb = (tl.minimum(CG - cb, BLOCK_C) * tl.minimum(m1 - mb, BLOCK_M)).to(tl.int64)
            tmean = _div(tl.sum(tl.sum(tl.where(mask, v, 0.0), axis=1), axis=0), nb.to(ACC), ACC)
            d = tl.where(mask, v - tmean, 0.0)
            tm2 = tl.sum(tl.sum(d * d, axis=1), axis=0)
            cnt, mean, m2 = _chan_merge(cnt, mean, m2, nb, tmean, tm2, ACC)
    out = part_ptr + (row * SPLITS + split) * 2
    tl.store(out, mean)
    tl.store(out + 1, m2)


@triton.jit
def _group_norm_stats_combine_kernel(
    part_ptr, mean_ptr, rstd_ptr,
    ROWS, M, CG, M_PER_SPLIT, SPLITS, eps_hi, eps_lo,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # BLOCK_S splits at a time merged at once (count-weighted mean, then M2 plus the spread of
    # the split means about it), the blocks one after the other by Chan's merge
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    r_m = row < ROWS
    cnt = tl.zeros([], tl.int64)
    mean = tl.zeros([BLOCK_R], ACC)
    m2 = tl.zeros([BLOCK_R], ACC)
    for s0 in range(0, SPLITS, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        s_m = s < SPLITS
        mask = r_m[:, None] & s_m[None, :]
        nk = tl.where(s_m, CG * tl.minimum(M_PER_SPLIT, M - s * M_PER_SPLIT), 0)
        p = part_ptr + (row[:, None] * SPLITS + s[None, :]) * 2
        mk = tl.load(p, mask=mask, other=0.0)
        m2k = tl.load(p + 1, mask=mask, other=0.0)
        nb = tl.sum(nk, axis=0)
        w = nk.to(ACC)[None, :]
        mb = _div(tl.sum(tl.where(mask, w * mk, 0.0), axis=1), nb.to(ACC), ACC)
        dev = tl.where(mask, mk - mb[:, None], 0.0)
        m2b = tl.sum(tl.where(mask, m2k + w * dev * dev, 0.0), axis=1)
        cnt, mean, m2 = _chan_merge(cnt, mean, m2, nb, mb, m2b, ACC)
    # var from M2 / count: NaN stays NaN (no clamp); eps in two fp32 halves, exact for float64
    var = _div(m2, tl.full([BLOCK_R], 0.0, ACC) + cnt.to(ACC), ACC)
    eps = tl.full([BLOCK_R], eps_hi, ACC) + tl.full([BLOCK_R], eps_lo, ACC)
    if ACC == tl.float64:
        sd = tl.sqrt(var + eps)  # IEEE-rounded in fp64
    else:
        sd = tl.sqrt_rn(var + eps)  # not the fp32 approximation
    rstd = _div(tl.full([BLOCK_R], 1.0, ACC), sd, ACC)
    tl.store(mean_ptr + row, mean, mask=r_m)
    tl.store(rstd_ptr + row, rstd, mask=r_m)


@triton.jit
def _load_channel(ptr, off, mask, default, HAS: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    if HAS:
        v = tl.load(ptr + off, mask=mask, other=default).to(ACC)
    else:
        v = tl.full([BLOCK_C], default, ACC)
    return v


@triton.jit
def _channel_params(w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, n, c, c_m, C, CG, G,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                    HAS_ADD: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel c of sample n: its group's mean and rstd, add, weight, bias, 1 + scale, shift."""
    grp = n * G + c // CG
    nc = n * C + c
    mean = tl.load(mean_ptr + grp, mask=c_m, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=c_m, other=0.0)
    a_add = _load_channel(add_ptr, nc, c_m, 0.0, HAS_ADD, ACC, BLOCK_C)
    w = _load_channel(w_ptr, c, c_m, 1.0, HAS_W, ACC, BLOCK_C)
    bb = _load_channel(b_ptr, c, c_m, 0.0, HAS_B, ACC, BLOCK_C)
    s1 = 1.0 + _load_channel(scale_ptr, nc, c_m, 0.0, HAS_SCALE, ACC, BLOCK_C)
    sh = _load_channel(shift_ptr, nc, c_m, 0.0, HAS_SHIFT, ACC, BLOCK_C)
    return grp, mean, rstd, a_add, w, bb, s1, sh


@triton.jit
def _tile_coords(C, M, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    """(m, c, n, channel mask, tile mask) of an elementwise program on the grid (M blocks, C blocks, N)."""
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    n = tl.program_id(2).to(tl.int64)
    c_m = c < C
    return m, c, n, c_m, c_m[:, None] & (m < M)[None, :]


@triton.jit
def _group_norm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, y_ptr,
    C, M, CG, G,
    sxn, sxc, sxm, syn, syc, sym,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_ADD: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
):
    m, c, n, c_m, mask = _tile_coords(C, M, BLOCK_C, BLOCK_M)
    _, mean, rstd, a_add, w, bb, s1, sh = _channel_params(
        w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, n, c, c_m, C, CG, G,
        HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, HAS_ADD, ACC, BLOCK_C)
    v = tl.load(x_ptr + n * sxn + c[:, None] * sxc + m[None, :] * sxm, mask=mask, other=0.0).to(ACC)
    if HAS_ADD:
        v = v + a_add[:, None]
    # (h - mean) (rstd w) (1 + scale) + shift: h - mean first, so a large mean cancels exactly
    # before any scaling
    z = ((v - mean[:, None]) * (rstd * w)[:, None] + bb[:, None]) * s1[:, None] + sh[:, None]
    y = _act_fwd(z, ACT)
    tl.store(y_ptr + n * syn + c[:, None] * syc + m[None, :] * sym, _cast_out(y, y_ptr), mask=mask)


@triton.jit
def _bwd_tile(x_ptr, gy_ptr, n, c, m, mask, mean, rstd, a_add, w, bb, s1, sh,
              sxn, sxc, sxm, sgn, sgc, sgm, HAS_ADD: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr):
    """(xhat, dz) of one tile; 0 outside the mask."""
    v = tl.load(x_ptr + n * sxn + c[:, None] * sxc + m[None, :] * sxm, mask=mask, other=0.0).to(ACC)
    if HAS_ADD:
        v = v + a_add[:, None]
    xhat = (v - mean[:, None]) * rstd[:, None]
    dz = tl.load(gy_ptr + n * sgn + c[:, None] * sgc + m[None, :] * sgm, mask=mask, other=0.0).to(ACC)
    if ACT != 0:
        z = (xhat * w[:, None] + bb[:, None]) * s1[:, None] + sh[:, None]
        dz = dz * _act_grad(z, ACT)
    return tl.where(mask, xhat, 0.0), tl.where(mask, dz, 0.0)


@triton.jit
def _group_norm_bwd_sums_kernel(
    gy_ptr, x_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, part_ptr,
    C, M, CG, G, M_PER_SPLIT, SPLITS,
    sxn, sxc, sxm, sgn, sgc, sgm,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_ADD: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # part: (N, SPLITS, 3, C) sums over the split's positions of dz, dz xhat, xhat
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    n = tl.program_id(2).to(tl.int64)
    c_m = c < C
    _, mean, rstd, a_add, w, bb, s1, sh = _channel_params(
        w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, n, c, c_m, C, CG, G,
        HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, HAS_ADD, ACC, BLOCK_C)
    s_dz = tl.zeros([BLOCK_C], ACC)
    s_dzx = tl.zeros([BLOCK_C], ACC)
    s_x = tl.zeros([BLOCK_C], ACC)
    m0 = split * M_PER_SPLIT
    m1 = tl.minimum(m0 + M_PER_SPLIT, M)
    for mb in range(m0, m1, BLOCK_M):
        m = mb + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = c_m[:, None] & (m < m1)[None, :]
        xhat, dz = _bwd_tile(x_ptr, gy_ptr, n, c, m, mask, mean, rstd, a_add, w, bb, s1, sh,
                             sxn, sxc, sxm, sgn, sgc, sgm, HAS_ADD, ACT, ACC)
        s_dz += tl.sum(dz, axis=1)
        s_dzx += tl.sum(dz * xhat, axis=1)
        s_x += tl.sum(xhat, axis=1)
    out = part_ptr + (n * SPLITS + split) * 3 * C + c
    tl.store(out, s_dz, mask=c_m)
    tl.store(out + C, s_dzx, mask=c_m)
    tl.store(out + 2 * C, s_x, mask=c_m)


@triton.jit
def _group_norm_bwd_reduce_kernel(
    part_ptr, sums_ptr, C, SPLITS,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # sums (N, 3, C) = part (N, SPLITS, 3, C) summed over the splits, BLOCK_S at a time, in order
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    c_m = c < C
    s_dz = tl.zeros([BLOCK_C], ACC)
    s_dzx = tl.zeros([BLOCK_C], ACC)
    s_x = tl.zeros([BLOCK_C], ACC)
    for s0 in range(0, SPLITS, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        mask = (s < SPLITS)[:, None] & c_m[None, :]
        p = part_ptr + ((n * SPLITS + s) * 3 * C)[:, None] + c[None, :]
        s_dz += tl.sum(tl.load(p, mask=mask, other=0.0), axis=0)
        s_dzx += tl.sum(tl.load(p + C, mask=mask, other=0.0), axis=0)
        s_x += tl.sum(tl.load(p + 2 * C, mask=mask, other=0.0), axis=0)
    out = sums_ptr + n * 3 * C + c
    tl.store(out, s_dz, mask=c_m)
    tl.store(out + C, s_dzx, mask=c_m)
    tl.store(out + 2 * C, s_x, mask=c_m)


@triton.jit
def _group_norm_bwd_combine_kernel(
    sums_ptr, w_ptr, b_ptr, scale_ptr, rstd_ptr, coef_ptr,
    dw_ptr, db_ptr, dscale_ptr, dshift_ptr, dadd_ptr,
    N, C, M, CG, G,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
    NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, NEED_DSCALE: tl.constexpr, NEED_DSHIFT: tl.constexpr,
    NEED_DADD: tl.constexpr, ACC: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    # one program per group, the samples in order
    g = tl.program_id(0).to(tl.int64)
    cc = tl.arange(0, BLOCK_CG).to(tl.int64)
    c_m = cc < CG
    c = g * CG + cc
    w = _load_channel(w_ptr, c, c_m, 1.0, HAS_W, ACC, BLOCK_CG)
    bb = _load_channel(b_ptr, c, c_m, 0.0, HAS_B, ACC, BLOCK_CG)
    # sizes as int64 tensors (an argument equal to 1 arrives as a constant)
    m_len = tl.zeros([], tl.int64) + M
    k = (m_len * CG).to(ACC)
    dw = tl.zeros([BLOCK_CG], ACC)
    db = tl.zeros([BLOCK_CG], ACC)
    for n_ in range(0, N):
        n = n_ + tl.zeros([], tl.int64)  # 64-bit offsets (the loop counter is 32-bit)
        p = sums_ptr + n * 3 * C + c
        s_dz = tl.load(p, mask=c_m, other=0.0)
        s_dzx = tl.load(p + C, mask=c_m, other=0.0)
        s_x = tl.load(p + 2 * C, mask=c_m, other=0.0)
        nc = n * C + c
        s1 = 1.0 + _load_channel(scale_ptr, nc, c_m, 0.0, HAS_SCALE, ACC, BLOCK_CG)
        dw += s1 * s_dzx
        db += s1 * s_dz
        if NEED_DSHIFT:
            tl.store(dshift_ptr + nc, s_dz, mask=c_m)
        if NEED_DSCALE:
            tl.store(dscale_ptr + nc, w * s_dzx + bb * s_dz, mask=c_m)
        sw = s1 * w
        d1 = tl.sum(tl.where(c_m, sw * s_dz, 0.0), axis=0) / k
        d2 = tl.sum(tl.where(c_m, sw * s_dzx, 0.0), axis=0) / k
        tl.store(coef_ptr + (n * G + g) * 2, d1)
        tl.store(coef_ptr + (n * G + g) * 2 + 1, d2)
        if NEED_DADD:
            rstd = tl.load(rstd_ptr + n * G + g)
            tl.store(dadd_ptr + nc, rstd * (sw * s_dz - m_len.to(ACC) * d1 - s_x * d2), mask=c_m)
    if NEED_DW:
        tl.store(dw_ptr + c, dw, mask=c_m)
    if NEED_DB:
        tl.store(db_ptr + c, db, mask=c_m)


@triton.jit
def _group_norm_bwd_dx_kernel(
    gy_ptr, x_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, coef_ptr, dx_ptr,
    C, M, CG, G,
    sxn, sxc, sxm, sgn, sgc, sgm, sdn, sdc, sdm,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_ADD: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
):
    m, c, n, c_m, mask = _tile_coords(C, M, BLOCK_C, BLOCK_M)
    grp, mean, rstd, a_add, w, bb, s1, sh = _channel_params(
        w_ptr, b_ptr, scale_ptr, shift_ptr, add_ptr, mean_ptr, rstd_ptr, n, c, c_m, C, CG, G,
        HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, HAS_ADD, ACC, BLOCK_C)
    d1 = tl.load(coef_ptr + grp * 2, mask=c_m, other=0.0)
    d2 = tl.load(coef_ptr + grp * 2 + 1, mask=c_m, other=0.0)
    xhat, dz = _bwd_tile(x_ptr, gy_ptr, n, c, m, mask, mean, rstd, a_add, w, bb, s1, sh,
                         sxn, sxc, sxm, sgn, sgc, sgm, HAS_ADD, ACT, ACC)
    dx = rstd[:, None] * (dz * (s1 * w)[:, None] - d1[:, None] - xhat * d2[:, None])
    tl.store(dx_ptr + n * sdn + c[:, None] * sdc + m[None, :] * sdm, _cast_out(dx, dx_ptr), mask=mask)


# --- launchers ----------------------------------------------------------------------------------
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tiles(strides: Sequence[int], channels: int, M: int):
    """(BLOCK_C, BLOCK_M): wide along M for NC... contiguous, along C for channels-last."""
    if strides[1] == 1 and channels > 1:
        bc = min(triton.next_power_of_2(channels), 64)
        bm = min(triton.next_power_of_2(M), max(1, TILE // bc))
    else:
        bm = min(triton.next_power_of_2(M), TILE)
        bc = min(triton.next_power_of_2(channels), max(1, TILE // bm))
    return bc, bm


def _splits(channels: int, M: int, block_m: int):
    """(M_PER_SPLIT, SPLITS): programs that each reduce ``channels`` channels over a range of M,
    about ELEMS_PER_PROGRAM elements and a whole number of tiles each; a function of the shape
    only, so the bits do not depend on the device or the thread count."""
    want = max(1, min(triton.cdiv(channels * M, ELEMS_PER_PROGRAM), triton.cdiv(M, block_m), 65535))
    per = triton.cdiv(triton.cdiv(M, want), block_m) * block_m
    return per, triton.cdiv(M, per)


def _eps_halves(eps: float):
    """(hi, lo) fp32 values with hi + lo == eps to about 2^-48 (float args reach kernels as fp32)."""
    try:
        hi = struct.unpack("f", struct.pack("f", eps))[0]
    except OverflowError:  # beyond fp32's range
        return float("inf"), 0.0
    return hi, struct.unpack("f", struct.pack("f", eps - hi))[0]


def _flags(weight, bias, scale, shift, add):
    return dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
                HAS_SHIFT=shift is not None, HAS_ADD=add is not None)


def _or(t: Optional[torch.Tensor], dummy: torch.Tensor) -> torch.Tensor:
    return dummy if t is None else t


def group_norm_fwd(
    x: torch.Tensor, x_strides: Sequence[int],
    weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], add: Optional[torch.Tensor],
    y: torch.Tensor, y_strides: Sequence[int], mean: torch.Tensor, rstd: torch.Tensor,
    num_groups: int, eps: float, activation: Optional[str],
) -> None:
    """Fill y (x's shape, (N, C, M) element strides ``y_strides``) and the contiguous (N, groups)
    mean and rstd (fp32, fp64 for float64). x is read through ``x_strides``; weight, bias (C,) and
    scale, shift, add (N, C) contiguous or None."""
    N, C = x.shape[:2]
    M = x.numel() // (N * C)
    G = num_groups
    CG = C // G
    acc = _acc(x.dtype)
    part_dtype = mean.dtype
    bc, bm = _tiles(x_strides, CG, M)
    per, splits = _splits(CG, M, bm)
    part = torch.empty((N * G, splits, 2), dtype=part_dtype, device=x.device)
    _group_norm_stats_kernel[(N * G, splits)](
        x, _or(add, x), part, C, M, CG, G, per, splits, *x_strides,
        HAS_ADD=add is not None, ACC=acc, BLOCK_C=bc, BLOCK_M=bm,
    )
    eps_hi, eps_lo = _eps_halves(eps)
    block_s = min(triton.next_power_of_2(splits), 64)
    block_r = min(triton.next_power_of_2(N * G), max(1, TILE // block_s), 256)
    _group_norm_stats_combine_kernel[(triton.cdiv(N * G, block_r),)](
        part, mean, rstd, N * G, M, CG, per, splits, eps_hi, eps_lo, ACC=acc, BLOCK_R=block_r, BLOCK_S=block_s,
    )
    bc, bm = _tiles(x_strides, C, M)
    _group_norm_fwd_kernel[(triton.cdiv(M, bm), triton.cdiv(C, bc), N)](
        x, _or(weight, x), _or(bias, x), _or(scale, x), _or(shift, x), _or(add, x), mean, rstd, y,
        C, M, CG, G, *x_strides, *y_strides,
        **_flags(weight, bias, scale, shift, add), ACT=_ACT_CODES[activation], ACC=acc, BLOCK_C=bc, BLOCK_M=bm,
    )


def group_norm_bwd(
    grad_y: torch.Tensor, grad_y_strides: Sequence[int], x: torch.Tensor, x_strides: Sequence[int],
    weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], add: Optional[torch.Tensor],
    mean: torch.Tensor, rstd: torch.Tensor, num_groups: int, activation: Optional[str],
    grads: Sequence[Optional[torch.Tensor]], grad_x_strides: Optional[Sequence[int]],
) -> None:
    """Fill the gradients in ``grads`` = (dx, dweight, dbias, dscale, dshift, dadd) that are not
    None: dx in x's dtype with element strides ``grad_x_strides``, the others contiguous in the
    accumulation dtype (mean's)."""
    gx, gw, gb, gsc, gsh, gad = grads
    N, C = x.shape[:2]
    M = x.numel() // (N * C)
    G = num_groups
    CG = C // G
    acc = _acc(x.dtype)
    flags = _flags(weight, bias, scale, shift, add)
    act = _ACT_CODES[activation]
    bc, bm = _tiles(x_strides, C, M)
    per, splits = _splits(min(bc, C), M, bm)
    part = torch.empty((N, splits, 3, C), dtype=mean.dtype, device=x.device)
    params = (_or(weight, x), _or(bias, x), _or(scale, x), _or(shift, x), _or(add, x))
    _group_norm_bwd_sums_kernel[(triton.cdiv(C, bc), splits, N)](
        grad_y, x, *params, mean, rstd, part, C, M, CG, G, per, splits, *x_strides, *grad_y_strides,
        **flags, ACT=act, ACC=acc, BLOCK_C=bc, BLOCK_M=bm,
    )
    sums = torch.empty((N, 3, C), dtype=mean.dtype, device=x.device)
    block_s = min(triton.next_power_of_2(splits), 64)
    block_c = min(triton.next_power_of_2(C), max(1, TILE // block_s))
    _group_norm_bwd_reduce_kernel[(triton.cdiv(C, block_c), N)](
        part, sums, C, splits, ACC=acc, BLOCK_S=block_s, BLOCK_C=block_c,
    )
    coef = torch.empty((N, G, 2), dtype=mean.dtype, device=x.device)
    _group_norm_bwd_combine_kernel[(G,)](
        sums, params[0], params[1], params[2], rstd, coef,
        *(_or(t, coef) for t in (gw, gb, gsc, gsh, gad)),
        N, C, M, CG, G,
        HAS_W=flags["HAS_W"], HAS_B=flags["HAS_B"], HAS_SCALE=flags["HAS_SCALE"],
        NEED_DW=gw is not None, NEED_DB=gb is not None, NEED_DSCALE=gsc is not None,
        NEED_DSHIFT=gsh is not None, NEED_DADD=gad is not None, ACC=acc,
        BLOCK_CG=triton.next_power_of_2(CG),
    )
    if gx is not None:
        _group_norm_bwd_dx_kernel[(triton.cdiv(M, bm), triton.cdiv(C, bc), N)](
            grad_y, x, *params, mean, rstd, coef, gx, C, M, CG, G, *x_strides, *grad_y_strides, *grad_x_strides,
            **flags, ACT=act, ACC=acc, BLOCK_C=bc, BLOCK_M=bm,
        )


def lowering_specs():
    """(kernel, signature, constexprs) for every kernel here, for the sm_90 lowering test: bf16
    with every option and gelu, fp32 channels-last-sized tiles with silu, float64 without options."""
    specs = []
    variants = [("bf16", "fp32", True, 1, 16, 128), ("fp32", "fp32", True, 3, 64, 32),
                ("fp64", "fp64", False, 0, 1, 1024)]
    for dt, acc_name, opts, act, bc, bm in variants:
        acc = tl.float64 if acc_name == "fp64" else tl.float32
        ints = {k: "i32" for k in ("C", "M", "CG", "G")}
        ints_split = dict(ints, M_PER_SPLIT="i32", SPLITS="i32")
        strides = lambda *ts: {f"s{t}{a}": "i64" for t in ts for a in "ncm"}  # noqa: E731
        flags = {"HAS_W": opts, "HAS_B": opts, "HAS_SCALE": opts, "HAS_SHIFT": opts, "HAS_ADD": opts}
        tiles = {"ACC": acc, "BLOCK_C": bc, "BLOCK_M": bm}
        const = lambda cx: {k: "constexpr" for k in cx}  # noqa: E731
        params = {p: f"*{dt}" for p in ("w_ptr", "b_ptr", "scale_ptr", "shift_ptr", "add_ptr")}
        stat = {"mean_ptr": f"*{acc_name}", "rstd_ptr": f"*{acc_name}"}

        cx = {"HAS_ADD": opts, **tiles}
        specs.append((_group_norm_stats_kernel, {"x_ptr": f"*{dt}", "add_ptr": f"*{dt}", "part_ptr": f"*{acc_name}",
                                                 **ints_split, **strides("x"), **const(cx)}, cx))
        cx = {"ACC": acc, "BLOCK_R": 32, "BLOCK_S": 64}
        specs.append((_group_norm_stats_combine_kernel, {
            "part_ptr": f"*{acc_name}", **stat, "ROWS": "i32", "M": "i32", "CG": "i32", "M_PER_SPLIT": "i32",
            "SPLITS": "i32", "eps_hi": "fp32", "eps_lo": "fp32", **const(cx)}, cx))
        cx = {**flags, "ACT": act, **tiles}
        specs.append((_group_norm_fwd_kernel, {"x_ptr": f"*{dt}", **params, **stat, "y_ptr": f"*{dt}", **ints,
                                               **strides("x", "y"), **const(cx)}, cx))
        specs.append((_group_norm_bwd_sums_kernel, {"gy_ptr": f"*{dt}", "x_ptr": f"*{dt}", **params, **stat,
                                                    "part_ptr": f"*{acc_name}", **ints_split, **strides("x", "g"),
                                                    **const(cx)}, cx))
        specs.append((_group_norm_bwd_dx_kernel, {"gy_ptr": f"*{dt}", "x_ptr": f"*{dt}", **params, **stat,
                                                  "coef_ptr": f"*{acc_name}", "dx_ptr": f"*{dt}", **ints,
                                                  **strides("x", "g", "d"), **const(cx)}, cx))
        need = {k: opts for k in ("NEED_DW", "NEED_DB", "NEED_DSCALE", "NEED_DSHIFT", "NEED_DADD")}
        cx = {"HAS_W": opts, "HAS_B": opts, "HAS_SCALE": opts, **need, "ACC": acc, "BLOCK_CG": 32}
        grads = {p: f"*{acc_name}" for p in ("dw_ptr", "db_ptr", "dscale_ptr", "dshift_ptr", "dadd_ptr")}
        specs.append((_group_norm_bwd_combine_kernel, {
            "sums_ptr": f"*{acc_name}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "scale_ptr": f"*{dt}",
            "rstd_ptr": f"*{acc_name}", "coef_ptr": f"*{acc_name}", **grads,
            **{k: "i32" for k in ("N", "C", "M", "CG", "G")}, **const(cx)}, cx))
        cx = {"ACC": acc, "BLOCK_S": 64, "BLOCK_C": 32}
        specs.append((_group_norm_bwd_reduce_kernel, {"part_ptr": f"*{acc_name}", "sums_ptr": f"*{acc_name}",
                                                      "C": "i32", "SPLITS": "i32", **const(cx)}, cx))
    return specs
