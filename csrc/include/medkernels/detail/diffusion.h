// Per-sample coefficients and the per-element update of the diffusion steps, shared (MK_HD)
// by the C++ CPU and CUDA kernels. See medkernels/diffusion.h for the math.
#pragma once

#include <cmath>
#include <cstdint>

#include "medkernels/common.h"
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
    k.c[4] = t != 0 ? sqrt(beta) : 0.0;
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

}  // namespace detail
}  // namespace medkernels
