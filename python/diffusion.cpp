// pybind11 glue for the few-step diffusion steps.
#include "glue.h"

#include "medkernels/diffusion.h"

using medkernels::DiffusionParams;
namespace mk = medkernels;

void bind_diffusion(py::module_& m) {
  py::enum_<mk::DiffusionOp>(m, "DiffusionOp")
      .value("q_sample", mk::DiffusionOp::kQSample)
      .value("ddim", mk::DiffusionOp::kDdim)
      .value("ddpm", mk::DiffusionOp::kDdpm)
      .value("loss", mk::DiffusionOp::kLoss)
      .value("normal", mk::DiffusionOp::kNormal);
  MK_PY_PARAMS(m, DiffusionParams, MK_DIFFUSION_PARAMS_FIELDS);

  m.def("diffusion_fwd_cpu", [](const DiffusionParams& prm) {
    medkernels_glue::call([&] { return mk::cpu::diffusion_fwd(prm); });
  });
  m.def("philox_fill_cpu", [](uint64_t seed, uint64_t offset, int64_t batch, int64_t groups, std::uintptr_t out) {
    medkernels_glue::call([&] { return mk::cpu::philox_fill(seed, offset, batch, groups, reinterpret_cast<int64_t*>(out)); });
  });
  m.def("philox_normal_fill_cpu", [](uint64_t seed, uint64_t offset, int64_t batch, int64_t groups, std::uintptr_t out) {
    medkernels_glue::call([&] { return mk::cpu::philox_normal_fill(seed, offset, batch, groups, reinterpret_cast<float*>(out)); });
  });
#ifdef MEDKERNELS_WITH_CUDA
  m.def("diffusion_fwd_cuda", [](const DiffusionParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::diffusion_fwd(prm, reinterpret_cast<void*>(stream)); });
  });
#endif
}
