// GroupNorm + per-(sample, channel) add / FiLM scale-shift + activation (the diffusion UNets'
// ResBlock norm), plain C++ API.
//
//   h = x[n, c, m] + add[n, c]
//   mean, rstd over (c in group g, all m) of h, per n     (biased variance, rstd = 1/sqrt(var + eps))
//   y[n, c, m] = act( ((h - mean) * rstd * weight[c] + bias[c]) * (1 + scale[n, c]) + shift[n, c] )
//
// x and y are addressed as (N, C, M) through element strides (N, C, M): NCDHW/NCHW contiguous
// has stride_m = 1, channels-last stride_c = 1; M is the product of the spatial sizes. weight,
// bias are (C,), scale/shift/add contiguous (N, C); each may be null. Statistics are fp32 or
// better and stable for a large mean (the cpu backend: float lanes over fixed units, folded and
// combined in double in a fixed order: the same bits whatever the thread count); arithmetic in
// float (double for float64). mean/rstd (N, groups) are written in the
// accumulation type (float, double for float64) for the backward.
#pragma once

#include <cstddef>
#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/fields.h"
#include "medkernels/fields/group_norm.h"

namespace medkernels {

struct GroupNormParams {
  MK_GROUP_NORM_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Backward from the forward's saved mean/rstd. grad_x has x's dtype and its own strides;
// grad_weight, grad_bias (C,) and grad_scale, grad_shift, grad_add (N, C) are written in the
// accumulation type; any may be null to skip it. Fixed-order reductions.
struct GroupNormBwdParams {
  MK_GROUP_NORM_BWD_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Checks sizes, strides and options; on failure returns kInvalidArgument and sets last_error().
Status group_norm_check(const GroupNormParams& p);

namespace cpu {
Status group_norm_fwd(const GroupNormParams& p);
Status group_norm_bwd(const GroupNormBwdParams& p);
}  // namespace cpu

// All pointers device memory; p.workspace (fwd) / b.fwd.workspace (bwd) of the sizes below;
// stream is a cudaStream_t (null: the legacy default stream). The kernels:
// medkernels/cuda/group_norm.cuh.
namespace cuda {
size_t group_norm_fwd_workspace_bytes(const GroupNormParams& p);
size_t group_norm_bwd_workspace_bytes(const GroupNormBwdParams& b);
Status group_norm_fwd(const GroupNormParams& p, void* stream);
Status group_norm_bwd(const GroupNormBwdParams& b, void* stream);
}  // namespace cuda

}  // namespace medkernels
