// pybind11 glue for GroupNorm + add / FiLM + activation.
#include "glue.h"

#include "medkernels/group_norm.h"

using medkernels::GroupNormBwdParams;
using medkernels::GroupNormParams;
namespace mk = medkernels;

void bind_group_norm(py::module_& m) {
  MK_PY_PARAMS(m, GroupNormParams, MK_GROUP_NORM_PARAMS_FIELDS);
  MK_PY_PARAMS(m, GroupNormBwdParams, MK_GROUP_NORM_BWD_PARAMS_FIELDS);

  m.def("group_norm_fwd_cpu", [](const GroupNormParams& prm) { medkernels_glue::call([&] { return mk::cpu::group_norm_fwd(prm); }); });
  m.def("group_norm_bwd_cpu", [](const GroupNormBwdParams& prm) { medkernels_glue::call([&] { return mk::cpu::group_norm_bwd(prm); }); });
}
