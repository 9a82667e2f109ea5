// Thread-local error message behind medkernels::last_error().
#include <string>

#include "medkernels/common.h"
#include "medkernels/detail/error.h"

namespace medkernels {
namespace detail {
static thread_local std::string g_last_error;
Status fail(Status status, const std::string& message) {
  g_last_error = message;
  return status;
}
}  // namespace detail

const char* last_error() { return detail::g_last_error.c_str(); }

}  // namespace medkernels

namespace medkernels {
namespace cuda {
bool available() {
#ifdef MEDKERNELS_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace cuda
}  // namespace medkernels
