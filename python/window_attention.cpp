// pybind11 glue for the (shifted) 3D window attention.
#include "glue.h"

#include "medkernels/window_attention.h"

using medkernels::WindowAttentionBwdParams;
using medkernels::WindowAttentionParams;
namespace mk = medkernels;

void bind_window_attention(py::module_& m) {
  // copy.copy(params): a per-signature template filled once, copied and given pointers per call
  MK_PY_PARAMS(m, WindowAttentionParams, MK_WINDOW_ATTENTION_PARAMS_FIELDS);
  MK_PY_PARAMS(m, WindowAttentionBwdParams, MK_WINDOW_ATTENTION_BWD_PARAMS_FIELDS);

  m.def("window_attention_bwd_workspace_bytes", &mk::window_attention_bwd_workspace_bytes);
  m.def("window_attention_cuda_bwd_workspace_bytes", &mk::window_attention_cuda_bwd_workspace_bytes);
  m.def("window_attention_fwd_cpu", [](const WindowAttentionParams& prm) {
    medkernels_glue::call([&] { return mk::cpu::window_attention_fwd(prm); });
  });
  m.def("window_attention_bwd_cpu", [](const WindowAttentionBwdParams& prm) {
    medkernels_glue::call([&] { return mk::cpu::window_attention_bwd(prm); });
  });
  m.def("window_attention_table_grad_cpu",
        [](const WindowAttentionParams& prm, std::uintptr_t pair_grad, std::uintptr_t table_grad) {
          medkernels_glue::call([&] {
            return mk::cpu::window_attention_table_grad(prm, reinterpret_cast<const void*>(pair_grad),
                                                        reinterpret_cast<void*>(table_grad));
          });
        });
#ifdef MEDKERNELS_WITH_CUDA
  m.def("window_attention_fwd_cuda", [](const WindowAttentionParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::window_attention_fwd(prm, reinterpret_cast<void*>(stream)); });
  });
  m.def("window_attention_bwd_cuda", [](const WindowAttentionBwdParams& prm, std::uintptr_t stream) {
    medkernels_glue::call([&] { return mk::cuda::window_attention_bwd(prm, reinterpret_cast<void*>(stream)); });
  });
#endif
}
