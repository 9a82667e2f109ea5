// The C ABI's shared entry points (version, last error, CUDA availability, the params structs'
// layouts) and the thread's error message; each family's entry points live in <family>.cpp.
#include "common.h"

#include <cstring>
#include <vector>

namespace mk_capi {

std::string& error() {
  thread_local std::string message;
  return message;
}

namespace {
struct Layout {
  const char* name;
  const mk_field* fields;
  size_t size;
};
std::vector<Layout>& layouts() {
  static std::vector<Layout> all;
  return all;
}
}  // namespace

void register_fields(const char* name, const mk_field* fields, size_t size) {
  layouts().push_back({name, fields, size});
}

}  // namespace mk_capi

extern "C" {

int mk_version(void) {
  return medkernels::kVersionMajor * 10000 + medkernels::kVersionMinor * 100 + medkernels::kVersionPatch;
}

int mk_abi_version(void) { return MK_ABI_VERSION; }

const char* mk_last_error(void) { return mk_capi::error().c_str(); }

int mk_cuda_available(void) {
#ifdef MEDKERNELS_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

const mk_field* mk_params_fields(const char* name, size_t* size) {
  if (!name) return nullptr;
  for (const auto& l : mk_capi::layouts())
    if (std::strcmp(l.name, name) == 0) {
      if (size) *size = l.size;
      return l.fields;
    }
  return nullptr;
}

}  // extern "C"
