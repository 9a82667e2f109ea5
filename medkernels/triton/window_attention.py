"""Fused (shifted) window attention in 3D (Swin / MONAI Swin UNETR / SwinCross), forward and backward.

Per window and head (Swin; see medkernels/reference/window_attention.py for MONAI's code path):

    out = softmax(q k^T * scale + B_rel + M_shift) v,   B_rel[i, j] = table[idx(i, j), head]

The kernels never build padded, rolled or partitioned copies. A program owns a block of the
N = wd*wh*ww tokens of one window (of one batch item and head) and derives each token's place
from its index: window-local (a, b, c) -> rolled-frame coordinate x = window*w + a -> volume
coordinate (x + shift) mod padded; a coordinate past the volume is a padding token, whose key
and value are ``pad_kv`` (MONAI pads features with zeros, so after the qkv projection they are
the qkv bias) and whose query is dropped. The shift-region id of a token is computed from x
(MONAI's ``compute_mask`` slices: [0, P-w), [P-w, P-s), [P-s, P) per shifted axis) and the
bias index from the token's flat index decomposed in the *configured* window (Swin's
``index[:n, :n]`` when the window was clamped to a small volume). q, k, v, out are read and
written in place through their (B, D, H, W, heads, head_dim) strides.

Forward: flash-style online softmax in fp32, the log-sum-exp per query saved for the backward.
Backward (FlashAttention-2 recomputation from the saved log-sum-exp, delta = rowsum(dO * O)):
  _window_attention_bwd_dkdv_kernel: per key block, loop over query blocks -> dk, dv (and the
      summed gradient of the padding key/value per program, reduced afterwards);
  _window_attention_bwd_dq_kernel: per query block, loop over key blocks -> dq;
  _window_attention_bwd_pair_kernel: per (head, query block, key block, chunk of windows),
      dS summed over the chunk's windows in a fixed order -> partials (chunks, heads, N, N),
      summed in a fixed order afterwards and gathered into the table gradient: the bias-table
      gradient is the same bits on every run (no float atomics).
Two directions (SwinCross cross-modal attention: out_a = attn(q_a, k_b, v_b),
out_b = attn(q_b, k_a, v_a)) run in one launch on grid axis 1.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _token(
    t, wd0, wh0, ww0,
    D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
):
    """Volume coordinates, padding flag and shift region of window-local tokens t."""
    a = t // (WH * WW)
    r = t - a * (WH * WW)
    bb = r // WW
    c = r - bb * WW
    xd = wd0 + a
    xh = wh0 + bb
    xw = ww0 + c
    od = (xd + SD) % PD
    oh = (xh + SH) % PH
    ow = (xw + SW) % PW
    valid = (od < D) & (oh < H) & (ow < W)
    # T1 = P - w, T2 = P - s on a shifted axis; both P (one region) on an unshifted one
    rd = (xd >= T1D).to(tl.int32) + (xd >= T2D).to(tl.int32)
    rh = (xh >= T1H).to(tl.int32) + (xh >= T2H).to(tl.int32)
    rw = (xw >= T1W).to(tl.int32) + (xw >= T2W).to(tl.int32)
    return od.to(tl.int64), oh.to(tl.int64), ow.to(tl.int64), valid, rd * 9 + rh * 3 + rw


@triton.jit
def _load_tile(base, off, s_e, offs_e, e_in, tok_ok, pad_ptr, is_pad, HAS_PAD: tl.constexpr):
    x = tl.load(base + off[:, None] + offs_e[None, :] * s_e, mask=tok_ok[:, None] & e_in[None, :], other=0.0)
    x = x.to(tl.float32)
    if HAS_PAD:
        pv = tl.load(pad_ptr + offs_e, mask=e_in, other=0.0).to(tl.float32)
        x = tl.where(is_pad[:, None], pv[None, :] + 0.0 * x, x)
    return x


@triton.jit
def _scores(
    q, k, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k, table_ptr, head, HEADS, CWD, CWH, CWW,
    scale, mask_value,
    HAS_TABLE: tl.constexpr, SHIFTED: tl.constexpr, MASK_PADDED: tl.constexpr, PREC: tl.constexpr,
):
    """q k^T * scale + bias + shift mask for a (query block, key block) tile, fp32; keys past N
    (and padding keys with MASK_PADDED) are -inf."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    if HAS_TABLE:
        ci_d = offs_m // (CWH * CWW)
        ci_h = (offs_m // CWW) % CWH
        ci_w = offs_m % CWW
        cj_d = offs_n // (CWH * CWW)
        cj_h = (offs_n // CWW) % CWH
        cj_w = offs_n % CWW
        idx = (ci_d[:, None] - cj_d[None, :] + CWD - 1) * ((2 * CWH - 1) * (2 * CWW - 1))
        idx += (ci_h[:, None] - cj_h[None, :] + CWH - 1) * (2 * CWW - 1)
        idx += ci_w[:, None] - cj_w[None, :] + CWW - 1
        idx = tl.where((offs_m < N)[:, None] & n_in[None, :], idx, 0)  # tokens past N: outside the table
        s += tl.load(table_ptr + idx * HEADS + head).to(tl.float32)
    if SHIFTED:
        s += tl.where(reg_q[:, None] == reg_k[None, :], 0.0, mask_value)
    if MASK_PADDED:
        s = tl.where(valid_k[None, :], s, float("-inf"))
    s = tl.where(n_in[None, :], s, float("-inf"))
    return s


@triton.jit
def _kv_tile(
    k_base, v_base, pad_ptr, b, head, HEADS, HEAD_DIM, offs_n, n_in, offs_e, e_in, wd0, wh0, ww0,
    D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
    skb, skd, skh, skw, skn, ske,
    svb, svd, svh, svw, svn, sve,
    HAS_PAD: tl.constexpr, DOT_LOWP: tl.constexpr,
):
    """Keys and values of window-local tokens offs_n (padding tokens: pad_kv), with their
    coordinates, padding flag and shift region; in the input dtype for DOT_LOWP dots."""
    kd, kh, kw, valid_k, reg_k = _token(
        offs_n, wd0, wh0, ww0, D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W
    )
    k_ok = n_in & valid_k
    k_pad = n_in & (valid_k == 0)
    k = _load_tile(k_base, b * skb + kd * skd + kh * skh + kw * skw + head * skn, ske, offs_e, e_in, k_ok,
                   pad_ptr + head * HEAD_DIM, k_pad, HAS_PAD)
    v = _load_tile(v_base, b * svb + kd * svd + kh * svh + kw * svw + head * svn, sve, offs_e, e_in, k_ok,
                   pad_ptr + (HEADS + head) * HEAD_DIM, k_pad, HAS_PAD)
    if DOT_LOWP:
        k = k.to(k_base.dtype.element_ty)
        v = v.to(k_base.dtype.element_ty)
    return kd, kh, kw, valid_k, reg_k, k_ok, k_pad, k, v


@triton.jit
def _q_do_tile(
    q_base, do_base, pad_ptr, lse_ptr, delta_ptr, row0, b, head, HEADS, offs_m, m_in, offs_e, e_in, wd0, wh0, ww0,
    D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
    sqb, sqd, sqh, sqw, sqn, sqe,
    sgb, sgd, sgh, sgw, sgn, sge,
    DOT_LOWP: tl.constexpr,
):
    """Queries and output gradients of window-local tokens offs_m with their saved log-sum-exp
    and delta (row0: the direction's first row), coordinates, padding flag and shift region."""
    od, oh, ow, valid_q, reg_q = _token(
        offs_m, wd0, wh0, ww0, D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W
    )
    q_ok = m_in & valid_q
    q = _load_tile(q_base, b * sqb + od * sqd + oh * sqh + ow * sqw + head * sqn, sqe, offs_e, e_in, q_ok,
                   pad_ptr, q_ok, False)
    do = _load_tile(do_base, b * sgb + od * sgd + oh * sgh + ow * sgw + head * sgn, sge, offs_e, e_in, q_ok,
                    pad_ptr, q_ok, False)
    if DOT_LOWP:
        q = q.to(q_base.dtype.element_ty)
        do = do.to(q_base.dtype.element_ty)
    row = row0 + (((b * D + od) * H + oh) * W + ow) * HEADS + head
    lse = tl.load(lse_ptr + row, mask=q_ok, other=0.0)
    delta = tl.load(delta_ptr + row, mask=q_ok, other=0.0)
    return od, oh, ow, reg_q, q_ok, q, do, lse, delta


@triton.jit
def _window_origin(bw, NW, NWH, NWW, WD, WH, WW):
    """(batch, first d, h, w of the window) of flat window index bw = b * NW + win."""
    b = bw // NW
    win = bw % NW
    return b, (win // (NWH * NWW)) * WD, ((win // NWW) % NWH) * WH, (win % NWW) * WW


@triton.jit
def _split_program(pid, N_BLK, HEADS):
    """(token block, head, flat window) of a program id laid out as (window, head, block)."""
    rest = pid // N_BLK
    return pid % N_BLK, rest % HEADS, rest // HEADS


@triton.jit
def _window_attention_fwd_kernel(
    q0, k0, v0, o0, q1, k1, v1, o1, table_ptr, pad_ptr, lse_ptr,
    B, HEADS, HEAD_DIM, N, NW, NWH, NWW, N_MB,
    D, H, W, WD, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W, CWD, CWH, CWW,
    scale, mask_value,
    sqb, sqd, sqh, sqw, sqn, sqe,
    skb, skd, skh, skw, skn, ske,
    svb, svd, svh, svw, svn, sve,
    sob, sod, soh, sow, son, soe,
    HAS_TABLE: tl.constexpr, HAS_PAD: tl.constexpr, SHIFTED: tl.constexpr, MASK_PADDED: tl.constexpr,
    DOT_LOWP: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(1)
    if direction == 0:
        q_base, k_base, v_base, o_base = q0, k0, v0, o0
    else:
        q_base, k_base, v_base, o_base = q1, k1, v1, o1
    mb, head, bw = _split_program(pid, N_MB, HEADS)
    b, wd0, wh0, ww0 = _window_origin(bw, NW, NWH, NWW, WD, WH, WW)
    offs_e = tl.arange(0, BLOCK_E)
    e_in = offs_e < HEAD_DIM

    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_in = offs_m < N
    od, oh, ow, valid_q, reg_q = _token(
        offs_m, wd0, wh0, ww0, D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W
    )
    q_ok = m_in & valid_q
    q_off = b * sqb + od * sqd + oh * sqh + ow * sqw + head * sqn
    q = _load_tile(q_base, q_off, sqe, offs_e, e_in, q_ok, pad_ptr, q_ok, False)
    if DOT_LOWP:
        q = q.to(q0.dtype.element_ty)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_in = offs_n < N
        kd, kh, kw, valid_k, reg_k, k_ok, k_pad, k, v = _kv_tile(
            k_base, v_base, pad_ptr, b, head, HEADS, HEAD_DIM, offs_n, n_in, offs_e, e_in, wd0, wh0, ww0,
            D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
            skb, skd, skh, skw, skn, ske, svb, svd, svh, svw, svn, sve, HAS_PAD, DOT_LOWP,
        )
        s = _scores(q, k, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k, table_ptr, head, HEADS, CWD, CWH, CWW,
                    scale, mask_value, HAS_TABLE, SHIFTED, MASK_PADDED, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: keep exp finite
        p = tl.exp(s - m_use[:, None])
        alpha = tl.exp(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DOT_LOWP:
            pv = tl.dot(p.to(q0.dtype.element_ty), v)
        else:
            pv = tl.dot(p, v, input_precision=PREC)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_off = b * sob + od * sod + oh * soh + ow * sow + head * son
    tl.store(o_base + o_off[:, None] + offs_e[None, :] * soe, out.to(o0.dtype.element_ty),
             mask=q_ok[:, None] & e_in[None, :])
    lse = tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_safe)
    lse_off = direction * (B * D * H * W * HEADS) + (((b * D + od) * H + oh) * W + ow) * HEADS + head
    tl.store(lse_ptr + lse_off, lse, mask=q_ok)


@triton.jit
def _recompute_p(
    q, k, do, v, lse, delta, q_ok, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k, table_ptr, head, HEADS,
    CWD, CWH, CWW, scale, mask_value,
    HAS_TABLE: tl.constexpr, SHIFTED: tl.constexpr, MASK_PADDED: tl.constexpr, DOT_LOWP: tl.constexpr,
    PREC: tl.constexpr,
):
    """P and dS = P * (dO v^T - delta) of a tile, fp32; zero on dropped (padding) queries."""
    s = _scores(q, k, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k, table_ptr, head, HEADS, CWD, CWH, CWW,
                scale, mask_value, HAS_TABLE, SHIFTED, MASK_PADDED, PREC)
    p = tl.exp(s - lse[:, None])
    p = tl.where(q_ok[:, None], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _window_attention_bwd_dkdv_kernel(
    q0, k0, v0, do0, dk0, dv0, q1, k1, v1, do1, dk1, dv1,
    table_ptr, pad_ptr, lse_ptr, delta_ptr, dpad_ptr,
    B, HEADS, HEAD_DIM, N, NW, NWH, NWW, N_NB,
    D, H, W, WD, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W, CWD, CWH, CWW,
    scale, mask_value,
    sqb, sqd, sqh, sqw, sqn, sqe,
    skb, skd, skh, skw, skn, ske,
    svb, svd, svh, svw, svn, sve,
    sgb, sgd, sgh, sgw, sgn, sge,
    sdb, sdd, sdh, sdw, sdn, sde,
    HAS_TABLE: tl.constexpr, HAS_PAD: tl.constexpr, SHIFTED: tl.constexpr, MASK_PADDED: tl.constexpr,
    DOT_LOWP: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
):
    # dk, dv have the strides sd*; dpad: (dirs, B*NW*HEADS*N_NB, 2, HEAD_DIM) fp32
    pid = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(1)
    if direction == 0:
        q_base, k_base, v_base, do_base, dk_base, dv_base = q0, k0, v0, do0, dk0, dv0
    else:
        q_base, k_base, v_base, do_base, dk_base, dv_base = q1, k1, v1, do1, dk1, dv1
    nb, head, bw = _split_program(pid, N_NB, HEADS)
    b, wd0, wh0, ww0 = _window_origin(bw, NW, NWH, NWW, WD, WH, WW)
    offs_e = tl.arange(0, BLOCK_E)
    e_in = offs_e < HEAD_DIM

    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_in = offs_n < N
    kd, kh, kw, valid_k, reg_k, k_ok, k_pad, k, v = _kv_tile(
        k_base, v_base, pad_ptr, b, head, HEADS, HEAD_DIM, offs_n, n_in, offs_e, e_in, wd0, wh0, ww0,
        D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
        skb, skd, skh, skw, skn, ske, svb, svd, svh, svw, svn, sve, HAS_PAD, DOT_LOWP,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    row0 = direction * (B * D * H * W * HEADS)
    for m0 in range(0, N, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_in = offs_m < N
        od, oh, ow, reg_q, q_ok, q, do, lse, delta = _q_do_tile(
            q_base, do_base, pad_ptr, lse_ptr, delta_ptr, row0, b, head, HEADS, offs_m, m_in, offs_e, e_in,
            wd0, wh0, ww0, D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
            sqb, sqd, sqh, sqw, sqn, sqe, sgb, sgd, sgh, sgw, sgn, sge, DOT_LOWP,
        )
        p, ds = _recompute_p(q, k, do, v, lse, delta, q_ok, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k,
                             table_ptr, head, HEADS, CWD, CWH, CWW, scale, mask_value,
                             HAS_TABLE, SHIFTED, MASK_PADDED, DOT_LOWP, PREC)
        if DOT_LOWP:
            dv += tl.dot(tl.trans(p.to(q0.dtype.element_ty)), do)
            dk += tl.dot(tl.trans(ds.to(q0.dtype.element_ty)), q)
        else:
            dv += tl.dot(tl.trans(p), do, input_precision=PREC)
            dk += tl.dot(tl.trans(ds), q, input_precision=PREC)
    dk = dk * scale
    out_m = k_ok[:, None] & e_in[None, :]
    d_off = (b * sdb + kd * sdd + kh * sdh + kw * sdw + head * sdn)[:, None] + offs_e[None, :] * sde
    tl.store(dk_base + d_off, dk.to(dk0.dtype.element_ty), mask=out_m)
    tl.store(dv_base + d_off, dv.to(dv0.dtype.element_ty), mask=out_m)
    if HAS_PAD:
        # padding tokens share one key/value: their gradients sum, here per program
        slot = dpad_ptr + (direction * (B * NW * HEADS * N_NB) + pid) * 2 * HEAD_DIM
        tl.store(slot + offs_e, tl.sum(tl.where(k_pad[:, None], dk, 0.0), 0), mask=e_in)
        tl.store(slot + HEAD_DIM + offs_e, tl.sum(tl.where(k_pad[:, None], dv, 0.0), 0), mask=e_in)


@triton.jit
def _window_attention_bwd_dq_kernel(
    q0, k0, v0, do0, dq0, q1, k1, v1, do1, dq1,
    table_ptr, pad_ptr, lse_ptr, delta_ptr,
    B, HEADS, HEAD_DIM, N, NW, NWH, NWW, N_MB,
    D, H, W, WD, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W, CWD, CWH, CWW,
    scale, mask_value,
    sqb, sqd, sqh, sqw, sqn, sqe,
    skb, skd, skh, skw, skn, ske,
    svb, svd, svh, svw, svn, sve,
    sgb, sgd, sgh, sgw, sgn, sge,
    sdb, sdd, sdh, sdw, sdn, sde,
    HAS_TABLE: tl.constexpr, HAS_PAD: tl.constexpr, SHIFTED: tl.constexpr, MASK_PADDED: tl.constexpr,
    DOT_LOWP: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
):
    # dq has the strides sd*
    pid = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(1)
    if direction == 0:
        q_base, k_base, v_base, do_base, dq_base = q0, k0, v0, do0, dq0
    else:
        q_base, k_base, v_base, do_base, dq_base = q1, k1, v1, do1, dq1
    mb, head, bw = _split_program(pid, N_MB, HEADS)
    b, wd0, wh0, ww0 = _window_origin(bw, NW, NWH, NWW, WD, WH, WW)
    offs_e = tl.arange(0, BLOCK_E)
    e_in = offs_e < HEAD_DIM

    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_in = offs_m < N
    row0 = direction * (B * D * H * W * HEADS)
    od, oh, ow, reg_q, q_ok, q, do, lse, delta = _q_do_tile(
        q_base, do_base, pad_ptr, lse_ptr, delta_ptr, row0, b, head, HEADS, offs_m, m_in, offs_e, e_in,
        wd0, wh0, ww0, D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
        sqb, sqd, sqh, sqw, sqn, sqe, sgb, sgd, sgh, sgw, sgn, sge, DOT_LOWP,
    )
    dq = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_in = offs_n < N
        kd, kh, kw, valid_k, reg_k, k_ok, k_pad, k, v = _kv_tile(
            k_base, v_base, pad_ptr, b, head, HEADS, HEAD_DIM, offs_n, n_in, offs_e, e_in, wd0, wh0, ww0,
            D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
            skb, skd, skh, skw, skn, ske, svb, svd, svh, svw, svn, sve, HAS_PAD, DOT_LOWP,
        )
        p, ds = _recompute_p(q, k, do, v, lse, delta, q_ok, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k,
                             table_ptr, head, HEADS, CWD, CWH, CWW, scale, mask_value,
                             HAS_TABLE, SHIFTED, MASK_PADDED, DOT_LOWP, PREC)
        if DOT_LOWP:
            dq += tl.dot(ds.to(q0.dtype.element_ty), k)
        else:
            dq += tl.dot(ds, k, input_precision=PREC)
    dq = dq * scale
    d_off = (b * sdb + od * sdd + oh * sdh + ow * sdw + head * sdn)[:, None] + offs_e[None, :] * sde
    tl.store(dq_base + d_off, dq.to(dq0.dtype.element_ty), mask=q_ok[:, None] & e_in[None, :])


@triton.jit
def _window_attention_bwd_pair_kernel(
    q0, k0, v0, do0, q1, k1, v1, do1,
    table_ptr, pad_ptr, lse_ptr, delta_ptr, pair_ptr,
    B, HEADS, HEAD_DIM, N, NW, NWH, NWW, N_MB, N_NB, WINDOWS_PER_CHUNK, N_CHUNKS,
    D, H, W, WD, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W, CWD, CWH, CWW,
    scale, mask_value,
    sqb, sqd, sqh, sqw, sqn, sqe,
    skb, skd, skh, skw, skn, ske,
    svb, svd, svh, svw, svn, sve,
    sgb, sgd, sgh, sgw, sgn, sge,
    HAS_TABLE: tl.constexpr, HAS_PAD: tl.constexpr, SHIFTED: tl.constexpr, MASK_PADDED: tl.constexpr,
    DOT_LOWP: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
):
    # pair: (dirs * N_CHUNKS, HEADS, N, N) fp32, dS summed over the chunk's windows in order
    pid = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    direction = tl.program_id(2)
    if direction == 0:
        q_base, k_base, v_base, do_base = q0, k0, v0, do0
    else:
        q_base, k_base, v_base, do_base = q1, k1, v1, do1
    nb = pid % N_NB
    mb = (pid // N_NB) % N_MB
    head = pid // (N_NB * N_MB)
    offs_e = tl.arange(0, BLOCK_E)
    e_in = offs_e < HEAD_DIM
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_in = offs_m < N
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_in = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    bw0 = chunk * WINDOWS_PER_CHUNK
    bw1 = tl.minimum(bw0 + WINDOWS_PER_CHUNK, B * NW)
    row0 = direction * (B * D * H * W * HEADS)
    for bw in range(bw0, bw1):
        b, wd0, wh0, ww0 = _window_origin(bw, NW, NWH, NWW, WD, WH, WW)
        od, oh, ow, reg_q, q_ok, q, do, lse, delta = _q_do_tile(
            q_base, do_base, pad_ptr, lse_ptr, delta_ptr, row0, b, head, HEADS, offs_m, m_in, offs_e, e_in,
            wd0, wh0, ww0, D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
            sqb, sqd, sqh, sqw, sqn, sqe, sgb, sgd, sgh, sgw, sgn, sge, DOT_LOWP,
        )
        kd, kh, kw, valid_k, reg_k, k_ok, k_pad, k, v = _kv_tile(
            k_base, v_base, pad_ptr, b, head, HEADS, HEAD_DIM, offs_n, n_in, offs_e, e_in, wd0, wh0, ww0,
            D, H, W, WH, WW, SD, SH, SW, PD, PH, PW, T1D, T2D, T1H, T2H, T1W, T2W,
            skb, skd, skh, skw, skn, ske, svb, svd, svh, svw, svn, sve, HAS_PAD, DOT_LOWP,
        )
        p, ds = _recompute_p(q, k, do, v, lse, delta, q_ok, offs_m, offs_n, N, n_in, valid_k, reg_q, reg_k,
                             table_ptr, head, HEADS, CWD, CWH, CWW, scale, mask_value,
                             HAS_TABLE, SHIFTED, MASK_PADDED, DOT_LOWP, PREC)
        acc += ds
    base = pair_ptr + ((direction * N_CHUNKS + chunk) * HEADS + head) * N * N
    tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=m_in[:, None] & n_in[None, :])


# --- launchers --------------------------------------------------------------------------------
def _geometry_args(size, window, eff_window, shift, padded) -> Tuple[int, ...]:
    """D, H, W, WD, WH, WW, SD, SH, SW, PD, PH, PW, T1/T2 per axis, CWD, CWH, CWW."""
    thresholds = []
    for p, w, s in zip(padded, eff_window, shift):
        thresholds += [p - w, p - s] if s > 0 else [p, p]
    return (*size, *eff_window, *shift, *padded, *thresholds, *window)


def _blocks(n: int, head_dim: int, device: torch.device) -> Tuple[int, int, int]:
    be = max(16, triton.next_power_of_2(head_dim))
    if device.type == "cpu":  # the interpreter: big tiles, few programs
        b = max(16, min(triton.next_power_of_2(n), 128))
        return b, b, be
    bm = max(16, min(triton.next_power_of_2(n), 64))
    bn = max(16, min(triton.next_power_of_2(n), 64 if be <= 64 else 32))
    return bm, bn, be


def _precision(dtype: torch.dtype) -> Tuple[bool, str]:
    """(16-bit tensor-core dots, fp32 dot precision)."""
    return dtype in (torch.float16, torch.bfloat16), "ieee"


def _common(q, window, eff_window, shift, padded, table, pad_kv, mask_padded):
    B, D, H, W, heads, e = q.shape
    n = eff_window[0] * eff_window[1] * eff_window[2]
    nwd, nwh, nww = (p // w for p, w in zip(padded, eff_window))
    geo = _geometry_args((D, H, W), window, eff_window, shift, padded)
    has_pad = pad_kv is not None and tuple(padded) != (D, H, W) and not mask_padded
    flags = dict(
        HAS_TABLE=table is not None, HAS_PAD=has_pad, SHIFTED=any(s > 0 for s in shift),
        MASK_PADDED=bool(mask_padded) and tuple(padded) != (D, H, W),
    )
    return B, heads, e, n, nwd * nwh * nww, nwh, nww, geo, flags


def window_attention_fwd(
    q: Sequence[torch.Tensor],
    k: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    out: Sequence[torch.Tensor],
    window: Sequence[int],
    eff_window: Sequence[int],
    shift: Sequence[int],
    padded: Sequence[int],
    table: Optional[torch.Tensor],
    pad_kv: Optional[torch.Tensor],
    scale: float,
    mask_value: float,
    mask_padded: bool,
) -> torch.Tensor:
    """Forward of one or two directions (q[i], k[i], v[i]) -> out[i], every tensor
    (B, D, H, W, heads, head_dim) with the strides of q[0]/k[0]/v[0]/out[0] respectively.
    window: the configured window (bias table); eff_window/shift/padded after MONAI's clamp.
    table contiguous (rows, heads); pad_kv contiguous (2, heads, head_dim). Returns the
    log-sum-exp (dirs, B, D, H, W, heads) fp32 for the backward."""
    dirs = len(q)
    B, heads, e, n, nw, nwh, nww, geo, flags = _common(q[0], window, eff_window, shift, padded, table, pad_kv,
                                                       mask_padded)
    bm, bn, be = _blocks(n, e, q[0].device)
    lowp, prec = _precision(q[0].dtype)
    lse = torch.empty((dirs, *q[0].shape[:5]), dtype=torch.float32, device=q[0].device)
    n_mb = triton.cdiv(n, bm)
    sel = (lambda t: (t[0], t[-1]))
    (q0, q1), (k0, k1), (v0, v1), (o0, o1) = sel(q), sel(k), sel(v), sel(out)
    _window_attention_fwd_kernel[(B * nw * heads * n_mb, dirs)](
        q0, k0, v0, o0, q1, k1, v1, o1,
        table if table is not None else q0, pad_kv if pad_kv is not None else q0, lse,
        B, heads, e, n, nw, nwh, nww, n_mb, *geo,
        float(scale), float(mask_value),
        *q0.stride(), *k0.stride(), *v0.stride(), *o0.stride(),
        DOT_LOWP=lowp and q0.is_cuda, PREC=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_E=be, **flags,
    )
    return lse


def _chunks(device: torch.device, programs: int, windows: int) -> int:
    if device.type == "cpu":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(windows, triton.cdiv(target, max(programs, 1))))


def window_attention_bwd(
    grad_out: Sequence[torch.Tensor],
    q: Sequence[torch.Tensor],
    k: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    out: Sequence[torch.Tensor],
    lse: torch.Tensor,
    dq: Sequence[torch.Tensor],
    dk: Sequence[torch.Tensor],
    dv: Sequence[torch.Tensor],
    window: Sequence[int],
    eff_window: Sequence[int],
    shift: Sequence[int],
    padded: Sequence[int],
    table: Optional[torch.Tensor],
    pad_kv: Optional[torch.Tensor],
    scale: float,
    mask_value: float,
    mask_padded: bool,
    need_pair_grad: bool,
):
    """Backward of :func:`window_attention_fwd`: fills dq[i], dk[i], dv[i] (the gradients of q[i],
    k[i], v[i]; all six share one set of strides). grad_out[i] share one set of strides.
    Returns (pair_grad (heads, N, N) fp32 or None, d_pad_kv (2, heads, head_dim) fp32 or None)."""
    dirs = len(q)
    B, heads, e, n, nw, nwh, nww, geo, flags = _common(q[0], window, eff_window, shift, padded, table, pad_kv,
                                                       mask_padded)
    bm, bn, be = _blocks(n, e, q[0].device)
    lowp, prec = _precision(q[0].dtype)
    lowp = lowp and q[0].is_cuda
    delta = torch.stack([(g.float() * o.float()).sum(-1) for g, o in zip(grad_out, out)])
    sel = (lambda t: (t[0], t[-1]))
    (q0, q1), (k0, k1), (v0, v1), (g0, g1) = sel(q), sel(k), sel(v), sel(grad_out)
    table_arg = table if table is not None else q0
    pad_arg = pad_kv if pad_kv is not None else q0
    strides = (*q0.stride(), *k0.stride(), *v0.stride(), *g0.stride())
    consts = dict(DOT_LOWP=lowp, PREC=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_E=be, **flags)
    n_mb, n_nb = triton.cdiv(n, bm), triton.cdiv(n, bn)
    dpad = None
    if flags["HAS_PAD"]:
        dpad = torch.empty((dirs, B * nw * heads * n_nb, 2, e), dtype=torch.float32, device=q0.device)
    (dk0, dk1), (dv0, dv1), (dq0, dq1) = sel(dk), sel(dv), sel(dq)
    grad_strides = dq0.stride()
    if any(t.stride() != grad_strides for t in (*dq, *dk, *dv)):
        raise ValueError("window_attention_bwd: dq, dk and dv must share one set of strides")
    _window_attention_bwd_dkdv_kernel[(B * nw * heads * n_nb, dirs)](
        q0, k0, v0, g0, dk0, dv0, q1, k1, v1, g1, dk1, dv1,
        table_arg, pad_arg, lse, delta, dpad if dpad is not None else lse,
        B, heads, e, n, nw, nwh, nww, n_nb, *geo, float(scale), float(mask_value), *strides, *grad_strides,
        **consts,
    )
    _window_attention_bwd_dq_kernel[(B * nw * heads * n_mb, dirs)](
        q0, k0, v0, g0, dq0, q1, k1, v1, g1, dq1,
        table_arg, pad_arg, lse, delta,
        B, heads, e, n, nw, nwh, nww, n_mb, *geo, float(scale), float(mask_value), *strides, *grad_strides,
        **consts,
    )
    pair = None
    if need_pair_grad:
        chunks = _chunks(q0.device, heads * n_mb * n_nb * dirs, B * nw)
        per_chunk = triton.cdiv(B * nw, chunks)
        chunks = triton.cdiv(B * nw, per_chunk)
        part = torch.empty((dirs * chunks, heads, n, n), dtype=torch.float32, device=q0.device)
        _window_attention_bwd_pair_kernel[(heads * n_mb * n_nb, chunks, dirs)](
            q0, k0, v0, g0, q1, k1, v1, g1,
            table_arg, pad_arg, lse, delta, part,
            B, heads, e, n, nw, nwh, nww, n_mb, n_nb, per_chunk, chunks,
            *geo, float(scale), float(mask_value), *strides, **consts,
        )
        pair = part.sum(0)  # fixed-order reduction over chunks and directions
    d_pad = None
    if dpad is not None:  # slots ordered (dir, window, head, key block): fixed-order sums
        d_pad = dpad.reshape(dirs, B * nw, heads, n_nb, 2, e).sum((0, 1, 3)).transpose(0, 1).contiguous()
    return pair, d_pad


# --- ahead-of-time lowering (tests/test_triton_lowering.py) -------------------------------------
_GEO_NAMES = (
    "D", "H", "W", "WD", "WH", "WW", "SD", "SH", "SW", "PD", "PH", "PW",
    "T1D", "T2D", "T1H", "T2H", "T1W", "T2W", "CWD", "CWH", "CWW",
)
_STRIDE_NAMES = tuple(f"s{t}{a}" for t in "qkvg" for a in ("b", "d", "h", "w", "n", "e"))
_GRAD_STRIDE_NAMES = tuple(f"sd{a}" for a in ("b", "d", "h", "w", "n", "e"))


def lowering_specs():
    """(kernel, signature, constexprs) for every @triton.jit kernel of this module, bf16 with the
    tensor-core dots and fp32 with IEEE dots, Swin UNETR's 7^3 window and head_dim 32."""
    specs = []
    for dt, lowp in (("bf16", True), ("fp32", False)):
        cx = dict(HAS_TABLE=True, HAS_PAD=True, SHIFTED=True, MASK_PADDED=False, DOT_LOWP=lowp, PREC="ieee",
                  BLOCK_M=64, BLOCK_N=64, BLOCK_E=32)
        ints = {name: "i32" for name in ("B", "HEADS", "HEAD_DIM", "N", "NW", "NWH", "NWW") + _GEO_NAMES}
        floats = {"scale": "fp32", "mask_value": "fp32"}
        strides = {name: "i64" for name in _STRIDE_NAMES}
        grad_strides = {name: "i64" for name in _GRAD_STRIDE_NAMES}
        const = {name: "constexpr" for name in cx}
        fwd_strides = {k.replace("sg", "so"): v for k, v in strides.items()}
        ptr = f"*{dt}"
        fwd = {**{n: ptr for n in ("q0", "k0", "v0", "o0", "q1", "k1", "v1", "o1", "table_ptr", "pad_ptr")},
               "lse_ptr": "*fp32", **ints, "N_MB": "i32", **floats, **fwd_strides, **const}
        specs.append((_window_attention_fwd_kernel, fwd, cx))
        tensors = ("q0", "k0", "v0", "do0", "q1", "k1", "v1", "do1")
        common = {"table_ptr": ptr, "pad_ptr": ptr, "lse_ptr": "*fp32", "delta_ptr": "*fp32"}
        dkdv = {**{n: ptr for n in ("q0", "k0", "v0", "do0", "dk0", "dv0", "q1", "k1", "v1", "do1", "dk1", "dv1")},
                **common, "dpad_ptr": "*fp32", **ints, "N_NB": "i32", **floats, **strides, **grad_strides, **const}
        specs.append((_window_attention_bwd_dkdv_kernel, dkdv, cx))
        dq = {**{n: ptr for n in ("q0", "k0", "v0", "do0", "dq0", "q1", "k1", "v1", "do1", "dq1")},
              **common, **ints, "N_MB": "i32", **floats, **strides, **grad_strides, **const}
        specs.append((_window_attention_bwd_dq_kernel, dq, cx))
        pair = {**{n: ptr for n in tensors}, **common, "pair_ptr": "*fp32", **ints, "N_MB": "i32", "N_NB": "i32",
                "WINDOWS_PER_CHUNK": "i32", "N_CHUNKS": "i32", **floats, **strides, **const}
        specs.append((_window_attention_bwd_pair_kernel, pair, cx))
    return specs
