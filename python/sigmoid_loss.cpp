// pybind11 glue for the pairwise sigmoid (SigLIP) loss.
#include "glue.h"

#include "medkernels/sigmoid_loss.h"

using medkernels::SigmoidLossBwdParams;
using medkernels::SigmoidLossParams;
namespace mk = medkernels;

void bind_sigmoid_loss(py::module_& m) {
  py::enum_<mk::SigmoidLossPositives>(m, "SigmoidLossPositives")
      .value("diagonal", mk::SigmoidLossPositives::kDiagonal)
      .value("labels", mk::SigmoidLossPositives::kLabels)
      .value("mask", mk::SigmoidLossPositives::kMask);

  auto p = py::class_<SigmoidLossParams>(m, "SigmoidLossParams").def(py::init<>());
  p.def_readwrite("dtype", &SigmoidLossParams::dtype)
      .def_readwrite("n", &SigmoidLossParams::n)
      .def_readwrite("m", &SigmoidLossParams::m)
      .def_readwrite("d", &SigmoidLossParams::d)
      .def_readwrite("logit_scale", &SigmoidLossParams::logit_scale)
      .def_readwrite("bias", &SigmoidLossParams::bias)
      .def_readwrite("symmetric", &SigmoidLossParams::symmetric)
      .def_readwrite("positives", &SigmoidLossParams::positives)
      .def_readwrite("diag_offset", &SigmoidLossParams::diag_offset)
      .def_readwrite("workspace_bytes", &SigmoidLossParams::workspace_bytes);
  MK_PTR_PROP(p, SigmoidLossParams, workspace);
  MK_PTR_PROP(p, SigmoidLossParams, x);
  MK_PTR_PROP(p, SigmoidLossParams, y);
  MK_PTR_PROP(p, SigmoidLossParams, labels_x);
  MK_PTR_PROP(p, SigmoidLossParams, labels_y);
  MK_PTR_PROP(p, SigmoidLossParams, mask);
  MK_PTR_PROP(p, SigmoidLossParams, loss);
  MK_ARRAY_PROP(p, SigmoidLossParams, x_strides);
  MK_ARRAY_PROP(p, SigmoidLossParams, y_strides);
  MK_ARRAY_PROP(p, SigmoidLossParams, mask_strides);

  auto b = py::class_<SigmoidLossBwdParams>(m, "SigmoidLossBwdParams").def(py::init<>());
  b.def_readwrite("fwd", &SigmoidLossBwdParams::fwd).def_readwrite("grad_scale", &SigmoidLossBwdParams::grad_scale);
  MK_PTR_PROP(b, SigmoidLossBwdParams, grad_x);
  MK_PTR_PROP(b, SigmoidLossBwdParams, grad_y);
  MK_PTR_PROP(b, SigmoidLossBwdParams, grad_t_prime);
  MK_PTR_PROP(b, SigmoidLossBwdParams, grad_bias);
  MK_ARRAY_PROP(b, SigmoidLossBwdParams, grad_x_strides);
  MK_ARRAY_PROP(b, SigmoidLossBwdParams, grad_y_strides);

  m.def("sigmoid_loss_fwd_workspace_bytes_cpu", &mk::cpu::sigmoid_loss_fwd_workspace_bytes);
  m.def("sigmoid_loss_bwd_workspace_bytes_cpu", &mk::cpu::sigmoid_loss_bwd_workspace_bytes);
  m.def("sigmoid_loss_fwd_cpu",
        [](const SigmoidLossParams& prm) { medkernels_glue::call([&] { return mk::cpu::sigmoid_loss_fwd(prm); }); });
  m.def("sigmoid_loss_bwd_cpu",
        [](const SigmoidLossBwdParams& prm) { medkernels_glue::call([&] { return mk::cpu::sigmoid_loss_bwd(prm); }); });
#ifdef MEDKERNELS_WITH_CUDA
  m.def("sigmoid_loss_fwd_workspace_bytes_cuda", &mk::cuda::sigmoid_loss_fwd_workspace_bytes);
  m.def("sigmoid_loss_bwd_workspace_bytes_cuda", &mk::cuda::sigmoid_loss_bwd_workspace_bytes);
  m.def("sigmoid_loss_fwd_cuda", [](const SigmoidLossParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::sigmoid_loss_fwd(prm, reinterpret_cast<void*>(stream)); });
  });
  m.def("sigmoid_loss_bwd_cuda", [](const SigmoidLossBwdParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::sigmoid_loss_bwd(prm, reinterpret_cast<void*>(stream)); });
  });
#endif
}
