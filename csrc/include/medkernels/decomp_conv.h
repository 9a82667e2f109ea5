// Decomposed 3D convolution (DCFormer's DecompConv3D), plain C++ API.
//
//   y[n, co, o] = act( bias[co]
//                 + sum_{ci in group(co)} sum_{j<k} w_d[co, ci', j] * x[n, ci, o_d*s - k/2 + j, o_h*s,  o_w*s]
//                 +                               w_h[co, ci', j] * x[n, ci, o_d*s,  o_h*s - k/2 + j, o_w*s]
//                 +                               w_w[co, ci', j] * x[n, ci, o_d*s,  o_h*s,  o_w*s - k/2 + j] )
//
// with zero padding, odd k, ci' = ci - group(co) * C_in/groups, and every output size
// (in - 1) / s + 1. Tensors are addressed through NCDHW-ordered element strides, so NCDHW,
// NDHWC (channels-last) and strided views all go through the same entry points.
// Weights are contiguous (C_out, C_in/groups, k); bias is (C_out,) or null.
// Activation math is in fp32 (fp64 for double); 16-bit inputs accumulate in fp32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/fields.h"
#include "medkernels/fields/decomp_conv.h"

namespace medkernels {

// The fields of both structs: medkernels/fields/decomp_conv.h (one list, also expanded by the
// Python glue and the C ABI).
struct DecompConvParams {
  MK_DECOMP_CONV_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Backward. grad_w_* are (C_out, C_in/groups, k) and grad_bias (C_out,), written (not
// accumulated) in the accumulation type: float for float32/float16/bfloat16, double for
// float64. grad_x has x's dtype. Any grad pointer may be null to skip it. The reduction for
// the weight and bias gradients runs in a fixed order: the same bits on every run.
struct DecompConvBwdParams {
  MK_DECOMP_CONV_BWD_PARAMS_FIELDS(MK_CXX_FIELD)
};

// The largest kernel_size (odd, 1..kDecompConvMaxKernel) every layer accepts.
constexpr int kDecompConvMaxKernel = 15;

// Checks sizes, strides and options (the single validator: the CPU and CUDA entry points, the
// Python glue and the C ABI all go through it); on failure returns kInvalidArgument and sets
// last_error().
Status decomp_conv_check(const DecompConvParams& p);
size_t decomp_conv_bwd_workspace_bytes(const DecompConvBwdParams& p);

namespace cpu {
Status decomp_conv_fwd(const DecompConvParams& p);
Status decomp_conv_bwd(const DecompConvBwdParams& p);
}  // namespace cpu

namespace cuda {
// stream is a cudaStream_t (null: the legacy default stream).
Status decomp_conv_fwd(const DecompConvParams& p, void* stream);
Status decomp_conv_bwd(const DecompConvBwdParams& p, void* stream);
}  // namespace cuda

}  // namespace medkernels
