// pybind11 glue for GroupNorm + add / FiLM + activation.
#include "glue.h"

#include "medkernels/group_norm.h"

using medkernels::GroupNormBwdParams;
using medkernels::GroupNormParams;
namespace mk = medkernels;

void bind_group_norm(py::module_& m) {
  auto p = py::class_<GroupNormParams>(m, "GroupNormParams").def(py::init<>());
  p.def_readwrite("dtype", &GroupNormParams::dtype)
      .def_readwrite("batch", &GroupNormParams::batch)
      .def_readwrite("channels", &GroupNormParams::channels)
      .def_readwrite("groups", &GroupNormParams::groups)
      .def_readwrite("spatial", &GroupNormParams::spatial)
      .def_readwrite("eps", &GroupNormParams::eps)
      .def_readwrite("activation", &GroupNormParams::activation);
  MK_PTR_PROP(p, GroupNormParams, x);
  MK_PTR_PROP(p, GroupNormParams, y);
  MK_PTR_PROP(p, GroupNormParams, weight);
  MK_PTR_PROP(p, GroupNormParams, bias);
  MK_PTR_PROP(p, GroupNormParams, scale);
  MK_PTR_PROP(p, GroupNormParams, shift);
  MK_PTR_PROP(p, GroupNormParams, add);
  MK_PTR_PROP(p, GroupNormParams, mean);
  MK_PTR_PROP(p, GroupNormParams, rstd);
  MK_ARRAY_PROP(p, GroupNormParams, x_strides);
  MK_ARRAY_PROP(p, GroupNormParams, y_strides);

  auto b = py::class_<GroupNormBwdParams>(m, "GroupNormBwdParams").def(py::init<>());
  b.def_readwrite("fwd", &GroupNormBwdParams::fwd);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_y);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_x);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_weight);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_bias);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_scale);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_shift);
  MK_PTR_PROP(b, GroupNormBwdParams, grad_add);
  MK_ARRAY_PROP(b, GroupNormBwdParams, grad_y_strides);
  MK_ARRAY_PROP(b, GroupNormBwdParams, grad_x_strides);

  m.def("group_norm_fwd_cpu", [](const GroupNormParams& prm) { medkernels_glue::call([&] { return mk::cpu::group_norm_fwd(prm); }); });
  m.def("group_norm_bwd_cpu", [](const GroupNormBwdParams& prm) { medkernels_glue::call([&] { return mk::cpu::group_norm_bwd(prm); }); });
}
