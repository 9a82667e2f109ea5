// pybind11 glue for the decomposed 3D convolution.
#include "glue.h"

#include "medkernels/decomp_conv.h"

using medkernels::DecompConvBwdParams;
using medkernels::DecompConvParams;
namespace mk = medkernels;

void bind_decomp_conv(py::module_& m) {
  auto p = py::class_<DecompConvParams>(m, "DecompConvParams").def(py::init<>());
  p.def_readwrite("dtype", &DecompConvParams::dtype)
      .def_readwrite("batch", &DecompConvParams::batch)
      .def_readwrite("in_channels", &DecompConvParams::in_channels)
      .def_readwrite("out_channels", &DecompConvParams::out_channels)
      .def_readwrite("kernel_size", &DecompConvParams::kernel_size)
      .def_readwrite("stride", &DecompConvParams::stride)
      .def_readwrite("groups", &DecompConvParams::groups)
      .def_readwrite("activation", &DecompConvParams::activation);
  MK_PTR_PROP(p, DecompConvParams, x);
  MK_PTR_PROP(p, DecompConvParams, w_d);
  MK_PTR_PROP(p, DecompConvParams, w_h);
  MK_PTR_PROP(p, DecompConvParams, w_w);
  MK_PTR_PROP(p, DecompConvParams, bias);
  MK_PTR_PROP(p, DecompConvParams, y);
  MK_ARRAY_PROP(p, DecompConvParams, in_size);
  MK_ARRAY_PROP(p, DecompConvParams, out_size);
  MK_ARRAY_PROP(p, DecompConvParams, x_strides);
  MK_ARRAY_PROP(p, DecompConvParams, y_strides);

  auto b = py::class_<DecompConvBwdParams>(m, "DecompConvBwdParams").def(py::init<>());
  b.def_readwrite("fwd", &DecompConvBwdParams::fwd).def_readwrite("workspace_bytes", &DecompConvBwdParams::workspace_bytes);
  MK_PTR_PROP(b, DecompConvBwdParams, grad_y);
  MK_PTR_PROP(b, DecompConvBwdParams, grad_x);
  MK_PTR_PROP(b, DecompConvBwdParams, grad_w_d);
  MK_PTR_PROP(b, DecompConvBwdParams, grad_w_h);
  MK_PTR_PROP(b, DecompConvBwdParams, grad_w_w);
  MK_PTR_PROP(b, DecompConvBwdParams, grad_bias);
  MK_PTR_PROP(b, DecompConvBwdParams, workspace);
  MK_ARRAY_PROP(b, DecompConvBwdParams, grad_y_strides);
  MK_ARRAY_PROP(b, DecompConvBwdParams, grad_x_strides);

  m.def("decomp_conv_bwd_workspace_bytes", &mk::decomp_conv_bwd_workspace_bytes);
  m.def("decomp_conv_fwd_cpu", [](const DecompConvParams& prm) { medkernels_glue::call([&] { return mk::cpu::decomp_conv_fwd(prm); }); });
  m.def("decomp_conv_bwd_cpu", [](const DecompConvBwdParams& prm) { medkernels_glue::call([&] { return mk::cpu::decomp_conv_bwd(prm); }); });
#ifdef MEDKERNELS_WITH_CUDA
  m.def("decomp_conv_fwd_cuda", [](const DecompConvParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::decomp_conv_fwd(prm, reinterpret_cast<void*>(stream)); });
  });
  m.def("decomp_conv_bwd_cuda", [](const DecompConvBwdParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::decomp_conv_bwd(prm, reinterpret_cast<void*>(stream)); });
  });
#endif
}
