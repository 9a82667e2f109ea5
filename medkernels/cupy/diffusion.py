"""medkernels.cupy: the few-step diffusion steps (q_sample, DDIM, DDPM) on CuPy arrays."""

from __future__ import annotations

from typing import Optional

from ._nvrtc import _DTYPES, _module, register

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

register("diffusion", "medkernels/detail/diffusion.h", _DIFFUSION, "MK_DIFFUSION_FWD",
         ["mk_diffusion_fwd_" + s for s in _DTYPES])

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


