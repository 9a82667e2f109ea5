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
#include "medkernels/detail/fast_math.h"
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

// --- vectorisable noise -------------------------------------------------------------------
// libm's logf / sinf / cosf do not vectorise (no -ffast-math here), so the CPU uses these
// branch-free polynomials (Cephes logf, sinf, cosf; max error ~1e-7 relative for log and ~1e-7
// absolute for sin/cos over the contract's inputs): the normals stay within the contract's
// "last-ulp of log/cos/sin" of the reference.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define MK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MK_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MK_CPU_CLONES
#endif
constexpr int kMaxGroups = 256;
using detail::kPhiloxM0;
using detail::kPhiloxM1;
using detail::kPhiloxW0;
using detail::kPhiloxW1;
using detail::philox_uniform;

// mask ? a : b with an all-ones / all-zeros mask, as bit operations (vectorises, exact)
static inline float sel(uint32_t mask, float a, float b) { return bits_to_float((float_to_bits(a) & mask) | (float_to_bits(b) & ~mask)); }

// natural log for normal positive finite floats, branch-free (detail/fast_math.h)
static inline float log_poly(float x) { return detail::fast_logf(x); }

// sin and cos of th in [0, 2pi] (Cephes sinf/cosf polynomials after a quadrant reduction)
static inline void sincos_poly(float th, float* s, float* c) {
  const int q = static_cast<int>(th * 0.636619772367581343f + 0.5f);  // nearest multiple of pi/2
  const float fq = static_cast<float>(q);
  // th - q pi/2 with pi/2 split in three (Cody-Waite)
  float a = ((th - fq * 1.5703125f) - fq * 4.837512969970703125e-4f) - fq * 7.54978995489188216e-8f;
  const float z = a * a;
  const float sp = a + a * z * (-1.6666654611E-1f + z * (8.3321608736E-3f + z * -1.9515295891E-4f));
  const float cp = 1.0f - 0.5f * z + z * z * (4.166664568298827E-2f + z * (-1.388731625493765E-3f + z * 2.443315711809948E-5f));
  const uint32_t uq = static_cast<uint32_t>(q);
  const uint32_t odd = 0u - (uq & 1u);
  const float ss = sel(odd, cp, sp);
  const float cc = sel(odd, sp, cp);
  *s = bits_to_float(float_to_bits(ss) ^ ((uq & 2u) << 30));        // negate in quadrants 2, 3
  *c = bits_to_float(float_to_bits(cc) ^ (((uq + 1u) & 2u) << 30));  // negate in quadrants 1, 2
}

// The noise contract's normals of groups g0 .. g0 + G - 1 of sample b into z[0 .. 4G), G <= 256:
// the Philox rounds run across lanes and the transform uses the polynomial log / sincos above, so
// both loops vectorise (the scalar philox_normal4 calls libm per element and is ~3.5x slower).
MK_CPU_CLONES
void normal_block(uint64_t seed, uint64_t offset, uint64_t b, uint64_t g0, int G, float* __restrict z) {
  uint32_t kk0[10], kk1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    kk0[r] = k0;
    kk1[r] = k1;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const uint32_t cb = static_cast<uint32_t>(b), co0 = static_cast<uint32_t>(offset), co1 = static_cast<uint32_t>(offset >> 32);
  alignas(64) uint32_t w[4][kMaxGroups];
#pragma omp simd
  for (int i = 0; i < G; ++i) {
    uint32_t c0 = static_cast<uint32_t>(g0 + i), c1 = cb, c2 = co0, c3 = co1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ kk0[r];
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ kk1[r];
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
    }
    w[0][i] = c0; w[1][i] = c1; w[2][i] = c2; w[3][i] = c3;
  }
  const float two_pi = 6.283185307179586f;
#pragma omp simd
  for (int i = 0; i < G; ++i) {
    const float r01 = sqrtf(-2.0f * log_poly(philox_uniform(w[0][i])));
    const float r23 = sqrtf(-2.0f * log_poly(philox_uniform(w[2][i])));
    float s01, c01, s23, c23;
    sincos_poly(philox_uniform(w[1][i]) * two_pi, &s01, &c01);
    sincos_poly(philox_uniform(w[3][i]) * two_pi, &s23, &c23);
    z[4 * i] = r01 * c01;
    z[4 * i + 1] = r01 * s01;
    z[4 * i + 2] = r23 * c23;
    z[4 * i + 3] = r23 * s23;
  }
}


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
  MK_CHECK_ARG(BL <= 4 * kMaxGroups, "diffusion: block must be <= " + std::to_string(4 * kMaxGroups));

#pragma omp parallel
  {
    std::vector<A> z(BL);
    std::vector<float> zf(BL);
    std::vector<A> x0buf(BL);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < B * nblk; ++task) {
      const int64_t b = task / nblk, k = task % nblk;
      const int64_t i0 = k * BL;
      const int64_t n = std::min(BL, N - i0);
      const int64_t base = b * N + i0;
      if (draw) {
        normal_block(p.seed, p.offset, static_cast<uint64_t>(b), static_cast<uint64_t>(i0 / 4),
                     static_cast<int>((n + 3) / 4), zf.data());
        for (int64_t j = 0; j < n; ++j) z[j] = static_cast<A>(zf[j]);
      } else if (zin) {
        for (int64_t j = 0; j < n; ++j) z[j] = Io<T>::load(zin + base + j);
      } else {
        std::fill(z.begin(), z.begin() + n, A(0));
      }
      if (op == DiffusionOp::kNormal) {
        for (int64_t j = 0; j < n; ++j) Io<T>::store(out + base + j, z[j]);
      } else if (op == DiffusionOp::kLoss) {
        A s = A(0);
        // a SIMD reduction (fixed for a given build and ISA, so reruns give the same bits)
#pragma omp simd reduction(+ : s)
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
  // t and t_next are not range-checked here: detail::diffusion_coef clamps them into the table, as
  // the CUDA and Triton kernels do, so every backend gives one answer for check_timesteps=False
  const Status st = diffusion_check(p, false);
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

Status philox_normal_fill(uint64_t seed, uint64_t offset, int64_t batch, int64_t groups, float* out) {
  MK_CHECK_ARG(out && batch >= 0 && groups >= 0, "philox_normal_fill: out must not be null and sizes >= 0");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < batch * groups; ++i)
    detail::philox_normal4(seed, offset, static_cast<uint64_t>(i / groups), static_cast<uint64_t>(i % groups), out + 4 * i);
  return Status::kSuccess;
}

}  // namespace cpu
}  // namespace medkernels
