// Few-step diffusion (Fast-DDPM) steps, plain C++ API. Per sample b, with the float64 table
// [1, abar_0, ..., abar_{T-1}] gathered at t + 1 (t = -1 gives 1), at = abar_t, an = abar_t_next:
//
//   kQSample  out = sqrt(at) x + sqrt(1 - at) z
//   kDdim     x0 = (x - sqrt(1 - at) e) / sqrt(at); c1 = eta sqrt((1 - at/an)(1 - an)/(1 - at));
//             c2 = sqrt(1 - an - c1^2); out = sqrt(an) x0 + c1 z + c2 e
//   kDdpm     beta = 1 - at/an; x0 = clamp(sqrt(1/at) x - sqrt(1/at - 1) e, -clip, clip);
//             out = (sqrt(an) beta x0 + sqrt(1 - beta)(1 - an) x) / (1 - at) + [t != 0] sqrt(beta) z
//   kLoss     d = x - z (x is eps_pred); out = scale d; partial[b, k] = sum of d^2 over block k
//   kNormal   out = z
//
// (mirthAI/Fast-DDPM functions/denoising.py, functions/losses.py.) z is read from `noise` or,
// when it is null, made from (seed, offset) by the counter-based contract of
// medkernels/detail/philox.h. Tensors are contiguous (B, N); the per-sample coefficients are
// computed in double, the element math in float (double for kFloat64).
#pragma once

#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/fields.h"
#include "medkernels/fields/diffusion.h"

namespace medkernels {

enum class DiffusionOp : int { kQSample = 0, kDdim = 1, kDdpm = 2, kLoss = 3, kNormal = 4 };

struct DiffusionParams {
  MK_DIFFUSION_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Checks pointers, sizes and timesteps; on failure returns kInvalidArgument and sets last_error().
// (The CUDA entry point checks only what it can see on the host: t stays on the device.)
Status diffusion_check(const DiffusionParams& p, bool check_timesteps);

namespace cpu {
// Like the CUDA entry point it leaves t and t_next unchecked and clamps them into the table (t to
// 0..T-1, t_next to -1..T-1); validating them is the caller's job (the Python ops do, unless
// check_timesteps=False).
Status diffusion_fwd(const DiffusionParams& p);
// out[(b * groups + g) * 4 + l] = Philox word l of group g of sample b (the noise contract's bits).
Status philox_fill(uint64_t seed, uint64_t offset, int64_t batch, int64_t groups, int64_t* out);
// out[(b * groups + g) * 4 + l] = normal l of group g of sample b through the scalar MK_HD
// detail::philox_normal4 (the code the CUDA kernel runs; the CPU kernel uses a vectorised twin).
Status philox_normal_fill(uint64_t seed, uint64_t offset, int64_t batch, int64_t groups, float* out);
}  // namespace cpu

namespace cuda {
// stream is a cudaStream_t (null: the legacy default stream).
Status diffusion_fwd(const DiffusionParams& p, void* stream);
}  // namespace cuda

}  // namespace medkernels
