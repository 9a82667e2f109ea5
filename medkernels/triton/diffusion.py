"""Few-step diffusion (Fast-DDPM) steps in Triton: one pass per op, noise made in the kernel.

Per sample b (abar gathered on the device from the table [1, abar_0, ..., abar_{T-1}] at t + 1):

    q_sample   out = sqrt(at) x0 + sqrt(1 - at) z
    ddim       x0 = (x - sqrt(1 - at) e) / sqrt(at);  c1 = eta sqrt((1 - at/an)(1 - an)/(1 - at));
               c2 = sqrt(1 - an - c1^2);  out = sqrt(an) x0 + c1 z + c2 e
    ddpm       beta = 1 - at/an;  x0 = clamp(sqrt(1/at) x - sqrt(1/at - 1) e, -clip, clip);
               out = (sqrt(an) beta x0 + sqrt(1 - beta)(1 - an) x) / (1 - at) + [t != 0] sqrt(beta) z
    loss       d = e_pred - z;  grad = scale d;  partial[b, block] = sum d^2
    normal     out = z

(mirthAI/Fast-DDPM, functions/denoising.py and functions/losses.py). The per-sample
coefficients are computed once per program in float64 from the float64 table (1 - abar is tiny
near t = 0), then the element math runs in fp32 (fp64 for float64 tensors).

z is read from ``noise`` or made from (seed, offset) by the counter-based contract of
``medkernels.reference.diffusion``: element i of sample b takes lane i % 4 of
Philox-4x32-10(counter = (i // 4, b, offset_lo, offset_hi), key = (seed_lo, seed_hi)), turned into
a normal by an fp32 Box-Muller on the pairs (lane 0, 1) and (lane 2, 3). A program owns BLOCK
consecutive elements of one sample (BLOCK a multiple of 4), so it runs BLOCK / 4 Philox calls and
interleaves the four normals of each back into element order.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import _cast_out

OP_Q_SAMPLE, OP_DDIM, OP_DDPM, OP_LOSS, OP_NORMAL = 0, 1, 2, 3, 4
BLOCK = 1024


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 on uint32 tensors (Salmon et al.; the Random123 round and key constants)."""
    for _ in tl.static_range(10):
        _c0 = c0
        _c2 = c2
        c0 = tl.umulhi(_c2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(_c0, 0xD2511F53) ^ c3 ^ k1
        c1 = _c2 * 0xCD9E8D57
        c3 = _c0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _philox_words(b, g, seed, offset):
    """The 4 uint32 words of the groups g (int64 vector) of sample b."""
    seed = seed.to(tl.int64)  # small values arrive as i32
    offset = offset.to(tl.int64)
    zero = tl.zeros(g.shape, tl.uint32)
    k0 = zero + (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = zero + ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = (g & 0xFFFFFFFF).to(tl.uint32)
    c1 = zero + (b & 0xFFFFFFFF).to(tl.uint32)
    c2 = zero + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return _philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def _uniform(x):
    # ((x >> 9) + 0.5) * 2^-23: exact in fp32, never 0 or 1
    return ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def _normal_block(b, start, seed, offset, BLOCK: tl.constexpr):
    """Normals for elements start .. start + BLOCK - 1 (start a multiple of 4) of sample b, fp32."""
    G: tl.constexpr = BLOCK // 4
    g = start // 4 + tl.arange(0, G).to(tl.int64)
    w0, w1, w2, w3 = _philox_words(b, g, seed, offset)
    r01 = tl.sqrt_rn(-2.0 * tl.log(_uniform(w0)))
    th01 = _uniform(w1) * 6.283185307179586
    r23 = tl.sqrt_rn(-2.0 * tl.log(_uniform(w2)))
    th23 = _uniform(w3) * 6.283185307179586
    n0 = r01 * tl.cos(th01)
    n1 = r01 * tl.sin(th01)
    n2 = r23 * tl.cos(th23)
    n3 = r23 * tl.sin(th23)
    # element 4k + l is lane l of group k
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))


