// pybind11 glue for the (shifted) 3D window attention.
#include "glue.h"

#include "medkernels/window_attention.h"

using medkernels::WindowAttentionBwdParams;
using medkernels::WindowAttentionParams;
namespace mk = medkernels;

void bind_window_attention(py::module_& m) {
  auto p = py::class_<WindowAttentionParams>(m, "WindowAttentionParams").def(py::init<>());
  p.def_readwrite("dtype", &WindowAttentionParams::dtype)
      .def_readwrite("directions", &WindowAttentionParams::directions)
      .def_readwrite("batch", &WindowAttentionParams::batch)
      .def_readwrite("heads", &WindowAttentionParams::heads)
      .def_readwrite("head_dim", &WindowAttentionParams::head_dim)
      .def_readwrite("scale", &WindowAttentionParams::scale)
      .def_readwrite("mask_value", &WindowAttentionParams::mask_value)
      .def_readwrite("mask_padded", &WindowAttentionParams::mask_padded);
  MK_PTR_PROP(p, WindowAttentionParams, q0);
  MK_PTR_PROP(p, WindowAttentionParams, k0);
  MK_PTR_PROP(p, WindowAttentionParams, v0);
  MK_PTR_PROP(p, WindowAttentionParams, q1);
  MK_PTR_PROP(p, WindowAttentionParams, k1);
  MK_PTR_PROP(p, WindowAttentionParams, v1);
  MK_PTR_PROP(p, WindowAttentionParams, o0);
  MK_PTR_PROP(p, WindowAttentionParams, o1);
  MK_PTR_PROP(p, WindowAttentionParams, table);
  MK_PTR_PROP(p, WindowAttentionParams, pad_kv);
  MK_PTR_PROP(p, WindowAttentionParams, lse);
  MK_ARRAY_PROP(p, WindowAttentionParams, size);
  MK_ARRAY_PROP(p, WindowAttentionParams, window);
  MK_ARRAY_PROP(p, WindowAttentionParams, eff_window);
  MK_ARRAY_PROP(p, WindowAttentionParams, shift);
  MK_ARRAY_PROP(p, WindowAttentionParams, padded);
  MK_ARRAY_PROP(p, WindowAttentionParams, q_strides);
  MK_ARRAY_PROP(p, WindowAttentionParams, k_strides);
  MK_ARRAY_PROP(p, WindowAttentionParams, v_strides);
  MK_ARRAY_PROP(p, WindowAttentionParams, o_strides);

  auto b = py::class_<WindowAttentionBwdParams>(m, "WindowAttentionBwdParams").def(py::init<>());
  b.def_readwrite("fwd", &WindowAttentionBwdParams::fwd)
      .def_readwrite("workspace_bytes", &WindowAttentionBwdParams::workspace_bytes);
  MK_PTR_PROP(b, WindowAttentionBwdParams, g0);
  MK_PTR_PROP(b, WindowAttentionBwdParams, g1);
  MK_PTR_PROP(b, WindowAttentionBwdParams, dq0);
  MK_PTR_PROP(b, WindowAttentionBwdParams, dq1);
  MK_PTR_PROP(b, WindowAttentionBwdParams, dk0);
  MK_PTR_PROP(b, WindowAttentionBwdParams, dk1);
  MK_PTR_PROP(b, WindowAttentionBwdParams, dv0);
  MK_PTR_PROP(b, WindowAttentionBwdParams, dv1);
  MK_PTR_PROP(b, WindowAttentionBwdParams, pair_grad);
  MK_PTR_PROP(b, WindowAttentionBwdParams, grad_pad_kv);
  MK_PTR_PROP(b, WindowAttentionBwdParams, workspace);
  MK_PTR_PROP(b, WindowAttentionBwdParams, table_grad);
  // copy.copy(params): a per-signature template filled once, copied and given pointers per call
  p.def("__copy__", [](const WindowAttentionParams& s) { return WindowAttentionParams(s); });
  b.def("__copy__", [](const WindowAttentionBwdParams& s) { return WindowAttentionBwdParams(s); });
  MK_ARRAY_PROP(b, WindowAttentionBwdParams, g_strides);
  MK_ARRAY_PROP(b, WindowAttentionBwdParams, dq_strides);
  MK_ARRAY_PROP(b, WindowAttentionBwdParams, dk_strides);
  MK_ARRAY_PROP(b, WindowAttentionBwdParams, dv_strides);

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
