"""medkernels.cupy: GroupNorm + add / FiLM + activation (forward) on CuPy arrays.

The three launches of the compiled library's forward plan (medkernels/detail/group_norm_kernels.h):
the per-(sample, channel, split) shifted sums as a block program, the per-group statistics and
the fused normalise-affine-FiLM-activation pass; the same fixed-order sums, so the same bits as
the library's CUDA kernels."""

from __future__ import annotations

import math
from typing import Optional

from ._nvrtc import _DTYPES, _module, register

_GROUP_NORM = r"""
// meta (int64): N C G M x_strides[3] y_strides[3] activation. The params every launch rebuilds.
#define MK_GN_PARAMS(T)                                                                                \
  medkernels::GroupNormParams p;                                                                       \
  p.x = x; p.y = y; p.weight = weight; p.bias = bias; p.scale = scale; p.shift = shift; p.add = add;  \
  p.mean = mean; p.rstd = rstd; p.workspace = ws; p.eps = eps;                                         \
  p.batch = meta[0]; p.channels = meta[1]; p.groups = meta[2]; p.spatial = meta[3];                    \
  for (int a = 0; a < 3; ++a) { p.x_strides[a] = meta[4 + a]; p.y_strides[a] = meta[7 + a]; }          \
  p.activation = static_cast<medkernels::Activation>(meta[10]);                                        \
  const medkernels::detail::GnGeom g = medkernels::detail::gn_geom(p);
#define MK_GN_ARGS(T)                                                                                  \
    const T* x, T* y, const T* weight, const T* bias, const T* scale, const T* shift, const T* add,   \
    void* mean, void* rstd, double* ws, const long long* meta, double eps
#define MK_GROUP_NORM_FWD(SUFFIX, T)                                                                    \
extern "C" __global__ void __launch_bounds__(256) mk_group_norm_sums_##SUFFIX(MK_GN_ARGS(T)) {          \
  MK_GN_PARAMS(T)                                                                                       \
  extern __shared__ __align__(16) unsigned char smem[];                                                 \
  medkernels::detail::GnSums<medkernels::detail::GnFwdElem<T>, medkernels::GroupNormParams>{p, g, ws}(  \
      medkernels::detail::DeviceBlock(), medkernels::detail::BlockPos{blockIdx.x, blockIdx.y, gridDim.x, \
                                                                      gridDim.y}, smem);               \
}                                                                                                       \
extern "C" __global__ void __launch_bounds__(256) mk_group_norm_stats_##SUFFIX(MK_GN_ARGS(T)) {         \
  MK_GN_PARAMS(T)                                                                                       \
  const long long i = (long long)blockIdx.x * 256 + threadIdx.x;                                        \
  if (i < g.N * g.G) medkernels::detail::GnStats<T>{p, g, ws}(i);                                       \
}                                                                                                       \
extern "C" __global__ void __launch_bounds__(256) mk_group_norm_apply_##SUFFIX(MK_GN_ARGS(T)) {         \
  MK_GN_PARAMS(T)                                                                                       \
  medkernels::detail::GnApply<T>{p, g}(medkernels::detail::DeviceBlock(),                              \
      medkernels::detail::BlockPos{blockIdx.x, blockIdx.y, gridDim.x, gridDim.y}, nullptr);            \
}
"""

register("group_norm", "medkernels/detail/group_norm_kernels.h", _GROUP_NORM, "MK_GROUP_NORM_FWD",
         [f"mk_group_norm_{k}_{s}" for s in _DTYPES for k in ("sums", "stats", "apply")])

_ACTIVATIONS = {None: 0, "gelu": 1, "silu": 3}


def _ncm(a) -> Optional[list]:
    """Element strides of a as (N, C, M), or None unless NC... contiguous or channels-last."""
    C, M = a.shape[1], math.prod(a.shape[2:])
    if a.flags.c_contiguous:
        return [C * M, M, 1]
    if a.transpose(0, *range(2, a.ndim), 1).flags.c_contiguous:
        return [M * C, 1, C]
    return None


def _geometry(C: int, M: int, channels_last: bool):
    """(channel tiles, splits) of the plan's grid: detail::gn_geom's (256 threads as channel
    lanes x rows; tests/test_group_norm_cuda.py checks the two agree)."""
    ct = min(32, 1 << (C - 1).bit_length()) if channels_last else 1
    rows = 256 // ct
    splits = min(max(-(-M // (16 * rows)), 1), 1024)
    chunk = -(-M // splits)
    return -(-C // ct), -(-M // chunk)


def group_norm_act(x, num_groups: int, weight=None, bias=None, *, eps: float = 1e-5, scale=None, shift=None,
                   add=None, activation: Optional[str] = None):
    """``medkernels.ops.group_norm_act`` (forward) on CuPy arrays: x (N, C, *spatial) NC...
    contiguous or channels-last (other strides are copied), float32/float64/float16; weight, bias
    (C,); scale, shift, add (N, C). Returns y in x's layout."""
    import cupy
    import numpy as np

    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}.get(x.dtype)
    if suffix is None:
        raise TypeError(f"x must be float32, float64 or float16, got {x.dtype}")
    if not 3 <= x.ndim <= 5 or x.size == 0:
        raise ValueError(f"x must be non-empty (N, C, *spatial) with 1 to 3 spatial axes, got shape {x.shape}")
    N, C = x.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing the {C} channels, got {num_groups!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if _ncm(x) is None:
        x = cupy.ascontiguousarray(x)

    def operand(name, t, shape):
        if t is None:
            return None
        t = cupy.ascontiguousarray(t, dtype=x.dtype)
        if t.size != math.prod(shape) or t.shape[:len(shape)] != shape:
            raise ValueError(f"{name} must be {shape}, got shape {t.shape}")
        return t

    weight, bias = operand("weight", weight, (C,)), operand("bias", bias, (C,))
    scale, shift, add = (operand(n, t, (N, C)) for n, t in (("scale", scale), ("shift", shift), ("add", add)))
    y = cupy.empty_like(x)  # keeps x's layout
    M = x.size // (N * C)
    acc = np.float64 if x.dtype == np.float64 else np.float32
    mean, rstd = cupy.empty((N, num_groups), acc), cupy.empty((N, num_groups), acc)
    xs = _ncm(x)
    tiles, splits = _geometry(C, M, C > 1 and xs[1] == 1 and xs[2] != 1)
    ws = cupy.empty(N * C * splits * 2, np.float64)
    meta = cupy.asarray(np.array([N, C, num_groups, M, *xs, *_ncm(y), _ACTIVATIONS[activation]], np.int64))
    null = np.uintp(0)
    args = (x, y, *(null if t is None else t for t in (weight, bias, scale, shift, add)), mean, rstd, ws, meta,
            np.float64(eps))
    mod = _module("group_norm")
    mod.get_function(f"mk_group_norm_sums_{suffix}")((N * tiles, splits), (256,), args, shared_mem=2 * 256 * 8)
    mod.get_function(f"mk_group_norm_stats_{suffix}")((-(-N * num_groups // 256),), (256,), args)
    mod.get_function(f"mk_group_norm_apply_{suffix}")((N * tiles, splits), (256,), args)
    return y
