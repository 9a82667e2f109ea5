"""medkernels.cupy: the (shifted, cross-modal) 3D window attention (forward) on CuPy arrays."""

from __future__ import annotations

from typing import Optional

from ._nvrtc import _DTYPES, _module, register

_WINDOW_ATTENTION = r"""
// meta (int64): batch heads head_dim directions | size[3] window[3] eff_window[3] shift[3] padded[3] |
// q_strides[6] k_strides[6] v_strides[6] o_strides[6]. One thread per (b, window, head, token); grid.y = direction.
#define MK_WINDOW_ATTENTION_FWD_E(SUFFIX, T, EMAX)                                                           \
extern "C" __global__ void __launch_bounds__(128) mk_window_attention3d_fwd_##SUFFIX##_e##EMAX(              \
    const T* q0, const T* k0, const T* v0, const T* q1, const T* k1, const T* v1, T* o0, T* o1,               \
    const T* table, const T* pad_kv, void* lse, const long long* meta, double scale, double mask_value,       \
    int mask_padded, long long items) {                                                                       \
  medkernels::WindowAttentionParams p;                                                                        \
  p.q0 = q0; p.k0 = k0; p.v0 = v0; p.q1 = q1; p.k1 = k1; p.v1 = v1; p.o0 = o0; p.o1 = o1;                    \
  p.table = table; p.pad_kv = pad_kv; p.lse = lse;                                                            \
  p.batch = meta[0]; p.heads = meta[1]; p.head_dim = meta[2]; p.directions = (int)meta[3];                   \
  for (int a = 0; a < 3; ++a) {                                                                               \
    p.size[a] = meta[4 + a]; p.window[a] = meta[7 + a]; p.eff_window[a] = meta[10 + a];                       \
    p.shift[a] = meta[13 + a]; p.padded[a] = meta[16 + a];                                                    \
  }                                                                                                           \
  for (int a = 0; a < 6; ++a) {                                                                               \
    p.q_strides[a] = meta[19 + a]; p.k_strides[a] = meta[25 + a];                                             \
    p.v_strides[a] = meta[31 + a]; p.o_strides[a] = meta[37 + a];                                             \
  }                                                                                                           \
  p.scale = scale; p.mask_value = mask_value; p.mask_padded = mask_padded != 0;                               \
  typedef medkernels::Io<T>::acc A;                                                                           \
  const medkernels::detail::WaGeo g = medkernels::detail::wa_geo(p);                                          \
  const long long item = (long long)blockIdx.x * 128 + threadIdx.x;                                          \
  if (item < items) medkernels::detail::wa_fwd_item<T, A, EMAX>(p, g, (int)blockIdx.y, item);                 \
}
#define MK_WINDOW_ATTENTION_FWD(SUFFIX, T)  \
  MK_WINDOW_ATTENTION_FWD_E(SUFFIX, T, 16)  \
  MK_WINDOW_ATTENTION_FWD_E(SUFFIX, T, 32)  \
  MK_WINDOW_ATTENTION_FWD_E(SUFFIX, T, 64)  \
  MK_WINDOW_ATTENTION_FWD_E(SUFFIX, T, 128)
"""
_EMAX = (16, 32, 64, 128)

register("window_attention", "medkernels/detail/window_attention_kernels.h", _WINDOW_ATTENTION,
         "MK_WINDOW_ATTENTION_FWD", [f"mk_window_attention3d_fwd_{s}_e{e}" for s in _DTYPES for e in _EMAX])

def _triple(name, v):
    # the package's one parser of window/shift: 2.0, True, "2" or 2 values are refused, not truncated
    from ..reference.window_attention import _triple as triple

    return triple(name, v)


