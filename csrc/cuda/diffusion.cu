// Few-step diffusion steps on CUDA: the library entry point. The kernel and its launch are
// header-only (medkernels/cuda/diffusion.cuh); this file checks what the host can see (t and
// t_next stay on the device: the Python op validates them without a host sync), picks the
// storage type and turns CUDA errors into a Status with a message.
#include <cuda_runtime.h>

#include <string>

#include "medkernels/cuda/diffusion.cuh"
#include "medkernels/cuda/status.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/diffusion.h"

namespace medkernels {
namespace cuda {
using detail::cuda_status;

Status diffusion_fwd(const DiffusionParams& p, void* stream) {
  const Status st = diffusion_check(p, false);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.block % 128 == 0 && p.block <= 4096, "diffusion_fwd (cuda): block must be a multiple of 128, <= 4096");
  MK_CHECK_ARG(p.batch <= 65535, "diffusion_fwd (cuda): at most 65535 samples per call");
  MK_CHECK_ARG((p.numel + p.block - 1) / p.block < (int64_t(1) << 31), "diffusion_fwd (cuda): volume too large");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(p.dtype, T, return cuda_status("diffusion_fwd", launch_diffusion_fwd<T>(p, s));)
}

}  // namespace cuda
}  // namespace medkernels
