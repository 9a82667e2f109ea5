// pybind11 glue for GroupNorm + add / FiLM + activation.
#include "glue.h"

#include "medkernels/detail/group_norm_kernels.h"
#include "medkernels/group_norm.h"

using medkernels::GroupNormBwdParams;
using medkernels::GroupNormParams;
namespace mk = medkernels;

void bind_group_norm(py::module_& m) {
  MK_PY_PARAMS(m, GroupNormParams, MK_GROUP_NORM_PARAMS_FIELDS);
  MK_PY_PARAMS(m, GroupNormBwdParams, MK_GROUP_NORM_BWD_PARAMS_FIELDS);

  m.def("group_norm_fwd_cpu", [](const GroupNormParams& prm) { medkernels_glue::call([&] { return mk::cpu::group_norm_fwd(prm); }); });
  m.def("group_norm_bwd_cpu", [](const GroupNormBwdParams& prm) { medkernels_glue::call([&] { return mk::cpu::group_norm_bwd(prm); }); });
  // the CUDA kernels' workspace sizes come from the header-only plan: the same in every build
  m.def("group_norm_fwd_workspace_bytes_cuda", [](const GroupNormParams& prm) { return mk::detail::gn_workspace_bytes(prm, false); });
  m.def("group_norm_bwd_workspace_bytes_cuda", [](const GroupNormBwdParams& b) { return mk::detail::gn_workspace_bytes(b.fwd, true); });
#ifdef MEDKERNELS_WITH_CUDA
  m.def("group_norm_fwd_cuda", [](const GroupNormParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::group_norm_fwd(prm, reinterpret_cast<void*>(stream)); });
  });
  m.def("group_norm_bwd_cuda", [](const GroupNormBwdParams& b, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::group_norm_bwd(b, reinterpret_cast<void*>(stream)); });
  });
#endif
}
