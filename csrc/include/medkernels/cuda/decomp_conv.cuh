// Header-only CUDA kernels of the decomposed 3D convolution (DCFormer's DecompConv3D).
//
// Include this from a .cu file to compile the kernels with your own nvcc flags:
//
//   #include "medkernels/cuda/decomp_conv.cuh"
//   cudaError_t e = medkernels::cuda::launch_decomp_conv_fwd<float>(params, stream);
//   cudaError_t e = medkernels::cuda::launch_decomp_conv_bwd<float>(bwd_params, stream);
//
// T is the storage type: float, double, medkernels::half_t (bits of __half) or
// medkernels::bfloat16_t (bits of __nv_bfloat16). The launchers do not validate the params
// (medkernels::decomp_conv_check does, in the compiled library); the backward needs
// params.workspace of decomp_conv_bwd_layout(params.fwd).total_bytes bytes of device memory.
// The kernels and their launch plan live in medkernels/detail/decomp_conv_kernels.h, run on the
// host by the tests' emulation; this file launches the plan with the CUDA executor of
// medkernels/detail/exec.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "medkernels/decomp_conv.h"
#include "medkernels/detail/decomp_conv_kernels.h"

namespace medkernels {
namespace cuda {

// Forward: y = act(conv_d(x) + conv_h(x) + conv_w(x) + bias), asynchronous on `stream`.
template <typename T>
cudaError_t launch_decomp_conv_fwd(const DecompConvParams& p, cudaStream_t stream) {
  detail::CudaExec<> ex{stream};
  return static_cast<cudaError_t>(detail::decomp_conv_fwd_run<T>(p, ex));
}

// Backward: grad_x (T) and grad_w_* / grad_bias (accumulation type), asynchronous on `stream`.
template <typename T>
cudaError_t launch_decomp_conv_bwd(const DecompConvBwdParams& p, cudaStream_t stream) {
  detail::CudaExec<> ex{stream};
  return static_cast<cudaError_t>(detail::decomp_conv_bwd_run<T>(p, ex));
}

}  // namespace cuda
}  // namespace medkernels
