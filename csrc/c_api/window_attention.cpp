// The C ABI of the 3D (shifted) window attention (medkernels/c_api.h): the flat entry points, whose
// C arguments become a WindowAttentionParams, and the params form generated from its field list.
#include <cmath>
#include <string>
#include <vector>

#include "common.h"
#include "medkernels/window_attention.h"

namespace {

using mk_capi::fail;
using mk_capi::from_status;
using mk_capi::guarded;
using mk_capi::no_cuda;

void strides6(const int64_t* sizes, const int64_t* given, int64_t* st) {
  if (given) {
    for (int i = 0; i < 6; ++i) st[i] = given[i];
    return;
  }
  st[5] = 1;
  for (int i = 4; i >= 0; --i) st[i] = st[i + 1] * sizes[i + 1];
}

// The single-direction params from the C arguments (MONAI's window clamp); MK_SUCCESS or an error.
int window_params(const std::string& f, medkernels::DType dt, const void* q, const void* k, const void* v,
                  const int64_t* sizes, const int64_t* q_strides, const int64_t* k_strides, const int64_t* v_strides,
                  const int64_t* window, const int64_t* shift, const void* table, const void* pad_kv, double scale,
                  double mask_value, int mask_padded, void* out, const int64_t* out_strides,
                  medkernels::WindowAttentionParams& p) {
  if (!sizes || !window || !shift)
    return fail(MK_INVALID_ARGUMENT, f + ": sizes (6 values), window and shift (3 values each) must not be NULL");
  for (int i = 0; i < 6; ++i)
    if (sizes[i] < 1) return fail(MK_INVALID_ARGUMENT, f + ": sizes {B, D, H, W, heads, head_dim} must be >= 1");
  p.dtype = dt;
  p.directions = 1;
  p.q0 = q;
  p.k0 = k;
  p.v0 = v;
  p.o0 = out;
  p.table = table;
  p.pad_kv = pad_kv;
  p.batch = sizes[0];
  p.heads = sizes[4];
  p.head_dim = sizes[5];
  for (int a = 0; a < 3; ++a) {
    if (window[a] < 1 || shift[a] < 0 || shift[a] >= window[a])
      return fail(MK_INVALID_ARGUMENT, f + ": need window >= 1 and 0 <= shift < window on every axis, got window[" +
                                           std::to_string(a) + "]=" + std::to_string(window[a]) + " shift[" +
                                           std::to_string(a) + "]=" + std::to_string(shift[a]));
    p.size[a] = sizes[1 + a];
    p.window[a] = window[a];
    const bool clamp = p.size[a] <= window[a];  // MONAI get_window_size
    p.eff_window[a] = clamp ? p.size[a] : window[a];
    p.shift[a] = clamp ? 0 : shift[a];
    p.padded[a] = (p.size[a] + p.eff_window[a] - 1) / p.eff_window[a] * p.eff_window[a];
  }
  p.scale = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  p.mask_value = mask_value;
  p.mask_padded = mask_padded != 0;
  strides6(sizes, q_strides, p.q_strides);
  strides6(sizes, k_strides, p.k_strides);
  strides6(sizes, v_strides, p.v_strides);
  strides6(sizes, out_strides, p.o_strides);
  return MK_SUCCESS;
}

template <typename A>
int window_attention_fwd(const char* fn, medkernels::DType dt, bool on_cuda, void* stream, const void* q,
                         const void* k, const void* v, const int64_t* sizes, const int64_t* q_strides,
                         const int64_t* k_strides, const int64_t* v_strides, const int64_t* window,
                         const int64_t* shift, const void* table, const void* pad_kv, double scale, double mask_value,
                         int mask_padded, void* out, const int64_t* out_strides, A* lse) {
  return guarded(fn, [&]() -> int {
    const std::string f(fn);
    medkernels::WindowAttentionParams p;
    const int st = window_params(f, dt, q, k, v, sizes, q_strides, k_strides, v_strides, window, shift, table,
                                 pad_kv, scale, mask_value, mask_padded, out, out_strides, p);
    if (st != MK_SUCCESS) return st;
    if (on_cuda) {
#ifdef MEDKERNELS_WITH_CUDA
      if (!lse) return fail(MK_INVALID_ARGUMENT, f + ": lse (B, D, H, W, heads) of device memory must not be NULL");
      p.lse = lse;
      return from_status(medkernels::cuda::window_attention_fwd(p, stream));
#else
      (void)stream;
      return no_cuda(fn);
#endif
    }
    std::vector<A> own_lse;
    if (lse) {
      p.lse = lse;
    } else {
      own_lse.resize(static_cast<size_t>(sizes[0] * sizes[1] * sizes[2] * sizes[3] * sizes[4]));
      p.lse = own_lse.data();
    }
    return from_status(medkernels::cpu::window_attention_fwd(p));
  });
}

template <typename A>
int window_attention_bwd(const char* fn, medkernels::DType dt, const void* q, const void* k, const void* v,
                         const int64_t* sizes, const int64_t* q_strides, const int64_t* k_strides,
                         const int64_t* v_strides, const int64_t* window, const int64_t* shift, const void* table,
                         const void* pad_kv, double scale, double mask_value, int mask_padded, const void* out,
                         const int64_t* out_strides, const A* lse, const void* grad_out,
                         const int64_t* grad_out_strides, void* dq, void* dk, void* dv, const int64_t* dqkv_strides,
                         A* pair_grad, A* grad_pad_kv) {
  return guarded(fn, [&]() -> int {
    const std::string f(fn);
    medkernels::WindowAttentionBwdParams b;
    const int st = window_params(f, dt, q, k, v, sizes, q_strides, k_strides, v_strides, window, shift, table,
                                 pad_kv, scale, mask_value, mask_padded, const_cast<void*>(out), out_strides, b.fwd);
    if (st != MK_SUCCESS) return st;
    if (!lse) return fail(MK_INVALID_ARGUMENT, f + ": lse (the forward's log-sum-exp) must not be NULL");
    b.fwd.lse = const_cast<A*>(lse);
    b.g0 = grad_out;
    strides6(sizes, grad_out_strides, b.g_strides);
    b.dq0 = dq;
    b.dk0 = dk;
    b.dv0 = dv;
    strides6(sizes, dqkv_strides, b.dq_strides);
    strides6(sizes, dqkv_strides, b.dk_strides);
    strides6(sizes, dqkv_strides, b.dv_strides);
    b.pair_grad = pair_grad;
    b.grad_pad_kv = grad_pad_kv;
    const size_t bytes = medkernels::window_attention_bwd_workspace_bytes(b);
    std::vector<double> ws((bytes + sizeof(double) - 1) / sizeof(double) + 1);
    b.workspace = ws.data();
    b.workspace_bytes = bytes;
    return from_status(medkernels::cpu::window_attention_bwd(b));
  });
}

}  // namespace

