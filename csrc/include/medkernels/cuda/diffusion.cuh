// Header-only CUDA kernels of the few-step diffusion steps (Fast-DDPM).
//
// Include this from a .cu file to compile the kernels with your own nvcc flags:
//
//   #include "medkernels/cuda/diffusion.cuh"
//   cudaError_t e = medkernels::cuda::launch_diffusion_fwd<float>(params, stream);
//
// T is the storage type: float, double, medkernels::half_t or medkernels::bfloat16_t. The
// launcher does not validate the params (medkernels::diffusion_check does, in the compiled
// library). One CUDA block owns `params.block` consecutive elements of one sample (the loss's
// partial-sum block); each thread owns one Philox group of 4 elements, so the noise needs one
// Philox call per 4 elements and no tensor is read for it. The per-sample coefficients are
// computed once per block in double. The kernel and its launch plan live in
// medkernels/detail/diffusion.h (run on the host by the tests' emulation); this file launches the
// plan with the CUDA executor of medkernels/detail/exec.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "medkernels/detail/diffusion.h"
#include "medkernels/diffusion.h"

namespace medkernels {
namespace cuda {

// Launch one fused step; p.block / 4 threads per CUDA block (p.block a multiple of 128, <= 4096).
template <typename T>
cudaError_t launch_diffusion_fwd(const DiffusionParams& p, cudaStream_t stream) {
  detail::CudaExec<> ex{stream};
  return static_cast<cudaError_t>(detail::diffusion_fwd_run<T>(p, ex));
}

}  // namespace cuda
}  // namespace medkernels
