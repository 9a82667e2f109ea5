// Few-step diffusion steps on the CPU (OpenMP). See medkernels/diffusion.h for the math.
//
// Work is split into (sample, block of `block` elements) tasks, the same blocks the loss sums
// over, so the partial sums do not depend on the thread count. A task first fills a float
// buffer with its normals (one Philox call per 4 elements), then runs the element update in a
// plain loop over contiguous memory.
#include <algorithm>
#include <string>
#include <vector>

#include "medkernels/detail/diffusion.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/detail/philox.h"
#include "medkernels/diffusion.h"

namespace medkernels {

Status diffusion_check(const DiffusionParams& p, bool check_timesteps) {
  const int op = static_cast<int>(p.op);
  MK_CHECK_ARG(op >= 0 && op <= 4, "diffusion: unknown op " + std::to_string(op));
  MK_CHECK_ARG(p.out, "diffusion: out must not be null");
  MK_CHECK_ARG(p.batch >= 1 && p.numel >= 1, "diffusion: batch and numel must be >= 1, got batch=" +
                                                 std::to_string(p.batch) + " numel=" + std::to_string(p.numel));
  MK_CHECK_ARG(p.numel < (int64_t(1) << 34), "diffusion: at most 2^34 elements per sample (the Philox counter)");
  MK_CHECK_ARG(p.batch < (int64_t(1) << 32), "diffusion: at most 2^32 samples (the Philox counter)");
  MK_CHECK_ARG(p.block >= 4 && p.block % 4 == 0, "diffusion: block must be a positive multiple of 4");
  if (p.op != DiffusionOp::kNormal) MK_CHECK_ARG(p.x, "diffusion: x must not be null");
  if (p.op == DiffusionOp::kDdim || p.op == DiffusionOp::kDdpm)
    MK_CHECK_ARG(p.eps && p.t_next, "diffusion: the steps need eps and t_next");
  if (p.op == DiffusionOp::kLoss) MK_CHECK_ARG(p.partial, "diffusion: the loss needs partial");
  if (p.op <= DiffusionOp::kDdpm) {
    MK_CHECK_ARG(p.table && p.t && p.num_train_timesteps >= 1, "diffusion: the steps need table, t and T >= 1");
    if (check_timesteps) {
      const int64_t T = p.num_train_timesteps;
      for (int64_t b = 0; b < p.batch; ++b) {
        MK_CHECK_ARG(p.t[b] >= 0 && p.t[b] < T, "diffusion: t must be in 0.." + std::to_string(T - 1) + ", got " +
                                                    std::to_string(p.t[b]) + " (sample " + std::to_string(b) + ")");
        if (p.op != DiffusionOp::kQSample)
          MK_CHECK_ARG(p.t_next[b] >= -1 && p.t_next[b] < p.t[b],
                       "diffusion: t_next must be in -1..t-1, got t_next=" + std::to_string(p.t_next[b]) +
                           " for t=" + std::to_string(p.t[b]) + " (sample " + std::to_string(b) + ")");
      }
    }
  }
  return Status::kSuccess;
}

namespace cpu {
namespace {

template <typename T>
Status fwd_typed(const DiffusionParams& p) {
  using A = typename Io<T>::acc;
  const int64_t N = p.numel, B = p.batch, BL = p.block;
  const int64_t nblk = (N + BL - 1) / BL;
  const T* x = static_cast<const T*>(p.x);
  const T* e = static_cast<const T*>(p.eps);
  const T* zin = static_cast<const T*>(p.noise);
  T* out = static_cast<T*>(p.out);
  T* x0o = static_cast<T*>(p.x0_out);
  const DiffusionOp op = p.op;
  const bool steps = op <= DiffusionOp::kDdpm;

  std::vector<A> coef(static_cast<size_t>(B) * 5, A(0));
  if (steps) {
    for (int64_t b = 0; b < B; ++b) {
      const detail::StepCoef k = detail::diffusion_coef(op, p.table, p.num_train_timesteps, p.t[b],
                                                        p.t_next ? p.t_next[b] : -1, p.eta);
      for (int i = 0; i < 5; ++i) coef[b * 5 + i] = static_cast<A>(k.c[i]);
    }
  }
  const A clip = static_cast<A>(p.clip);
  const A scale = static_cast<A>(p.scale);
  // eta = 0 DDIM and q_sample/ddpm with given noise need no generator
  const bool draw = !zin && !(op == DiffusionOp::kDdim && p.eta == 0.0);

#pragma omp parallel
  {
    std::vector<A> z(BL);
    std::vector<A> x0buf(BL);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < B * nblk; ++task) {
      const int64_t b = task / nblk, k = task % nblk;
      const int64_t i0 = k * BL;
      const int64_t n = std::min(BL, N - i0);
      const int64_t base = b * N + i0;
      if (draw) {
        for (int64_t j = 0; j < n; j += 4) {
          float r[4];
          detail::philox_normal4(p.seed, p.offset, static_cast<uint64_t>(b), static_cast<uint64_t>((i0 + j) / 4), r);
          const int64_t m = std::min<int64_t>(4, n - j);
          for (int64_t l = 0; l < m; ++l) z[j + l] = static_cast<A>(r[l]);
        }
      } else if (zin) {
        for (int64_t j = 0; j < n; ++j) z[j] = Io<T>::load(zin + base + j);
      } else {
        std::fill(z.begin(), z.begin() + n, A(0));
      }
      if (op == DiffusionOp::kNormal) {
        for (int64_t j = 0; j < n; ++j) Io<T>::store(out + base + j, z[j]);
      } else if (op == DiffusionOp::kLoss) {
        A s = A(0);
        for (int64_t j = 0; j < n; ++j) {
          const A d = Io<T>::load(x + base + j) - z[j];
          s += d * d;
          Io<T>::store(out + base + j, d * scale);
        }
        p.partial[b * nblk + k] = static_cast<double>(s);
      } else {
        const A* c = coef.data() + b * 5;
        const bool has_clip = p.has_clip;
        if (op == DiffusionOp::kQSample) {
          for (int64_t j = 0; j < n; ++j) Io<T>::store(out + base + j, c[0] * Io<T>::load(x + base + j) + c[1] * z[j]);
        } else {
          for (int64_t j = 0; j < n; ++j) {
            A x0v;
            const A v = detail::diffusion_elem<A>(op, c, Io<T>::load(x + base + j), Io<T>::load(e + base + j), z[j],
                                                  has_clip, clip, &x0v);
            Io<T>::store(out + base + j, v);
            x0buf[j] = x0v;
          }
          if (x0o)
            for (int64_t j = 0; j < n; ++j) Io<T>::store(x0o + base + j, x0buf[j]);
        }
      }
    }
  }
  return Status::kSuccess;
}

}  // namespace

Status diffusion_fwd(const DiffusionParams& p) {
  const Status st = diffusion_check(p, true);
  if (st != Status::kSuccess) return st;
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_typed<T>(p);)
}

Status philox_fill(uint64_t seed, uint64_t offset, int64_t batch, int64_t groups, int64_t* out) {
  MK_CHECK_ARG(out && batch >= 0 && groups >= 0, "philox_fill: out must not be null and sizes >= 0");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < batch * groups; ++i) {
    const detail::Philox4 w = detail::philox_words(seed, offset, static_cast<uint64_t>(i / groups),
                                                   static_cast<uint64_t>(i % groups));
    for (int l = 0; l < 4; ++l) out[i * 4 + l] = static_cast<int64_t>(w.x[l]);
  }
  return Status::kSuccess;
}

}  // namespace cpu
}  // namespace medkernels
