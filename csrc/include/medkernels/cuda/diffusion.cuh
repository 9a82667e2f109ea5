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
// computed once per block in double (medkernels/detail/diffusion.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "medkernels/detail/diffusion.h"
#include "medkernels/diffusion.h"

namespace medkernels {
namespace cuda {
namespace kernels {

template <typename T>
__global__ void __launch_bounds__(1024) diffusion_fwd_kernel(const DiffusionParams p, int64_t nblk, bool draw) {
  using A = typename Io<T>::acc;
  __shared__ double coef_s[5];
  __shared__ double warp_sums[32];
  const DiffusionOp op = p.op;
  const int64_t b = blockIdx.y;
  const int64_t k = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  if (op <= DiffusionOp::kDdpm) {
    if (tid == 0) {
      const detail::StepCoef c = detail::diffusion_coef(op, p.table, p.num_train_timesteps, p.t[b],
                                                        p.t_next ? p.t_next[b] : -1, p.eta);
      for (int i = 0; i < 5; ++i) coef_s[i] = c.c[i];
    }
    __syncthreads();
  }
  A c[5];
  for (int i = 0; i < 5; ++i) c[i] = op <= DiffusionOp::kDdpm ? static_cast<A>(coef_s[i]) : A(0);
  const int64_t i0 = k * p.block + 4 * static_cast<int64_t>(tid);
  double v = detail::diffusion_thread<T>(p, c, b, i0, draw);
  if (op != DiffusionOp::kLoss) return;
  // block sum of d^2 in double, in a fixed order: warp shuffles, then warp 0 over the warp sums
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int warps = (static_cast<int>(blockDim.x) + 31) / 32;
  if ((tid & 31) == 0) warp_sums[tid >> 5] = v;
  __syncthreads();
  if (tid < 32) {
    v = tid < warps ? warp_sums[tid] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (tid == 0) p.partial[b * nblk + k] = v;
  }
}

}  // namespace kernels

// Launch one fused step; p.block / 4 threads per CUDA block (p.block a multiple of 128, <= 4096).
template <typename T>
cudaError_t launch_diffusion_fwd(const DiffusionParams& p, cudaStream_t stream) {
  const int64_t nblk = (p.numel + p.block - 1) / p.block;
  const bool draw = !p.noise && !(p.op == DiffusionOp::kDdim && p.eta == 0.0);
  const dim3 grid(static_cast<unsigned>(nblk), static_cast<unsigned>(p.batch));
  kernels::diffusion_fwd_kernel<T><<<grid, static_cast<unsigned>(p.block / 4), 0, stream>>>(p, nblk, draw);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace medkernels
