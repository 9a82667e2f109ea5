// Decomposed 3D convolution on CUDA: the library entry points. The kernels and their launches
// are header-only (medkernels/cuda/decomp_conv.cuh); this file checks the arguments, picks the
// storage type and turns CUDA errors into a Status with a message.
#include <cuda_runtime.h>

#include <string>

#include "medkernels/cuda/decomp_conv.cuh"
#include "medkernels/cuda/status.h"
#include "medkernels/decomp_conv.h"
#include "medkernels/detail/decomp_conv_index.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"

namespace medkernels {
namespace cuda {
using detail::cuda_status;

Status decomp_conv_fwd(const DecompConvParams& p, void* stream) {
  const Status st = decomp_conv_check(p);
  if (st != Status::kSuccess) return st;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(p.dtype, T, return cuda_status("decomp_conv_fwd", launch_decomp_conv_fwd<T>(p, s));)
}

Status decomp_conv_bwd(const DecompConvBwdParams& b, void* stream) {
  const Status st = detail::decomp_conv_bwd_check(b);
  if (st != Status::kSuccess) return st;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MK_DTYPE_SWITCH(b.fwd.dtype, T, return cuda_status("decomp_conv_bwd", launch_decomp_conv_bwd<T>(b, s));)
}

}  // namespace cuda
}  // namespace medkernels
