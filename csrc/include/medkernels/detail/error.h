// Internal: record a message for last_error() and return a status.
#pragma once

#include <string>

#include "medkernels/common.h"

namespace medkernels {
namespace detail {
Status fail(Status status, const std::string& message);
}  // namespace detail
}  // namespace medkernels

#define MK_CHECK_ARG(cond, msg)                                                         \
  do {                                                                                  \
    if (!(cond)) return ::medkernels::detail::fail(::medkernels::Status::kInvalidArgument, \
                                                   std::string(msg));                   \
  } while (0)
