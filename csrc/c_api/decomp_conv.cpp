// The C ABI of the decomposed 3D convolution (medkernels/c_api.h): the flat entry points, whose C
// arguments become a DecompConvParams, and the params form generated from its field list.
#include <string>

#include "common.h"
#include "medkernels/decomp_conv.h"

namespace {

using mk_capi::fail;
using mk_capi::from_status;
using mk_capi::guarded;
using mk_capi::no_cuda;

std::string list5(const int64_t* v) {
  std::string s = "{";
  for (int i = 0; i < 5; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "}";
}

void contiguous5(const int64_t* sizes, int64_t* st) {
  st[4] = 1;
  for (int i = 3; i >= 0; --i) st[i] = st[i + 1] * sizes[i + 1];
}

// Fills the params from the C arguments; returns MK_SUCCESS or an error with a message.
int decomp_conv_params(const char* fn, medkernels::DType dt, const void* x, const int64_t* x_sizes,
                       const int64_t* x_strides, const void* w_d, const void* w_h, const void* w_w, const void* bias,
                       int64_t out_channels, int64_t kernel_size, int64_t stride, int64_t groups, int activation,
                       medkernels::DecompConvParams* p) {
  const std::string f(fn);
  if (!x_sizes) return fail(MK_INVALID_ARGUMENT, f + ": x_sizes must point to 5 sizes {N, C, D, H, W}, got NULL");
  for (int i = 0; i < 5; ++i)
    if (x_sizes[i] < 1)
      return fail(MK_INVALID_ARGUMENT, f + ": x_sizes must all be >= 1, got " + list5(x_sizes));
  if (out_channels < 1)
    return fail(MK_INVALID_ARGUMENT, f + ": out_channels must be >= 1, got " + std::to_string(out_channels));
  // kernel_size's range (odd, 1..15) is decomp_conv_check's, which every entry point runs; here only
  // that the int64 argument fits the params' int
  if (kernel_size != static_cast<int>(kernel_size))
    return fail(MK_INVALID_ARGUMENT, f + ": kernel_size must fit an int, got " + std::to_string(kernel_size));
  if (stride < 1 || stride > (1 << 20))
    return fail(MK_INVALID_ARGUMENT, f + ": stride must be >= 1, got " + std::to_string(stride));
  if (groups < 1 || x_sizes[1] % groups || out_channels % groups)
    return fail(MK_INVALID_ARGUMENT, f + ": groups must divide C_in=" + std::to_string(x_sizes[1]) +
                                         " and out_channels=" + std::to_string(out_channels) + ", got " +
                                         std::to_string(groups));
  if (activation < MK_ACT_NONE || activation > MK_ACT_SILU)
    return fail(MK_INVALID_ARGUMENT, f + ": activation must be an mk_activation (0..3), got " +
                                         std::to_string(activation));
  if (!x || !w_d || !w_h || !w_w)
    return fail(MK_INVALID_ARGUMENT, f + ": x, w_d, w_h and w_w must not be NULL");
  p->dtype = dt;
  p->x = x;
  p->w_d = w_d;
  p->w_h = w_h;
  p->w_w = w_w;
  p->bias = bias;
  p->batch = x_sizes[0];
  p->in_channels = x_sizes[1];
  p->out_channels = out_channels;
  for (int i = 0; i < 3; ++i) {
    p->in_size[i] = x_sizes[2 + i];
    p->out_size[i] = (x_sizes[2 + i] - 1) / stride + 1;
  }
  p->kernel_size = static_cast<int>(kernel_size);
  p->stride = static_cast<int>(stride);
  p->groups = groups;
  p->activation = static_cast<medkernels::Activation>(activation);
  if (x_strides) {
    for (int i = 0; i < 5; ++i) p->x_strides[i] = x_strides[i];
  } else {
    contiguous5(x_sizes, p->x_strides);
  }
  return MK_SUCCESS;
}

void out_strides(const medkernels::DecompConvParams& p, const int64_t* given, int64_t* st) {
  if (given) {
    for (int i = 0; i < 5; ++i) st[i] = given[i];
    return;
  }
  const int64_t sizes[5] = {p.batch, p.out_channels, p.out_size[0], p.out_size[1], p.out_size[2]};
  contiguous5(sizes, st);
}

int decomp_conv_fwd(const char* fn, medkernels::DType dt, bool on_cuda, const void* x, const int64_t* x_sizes,
                    const int64_t* x_strides, const void* w_d, const void* w_h, const void* w_w, const void* bias,
                    int64_t out_channels, int64_t kernel_size, int64_t stride, int64_t groups, int activation,
                    void* y, const int64_t* y_strides, void* stream) {
  return guarded(fn, [&]() -> int {
    medkernels::DecompConvParams p;
    const int st = decomp_conv_params(fn, dt, x, x_sizes, x_strides, w_d, w_h, w_w, bias, out_channels, kernel_size,
                                      stride, groups, activation, &p);
    if (st != MK_SUCCESS) return st;
    if (!y) return fail(MK_INVALID_ARGUMENT, std::string(fn) + ": y must not be NULL");
    p.y = y;
    out_strides(p, y_strides, p.y_strides);
    if (!on_cuda) return from_status(medkernels::cpu::decomp_conv_fwd(p));
#ifdef MEDKERNELS_WITH_CUDA
    return from_status(medkernels::cuda::decomp_conv_fwd(p, stream));
#else
    (void)stream;
    return fail(MK_UNSUPPORTED, std::string(fn) + ": this medkernels library was built without CUDA");
#endif
  });
}

int decomp_conv_bwd(const char* fn, medkernels::DType dt, bool on_cuda, const void* grad_y,
                    const int64_t* grad_y_strides, const void* x, const int64_t* x_sizes, const int64_t* x_strides,
                    const void* w_d, const void* w_h, const void* w_w, const void* bias, int64_t out_channels,
                    int64_t kernel_size, int64_t stride, int64_t groups, int activation, void* grad_x,
                    const int64_t* grad_x_strides, void* grad_w_d, void* grad_w_h, void* grad_w_w, void* grad_bias,
                    void* workspace, size_t workspace_bytes, void* stream) {
  return guarded(fn, [&]() -> int {
    medkernels::DecompConvBwdParams b;
    const int st = decomp_conv_params(fn, dt, x, x_sizes, x_strides, w_d, w_h, w_w, bias, out_channels, kernel_size,
                                      stride, groups, activation, &b.fwd);
    if (st != MK_SUCCESS) return st;
    if (!grad_y) return fail(MK_INVALID_ARGUMENT, std::string(fn) + ": grad_y must not be NULL");
    b.grad_y = grad_y;
    out_strides(b.fwd, grad_y_strides, b.grad_y_strides);
    b.grad_x = grad_x;
    if (grad_x_strides) {
      for (int i = 0; i < 5; ++i) b.grad_x_strides[i] = grad_x_strides[i];
    } else {
      contiguous5(x_sizes, b.grad_x_strides);
    }
    b.grad_w_d = grad_w_d;
    b.grad_w_h = grad_w_h;
    b.grad_w_w = grad_w_w;
    b.grad_bias = grad_bias;
    b.workspace = workspace;
    b.workspace_bytes = workspace_bytes;
    if (!on_cuda) return from_status(medkernels::cpu::decomp_conv_bwd(b));
#ifdef MEDKERNELS_WITH_CUDA
    return from_status(medkernels::cuda::decomp_conv_bwd(b, stream));
#else
    (void)stream;
    return fail(MK_UNSUPPORTED, std::string(fn) + ": this medkernels library was built without CUDA");
#endif
  });
}

}  // namespace

extern "C" {

#define MK_FWD_ARGS_FWD \
  x, x_sizes, x_strides, w_d, w_h, w_w, bias, out_channels, kernel_size, stride, groups, activation, y, y_strides

// Every ABI dtype as DEF(suffix, storage type, accumulation type, DType).

#define MK_DEFINE_DECOMP_CONV_FWD(SUFFIX, T, A, DT)                                                              \
  int mk_decomp_conv3d_fwd_##SUFFIX(MK_DECOMP_CONV3D_FWD_ARGS(T)) {                                          \
    return decomp_conv_fwd("mk_decomp_conv3d_fwd_" #SUFFIX, DT, false, MK_FWD_ARGS_FWD, nullptr);            \
  }                                                                                                           \
  int mk_decomp_conv3d_fwd_##SUFFIX##_cuda(MK_DECOMP_CONV3D_FWD_ARGS(T), void* stream) {                     \
    return decomp_conv_fwd("mk_decomp_conv3d_fwd_" #SUFFIX "_cuda", DT, true, MK_FWD_ARGS_FWD, stream);      \
  }

MK_FOR_EACH_DTYPE(MK_DEFINE_DECOMP_CONV_FWD)

size_t mk_decomp_conv3d_bwd_workspace_bytes(int dtype, const int64_t* x_sizes, int64_t out_channels,
                                            int64_t kernel_size, int64_t stride, int64_t groups) {
  size_t bytes = 0;
  const int st = guarded("mk_decomp_conv3d_bwd_workspace_bytes", [&]() -> int {
    if (dtype < 0 || dtype > 3)
      return fail(MK_INVALID_ARGUMENT, "mk_decomp_conv3d_bwd_workspace_bytes: dtype must be 0..3, got " +
                                           std::to_string(dtype));
    static const float dummy = 0.0f;  // the size check needs non-null pointers only
    medkernels::DecompConvBwdParams b;
    const int s = decomp_conv_params("mk_decomp_conv3d_bwd_workspace_bytes", static_cast<medkernels::DType>(dtype),
                                     &dummy, x_sizes, nullptr, &dummy, &dummy, &dummy, nullptr, out_channels,
                                     kernel_size, stride, groups, MK_ACT_NONE, &b.fwd);
    if (s != MK_SUCCESS) return s;
    b.fwd.y = const_cast<float*>(&dummy);  // only checked for null
    const int c = from_status(medkernels::decomp_conv_check(b.fwd));
    if (c != MK_SUCCESS) return c;
    bytes = medkernels::decomp_conv_bwd_workspace_bytes(b);
    return MK_SUCCESS;
  });
  return st == MK_SUCCESS ? bytes : 0;
}

#define MK_BWD_ARGS_FWD                                                                                         \
  grad_y, grad_y_strides, x, x_sizes, x_strides, w_d, w_h, w_w, bias, out_channels, kernel_size, stride, groups, \
      activation, grad_x, grad_x_strides, grad_w_d, grad_w_h, grad_w_w, grad_bias, workspace, workspace_bytes

#define MK_DEFINE_DECOMP_CONV_BWD(SUFFIX, T, DT)                                                         \
  int mk_decomp_conv3d_bwd_##SUFFIX(MK_DECOMP_CONV3D_BWD_ARGS(T, T)) {                                  \
    return decomp_conv_bwd("mk_decomp_conv3d_bwd_" #SUFFIX, DT, false, MK_BWD_ARGS_FWD, nullptr);       \
  }                                                                                                      \
  int mk_decomp_conv3d_bwd_##SUFFIX##_cuda(MK_DECOMP_CONV3D_BWD_ARGS(T, T), void* stream) {             \
    return decomp_conv_bwd("mk_decomp_conv3d_bwd_" #SUFFIX "_cuda", DT, true, MK_BWD_ARGS_FWD, stream); \
  }

MK_DEFINE_DECOMP_CONV_BWD(f32, float, medkernels::DType::kFloat32)
MK_DEFINE_DECOMP_CONV_BWD(f64, double, medkernels::DType::kFloat64)

}  // extern "C"

MK_CAPI_PARAMS(mk_decomp_conv_params, medkernels::DecompConvParams, MK_DECOMP_CONV_PARAMS_FIELDS)
MK_CAPI_PARAMS(mk_decomp_conv_bwd_params, medkernels::DecompConvBwdParams, MK_DECOMP_CONV_BWD_PARAMS_FIELDS)
MK_CAPI_PARAMS_CALL(mk_decomp_conv_fwd, mk_decomp_conv_params, medkernels::DecompConvParams,
                    medkernels::cpu::decomp_conv_fwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_decomp_conv_fwd_cuda, mk_decomp_conv_params, medkernels::DecompConvParams,
                         medkernels::cuda::decomp_conv_fwd)
MK_CAPI_PARAMS_SIZE(mk_decomp_conv_bwd_workspace_bytes, mk_decomp_conv_bwd_params, medkernels::DecompConvBwdParams,
                    medkernels::decomp_conv_bwd_workspace_bytes(q))
MK_CAPI_PARAMS_CALL(mk_decomp_conv_bwd, mk_decomp_conv_bwd_params, medkernels::DecompConvBwdParams,
                    medkernels::cpu::decomp_conv_bwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_decomp_conv_bwd_cuda, mk_decomp_conv_bwd_params, medkernels::DecompConvBwdParams,
                         medkernels::cuda::decomp_conv_bwd)
