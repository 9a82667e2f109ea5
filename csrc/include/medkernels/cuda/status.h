// A cudaError_t becomes a Status with a message for last_error() (the compiled library's
// csrc/cuda/*.cu; it calls the library's detail::fail). Needs the CUDA toolkit, like everything
// under medkernels/cuda/; the headers outside it compile without one.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "medkernels/common.h"
#include "medkernels/detail/error.h"

namespace medkernels {
namespace detail {

inline Status cuda_status(const char* what, cudaError_t err) {
  if (err == cudaSuccess) return Status::kSuccess;
  return fail(Status::kCudaError, std::string(what) + ": CUDA error " + cudaGetErrorName(err) + ": " +
                                      cudaGetErrorString(err));
}

}  // namespace detail
}  // namespace medkernels
