// The one place where a runtime DType becomes a template storage type.
#pragma once

#include "medkernels/common.h"

// MK_DTYPE_SWITCH(dtype, T, ...) runs the body with T bound to the storage type, or
// returns kUnsupported for an unknown dtype. The body must return a Status.
#define MK_DTYPE_SWITCH(DTYPE, T, ...)                                                   \
  switch (DTYPE) {                                                                       \
    case ::medkernels::DType::kFloat32: { using T = float; __VA_ARGS__ }                 \
    case ::medkernels::DType::kFloat64: { using T = double; __VA_ARGS__ }                \
    case ::medkernels::DType::kFloat16: { using T = ::medkernels::half_t; __VA_ARGS__ }  \
    case ::medkernels::DType::kBFloat16: { using T = ::medkernels::bfloat16_t; __VA_ARGS__ } \
  }                                                                                      \
  return ::medkernels::detail::fail(::medkernels::Status::kUnsupported, "unknown dtype");
