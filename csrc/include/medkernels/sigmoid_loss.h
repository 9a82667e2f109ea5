// Pairwise sigmoid (SigLIP) loss, plain C++ API.
//
//   L_ij = logit_scale * x_i . y_j + bias        (symmetric: logit_scale * (x_i.y_j + x_j.y_i)/2 + bias)
//   loss = sum_ij softplus(-z_ij L_ij),           z_ij = +1 on positive pairs, -1 elsewhere
//
// logit_scale is exp(t') of SigLIP; the caller applies its reduction (1/N, 1, 1/(N M)) to the
// sum. x (N, d) and y (M, d) are addressed through element strides. The N x M logits never
// exist in memory: tiles are computed, consumed and dropped, and the backward recomputes them.
// 16-bit inputs accumulate in fp32, float64 in fp64; the sums are reduced in a fixed order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/fields.h"
#include "medkernels/fields/sigmoid_loss.h"

namespace medkernels {

enum class SigmoidLossPositives : int {
  kDiagonal = 0,  // i - j == diag_offset
  kLabels = 1,    // labels_x[i] == labels_y[j]
  kMask = 2,      // mask[i * mask_strides[0] + j * mask_strides[1]] != 0
};

struct SigmoidLossParams {
  MK_SIGMOID_LOSS_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Backward of grad_scale * loss: grad_x (n, d) and grad_y (m, d) in the inputs' dtype,
// through their strides; grad_t_prime = sum G (L - bias) and grad_bias = sum G as doubles,
// with G_ij = grad_scale * dloss/dL_ij.
struct SigmoidLossBwdParams {
  MK_SIGMOID_LOSS_BWD_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Checks sizes, pointers and options; on failure returns kInvalidArgument and sets last_error().
Status sigmoid_loss_check(const SigmoidLossParams& p);

namespace cpu {
// O((n + m) d) bytes: the packed inputs (and, for the backward with few threads, one dY
// accumulator per thread). Depends on the OpenMP thread count at the time of the call.
size_t sigmoid_loss_fwd_workspace_bytes(const SigmoidLossParams& p);
size_t sigmoid_loss_bwd_workspace_bytes(const SigmoidLossBwdParams& b);
}  // namespace cpu

namespace cpu {
Status sigmoid_loss_fwd(const SigmoidLossParams& p);
Status sigmoid_loss_bwd(const SigmoidLossBwdParams& p);
}  // namespace cpu

// CUDA (sm_80+; 16-bit inputs on tensor cores). Every pointer is device memory, including loss,
// grad_t_prime and grad_bias; stream is a cudaStream_t (null: the legacy default stream). The
// workspace (device memory) holds the per-block partial sums: O(n / 64 * splits) doubles.
namespace cuda {
size_t sigmoid_loss_fwd_workspace_bytes(const SigmoidLossParams& p);
size_t sigmoid_loss_bwd_workspace_bytes(const SigmoidLossBwdParams& b);
Status sigmoid_loss_fwd(const SigmoidLossParams& p, void* stream);
Status sigmoid_loss_bwd(const SigmoidLossBwdParams& p, void* stream);
}  // namespace cuda

}  // namespace medkernels
