// Per-sample coefficients and the per-element update of the diffusion steps, shared (MK_HD)
// by the C++ CPU and CUDA kernels. See medkernels/diffusion.h for the math.
#pragma once

#include <cmath>
#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/detail/exec.h"
#include "medkernels/detail/philox.h"
#include "medkernels/diffusion.h"

namespace medkernels {
namespace detail {

// Coefficients of one sample, computed in double from the float64 table (1 - abar is tiny near
// t = 0, so they are never formed in float). t is clamped into the table: the op validates it.
//   kQSample: c0 = sqrt(at), c1 = sqrt(1 - at)
//   kDdim:    c0 = sqrt(1 - at), c1 = sqrt(at), c2 = sqrt(an), c3 = eta-noise c1, c4 = c2 (eps)
//   kDdpm:    c0 = sqrt(1/at), c1 = sqrt(1/at - 1), c2 = sqrt(an) beta / (1 - at),
//             c3 = sqrt(1 - beta)(1 - an) / (1 - at), c4 = [t != 0] sqrt(beta)
struct StepCoef {
  double c[5];
};

MK_HD StepCoef diffusion_coef(DiffusionOp op, const double* table, int64_t T, int64_t t, int64_t tn, double eta) {
  t = t < 0 ? 0 : (t > T - 1 ? T - 1 : t);
  tn = tn < -1 ? -1 : (tn > T - 1 ? T - 1 : tn);
  const double at = table[t + 1];
  StepCoef k = {{0, 0, 0, 0, 0}};
  if (op == DiffusionOp::kQSample) {
    k.c[0] = sqrt(at);
    k.c[1] = sqrt(1.0 - at);
  } else if (op == DiffusionOp::kDdim) {
    const double an = table[tn + 1];
    const double c1 = eta * sqrt((1.0 - at / an) * (1.0 - an) / (1.0 - at));
    k.c[0] = sqrt(1.0 - at);
    k.c[1] = sqrt(at);
    k.c[2] = sqrt(an);
    k.c[3] = c1;
    k.c[4] = sqrt(1.0 - an - c1 * c1);
  } else if (op == DiffusionOp::kDdpm) {
    const double an = table[tn + 1];
    const double beta = 1.0 - at / an;
    k.c[0] = sqrt(1.0 / at);
    k.c[1] = sqrt(1.0 / at - 1.0);
    k.c[2] = sqrt(an) * beta / (1.0 - at);
    k.c[3] = sqrt(1.0 - beta) * (1.0 - an) / (1.0 - at);
    k.c[4] = (t != 0 ? 1.0 : 0.0) * sqrt(beta);  // a product, as the official mask: NaN (beta < 0) stays NaN
  }
  return k;
}

// One element of a step in the accumulation type A; writes the x0 prediction to *x0.
template <typename A>
MK_HD A diffusion_elem(DiffusionOp op, const A c[5], A x, A e, A z, bool has_clip, A clip, A* x0) {
  if (op == DiffusionOp::kQSample) return c[0] * x + c[1] * z;
  if (op == DiffusionOp::kDdim) {
    const A p = (x - c[0] * e) / c[1];
    *x0 = p;
    return c[2] * p + c[3] * z + c[4] * e;
  }
  // kDdpm
  A p = c[0] * x - c[1] * e;
  if (has_clip) p = p < -clip ? -clip : (p > clip ? clip : p);
  *x0 = p;
  return c[2] * p + c[3] * x + c[4] * z;
}

// One CUDA thread's work: elements i0 .. i0 + 3 of sample b (one Philox group), with the
// sample's coefficients c; returns its sum of d^2 for the loss (0 otherwise). The CUDA kernel
// (DiffusionStep below) runs this per thread and the tests' host emulation
// (tests/diffusion_emulate.cpp) runs the same plan thread by thread, so the tests execute the
// CUDA code path without a GPU.
template <typename T>
MK_HD double diffusion_thread(const DiffusionParams& p, const typename Io<T>::acc c[5], int64_t b, int64_t i0,
                              bool draw) {
  using A = typename Io<T>::acc;
  const DiffusionOp op = p.op;
  const int64_t N = p.numel;
  if (i0 >= N) return 0.0;
  const int64_t base = b * N;
  float zf[4] = {0.f, 0.f, 0.f, 0.f};
  if (draw) philox_normal4(p.seed, p.offset, static_cast<uint64_t>(b), static_cast<uint64_t>(i0 / 4), zf);
  const T* x = static_cast<const T*>(p.x);
  const T* e = static_cast<const T*>(p.eps);
  const T* zin = static_cast<const T*>(p.noise);
  T* out = static_cast<T*>(p.out);
  T* x0o = static_cast<T*>(p.x0_out);
  const A clip = static_cast<A>(p.clip);
  A dsum = A(0);
  for (int l = 0; l < 4; ++l) {
    const int64_t i = i0 + l;
    if (i >= N) break;
    const A z = zin ? Io<T>::load(zin + base + i) : static_cast<A>(zf[l]);
    if (op == DiffusionOp::kNormal) {
      Io<T>::store(out + base + i, z);
    } else if (op == DiffusionOp::kLoss) {
      const A d = Io<T>::load(x + base + i) - z;
      dsum += d * d;
      Io<T>::store(out + base + i, d * static_cast<A>(p.scale));
    } else if (op == DiffusionOp::kQSample) {
      Io<T>::store(out + base + i, c[0] * Io<T>::load(x + base + i) + c[1] * z);
    } else {
      A x0v;
      const A v = diffusion_elem<A>(op, c, Io<T>::load(x + base + i), Io<T>::load(e + base + i), z, p.has_clip, clip,
                                    &x0v);
      Io<T>::store(out + base + i, v);
      if (x0o) Io<T>::store(x0o + base + i, x0v);
    }
  }
  return static_cast<double>(dsum);
}

// --- the CUDA kernel, as the executors launch it (medkernels/detail/exec.h) ----------------------------
// Block program: block (k, b) owns elements k * block .. of sample b, one Philox group of 4 per
// thread (block / 4 threads). Thread 0 computes the sample's coefficients in double into shared
// memory; the loss's per-block sum of d^2 is the fixed tree of exec.h over the threads' sums.
template <typename T>
struct DiffusionStep {
  static constexpr const char* kName = "diffusion";
  DiffusionParams p;
  int64_t nblk;
  bool draw;

