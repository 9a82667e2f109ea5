// Header-only CUDA kernels of GroupNorm + add / FiLM + activation (the diffusion UNets' norm).
//
// Include this from a .cu file to compile the kernels with your own nvcc flags:
//
//   #include "medkernels/cuda/group_norm.cuh"
//   cudaError_t e = medkernels::cuda::launch_group_norm_fwd<float>(params, stream);
//   cudaError_t e = medkernels::cuda::launch_group_norm_bwd<float>(bwd_params, stream);
//
// T is the storage type: float, double, medkernels::half_t or medkernels::bfloat16_t; statistics
// and sums in double, element arithmetic in float (double for float64). All pointers are device
// memory; params.workspace (forward) / bwd_params.fwd.workspace (backward) must hold
// detail::gn_workspace_bytes(params, bwd) bytes. The launchers do not validate the params
// (medkernels::group_norm_check does, in the compiled library). The block programs, per-item
// bodies and launch plans live in medkernels/detail/group_norm_kernels.h (run on the host by the
// tests' emulation); this file launches them with the CUDA executor of medkernels/detail/exec.h.
#pragma once

#include <cuda_runtime.h>

#include "medkernels/detail/group_norm_kernels.h"
#include "medkernels/group_norm.h"

namespace medkernels {
namespace cuda {

template <typename T>
cudaError_t launch_group_norm_fwd(const GroupNormParams& p, cudaStream_t stream) {
  detail::CudaExec<> ex{stream};
  return static_cast<cudaError_t>(detail::group_norm_fwd_run<T>(p, ex));
}

template <typename T>
cudaError_t launch_group_norm_bwd(const GroupNormBwdParams& b, cudaStream_t stream) {
  detail::CudaExec<> ex{stream};
  return static_cast<cudaError_t>(detail::group_norm_bwd_run<T>(b, ex));
}

}  // namespace cuda
}  // namespace medkernels