def _window_attention(qs, ks, vs, window, shift, rel_bias_table, pad_kv, scale, mask_value, mask_padded):
    import cupy
    import numpy as np

    q = qs[0]
    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}.get(q.dtype)
    if suffix is None:
        raise TypeError(f"q must be float32, float64 or float16, got {q.dtype}")
    for name, a in zip(("q", "k", "v") * 2, (*qs, *ks, *vs)):
        if a.shape != q.shape or a.dtype != q.dtype or a.ndim != 6:
            raise ValueError(f"{name} must be (B, D, H, W, heads, head_dim) like q {q.shape} {q.dtype}, got "
                             f"{a.shape} {a.dtype}")
    B, D, H, W, heads, E = q.shape
    if E > 128:
        raise ValueError(f"head_dim must be <= 128, got {E}")
    window, shift = _triple("window", window), _triple("shift", shift)
    size = (D, H, W)
    eff, sh = list(window), list(shift)
    for a in range(3):
        if window[a] < 1 or not 0 <= shift[a] < window[a]:
            raise ValueError(f"need window >= 1 and 0 <= shift < window, got window {window} shift {shift}")
        if size[a] <= window[a]:  # MONAI get_window_size
            eff[a], sh[a] = size[a], 0
    padded = [-(-s // w) * w for s, w in zip(size, eff)]
    table = None if rel_bias_table is None else cupy.ascontiguousarray(rel_bias_table, dtype=q.dtype)
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    if table is not None and table.shape != (rows, heads):
        raise ValueError(f"rel_bias_table must be ({rows}, {heads}), got {table.shape}")
    pkv = None if pad_kv is None else cupy.ascontiguousarray(pad_kv, dtype=q.dtype)
    if pkv is not None and pkv.shape != (2, heads, E):
        raise ValueError(f"pad_kv must be (2, {heads}, {E}), got {pkv.shape}")
    st = lambda a: [s // a.itemsize for s in a.strides]
    st2 = lambda pair: st(pair[0]) != st(pair[1])
    dirs = len(qs)
    if dirs == 2:  # the kernel addresses both directions with one set of strides per role
        qs, ks, vs = ([cupy.ascontiguousarray(a) for a in pair] if st2(pair) else list(pair) for pair in (qs, ks, vs))
    outs = [cupy.empty(q.shape, q.dtype) for _ in range(dirs)]
    acc = np.float64 if q.dtype == np.float64 else np.float32
    lse = cupy.empty((dirs, B, D, H, W, heads), acc)
    meta = [B, heads, E, dirs, *size, *window, *eff, *sh, *padded, *st(qs[0]), *st(ks[0]), *st(vs[0]), *st(outs[0])]
    e = next(m for m in _EMAX if E <= m)
    N = eff[0] * eff[1] * eff[2]
    nW = (padded[0] // eff[0]) * (padded[1] // eff[1]) * (padded[2] // eff[2])
    items = B * nW * heads * N
    null = np.uintp(0)
    fn = _module("window_attention").get_function(f"mk_window_attention3d_fwd_{suffix}_e{e}")
    fn(((items + 127) // 128, dirs), (128,),
       (qs[0], ks[0], vs[0], qs[-1], ks[-1], vs[-1], outs[0], outs[-1], null if table is None else table,
        null if pkv is None else pkv, lse, cupy.asarray(np.array(meta, np.int64)),
        np.float64(E ** -0.5 if scale is None else scale), np.float64(mask_value), np.int32(bool(mask_padded)),
        np.int64(items)))
    return outs


def window_attention3d(q, k, v, window, shift=0, rel_bias_table=None, mask_value: float = -100.0,
                       scale: Optional[float] = None, pad_kv=None, mask_padded: bool = False):
    """(Shifted) 3D window self-attention (``medkernels.ops.window_attention3d``, forward) on CuPy arrays.

    q, k, v: (B, D, H, W, heads, head_dim), any strides, float32/float64/float16, head_dim <= 128.
    Returns a contiguous (B, D, H, W, heads, head_dim) array.
    """
    return _window_attention((q,), (k,), (v,), window, shift, rel_bias_table, pad_kv, scale, mask_value,
                             mask_padded)[0]


def cross_window_attention3d_separate(q_a, k_a, v_a, q_b, k_b, v_b, window, shift=0, rel_bias_table=None,
                                      mask_value: float = -100.0, scale: Optional[float] = None, pad_kv=None,
                                      mask_padded: bool = False):
    """SwinCross cross-modal window attention (``medkernels.ops.cross_window_attention3d_separate``) on six
    (B, D, H, W, heads, head_dim) CuPy arrays, both directions in one launch: ``out_a = attn(q_a, k_b, v_b)``,
    ``out_b = attn(q_b, k_a, v_a)``. Returns (out_a, out_b)."""
    a, b = _window_attention((q_a, q_b), (k_b, k_a), (v_b, v_a), window, shift, rel_bias_table, pad_kv, scale,
                             mask_value, mask_padded)
    return a, b


def cross_window_attention3d(qkv_a, qkv_b, num_heads: int, window, shift=0, rel_bias_table=None,
                             mask_value: float = -100.0, scale: Optional[float] = None, pad_kv=None,
                             mask_padded: bool = False):
    """SwinCross cross-modal window attention (``medkernels.ops.cross_window_attention3d``, forward) on the
    shared qkv Linear's outputs: qkv_a, qkv_b (B, D, H, W, 3*C) CuPy arrays, last axis (3, heads, head_dim).
    q, k, v are strided views (splitting the last axis never copies). Returns (out_a, out_b)."""
    if getattr(num_heads, "shape", None) is not None:
        raise TypeError("cross_window_attention3d takes (qkv_a, qkv_b, num_heads, window, ...); the six-array "
                        "form is cross_window_attention3d_separate")
    views = []
    for name, qkv in (("qkv_a", qkv_a), ("qkv_b", qkv_b)):
        c3 = qkv.shape[-1] if qkv.ndim == 5 else 0
        if qkv.ndim != 5 or c3 == 0 or c3 % (3 * num_heads):
            raise ValueError(f"{name} must be (B, D, H, W, 3*C) with C divisible by num_heads={num_heads}, "
                             f"got shape {tuple(qkv.shape)}")
        split = qkv.reshape(*qkv.shape[:4], 3, num_heads, c3 // (3 * num_heads))
        views.append([split[..., i, :, :] for i in range(3)])
    if qkv_a.shape != qkv_b.shape:
        raise ValueError(f"qkv_b must have the shape of qkv_a {tuple(qkv_a.shape)}, got {tuple(qkv_b.shape)}")
    (q_a, k_a, v_a), (q_b, k_b, v_b) = views
    return cross_window_attention3d_separate(q_a, k_a, v_a, q_b, k_b, v_b, window, shift, rel_bias_table,
                                             mask_value, scale, pad_kv, mask_padded)