  static size_t smem_bytes(int threads) { return (8 + static_cast<size_t>(threads)) * sizeof(double); }

  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char* smem) const {
    using A = typename Io<T>::acc;
    double* coef = reinterpret_cast<double*>(smem);  // 5 used of 8
    double* red = coef + 8;                          // one per thread
    const int64_t b = pos.y, k = pos.x;
    const bool step = p.op <= DiffusionOp::kDdpm;
    if (step) {
      for (int s = 0; s < bk.slots(); ++s)
        if (bk.thread(s) == 0) {
          const StepCoef c = diffusion_coef(p.op, p.table, p.num_train_timesteps, p.t[b], p.t_next ? p.t_next[b] : -1,
                                            p.eta);
          for (int i = 0; i < 5; ++i) coef[i] = c.c[i];
        }
      bk.sync();
    }
    A c[5];
    for (int i = 0; i < 5; ++i) c[i] = step ? static_cast<A>(coef[i]) : A(0);
    for (int s = 0; s < bk.slots(); ++s) {
      const int tid = bk.thread(s);
      const double v = diffusion_thread<T>(p, c, b, k * p.block + 4 * static_cast<int64_t>(tid), draw);
      if (p.op == DiffusionOp::kLoss) red[tid] = v;
    }
    if (p.op != DiffusionOp::kLoss) return;
    const int threads = static_cast<int>(p.block / 4);
    block_tree_sum(bk, red, threads);
    for (int s = 0; s < bk.slots(); ++s)
      if (bk.thread(s) == 0) p.partial[b * nblk + k] = red[0];
  }
};

// --- launch plan (the .cuh launches it; the tests' emulation runs it on the host) -----------------
// Grid (ceil(numel / block), batch) of block / 4 threads (block a multiple of 128, <= 4096).
template <typename T, class X>
int diffusion_fwd_run(const DiffusionParams& p, X& ex) {
  const int64_t nblk = (p.numel + p.block - 1) / p.block;
  const bool draw = !p.noise && !(p.op == DiffusionOp::kDdim && p.eta == 0.0);
  const int threads = static_cast<int>(p.block / 4);
  return ex.template blocks<1024>(DiffusionStep<T>{p, nblk, draw}, nblk, p.batch, threads,
                                  DiffusionStep<T>::smem_bytes(threads));
}

}  // namespace detail
}  // namespace medkernels
