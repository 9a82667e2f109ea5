// pybind11 glue for the decomposed 3D convolution.
#include "glue.h"

#include "medkernels/decomp_conv.h"

using medkernels::DecompConvBwdParams;
using medkernels::DecompConvParams;
namespace mk = medkernels;

void bind_decomp_conv(py::module_& m) {
  MK_PY_PARAMS(m, DecompConvParams, MK_DECOMP_CONV_PARAMS_FIELDS);
  MK_PY_PARAMS(m, DecompConvBwdParams, MK_DECOMP_CONV_BWD_PARAMS_FIELDS);

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
