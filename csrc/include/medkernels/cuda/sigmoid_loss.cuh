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
// this file adds the device block (warp slots, the MMA instruction) and launches the plan with the
// CUDA executor of medkernels/detail/exec.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "medkernels/detail/sigmoid_loss.h"
#include "medkernels/sigmoid_loss.h"

namespace medkernels {
namespace cuda {
namespace sl_impl {

// exec.h's device block (one slot per thread: the block programs' loops over thread / warp / lane
// slots run once) with the warp slots and the tensor-core step.
struct SlDeviceBlock : detail::DeviceBlock {
  static constexpr int kThreads = 1, kWarps = 1, kLanes = 1;
  __host__ __device__ explicit SlDeviceBlock(int = 0) {}
  __device__ __forceinline__ int warp(int) const { return static_cast<int>(threadIdx.x) >> 5; }
  __device__ __forceinline__ int lane(int, int) const { return static_cast<int>(threadIdx.x) & 31; }

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

}  // namespace sl_impl

// Forward: *params.loss (device double) = sum of the pair losses, asynchronous on `stream`.
template <typename T>
cudaError_t launch_sigmoid_loss_fwd(const SigmoidLossParams& p, cudaStream_t stream) {
  detail::CudaExec<sl_impl::SlDeviceBlock> ex{stream};
  return static_cast<cudaError_t>(detail::sl_fwd_run<T>(p, ex));
}

// Backward of grad_scale * loss: grad_x, grad_y (T) and grad_t_prime, grad_bias (device doubles).
template <typename T>
cudaError_t launch_sigmoid_loss_bwd(const SigmoidLossBwdParams& p, cudaStream_t stream) {
  detail::CudaExec<sl_impl::SlDeviceBlock> ex{stream};
  return static_cast<cudaError_t>(detail::sl_bwd_run<T>(p, ex));
}

}  // namespace cuda
}  // namespace medkernels
