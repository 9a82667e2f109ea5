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
  auto p = py::class_<DiffusionParams>(m, "DiffusionParams").def(py::init<>());
  p.def_readwrite("dtype", &DiffusionParams::dtype)
      .def_property(
          "op", [](const DiffusionParams& s) { return static_cast<int>(s.op); },
          [](DiffusionParams& s, int v) { s.op = static_cast<mk::DiffusionOp>(v); })
      .def_readwrite("num_train_timesteps", &DiffusionParams::num_train_timesteps)
      .def_readwrite("batch", &DiffusionParams::batch)
      .def_readwrite("numel", &DiffusionParams::numel)
      .def_readwrite("seed", &DiffusionParams::seed)
      .def_readwrite("offset", &DiffusionParams::offset)
      .def_readwrite("eta", &DiffusionParams::eta)
      .def_readwrite("clip", &DiffusionParams::clip)
      .def_readwrite("has_clip", &DiffusionParams::has_clip)
      .def_readwrite("scale", &DiffusionParams::scale)
      .def_readwrite("block", &DiffusionParams::block);
  MK_PTR_PROP(p, DiffusionParams, x);
  MK_PTR_PROP(p, DiffusionParams, eps);
  MK_PTR_PROP(p, DiffusionParams, noise);
  MK_PTR_PROP(p, DiffusionParams, out);
  MK_PTR_PROP(p, DiffusionParams, x0_out);
  MK_PTR_PROP(p, DiffusionParams, partial);
  MK_PTR_PROP(p, DiffusionParams, table);
  MK_PTR_PROP(p, DiffusionParams, t);
  MK_PTR_PROP(p, DiffusionParams, t_next);

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
