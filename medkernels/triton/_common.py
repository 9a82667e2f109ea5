"""Element helpers the Triton modules share: the fused activations (exact-erf GELU, ReLU, SiLU)
and their derivatives, and a round-to-nearest-even store cast. A vendored Triton module needs this
file beside it and nothing else of medkernels."""

from __future__ import annotations

import triton
import triton.language as tl

_ACT_CODES = {None: 0, "none": 0, "gelu": 1, "relu": 2, "silu": 3}


@triton.jit
def _act_fwd(z, ACT: tl.constexpr):
    if ACT == 1:
        z = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == 2:
        z = tl.where(z < 0, 0.0, z)  # NaN stays NaN, as torch.relu
    elif ACT == 3:
        z = z / (1.0 + tl.exp(-z))
    return z


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    if ACT == 1:
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        d = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == 2:
        d = tl.where(z <= 0, 0.0, 1.0).to(z.dtype)  # torch's threshold_backward: NaN z passes the gradient
    elif ACT == 3:
        sig = 1.0 / (1.0 + tl.exp(-z))
        d = sig * (1.0 + z * (1.0 - sig))
    else:
        d = tl.full(z.shape, 1.0, z.dtype)
    return d


@triton.jit
def _cast_out(v, ptr):
    """v cast to ptr's element type, round-to-nearest-even also for bfloat16: the interpreter
    truncates fp32 -> bf16, so round the fp32 bits first (then the cast is exact everywhere)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        f = v.to(tl.float32)
        u = f.to(tl.uint32, bitcast=True)
        r = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
        f = tl.where(f != f, f, r.to(tl.float32, bitcast=True))
        return f.to(tl.bfloat16)
    else:
        return v.to(ptr.dtype.element_ty)
