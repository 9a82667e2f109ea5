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

namespace medkernels {

enum class SigmoidLossPositives : int {
  kDiagonal = 0,  // i - j == diag_offset
  kLabels = 1,    // labels_x[i] == labels_y[j]
  kMask = 2,      // mask[i * mask_strides[0] + j * mask_strides[1]] != 0
};

struct SigmoidLossParams {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;
  const void* y = nullptr;
  int64_t n = 0, m = 0, d = 0;
  int64_t x_strides[2] = {0, 0};  // elements
  int64_t y_strides[2] = {0, 0};
  double logit_scale = 1.0;  // exp(t')
  double bias = 0.0;
  bool symmetric = false;  // Med3DVLM: logits (L + L^T) / 2, needs n == m
  SigmoidLossPositives positives = SigmoidLossPositives::kDiagonal;
  int64_t diag_offset = 0;
  const int64_t* labels_x = nullptr;  // (n,)
  const int64_t* labels_y = nullptr;  // (m,)
  const uint8_t* mask = nullptr;      // (n, m)
  int64_t mask_strides[2] = {0, 0};
  double* loss = nullptr;  // forward output: the unscaled sum (host memory for cpu::, device memory for cuda::)
  // Scratch of *_workspace_bytes() bytes from the caller (the packed inputs live here), so the
  // caller's allocator sees all of the memory the loss needs.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Backward of grad_scale * loss: grad_x (n, d) and grad_y (m, d) in the inputs' dtype,
// through their strides; grad_t_prime = sum G (L - bias) and grad_bias = sum G as doubles,
// with G_ij = grad_scale * dloss/dL_ij.
struct SigmoidLossBwdParams {
  SigmoidLossParams fwd;
  double grad_scale = 1.0;
  void* grad_x = nullptr;
  int64_t grad_x_strides[2] = {0, 0};
  void* grad_y = nullptr;
  int64_t grad_y_strides[2] = {0, 0};
  double* grad_t_prime = nullptr;
  double* grad_bias = nullptr;
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
