// Pairwise sigmoid (SigLIP) loss on CUDA: the library entry points. The kernels and their launches
// are header-only (medkernels/cuda/sigmoid_loss.cuh); this file checks the arguments, picks the
// storage type and turns CUDA errors into a Status with a message.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "medkernels/cuda/sigmoid_loss.cuh"
#include "medkernels/cuda/status.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/detail/sigmoid_loss.h"
#include "medkernels/sigmoid_loss.h"

namespace medkernels {
namespace cuda {
using detail::cuda_status;

size_t sigmoid_loss_fwd_workspace_bytes(const SigmoidLossParams& p) { return detail::sl_cuda_fwd_workspace_bytes(p); }
size_t sigmoid_loss_bwd_workspace_bytes(const SigmoidLossBwdParams& b) {
  return detail::sl_cuda_bwd_workspace_bytes(b.fwd);
}

Status sigmoid_loss_fwd(const SigmoidLossParams& p, void* stream) {
  const Status st = sigmoid_loss_check(p);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.loss, "sigmoid_loss_fwd (cuda): loss must not be null");
  MK_CHECK_ARG(p.workspace && p.workspace_bytes >= sigmoid_loss_fwd_workspace_bytes(p),
               "sigmoid_loss_fwd (cuda): workspace must hold cuda::sigmoid_loss_fwd_workspace_bytes() bytes");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(p.dtype, T, return cuda_status("sigmoid_loss_fwd", launch_sigmoid_loss_fwd<T>(p, s));)
}

Status sigmoid_loss_bwd(const SigmoidLossBwdParams& b, void* stream) {
  const Status st = sigmoid_loss_check(b.fwd);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(b.grad_x && b.grad_y, "sigmoid_loss_bwd (cuda): grad_x and grad_y must not be null");
  MK_CHECK_ARG(std::isfinite(b.grad_scale), "sigmoid_loss_bwd (cuda): grad_scale must be finite");
  MK_CHECK_ARG(b.fwd.workspace && b.fwd.workspace_bytes >= sigmoid_loss_bwd_workspace_bytes(b),
               "sigmoid_loss_bwd (cuda): fwd.workspace must hold cuda::sigmoid_loss_bwd_workspace_bytes() bytes");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(b.fwd.dtype, T, return cuda_status("sigmoid_loss_bwd", launch_sigmoid_loss_bwd<T>(b, s));)
}

}  // namespace cuda
}  // namespace medkernels
