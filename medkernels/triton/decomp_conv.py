"""Decomposed 3D convolution (DCFormer's DecompConv3D) in Triton, forward and backward.

    y[n, co, o] = act( b[co] + sum_{ci in group(co)} sum_j  w_d[co, ci', j] x[n, ci, o_d s - p + j, o_h s, o_w s]
                                                        + w_h[co, ci', j] x[n, ci, o_d s, o_h s - p + j, o_w s]
                                                        + w_w[co, ci', j] x[n, ci, o_d s, o_h s, o_w s - p + j] )

p = k // 2, zero padding, every output size (in - 1) // s + 1. Tensors are addressed by
their NCDHW strides, so NCDHW, channels-last and strided views need no copy. One program
owns a (channels x W) tile of one output row (n, o_d, o_h): the three branches read shifted
rows of x that the neighbouring programs also read, so x comes from HBM about once and y is
written once. fp16/bf16 load and store in their dtype and accumulate in fp32.

Backward:
  gz = dy * act'(z)      (z recomputed by the forward kernel, MODE=1; skipped without act)
  dw, db: per (channel block, split of the rows) partial sums in fp32, reduced over the
          splits afterwards in a fixed order (deterministic, no atomics)
  dx[n, ci, i] = sum over the taps j and output positions o with o s - p + j = i of w[co, ci', j] gz[n, co, o]
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import _ACT_CODES, _act_fwd, _act_grad


@triton.jit
def _decomp_conv_fwd_kernel(
    x_ptr, wd_ptr, wh_ptr, ww_ptr, b_ptr, gy_ptr, y_ptr,
    D, H, W, Do, Ho, Wo, C_out, CIN_G, COUT_G, stride,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    sgn, sgc, sgd, sgh, sgw,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MODE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # MODE 0: y = act(z).  MODE 1 (backward): y = gy * act'(z), y being an fp32 buffer.
    row = tl.program_id(0).to(tl.int64)
    oh = row % Ho
    od = (row // Ho) % Do
    n = row // (Ho * Do)
    ow = tl.program_id(1).to(tl.int64) * BLOCK_W + tl.arange(0, BLOCK_W)
    co = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    ow_m = ow < Wo
    co_m = co < C_out
    tile_m = co_m[:, None] & ow_m[None, :]
    PAD: tl.constexpr = K // 2
    d0 = od * stride
    h0 = oh * stride
    w0 = ow * stride
    g = co // COUT_G
    zero_w = tl.zeros([BLOCK_W], dtype=tl.int64)
    acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
    for cl in range(0, CIN_G):
        x_c = x_ptr + n * sxn + (g * CIN_G + cl)[:, None] * sxc
        w_off = (co * CIN_G + cl) * K
        for j in tl.static_range(K):
            # scalar conditions are widened to vectors (zero_w): the interpreter rejects
            # masks broadcast from scalars, and the compiler folds the add away
            di = zero_w + (d0 - PAD + j)
            wv = tl.load(wd_ptr + w_off + j, mask=co_m, other=0.0).to(ACC)
            xv = tl.load(x_c + di[None, :] * sxd + h0 * sxh + w0[None, :] * sxw,
                         mask=tile_m & ((di >= 0) & (di < D))[None, :], other=0.0).to(ACC)
            acc += wv[:, None] * xv
            hi = zero_w + (h0 - PAD + j)
            wv = tl.load(wh_ptr + w_off + j, mask=co_m, other=0.0).to(ACC)
            xv = tl.load(x_c + d0 * sxd + hi[None, :] * sxh + w0[None, :] * sxw,
                         mask=tile_m & ((hi >= 0) & (hi < H))[None, :], other=0.0).to(ACC)
            acc += wv[:, None] * xv
            wi = w0 - PAD + j
            wv = tl.load(ww_ptr + w_off + j, mask=co_m, other=0.0).to(ACC)
            xv = tl.load(x_c + d0 * sxd + h0 * sxh + wi[None, :] * sxw,
                         mask=tile_m & ((wi >= 0) & (wi < W))[None, :], other=0.0).to(ACC)
            acc += wv[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co_m, other=0.0).to(ACC)[:, None]
    pos = co[:, None] * syc + (n * syn + od * syd + oh * syh) + ow[None, :] * syw
    if MODE == 0:
        out = _act_fwd(acc, ACT)
        tl.store(y_ptr + pos, out.to(y_ptr.dtype.element_ty), mask=tile_m)
    else:
        gpos = co[:, None] * sgc + (n * sgn + od * sgd + oh * sgh) + ow[None, :] * sgw
        gy = tl.load(gy_ptr + gpos, mask=tile_m, other=0.0).to(ACC)
        tl.store(y_ptr + pos, (gy * _act_grad(acc, ACT)).to(y_ptr.dtype.element_ty), mask=tile_m)


@triton.jit
def _decomp_conv_bwd_dw_kernel(
    x_ptr, gz_ptr, part_ptr,
    D, H, W, Do, Ho, Wo, C_out, CIN_G, COUT_G, stride, rows, rows_per_split,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    K: tl.constexpr, KP: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # part: (splits, 4, C_out, CIN_G, KP) fp32/fp64: branches d, h, w, then the bias sum in [3, :, 0, 0]
    co = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cl = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    co_m = co < C_out
    ci = (co // COUT_G) * CIN_G + cl
    j = tl.arange(0, KP)
    j_m = j < K
    PAD: tl.constexpr = K // 2
    acc_d = tl.zeros([BLOCK_C, KP], dtype=ACC)
    acc_h = tl.zeros([BLOCK_C, KP], dtype=ACC)
    acc_w = tl.zeros([BLOCK_C, KP], dtype=ACC)
    acc_b = tl.zeros([BLOCK_C], dtype=ACC)
    r0 = split * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, rows)
    for r in range(r0, r1):
        oh = r % Ho
        od = (r // Ho) % Do
        n = r // (Ho * Do)
        d0 = od * stride
        h0 = oh * stride
        x_c = x_ptr + n * sxn + ci * sxc  # [BC]
        for ow0 in range(0, Wo, BLOCK_W):
            ow = ow0 + tl.arange(0, BLOCK_W)
            ow_m = ow < Wo
            w0 = ow * stride
            gz = tl.load(gz_ptr + n * sgn + co[:, None] * sgc + od * sgd + oh * sgh + ow[None, :] * sgw,
                         mask=co_m[:, None] & ow_m[None, :], other=0.0).to(ACC)
            acc_b += tl.sum(gz, axis=1)
            m3 = (co_m[:, None] & j_m[None, :])[:, :, None] & ow_m[None, None, :]
            di = d0 - PAD + j
            xv = tl.load(x_c[:, None, None] + (di * sxd)[None, :, None] + h0 * sxh + (w0 * sxw)[None, None, :],
                         mask=m3 & ((di >= 0) & (di < D))[None, :, None], other=0.0).to(ACC)
            acc_d += tl.sum(xv * gz[:, None, :], axis=2)
            hi = h0 - PAD + j
            xv = tl.load(x_c[:, None, None] + d0 * sxd + (hi * sxh)[None, :, None] + (w0 * sxw)[None, None, :],
                         mask=m3 & ((hi >= 0) & (hi < H))[None, :, None], other=0.0).to(ACC)
            acc_h += tl.sum(xv * gz[:, None, :], axis=2)
            wi = w0[None, :] - PAD + j[:, None]  # [KP, BW]
            xv = tl.load(x_c[:, None, None] + d0 * sxd + h0 * sxh + (wi * sxw)[None, :, :],
                         mask=m3 & ((wi >= 0) & (wi < W))[None, :, :], other=0.0).to(ACC)
            acc_w += tl.sum(xv * gz[:, None, :], axis=2)
    base = part_ptr + split * 4 * C_out * CIN_G * KP
    off = (co[:, None] * CIN_G + cl) * KP + j[None, :]
    m2 = co_m[:, None] & j_m[None, :]
    tl.store(base + off, acc_d, mask=m2)
    tl.store(base + C_out * CIN_G * KP + off, acc_h, mask=m2)
    tl.store(base + 2 * C_out * CIN_G * KP + off, acc_w, mask=m2)
    tl.store(base + 3 * C_out * CIN_G * KP + co * CIN_G * KP, acc_b, mask=co_m & ((co * 0 + cl) == 0))


@triton.jit
def _decomp_conv_bwd_dx_kernel(
    gz_ptr, wd_ptr, wh_ptr, ww_ptr, dx_ptr,
    D, H, W, Do, Ho, Wo, C_in, CIN_G, COUT_G, stride,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    K: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    ih = row % H
    id_ = (row // H) % D
    n = row // (H * D)
    iw = tl.program_id(1).to(tl.int64) * BLOCK_W + tl.arange(0, BLOCK_W)
    ci = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    iw_m = iw < W
    ci_m = ci < C_in
    tile_m = ci_m[:, None] & iw_m[None, :]
    PAD: tl.constexpr = K // 2
    g = ci // CIN_G
    cl = ci - g * CIN_G
    # positions that are an output coordinate on the axes a branch does not convolve
    zero_w = tl.zeros([BLOCK_W], dtype=tl.int64)  # widens scalars (see the forward kernel)
    d_on = ((zero_w + id_) % stride == 0) & ((zero_w + id_) // stride < Do)
    h_on = ((zero_w + ih) % stride == 0) & ((zero_w + ih) // stride < Ho)
    w_on = (iw % stride == 0) & (iw // stride < Wo)
    od_ = id_ // stride
    oh_ = ih // stride
    ow_ = iw // stride
    acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
    for col in range(0, COUT_G):
        co = g * COUT_G + col
        g_c = gz_ptr + n * sgn + co[:, None] * sgc
        w_off = (co * CIN_G + cl) * K
        for j in tl.static_range(K):
            t = zero_w + (id_ + PAD - j)
            ok = (t >= 0) & (t % stride == 0) & (t // stride < Do) & h_on & w_on
            wv = tl.load(wd_ptr + w_off + j, mask=ci_m, other=0.0).to(ACC)
            gv = tl.load(g_c + (t // stride)[None, :] * sgd + oh_ * sgh + ow_[None, :] * sgw,
                         mask=tile_m & ok[None, :], other=0.0).to(ACC)
            acc += wv[:, None] * gv
            t = zero_w + (ih + PAD - j)
            ok = (t >= 0) & (t % stride == 0) & (t // stride < Ho) & d_on & w_on
            wv = tl.load(wh_ptr + w_off + j, mask=ci_m, other=0.0).to(ACC)
            gv = tl.load(g_c + od_ * sgd + (t // stride)[None, :] * sgh + ow_[None, :] * sgw,
                         mask=tile_m & ok[None, :], other=0.0).to(ACC)
            acc += wv[:, None] * gv
            tw = iw + PAD - j
            okw = (tw >= 0) & (tw % stride == 0) & (tw // stride < Wo)
            wv = tl.load(ww_ptr + w_off + j, mask=ci_m, other=0.0).to(ACC)
            gv = tl.load(g_c + od_ * sgd + oh_ * sgh + (tw // stride)[None, :] * sgw,
                         mask=tile_m & (okw & d_on & h_on)[None, :], other=0.0).to(ACC)
            acc += wv[:, None] * gv
    pos = ci[:, None] * sxc + (n * sxn + id_ * sxd + ih * sxh) + iw[None, :] * sxw
    tl.store(dx_ptr + pos, acc.to(dx_ptr.dtype.element_ty), mask=tile_m)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tiles(x: torch.Tensor, channels: int, width: int) -> Tuple[int, int]:
    """(BLOCK_C, BLOCK_W): wide along W for NCDHW, wide along C for channels-last."""
    if x.stride(1) == 1 and channels > 1:
        bc = min(triton.next_power_of_2(channels), 64)
        bw = min(triton.next_power_of_2(width), max(1, 1024 // bc), 16)
    else:
        bw = min(triton.next_power_of_2(width), 128)
        bc = min(triton.next_power_of_2(channels), max(1, 1024 // bw), 16)
    return bc, bw


def _out_size(x: torch.Tensor, stride: int) -> Tuple[int, int, int]:
    return tuple((s - 1) // stride + 1 for s in x.shape[2:])


def _launch_fwd(x, w_d, w_h, w_w, bias, stride, groups, act, out, mode, grad_y=None):
    N, C_in = x.shape[:2]
    C_out = w_d.shape[0]
    D, H, W = x.shape[2:]
    Do, Ho, Wo = out.shape[2:]
    bc, bw = _tiles(x, C_out, Wo)
    grid = (N * Do * Ho, triton.cdiv(Wo, bw), triton.cdiv(C_out, bc))
    gy = grad_y if grad_y is not None else out
    _decomp_conv_fwd_kernel[grid](
        x, w_d, w_h, w_w, bias if bias is not None else w_d, gy, out,
        D, H, W, Do, Ho, Wo, C_out, C_in // groups, C_out // groups, stride,
        *x.stride(), *out.stride(), *gy.stride(),
        K=w_d.shape[-1], HAS_BIAS=bias is not None, ACT=_ACT_CODES[act], MODE=mode,
        ACC=_acc_dtype(x.dtype), BLOCK_C=bc, BLOCK_W=bw,
    )


def decomp_conv_fwd(
    x: torch.Tensor,
    w_d: torch.Tensor,
    w_h: torch.Tensor,
    w_w: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: int,
    groups: int,
    activation: Optional[str],
    out: torch.Tensor,
) -> torch.Tensor:
    """Forward into ``out`` (N, C_out, Do, Ho, Wo), any strides. Weights contiguous (C_out, C_in/g, k)."""
    _launch_fwd(x, w_d, w_h, w_w, bias, stride, groups, activation, out, mode=0)
    return out


def decomp_conv_bwd(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    w_d: torch.Tensor,
    w_h: torch.Tensor,
    w_w: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: int,
    groups: int,
    activation: Optional[str],
    grad_x: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: fills ``grad_x`` and returns (grad_x, grad_w_d, grad_w_h, grad_w_w, grad_bias),
    the weight and bias gradients in the accumulation dtype (fp32, fp64 for fp64)."""
    N, C_in, D, H, W = x.shape
    C_out, cin_g, K = w_d.shape
    cout_g = C_out // groups
    Do, Ho, Wo = grad_y.shape[2:]
    acc_torch = torch.float64 if x.dtype == torch.float64 else torch.float32
    if _ACT_CODES[activation] != 0:
        fmt = torch.channels_last_3d if x.stride(1) == 1 and C_in > 1 else torch.contiguous_format
        gz = torch.empty(grad_y.shape, dtype=acc_torch, device=x.device, memory_format=fmt)
        _launch_fwd(x, w_d, w_h, w_w, bias, stride, groups, activation, gz, mode=1, grad_y=grad_y)
    else:
        gz = grad_y
    # weight / bias partial sums
    rows = N * Do * Ho
    bc = min(triton.next_power_of_2(C_out), 16)
    bw = min(triton.next_power_of_2(Wo), 32)
    kp = triton.next_power_of_2(K)
    target = 1 if x.device.type == "cpu" else 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
    splits = max(1, min(rows, target // max(1, triton.cdiv(C_out, bc) * cin_g)))
    rows_per_split = triton.cdiv(rows, splits)
    splits = triton.cdiv(rows, rows_per_split)
    part = torch.empty((splits, 4, C_out, cin_g, kp), dtype=acc_torch, device=x.device)
    _decomp_conv_bwd_dw_kernel[(triton.cdiv(C_out, bc), cin_g, splits)](
        x, gz, part,
        D, H, W, Do, Ho, Wo, C_out, cin_g, cout_g, stride, rows, rows_per_split,
        *x.stride(), *gz.stride(),
        K=K, KP=kp, ACC=_acc_dtype(x.dtype), BLOCK_C=bc, BLOCK_W=bw,
    )
    total = part.sum(0)  # fixed-order reduction over the splits
    # clones, not views: the four results must not share storage
    gw_d, gw_h, gw_w = (total[i, :, :, :K].clone(memory_format=torch.contiguous_format) for i in range(3))
    g_b = total[3, :, 0, 0].clone()
    # input gradient
    bc, bw = _tiles(x, C_in, W)
    _decomp_conv_bwd_dx_kernel[(N * D * H, triton.cdiv(W, bw), triton.cdiv(C_in, bc))](
        gz, w_d, w_h, w_w, grad_x,
        D, H, W, Do, Ho, Wo, C_in, cin_g, cout_g, stride,
        *gz.stride(), *grad_x.stride(),
        K=K, ACC=_acc_dtype(x.dtype), BLOCK_C=bc, BLOCK_W=bw,
    )
    return grad_x, gw_d, gw_h, gw_w, g_b


def lowering_specs():
    """(kernel, signature, constexprs) for every kernel here, for the sm_90 lowering test."""
    ptr_x, ptr_y = "*bf16", "*bf16"
    fwd_sig = {n: "*bf16" for n in ("x_ptr", "wd_ptr", "wh_ptr", "ww_ptr", "b_ptr", "gy_ptr")}
    fwd_sig.update({"y_ptr": ptr_y})
    ints = ["D", "H", "W", "Do", "Ho", "Wo", "C_out", "CIN_G", "COUT_G", "stride"]
    strides = [f"s{t}{a}" for t in "xyg" for a in "ncdhw"]
    fwd_sig.update({n: "i32" for n in ints})
    fwd_sig.update({n: "i64" for n in strides})
    fwd_cx = {"K": 13, "HAS_BIAS": True, "ACT": 1, "MODE": 0, "ACC": tl.float32, "BLOCK_C": 16, "BLOCK_W": 64}
    fwd_sig.update({n: "constexpr" for n in fwd_cx})
    gz_sig = dict(fwd_sig, y_ptr="*fp32")
    gz_cx = dict(fwd_cx, MODE=1)
    dw_sig = {"x_ptr": ptr_x, "gz_ptr": "*fp32", "part_ptr": "*fp32"}
    dw_sig.update({n: "i32" for n in ints[:-1] + ["stride", "rows", "rows_per_split"]})
    dw_sig.update({f"s{t}{a}": "i64" for t in "xg" for a in "ncdhw"})
    dw_cx = {"K": 13, "KP": 16, "ACC": tl.float32, "BLOCK_C": 16, "BLOCK_W": 32}
    dw_sig.update({n: "constexpr" for n in dw_cx})
    dx_sig = {"gz_ptr": "*fp32", "wd_ptr": ptr_x, "wh_ptr": ptr_x, "ww_ptr": ptr_x, "dx_ptr": ptr_x}
    dx_sig.update({n: "i32" for n in ["D", "H", "W", "Do", "Ho", "Wo", "C_in", "CIN_G", "COUT_G", "stride"]})
    dx_sig.update({f"s{t}{a}": "i64" for t in "gx" for a in "ncdhw"})
    dx_cx = {"K": 13, "ACC": tl.float32, "BLOCK_C": 16, "BLOCK_W": 64}
    dx_sig.update({n: "constexpr" for n in dx_cx})
    return [
        (_decomp_conv_fwd_kernel, fwd_sig, fwd_cx),
        (_decomp_conv_fwd_kernel, gz_sig, gz_cx),
        (_decomp_conv_bwd_dw_kernel, dw_sig, dw_cx),
        (_decomp_conv_bwd_dx_kernel, dx_sig, dx_cx),
    ]
