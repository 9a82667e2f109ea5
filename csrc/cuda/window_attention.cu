// (Shifted) 3D window attention on CUDA: one thread per item (query, key, token or pair) runs the
// per-thread functions of medkernels/detail/window_attention_kernels.h, which the tests' host
// emulation (tests/window_attention_emulate.cpp) also runs, so they are tested without a GPU. Keys and
// values are read from global memory (the window's tokens stay in L1/L2 across a block's threads);
// Triton is the fast GPU path, this is the dependency-free one.
#include <cuda_runtime.h>

#include <string>

#include "medkernels/cuda/status.h"
#include "medkernels/cuda/window_attention.cuh"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/window_attention.h"

namespace medkernels {
namespace cuda {
using detail::cuda_status;

Status window_attention_fwd(const WindowAttentionParams& p, void* stream) {
  const Status st = window_attention_check(p);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.head_dim <= 128, "window_attention (cuda): head_dim must be <= 128, got " + std::to_string(p.head_dim));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(p.dtype, T, return cuda_status("window_attention_fwd", launch_window_attention_fwd<T>(p, s));)
}

Status window_attention_bwd(const WindowAttentionBwdParams& bp, void* stream) {
  const Status st = window_attention_check(bp.fwd);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(bp.fwd.head_dim <= 128,
               "window_attention (cuda): head_dim must be <= 128, got " + std::to_string(bp.fwd.head_dim));
  MK_CHECK_ARG(bp.workspace_bytes >= window_attention_cuda_bwd_workspace_bytes(bp),
               "window_attention (cuda): workspace smaller than window_attention_cuda_bwd_workspace_bytes()");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(bp.fwd.dtype, T, return cuda_status("window_attention_bwd", launch_window_attention_bwd<T>(bp, s));)
}

}  // namespace cuda
}  // namespace medkernels
