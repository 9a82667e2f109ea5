"""Our CUDA kernels on CuPy arrays without a compiled extension: the sources go through NVRTC.

    import cupy as cp
    from medkernels import cupy as mkc
    y = mkc.decomp_conv3d(x, w_d, w_h, w_w, bias, stride=1, groups=None, activation="gelu")

``cupy.RawModule`` compiles, at the first call and once per process, the same per-thread kernel
bodies the compiled library runs (``csrc/include/medkernels/detail/*.h``, shared with
``medkernels/cuda/*.cuh``), wrapped in ``extern "C"`` kernels below. The compiled library's
launch plans (shared-memory tiles, 16-byte vector paths) are not reproduced: every op runs its
generic one-thread-per-output kernel. Forward ops only. cupy is imported by the functions of
this module, never by the rest of the package. ``source()`` is the exact NVRTC input; the tests
compile it with nvcc where NVRTC is absent.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional

__all__ = ["decomp_conv3d", "q_sample", "ddim_step", "ddpm_step", "window_attention3d", "cross_window_attention3d",
           "cross_window_attention3d_separate", "source", "include_dir", "KERNELS"]

# The headers: the source tree's csrc/include, or the copy setup.py installs into the package.
_HERE = Path(__file__).resolve().parent


def include_dir() -> Path:
    for d in (_HERE.parent / "csrc" / "include", _HERE / "include"):
        if (d / "medkernels" / "common.h").exists():
            return d
    raise FileNotFoundError(f"medkernels headers not found next to {_HERE} (csrc/include or medkernels/include)")


# NVRTC has no C++ standard library: the few names our headers use on the device side come from
# this prelude; the host-only error paths (std::string messages) get inert stand-ins.
_PRELUDE = r"""
#if defined(__CUDACC_RTC__) || defined(MK_NVRTC_PRELUDE_TEST)
// the LP64 types glibc gives these names (a repeated identical typedef is legal C++)
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef unsigned long uintptr_t;
typedef decltype(sizeof(0)) size_t;
namespace std {
using ::int64_t; using ::uint64_t; using ::int32_t; using ::uint32_t; using ::uint16_t; using ::uint8_t;
using ::size_t; using ::uintptr_t;
struct string {
  string() {}
  string(const char*) {}
  const char* c_str() const { return ""; }
};
inline string operator+(const string&, const string&) { return string(); }
inline string operator+(const char*, const string&) { return string(); }
inline string operator+(const string&, const char*) { return string(); }
template <typename T> inline string to_string(T) { return string(); }
}  // namespace std
#else
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#endif
"""

_STD_HEADERS = {"cmath", "cstddef", "cstdint", "cstring", "string"}
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def _expand(rel: str, root: Path, seen: set) -> str:
    """The header with its medkernels/* includes inlined once each (#pragma once) and the C++
    standard headers dropped (the prelude supplies them)."""
    if rel in seen:
        return ""
    seen.add(rel)
    out = [f"// ---- {rel}"]
    for line in (root / rel).read_text().splitlines():
        m = _INCLUDE.match(line)
        if m and m.group(1) == '"' and m.group(2).startswith("medkernels/"):
            out.append(_expand(m.group(2), root, seen))
        elif m and m.group(1) == "<" and m.group(2) in _STD_HEADERS:
            continue
        elif line.strip() == "#pragma once":
            continue
        else:
            out.append(line)
    return "\n".join(out)


# One extern "C" kernel per op and storage type: name -> (C type, medkernels storage type).
_DTYPES = {"f32": ("float", "float"), "f64": ("double", "double"), "f16": ("medkernels::half_t", "half_t")}

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

_DIFFUSION = r"""
// meta (int64): op T batch numel. One thread per Philox group of 4 elements; grid (groups, batch).
#define MK_DIFFUSION_FWD(SUFFIX, T)                                                                      \
extern "C" __global__ void __launch_bounds__(256) mk_diffusion_fwd_##SUFFIX(                             \
    const T* x, const T* eps, const T* noise, T* out, T* x0_out, const double* table, const long long* t, \
    const long long* t_next, const long long* meta, unsigned long long seed, unsigned long long offset,   \
    double eta, double clip, int has_clip, int draw) {                                                    \
  medkernels::DiffusionParams p;                                                                          \
  p.op = static_cast<medkernels::DiffusionOp>(meta[0]);                                                  \
  p.x = x; p.eps = eps; p.noise = noise; p.out = out; p.x0_out = x0_out; p.table = table;                \
  p.num_train_timesteps = meta[1]; p.batch = meta[2]; p.numel = meta[3];                                 \
  p.seed = seed; p.offset = offset; p.eta = eta; p.clip = clip; p.has_clip = has_clip != 0;              \
  typedef medkernels::Io<T>::acc A;                                                                       \
  const long long b = blockIdx.y;                                                                         \
  A c[5] = {A(0), A(0), A(0), A(0), A(0)};                                                                \
  if (p.op <= medkernels::DiffusionOp::kDdpm) {                                                           \
    const medkernels::detail::StepCoef sc = medkernels::detail::diffusion_coef(                           \
        p.op, table, p.num_train_timesteps, t[b], t_next ? t_next[b] : -1, eta);                          \
    for (int i = 0; i < 5; ++i) c[i] = static_cast<A>(sc.c[i]);                                          \
  }                                                                                                       \
  const long long i0 = 4 * ((long long)blockIdx.x * blockDim.x + threadIdx.x);                            \
  medkernels::detail::diffusion_thread<T>(p, c, b, i0, draw != 0);                                        \
}
"""

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

# family -> (the header with its per-thread bodies, the extern "C" wrappers, the wrapper macro)
_FAMILIES = {
    "decomp_conv": ("medkernels/detail/decomp_conv_kernels.h", _DECOMP_CONV, "MK_DECOMP_CONV_FWD"),
    "diffusion": ("medkernels/detail/diffusion.h", _DIFFUSION, "MK_DIFFUSION_FWD"),
    "window_attention": ("medkernels/detail/window_attention_kernels.h", _WINDOW_ATTENTION, "MK_WINDOW_ATTENTION_FWD"),
}
KERNELS = {
    "decomp_conv": ["mk_decomp_conv3d_fwd_" + s for s in _DTYPES],
    "diffusion": ["mk_diffusion_fwd_" + s for s in _DTYPES],
    "window_attention": [f"mk_window_attention3d_fwd_{s}_e{e}" for s in _DTYPES for e in _EMAX],
}


@functools.cache
def source(family: str = "decomp_conv") -> str:
    """The self-contained CUDA source NVRTC compiles for ``family`` (all of its kernels)."""
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {sorted(_FAMILIES)}, got {family!r}")
    header, wrappers, macro = _FAMILIES[family]
    body = _expand(header, include_dir(), set())
    inst = "\n".join(f"{macro}({s}, {c})" for s, (c, _) in _DTYPES.items())
    return f"// medkernels.cupy: NVRTC source for {family}\n{_PRELUDE}\n{body}\n{wrappers}\n{inst}\n"


@functools.cache
def _module(family: str):
    import cupy

    return cupy.RawModule(code=source(family), options=("--std=c++17",))


_ACT = {None: 0, "gelu": 1, "relu": 2, "silu": 3}


def _elem_strides(a) -> list:
    return [s // a.itemsize for s in a.strides]


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


# --- diffusion steps --------------------------------------------------------------------------------
_OPS = {"q_sample": 0, "ddim": 1, "ddpm": 2}


def _table(schedule_or_table):
    """The float64 [1, abar_0, ..., abar_{T-1}] table on the GPU, from an array or a FastDDPMSchedule."""
    import cupy

    if hasattr(schedule_or_table, "alpha_table"):  # a medkernels.diffusion.FastDDPMSchedule (torch)
        schedule_or_table = schedule_or_table.alpha_table("cpu").double().numpy()
    table = cupy.asarray(schedule_or_table, dtype=cupy.float64)
    if table.ndim != 1 or table.size < 2:
        raise ValueError(f"table must be (T + 1,) [1, abar_0, ...], got shape {table.shape}")
    return table


def _timesteps(name, t, batch, low, high):
    import cupy
    import numpy as np

    host = np.broadcast_to(np.asarray(cupy.asnumpy(t) if isinstance(t, cupy.ndarray) else t, np.int64), (batch,))
    if host.min() < low or host.max() > high:
        raise ValueError(f"{name} must be in {low}..{high}, got {host.tolist()}")
    return cupy.asarray(np.ascontiguousarray(host))


def _diffusion(op, x, eps, t, t_next, table, noise, seed, offset, eta=0.0, clip=None, return_x0=False):
    import cupy
    import numpy as np

    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}.get(x.dtype)
    if suffix is None:
        raise TypeError(f"x must be float32, float64 or float16, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x must be (B, ...)")
    x = cupy.ascontiguousarray(x)
    batch, numel = x.shape[0], x.size // max(x.shape[0], 1)
    table = _table(table)
    T = table.size - 1
    t = _timesteps("t", t, batch, 0, T - 1)
    if op != "q_sample":
        t_next = _timesteps("t_next", t_next, batch, -1, T - 2)
        if bool((t_next >= t).any()):
            raise ValueError("t_next must be < t")
        eps = cupy.ascontiguousarray(eps, dtype=x.dtype)
        if eps.shape != x.shape:
            raise ValueError(f"eps must have x's shape {x.shape}, got {eps.shape}")
    if noise is not None:
        noise = cupy.ascontiguousarray(noise, dtype=x.dtype)
        if noise.shape != x.shape:
            raise ValueError(f"noise must have x's shape {x.shape}, got {noise.shape}")
    elif seed is None:
        raise ValueError("give noise or seed")
    out = cupy.empty_like(x)
    x0 = cupy.empty_like(x) if return_x0 else None
    draw = noise is None and not (op == "ddim" and eta == 0.0)
    null = np.uintp(0)
    meta = cupy.asarray(np.array([_OPS[op], T, batch, numel], dtype=np.int64))
    threads = 256
    grid = ((numel + 4 * threads - 1) // (4 * threads), batch)
    fn = _module("diffusion").get_function(f"mk_diffusion_fwd_{suffix}")
    fn(grid, (threads,), (x, null if eps is None else eps, null if noise is None else noise, out,
                          null if x0 is None else x0, table, t, null if t_next is None else t_next, meta,
                          np.uint64(seed or 0), np.uint64(offset), np.float64(eta),
                          np.float64(1.0 if clip is None else clip), np.int32(clip is not None), np.int32(draw)))
    return (out, x0) if return_x0 else out


def q_sample(x0, t, table, *, noise=None, seed=None, offset: int = 0):
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` on CuPy arrays; eps is ``noise`` or drawn from (seed, offset)
    by the same Philox contract as ``medkernels.ops.q_sample``. table: (T + 1,) float64 [1, abar_0, ...] or a
    FastDDPMSchedule; t: (B,) ints."""
    return _diffusion("q_sample", x0, None, t, None, table, noise, seed, offset)


def ddim_step(x_t, eps, t, t_next, table, *, eta: float = 0.0, noise=None, seed=None, offset: int = 0,
              return_x0: bool = False):
    """One DDIM step (``medkernels.ops.ddim_step``) on CuPy arrays."""
    if eta != 0.0 and noise is None and seed is None:
        raise ValueError("eta > 0 needs noise or seed")
    return _diffusion("ddim", x_t, eps, t, t_next, table, noise, 0 if seed is None else seed, offset, eta=eta,
                      return_x0=return_x0)


def ddpm_step(x_t, eps, t, t_next, table, *, noise=None, seed=None, offset: int = 0, clip: Optional[float] = 1.0,
              return_x0: bool = False):
    """One DDPM step (``medkernels.ops.ddpm_step``) on CuPy arrays; x0 clamped to [-clip, clip] unless None."""
    return _diffusion("ddpm", x_t, eps, t, t_next, table, noise, seed, offset, clip=clip, return_x0=return_x0)


# --- window attention ----------------------------------------------------------------------------------
def _triple(name, v):
    # the package's one parser of window/shift: 2.0, True, "2" or 2 values are refused, not truncated
    from .reference.window_attention import _triple as triple

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
