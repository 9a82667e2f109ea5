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

  MK_PY_PARAMS(m, SigmoidLossParams, MK_SIGMOID_LOSS_PARAMS_FIELDS);
  MK_PY_PARAMS(m, SigmoidLossBwdParams, MK_SIGMOID_LOSS_BWD_PARAMS_FIELDS);

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
