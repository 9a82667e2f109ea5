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
#include "medkernels/detail/philox.h"
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

  const int64_t N = p.numel;
  const int64_t i0 = k * p.block + 4 * static_cast<int64_t>(tid);
  const int64_t base = b * N;
  float zf[4] = {0.f, 0.f, 0.f, 0.f};
  if (draw && i0 < N) detail::philox_normal4(p.seed, p.offset, static_cast<uint64_t>(b), static_cast<uint64_t>(i0 / 4), zf);
  const T* x = static_cast<const T*>(p.x);
  const T* e = static_cast<const T*>(p.eps);
  const T* zin = static_cast<const T*>(p.noise);
  T* out = static_cast<T*>(p.out);
  T* x0o = static_cast<T*>(p.x0_out);
  const A clip = static_cast<A>(p.clip);
  A dsum = A(0);
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    const int64_t i = i0 + l;
    if (i >= N) break;
    const A z = zin ? Io<T>::load(zin + base + i) : static_cast<A>(zf[l]);
    if (op == DiffusionOp::kNormal) {
      Io<T>::store(out + base + i, z);
    } else if (op == DiffusionOp::kLoss) {
      const A d = Io<T>::load(x + base + i) - z;
      dsum += d * d;
      Io<T>::store(out + base + i, d * static_cast<A>(p.scale));
    } else if (op == DiffusionOp::kQSample) {
      Io<T>::store(out + base + i, c[0] * Io<T>::load(x + base + i) + c[1] * z);
    } else {
      A x0v;
      const A v = detail::diffusion_elem<A>(op, c, Io<T>::load(x + base + i), Io<T>::load(e + base + i), z,
                                            p.has_clip, clip, &x0v);
      Io<T>::store(out + base + i, v);
      if (x0o) Io<T>::store(x0o + base + i, x0v);
    }
  }
  if (op != DiffusionOp::kLoss) return;
  // block sum of d^2 in double, in a fixed order: warp shuffles, then warp 0 over the warp sums
  double v = static_cast<double>(dsum);
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
