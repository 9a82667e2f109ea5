"""medkernels.cupy: the decomposed 3D convolution (forward) on CuPy arrays."""

from __future__ import annotations

from typing import Optional

from ._nvrtc import _DTYPES, _elem_strides, _module, register

_DECOMP_CONV = r"""
// meta (int64): N Ci Co cin_g cout_g | in[3] | out[3] | xs[5] | ys[5] | K s act channels_inner
#define MK_DECOMP_CONV_FWD(SUFFIX, T)                                                                   \
extern "C" __global__ void __launch_bounds__(256) mk_decomp_conv3d_fwd_##SUFFIX(                        \
    const T* x, const T* w_d, const T* w_h, const T* w_w, const T* bias, T* y, const long long* meta,    \
    long long total) {                                                                                   \
  medkernels::detail::ConvArgs a;                                                                        \
  a.x = x; a.w[0] = w_d; a.w[1] = w_h; a.w[2] = w_w; a.bias = bias; a.y = y;                           \
  a.N = meta[0]; a.Ci = meta[1]; a.Co = meta[2]; a.cin_g = meta[3]; a.cout_g = meta[4];                 \
  for (int i = 0; i < 3; ++i) { a.in[i] = meta[5 + i]; a.out[i] = meta[8 + i]; }                       \
  for (int i = 0; i < 5; ++i) { a.xs[i] = meta[11 + i]; a.ys[i] = meta[16 + i]; }                      \
  a.K = (int)meta[21]; a.pad = a.K / 2; a.s = (int)meta[22];                                            \
  a.act = static_cast<medkernels::Activation>(meta[23]); a.channels_inner = meta[24] != 0;             \
  typedef medkernels::Io<T>::acc A;                                                                      \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;                       \
       i += (long long)gridDim.x * blockDim.x)                                                           \
    medkernels::detail::conv_generic_point<T, T, T, A, 0>(a, i);                                         \
}
"""

register("decomp_conv", "medkernels/detail/decomp_conv_kernels.h", _DECOMP_CONV, "MK_DECOMP_CONV_FWD",
         ["mk_decomp_conv3d_fwd_" + s for s in _DTYPES])

_ACT = {None: 0, "gelu": 1, "relu": 2, "silu": 3}


def decomp_conv3d(x, w_d, w_h, w_w, bias=None, stride: int = 1, groups: Optional[int] = None,
                  activation: Optional[str] = None, stream=None):
    """``act(conv_d(x) + conv_h(x) + conv_w(x) + bias)`` on CuPy arrays (float32, float64, float16).

    x: (N, C_in, D, H, W), any strides (NCDHW, channels-last views...). w_d, w_h, w_w: (C_out,
    C_in/groups, k), k odd; bias (C_out,) or None; groups None means depthwise. Returns a
    contiguous (N, C_out, Do, Ho, Wo) array, each size (S - 1) // stride + 1, in x's dtype. Runs on
    ``stream`` (a cupy Stream) or the current stream.
    """
    import cupy
    import numpy as np

    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}.get(x.dtype)
    if suffix is None:
        raise TypeError(f"x must be float32, float64 or float16, got {x.dtype}")
    if x.ndim != 5:
        raise ValueError(f"x must be (N, C_in, D, H, W), got shape {x.shape}")
    n, c_in = x.shape[:2]
    groups = c_in if groups is None else int(groups)
    if activation not in _ACT:
        raise ValueError(f"activation must be one of {tuple(_ACT)}, got {activation!r}")
    ws = [cupy.ascontiguousarray(w, dtype=x.dtype) for w in (w_d, w_h, w_w)]
    c_out, cin_g, k = ws[0].shape if ws[0].ndim == 3 else (None, None, None)
    if c_out is None or any(w.shape != ws[0].shape for w in ws):
        raise ValueError(f"w_d, w_h, w_w must all be (C_out, C_in/groups, k), got {[w.shape for w in ws]}")
    if groups < 1 or c_in % groups or c_out % groups or cin_g != c_in // groups:
        raise ValueError(f"groups={groups} must divide C_in={c_in} and C_out={c_out}, with w (C_out, C_in/groups, k)")
    if k % 2 == 0 or stride < 1:
        raise ValueError(f"kernel size must be odd and stride >= 1, got k={k}, stride={stride}")
    b = None if bias is None else cupy.ascontiguousarray(bias, dtype=x.dtype)
    if b is not None and b.shape != (c_out,):
        raise ValueError(f"bias must be ({c_out},), got {b.shape}")
    out = [(s - 1) // stride + 1 for s in x.shape[2:]]
    y = cupy.empty((n, c_out, *out), dtype=x.dtype)
    meta = [n, c_in, c_out, cin_g, c_out // groups, *x.shape[2:], *out, *_elem_strides(x), *_elem_strides(y),
            k, stride, _ACT[activation], 0]
    total = y.size
    fn = _module("decomp_conv").get_function(f"mk_decomp_conv3d_fwd_{suffix}")
    threads = 256
    blocks = max(1, min((total + threads - 1) // threads, 1 << 20))
    args = (x, *ws, b if b is not None else np.uintp(0), y, cupy.asarray(np.array(meta, dtype=np.int64)),
            np.int64(total))
    with stream if stream is not None else cupy.cuda.get_current_stream():
        fn((blocks,), (threads,), args)
    return y


