// GroupNorm + add / FiLM + activation on CUDA: the library entry points. The kernels and their
// launches are header-only (medkernels/cuda/group_norm.cuh); this file checks the arguments,
// picks the storage type and turns CUDA errors into a Status with a message.
#include <cuda_runtime.h>

#include <string>

#include "medkernels/cuda/group_norm.cuh"
#include "medkernels/cuda/status.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/detail/group_norm_kernels.h"
#include "medkernels/group_norm.h"

namespace medkernels {
namespace cuda {
using detail::cuda_status;

size_t group_norm_fwd_workspace_bytes(const GroupNormParams& p) { return detail::gn_workspace_bytes(p, false); }
size_t group_norm_bwd_workspace_bytes(const GroupNormBwdParams& b) { return detail::gn_workspace_bytes(b.fwd, true); }

static Status gn_cuda_check(const GroupNormParams& p, const char* fn, size_t need) {
  const Status st = group_norm_check(p);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.workspace && p.workspace_bytes >= need,
               std::string(fn) + " (cuda): workspace must hold " + std::to_string(need) + " bytes, got " +
                   std::to_string(p.workspace_bytes));
  const detail::GnGeom g = detail::gn_geom(p);
  MK_CHECK_ARG(g.N * g.tiles < (int64_t(1) << 31), std::string(fn) + " (cuda): batch * channels too large");
  return Status::kSuccess;
}

Status group_norm_fwd(const GroupNormParams& p, void* stream) {
  const Status st = gn_cuda_check(p, "group_norm_fwd", group_norm_fwd_workspace_bytes(p));
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.y, "group_norm_fwd (cuda): y must be non-null");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(p.dtype, T, return cuda_status("group_norm_fwd", launch_group_norm_fwd<T>(p, s));)
}

Status group_norm_bwd(const GroupNormBwdParams& b, void* stream) {
  const Status st = gn_cuda_check(b.fwd, "group_norm_bwd", group_norm_bwd_workspace_bytes(b));
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(b.grad_y, "group_norm_bwd (cuda): grad_y must be non-null");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(b.fwd.dtype, T, return cuda_status("group_norm_bwd", launch_group_norm_bwd<T>(b, s));)
}

}  // namespace cuda
}  // namespace medkernels
