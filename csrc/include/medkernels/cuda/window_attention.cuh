// Header-only CUDA kernels of the (shifted, cross-modal) 3D window attention.
//
// Include this from a .cu file to compile the kernels with your own nvcc flags:
//
//   #include "medkernels/cuda/window_attention.cuh"
//   cudaError_t e = medkernels::cuda::launch_window_attention_fwd<float>(params, stream);
//
// T is the storage type: float, double, medkernels::half_t or medkernels::bfloat16_t. The
// launchers do not validate the params (medkernels::window_attention_check does, in the compiled
// library); the backward needs window_attention_cuda_bwd_workspace_bytes() of workspace. One
// thread per item (query, key, token or pair) runs the per-thread functions of
// medkernels/detail/window_attention_kernels.h, whose launch plan this file runs with the CUDA
// executor of medkernels/detail/exec.h and the tests' emulation runs on the host.
#pragma once

#include <cuda_runtime.h>

#include "medkernels/detail/window_attention_kernels.h"
#include "medkernels/window_attention.h"

namespace medkernels {
namespace cuda {

template <typename T>
cudaError_t launch_window_attention_fwd(const WindowAttentionParams& p, cudaStream_t s) {
  detail::CudaExec<> ex{s};
  return static_cast<cudaError_t>(detail::wa_fwd_run<T>(p, ex));
}

template <typename T>
cudaError_t launch_window_attention_bwd(const WindowAttentionBwdParams& bp, cudaStream_t s) {
  detail::CudaExec<> ex{s};
  return static_cast<cudaError_t>(detail::wa_bwd_run<T>(bp, ex));
}

}  // namespace cuda
}  // namespace medkernels
