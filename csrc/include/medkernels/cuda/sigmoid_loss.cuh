// Header-only CUDA kernels of the pairwise sigmoid (SigLIP) loss.
//
// Include this from a .cu file to compile the kernels with your own nvcc flags (sm_80 or newer:
// 16-bit inputs use mma.sync.m16n8k16 tensor-core instructions):
//
//   #include "medkernels/cuda/sigmoid_loss.cuh"
//   cudaError_t e = medkernels::cuda::launch_sigmoid_loss_fwd<medkernels::bfloat16_t>(params, stream);
//   cudaError_t e = medkernels::cuda::launch_sigmoid_loss_bwd<medkernels::bfloat16_t>(bwd_params, stream);
//
// T is the storage type: float, double, medkernels::half_t (bits of __half) or
// medkernels::bfloat16_t (bits of __nv_bfloat16). All pointers are device memory, including
// params.loss (forward) and grad_t_prime / grad_bias (backward), written as doubles. The launchers
// do not validate the params (medkernels::sigmoid_loss_check does, in the compiled library); they
// need params.workspace of sigmoid_loss_cuda_{fwd,bwd}_workspace_bytes() bytes of device memory
// (medkernels/detail/sigmoid_loss.h: sl_cuda_*_workspace_bytes). The block programs, tile math and
// launch plan live in medkernels/detail/sigmoid_loss.h, run on the host by the tests' emulation;
// this file adds the block policy (threads, __syncthreads, the MMA instruction), the __global__
// wrappers and the launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "medkernels/detail/sigmoid_loss.h"
#include "medkernels/sigmoid_loss.h"

namespace medkernels {
namespace cuda {
namespace sl_impl {

// One slot per thread: the block programs' loops over thread / warp / lane slots run once.
struct DeviceBlock {
  static constexpr int kThreads = 1, kWarps = 1, kLanes = 1;
  __device__ __forceinline__ int thread(int) const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ int warp(int) const { return static_cast<int>(threadIdx.x) >> 5; }
  __device__ __forceinline__ int lane(int, int) const { return static_cast<int>(threadIdx.x) & 31; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }

  template <typename T>
  __device__ __forceinline__ static void mma(detail::SlFragC<float>* c, const detail::SlFragA* a,
                                             const detail::SlFragB* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float* d = c[0].v;
    const uint32_t* ar = a[0].r;
    const uint32_t* br = b[0].r;
    if constexpr (std::is_same<T, bfloat16_t>::value) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]));
    }
#else
    __trap();  // tensor-core tiles need sm_80 or newer
#endif
  }
};

template <typename T, bool SYM>
__global__ void __launch_bounds__(detail::kSlThreads) sl_fwd_kernel(const detail::SlArgs g) {
  extern __shared__ __align__(16) unsigned char mk_sl_smem[];
  detail::sl_fwd_block<T, SYM>(DeviceBlock{}, g, blockIdx.x, blockIdx.y, mk_sl_smem);
}

template <typename T, bool SYM>
__global__ void __launch_bounds__(detail::kSlThreads) sl_bwd_kernel(const detail::SlArgs g) {
  extern __shared__ __align__(16) unsigned char mk_sl_smem[];
  detail::sl_bwd_block<T, SYM>(DeviceBlock{}, g, blockIdx.x, blockIdx.y, mk_sl_smem);
}

// A template (instantiated once, as <0>) so that two translation units including this header link.
template <int = 0>
__global__ void __launch_bounds__(detail::kSlThreads) sl_finish_kernel(const detail::SlFinish f) {
  __shared__ double red[2 * detail::kSlThreads];
  detail::sl_finish_block(DeviceBlock{}, f, red);
}

template <typename K>
inline cudaError_t launch(K kernel, int64_t gx, int64_t gy, size_t smem, cudaStream_t stream, const detail::SlArgs& g) {
  if (gx <= 0 || gy <= 0) return cudaSuccess;
  if (gx > 0x7fffffffLL || gy > 65535) return cudaErrorInvalidConfiguration;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), detail::kSlThreads, smem, stream>>>(g);
  return cudaGetLastError();
}

// The executor detail::sl_fwd_run / sl_bwd_run plan with: one launch per call.
struct CudaExec {
  cudaStream_t stream = nullptr;

  template <typename T, bool SYM>
  int fwd(const detail::SlArgs& g, int64_t gx, int64_t gy) {
    return static_cast<int>(launch(sl_fwd_kernel<T, SYM>, gx, gy, detail::SlSmem<T>::fwd_bytes, stream, g));
  }
  template <typename T, bool SYM>
  int bwd(const detail::SlArgs& g, int64_t gx, int64_t gy) {
    return static_cast<int>(launch(sl_bwd_kernel<T, SYM>, gx, gy, detail::SlSmem<T>::bwd_bytes, stream, g));
  }
  int finish(const detail::SlFinish& f) {
    sl_finish_kernel<><<<1, detail::kSlThreads, 0, stream>>>(f);
    return static_cast<int>(cudaGetLastError());
  }
};

}  // namespace sl_impl

// Forward: *params.loss (device double) = sum of the pair losses, asynchronous on `stream`.
template <typename T>
cudaError_t launch_sigmoid_loss_fwd(const SigmoidLossParams& p, cudaStream_t stream) {
  sl_impl::CudaExec ex{stream};
  return static_cast<cudaError_t>(detail::sl_fwd_run<T>(p, ex));
}

// Backward of grad_scale * loss: grad_x, grad_y (T) and grad_t_prime, grad_bias (device doubles).
template <typename T>
cudaError_t launch_sigmoid_loss_bwd(const SigmoidLossBwdParams& p, cudaStream_t stream) {
  sl_impl::CudaExec ex{stream};
  return static_cast<cudaError_t>(detail::sl_bwd_run<T>(p, ex));
}

}  // namespace cuda
}  // namespace medkernels