extern "C" {

#define MK_WINDOW_ATTENTION_ARGS_FWD                                                                   \
  q, k, v, sizes, q_strides, k_strides, v_strides, window, shift, rel_bias_table, pad_kv, scale, mask_value, \
      mask_padded, out, out_strides, lse

#define MK_DEFINE_WINDOW_ATTENTION(SUFFIX, T, A, DT)                                                          \
  int mk_window_attention3d_fwd_##SUFFIX(MK_WINDOW_ATTENTION3D_FWD_ARGS(T, A)) {                              \
    return window_attention_fwd<A>("mk_window_attention3d_fwd_" #SUFFIX, DT, false, nullptr,                   \
                                   MK_WINDOW_ATTENTION_ARGS_FWD);                                              \
  }                                                                                                           \
  int mk_window_attention3d_fwd_##SUFFIX##_cuda(MK_WINDOW_ATTENTION3D_FWD_ARGS(T, A), void* stream) {         \
    return window_attention_fwd<A>("mk_window_attention3d_fwd_" #SUFFIX "_cuda", DT, true, stream,             \
                                   MK_WINDOW_ATTENTION_ARGS_FWD);                                              \
  }

#define MK_DEFINE_WINDOW_ATTENTION_BWD(SUFFIX, T, A, DT)                                                      \
  int mk_window_attention3d_bwd_##SUFFIX(MK_WINDOW_ATTENTION3D_BWD_ARGS(T, A)) {                              \
    return window_attention_bwd<A>("mk_window_attention3d_bwd_" #SUFFIX, DT, q, k, v, sizes, q_strides,        \
                                   k_strides, v_strides, window, shift, rel_bias_table, pad_kv, scale,         \
                                   mask_value, mask_padded, out, out_strides, lse, grad_out, grad_out_strides, \
                                   dq, dk, dv, dqkv_strides, pair_grad, grad_pad_kv);                          \
  }

MK_FOR_EACH_DTYPE(MK_DEFINE_WINDOW_ATTENTION_BWD)

MK_FOR_EACH_DTYPE(MK_DEFINE_WINDOW_ATTENTION)

}  // extern "C"

MK_CAPI_PARAMS(mk_window_attention_params, medkernels::WindowAttentionParams, MK_WINDOW_ATTENTION_PARAMS_FIELDS)
MK_CAPI_PARAMS(mk_window_attention_bwd_params, medkernels::WindowAttentionBwdParams,
               MK_WINDOW_ATTENTION_BWD_PARAMS_FIELDS)
MK_CAPI_PARAMS_CALL(mk_window_attention_fwd, mk_window_attention_params, medkernels::WindowAttentionParams,
                    medkernels::cpu::window_attention_fwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_window_attention_fwd_cuda, mk_window_attention_params, medkernels::WindowAttentionParams,
                         medkernels::cuda::window_attention_fwd)
MK_CAPI_PARAMS_SIZE(mk_window_attention_bwd_workspace_bytes, mk_window_attention_bwd_params,
                    medkernels::WindowAttentionBwdParams, medkernels::window_attention_bwd_workspace_bytes(q))
MK_CAPI_PARAMS_SIZE(mk_window_attention_cuda_bwd_workspace_bytes, mk_window_attention_bwd_params,
                    medkernels::WindowAttentionBwdParams, medkernels::window_attention_cuda_bwd_workspace_bytes(q))
MK_CAPI_PARAMS_CALL(mk_window_attention_bwd, mk_window_attention_bwd_params, medkernels::WindowAttentionBwdParams,
                    medkernels::cpu::window_attention_bwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_window_attention_bwd_cuda, mk_window_attention_bwd_params,
                         medkernels::WindowAttentionBwdParams, medkernels::cuda::window_attention_bwd)
