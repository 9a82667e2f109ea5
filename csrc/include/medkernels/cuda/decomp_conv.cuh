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
// The per-thread math lives in medkernels/detail/decomp_conv_kernels.h, shared with a host
// emulation used by the tests; this file only adds the __global__ wrappers and the launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "medkernels/decomp_conv.h"
#include "medkernels/detail/decomp_conv_kernels.h"

namespace medkernels {
namespace cuda {
namespace kernels {

using detail::BwdArgs;
using detail::ConvArgs;
using detail::TilePlan;

#define MK_GRID_STRIDE(i, total)                                                           \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename TI, typename TW, typename TO, typename A, int MODE>
__global__ void __launch_bounds__(256) decomp_conv_generic_kernel(const ConvArgs a, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::conv_generic_point<TI, TW, TO, A, MODE>(a, i);
}

template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
__global__ void __launch_bounds__(256) decomp_conv_cl_vec_kernel(const ConvArgs a, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::conv_cl_vec_point<TI, TW, TO, A, MODE, VEC>(a, i);
}

template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
__global__ void __launch_bounds__(256) decomp_conv_tile_kernel(const ConvArgs a, const TilePlan t) {
  extern __shared__ __align__(16) unsigned char mk_decomp_conv_smem[];
  A* smem = reinterpret_cast<A*>(mk_decomp_conv_smem);
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t tile = blockIdx.x; tile < t.tiles; tile += gridDim.x) {
    detail::tile_stage<TI, TW, A, VEC>(a, t, tile, tid, smem);
    __syncthreads();
    detail::tile_compute<TI, TO, A, MODE>(a, t, tile, tid, smem);
    __syncthreads();  // the next tile's staging overwrites shared memory
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(256) decomp_conv_gz_copy_kernel(const BwdArgs b, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::gz_copy_point<T, A>(b, i);
}

template <typename T, typename A>
__global__ void __launch_bounds__(256) decomp_conv_dw_partial_kernel(const BwdArgs b, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::dw_partial_point<T, A>(b, i);
}

template <typename A>
__global__ void __launch_bounds__(256) decomp_conv_dw_reduce_kernel(const BwdArgs b, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::dw_reduce_point<A>(b, i);
}

template <typename T, typename A>
__global__ void __launch_bounds__(256) decomp_conv_wflip_kernel(const BwdArgs b, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::wflip_point<T, A>(b, i);
}

template <typename T, typename A>
__global__ void __launch_bounds__(256) decomp_conv_dx_gather_kernel(const BwdArgs b, int64_t total) {
  MK_GRID_STRIDE(i, total) detail::dx_gather_point<T, A>(b, i);
}

#undef MK_GRID_STRIDE

// Grid for a grid-stride loop over `total` items (the loop covers any total, so the cap only
// bounds the launch).
inline unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  const int64_t cap = int64_t(1) << 20;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// The executor detail::run_conv / decomp_conv_*_run plan with: one launch per call.
struct CudaExec {
  cudaStream_t stream = nullptr;
  static constexpr int kThreads = 256;

  template <typename TI, typename TW, typename TO, typename A, int MODE>
  int conv_generic(const ConvArgs& a, int64_t total) {
    decomp_conv_generic_kernel<TI, TW, TO, A, MODE><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a, total);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
  int conv_cl_vec(const ConvArgs& a, int64_t total) {
    decomp_conv_cl_vec_kernel<TI, TW, TO, A, MODE, VEC><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a, total);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
  int conv_tile(const ConvArgs& a, const TilePlan& t) {
    if (t.tiles <= 0) return 0;
    const size_t smem = static_cast<size_t>(t.smem_elems) * sizeof(A);
    decomp_conv_tile_kernel<TI, TW, TO, A, MODE, VEC><<<grid_for(t.tiles, 1), t.threads, smem, stream>>>(a, t);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename T, typename A>
  int gz_copy(const BwdArgs& b, int64_t total) {
    decomp_conv_gz_copy_kernel<T, A><<<grid_for(total, kThreads), kThreads, 0, stream>>>(b, total);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename T, typename A>
  int dw_partial(const BwdArgs& b, int64_t total) {
    decomp_conv_dw_partial_kernel<T, A><<<grid_for(total, kThreads), kThreads, 0, stream>>>(b, total);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename A>
  int dw_reduce(const BwdArgs& b, int64_t total) {
    decomp_conv_dw_reduce_kernel<A><<<grid_for(total, kThreads), kThreads, 0, stream>>>(b, total);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename T, typename A>
  int wflip(const BwdArgs& b, int64_t total) {
    decomp_conv_wflip_kernel<T, A><<<grid_for(total, kThreads), kThreads, 0, stream>>>(b, total);
    return static_cast<int>(cudaGetLastError());
  }
  template <typename T, typename A>
  int dx_gather(const BwdArgs& b, int64_t total) {
    decomp_conv_dx_gather_kernel<T, A><<<grid_for(total, kThreads), kThreads, 0, stream>>>(b, total);
    return static_cast<int>(cudaGetLastError());
  }
};

}  // namespace kernels

// Forward: y = act(conv_d(x) + conv_h(x) + conv_w(x) + bias), asynchronous on `stream`.
template <typename T>
cudaError_t launch_decomp_conv_fwd(const DecompConvParams& p, cudaStream_t stream) {
  kernels::CudaExec ex{stream};
  return static_cast<cudaError_t>(detail::decomp_conv_fwd_run<T>(p, ex));
}

// Backward: grad_x (T) and grad_w_* / grad_bias (accumulation type), asynchronous on `stream`.
template <typename T>
cudaError_t launch_decomp_conv_bwd(const DecompConvBwdParams& p, cudaStream_t stream) {
  kernels::CudaExec ex{stream};
  return static_cast<cudaError_t>(detail::decomp_conv_bwd_run<T>(p, ex));
}

}  // namespace cuda
}  // namespace medkernels