@triton.jit(do_not_specialize=["seed", "offset"])
def _philox_bits_kernel(out_ptr, seed, offset, GROUPS, BLOCK_G: tl.constexpr):
    """out[b, g, l] = word l of group g of sample b (int64 holding the uint32)."""
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    m = g < GROUPS
    w0, w1, w2, w3 = _philox_words(b, g, seed, offset)
    base = out_ptr + (b * GROUPS + g) * 4
    tl.store(base, w0.to(tl.int64), mask=m)
    tl.store(base + 1, w1.to(tl.int64), mask=m)
    tl.store(base + 2, w2.to(tl.int64), mask=m)
    tl.store(base + 3, w3.to(tl.int64), mask=m)


@triton.jit(do_not_specialize=["seed", "offset", "N", "NBLK"])
def _diffusion_fwd_kernel(
    x_ptr, e_ptr, z_ptr, out_ptr, x0_ptr, part_ptr, table_ptr, t_ptr, tn_ptr,
    N, T, NBLK, seed, offset, eta, clip, scale,
    OP: tl.constexpr, NOISE: tl.constexpr, HAS_CLIP: tl.constexpr, WRITE_X0: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < N
    base = b * N

    if NOISE == 1:  # read
        z = tl.load(z_ptr + base + offs, mask=m, other=0.0).to(ACC)
    elif NOISE == 2:  # make from (seed, offset)
        z = _normal_block(b, start, seed, offset, BLOCK).to(ACC)
    else:  # none needed (DDIM with eta = 0)
        z = tl.zeros([BLOCK], ACC)

    if OP == 4:  # normal
        tl.store(out_ptr + base + offs, _cast_out(z, out_ptr), mask=m)
    elif OP == 3:  # loss: d = e_pred - z, grad = scale d, partial sum of d^2
        ep = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(ACC)
        d = tl.where(m, ep - z, 0.0)
        tl.store(out_ptr + base + offs, _cast_out(d * scale, out_ptr), mask=m)
        tl.store(part_ptr + b * NBLK + pid, tl.sum(d * d, axis=0).to(part_ptr.dtype.element_ty))
    else:
        t = tl.load(t_ptr + b)
        t = tl.minimum(tl.maximum(t, 0), T - 1)  # the op validates; never read outside the table
        at = tl.load(table_ptr + t + 1)
        x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(ACC)
        if OP == 0:  # q_sample
            out = tl.sqrt(at).to(ACC) * x + tl.sqrt(1.0 - at).to(ACC) * z
        else:
            tn = tl.load(tn_ptr + b)
            tn = tl.minimum(tl.maximum(tn, -1), T - 1)
            an = tl.load(table_ptr + tn + 1)
            e = tl.load(e_ptr + base + offs, mask=m, other=0.0).to(ACC)
            if OP == 1:  # ddim
                c1 = eta * tl.sqrt((1.0 - at / an) * (1.0 - an) / (1.0 - at))
                c2 = tl.sqrt(1.0 - an - c1 * c1)
                x0 = (x - tl.sqrt(1.0 - at).to(ACC) * e) / tl.sqrt(at).to(ACC)
                out = tl.sqrt(an).to(ACC) * x0 + c1.to(ACC) * z + c2.to(ACC) * e
            else:  # ddpm
                beta = 1.0 - at / an
                x0 = tl.sqrt(1.0 / at).to(ACC) * x - tl.sqrt(1.0 / at - 1.0).to(ACC) * e
                if HAS_CLIP:
                    # a clamp by comparisons: NaN stays NaN (tl.minimum/maximum may drop it)
                    x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
                ca = (tl.sqrt(an) * beta / (1.0 - at)).to(ACC)
                cb = (tl.sqrt(1.0 - beta) * (1.0 - an) / (1.0 - at)).to(ACC)
                sigma = (tl.sqrt(beta) * (t != 0).to(tl.float64)).to(ACC)
                out = ca * x0 + cb * x + sigma * z
            if WRITE_X0:
                tl.store(x0_ptr + base + offs, _cast_out(x0, x0_ptr), mask=m)
        tl.store(out_ptr + base + offs, _cast_out(out, out_ptr), mask=m)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def diffusion_fwd(
    op: int,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    eps: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    x0_out: Optional[torch.Tensor] = None,
    partial: Optional[torch.Tensor] = None,
    table: Optional[torch.Tensor] = None,
    t: Optional[torch.Tensor] = None,
    t_next: Optional[torch.Tensor] = None,
    seed: int = 0,
    offset: int = 0,
    eta: float = 0.0,
    clip: Optional[float] = None,
    scale: float = 0.0,
) -> torch.Tensor:
    """Launch one fused step over contiguous (B, ...) tensors; ``partial`` is (B, cdiv(N, BLOCK))."""
    B = x.shape[0]
    N = x.numel() // B if B else 0
    nblk = triton.cdiv(N, BLOCK)
    if B == 0 or N == 0:
        return out
    dummy = out
    noise_mode = 1 if noise is not None else (0 if op == OP_DDIM and eta == 0.0 else 2)
    _diffusion_fwd_kernel[(nblk, B)](
        x, eps if eps is not None else dummy, noise if noise is not None else dummy, out,
        x0_out if x0_out is not None else dummy, partial if partial is not None else dummy,
        table if table is not None else dummy, t if t is not None else dummy, t_next if t_next is not None else dummy,
        N, (table.numel() - 1) if table is not None else 1, nblk, seed, offset, float(eta),
        float(clip) if clip is not None else 0.0, float(scale),
        OP=op, NOISE=noise_mode, HAS_CLIP=clip is not None, WRITE_X0=x0_out is not None,
        ACC=_acc(x.dtype), BLOCK=BLOCK,
    )
    return out


def philox_bits(shape, seed: int, offset: int, device) -> torch.Tensor:
    """(B, ceil(N / 4), 4) int64 Philox words of the noise contract, made by the kernel."""
    B = shape[0]
    N = 1
    for s in shape[1:]:
        N *= s
    groups = (N + 3) // 4
    out = torch.empty((B, groups, 4), dtype=torch.int64, device=device)
    BLOCK_G = 256
    _philox_bits_kernel[(triton.cdiv(groups, BLOCK_G), B)](out, seed, offset, groups, BLOCK_G=BLOCK_G)
    return out


def lowering_specs():
    """(kernel, signature, constexprs) covering every jit kernel here, for the sm_90 lowering test:
    each op once in fp32 with in-kernel noise, plus the read-noise, 16-bit and float64 paths."""
    variants = [("fp32", op, 2) for op in range(5)] + [("fp32", OP_DDIM, 1), ("fp32", OP_DDIM, 0),
                                                        ("bf16", OP_DDPM, 2), ("fp16", OP_Q_SAMPLE, 1),
                                                        ("fp64", OP_LOSS, 2)]
    specs = []
    for dt, op, noise in variants:
        sig = {p: f"*{dt}" for p in ("x_ptr", "e_ptr", "z_ptr", "out_ptr", "x0_ptr")}
        sig.update({"part_ptr": "*fp64", "table_ptr": "*fp64", "t_ptr": "*i64", "tn_ptr": "*i64", "N": "i64",
                    "T": "i32", "NBLK": "i32", "seed": "i64", "offset": "i64", "eta": "fp32", "clip": "fp32",
                    "scale": "fp32"})
        cx = {"OP": op, "NOISE": noise, "HAS_CLIP": op == OP_DDPM, "WRITE_X0": op in (OP_DDIM, OP_DDPM),
              "ACC": tl.float64 if dt == "fp64" else tl.float32, "BLOCK": BLOCK}
        sig.update({k: "constexpr" for k in cx})
        specs.append((_diffusion_fwd_kernel, sig, cx))
    specs.append((_philox_bits_kernel, {"out_ptr": "*i64", "seed": "i64", "offset": "i64", "GROUPS": "i64",
                                        "BLOCK_G": "constexpr"}, {"BLOCK_G": 256}))
    return specs
