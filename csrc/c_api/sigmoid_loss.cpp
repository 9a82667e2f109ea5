// The C ABI of the pairwise sigmoid (SigLIP) loss (medkernels/c_api.h): the flat entry points, whose
// C arguments become a SigmoidLossParams, and the params form generated from its field list.
#include <cstdlib>
#include <memory>
#include <string>

#include "common.h"
#include "medkernels/detail/sigmoid_loss.h"
#include "medkernels/sigmoid_loss.h"

namespace {

using mk_capi::fail;
using mk_capi::from_status;
using mk_capi::guarded;
using mk_capi::no_cuda;

int sigmoid_params(const std::string& f, medkernels::DType dt, const void* x, const void* y, int64_t n, int64_t m,
                   int64_t d, const int64_t* x_strides, const int64_t* y_strides, double logit_scale, double bias,
                   int symmetric, int positives, int64_t diag_offset, const int64_t* labels_x,
                   const int64_t* labels_y, const uint8_t* mask, const int64_t* mask_strides,
                   medkernels::SigmoidLossParams& p) {
  if (positives < 0 || positives > 2)
    return fail(MK_INVALID_ARGUMENT, f + ": positives must be 0 (diagonal), 1 (labels) or 2 (mask), got " +
                                         std::to_string(positives));
  p.dtype = dt;
  p.x = x;
  p.y = y;
  p.n = n;
  p.m = m;
  p.d = d;
  p.x_strides[0] = x_strides ? x_strides[0] : d;
  p.x_strides[1] = x_strides ? x_strides[1] : 1;
  p.y_strides[0] = y_strides ? y_strides[0] : d;
  p.y_strides[1] = y_strides ? y_strides[1] : 1;
  p.logit_scale = logit_scale;
  p.bias = bias;
  p.symmetric = symmetric != 0;
  p.positives = static_cast<medkernels::SigmoidLossPositives>(positives);
  p.diag_offset = diag_offset;
  p.labels_x = labels_x;
  p.labels_y = labels_y;
  p.mask = mask;
  p.mask_strides[0] = mask_strides ? mask_strides[0] : m;
  p.mask_strides[1] = mask_strides ? mask_strides[1] : 1;
  return from_status(medkernels::sigmoid_loss_check(p));
}

using Scratch = std::unique_ptr<void, void (*)(void*)>;

Scratch scratch64(size_t bytes) { return Scratch(std::aligned_alloc(64, (bytes + 64) / 64 * 64), std::free); }

// The CUDA entry points take the caller's device workspace (mk_sigmoid_loss_cuda_workspace_bytes()).
int sigmoid_loss_cuda_fwd(const std::string& f, medkernels::SigmoidLossParams& p, void* workspace,
                          size_t workspace_bytes, void* stream) {
#ifdef MEDKERNELS_WITH_CUDA
  p.workspace = workspace;
  p.workspace_bytes = workspace_bytes;
  return from_status(medkernels::cuda::sigmoid_loss_fwd(p, stream));
#else
  (void)p, (void)workspace, (void)workspace_bytes, (void)stream;
  return no_cuda(f.c_str());
#endif
}

int sigmoid_loss_cuda_bwd(const std::string& f, medkernels::SigmoidLossBwdParams& b, void* workspace,
                          size_t workspace_bytes, void* stream) {
#ifdef MEDKERNELS_WITH_CUDA
  b.fwd.workspace = workspace;
  b.fwd.workspace_bytes = workspace_bytes;
  return from_status(medkernels::cuda::sigmoid_loss_bwd(b, stream));
#else
  (void)b, (void)workspace, (void)workspace_bytes, (void)stream;
  return no_cuda(f.c_str());
#endif
}

int sigmoid_loss_fwd(const char* fn, medkernels::DType dt, const void* x, const void* y, int64_t n, int64_t m,
                     int64_t d, const int64_t* x_strides, const int64_t* y_strides, double logit_scale, double bias,
                     int symmetric, int positives, int64_t diag_offset, const int64_t* labels_x,
                     const int64_t* labels_y, const uint8_t* mask, const int64_t* mask_strides, double* loss,
                     bool on_cuda = false, void* workspace = nullptr, size_t workspace_bytes = 0,
                     void* stream = nullptr) {
  return guarded(fn, [&]() -> int {
    const std::string f(fn);
    if (!loss) return fail(MK_INVALID_ARGUMENT, f + ": loss must not be NULL");
    medkernels::SigmoidLossParams p;
    const int st = sigmoid_params(f, dt, x, y, n, m, d, x_strides, y_strides, logit_scale, bias, symmetric,
                                  positives, diag_offset, labels_x, labels_y, mask, mask_strides, p);
    if (st != MK_SUCCESS) return st;
    p.loss = loss;
    if (on_cuda) return sigmoid_loss_cuda_fwd(f, p, workspace, workspace_bytes, stream);
    const size_t bytes = medkernels::cpu::sigmoid_loss_fwd_workspace_bytes(p);
    Scratch ws = scratch64(bytes);
    if (!ws) return fail(MK_INTERNAL_ERROR, f + ": out of host memory for " + std::to_string(bytes) + " bytes");
    p.workspace = ws.get();
    p.workspace_bytes = bytes;
    return from_status(medkernels::cpu::sigmoid_loss_fwd(p));
  });
}

int sigmoid_loss_bwd(const char* fn, medkernels::DType dt, const void* x, const void* y, int64_t n, int64_t m,
                     int64_t d, const int64_t* x_strides, const int64_t* y_strides, double logit_scale, double bias,
                     int symmetric, int positives, int64_t diag_offset, const int64_t* labels_x,
                     const int64_t* labels_y, const uint8_t* mask, const int64_t* mask_strides, double grad_scale,
                     void* grad_x, const int64_t* grad_x_strides, void* grad_y, const int64_t* grad_y_strides,
                     double* grad_t_prime, double* grad_bias, bool on_cuda = false, void* workspace = nullptr,
                     size_t workspace_bytes = 0, void* stream = nullptr) {
  return guarded(fn, [&]() -> int {
    const std::string f(fn);
    medkernels::SigmoidLossBwdParams b;
    const int st = sigmoid_params(f, dt, x, y, n, m, d, x_strides, y_strides, logit_scale, bias, symmetric,
                                  positives, diag_offset, labels_x, labels_y, mask, mask_strides, b.fwd);
    if (st != MK_SUCCESS) return st;
    b.grad_scale = grad_scale;
    b.grad_x = grad_x;
    b.grad_x_strides[0] = grad_x_strides ? grad_x_strides[0] : d;
    b.grad_x_strides[1] = grad_x_strides ? grad_x_strides[1] : 1;
    b.grad_y = grad_y;
    b.grad_y_strides[0] = grad_y_strides ? grad_y_strides[0] : d;
    b.grad_y_strides[1] = grad_y_strides ? grad_y_strides[1] : 1;
    b.grad_t_prime = grad_t_prime;
    b.grad_bias = grad_bias;
    if (on_cuda) return sigmoid_loss_cuda_bwd(f, b, workspace, workspace_bytes, stream);
    const size_t bytes = medkernels::cpu::sigmoid_loss_bwd_workspace_bytes(b);
    Scratch ws = scratch64(bytes);
    if (!ws) return fail(MK_INTERNAL_ERROR, f + ": out of host memory for " + std::to_string(bytes) + " bytes");
    b.fwd.workspace = ws.get();
    b.fwd.workspace_bytes = bytes;
    return from_status(medkernels::cpu::sigmoid_loss_bwd(b));
  });
}

}  // namespace

extern "C" {

#define MK_DEFINE_SIGMOID_LOSS(SUFFIX, T, A, DT)                                                             \
  int mk_sigmoid_loss_fwd_##SUFFIX(MK_SIGMOID_LOSS_FWD_ARGS(T)) {                                         \
    return sigmoid_loss_fwd("mk_sigmoid_loss_fwd_" #SUFFIX, DT, x, y, n, m, d, x_strides, y_strides,       \
                            logit_scale, bias, symmetric, positives, diag_offset, labels_x, labels_y, mask, \
                            mask_strides, loss);                                                          \
  }                                                                                                       \
  int mk_sigmoid_loss_fwd_##SUFFIX##_cuda(MK_SIGMOID_LOSS_FWD_ARGS(T), void* workspace, size_t workspace_bytes, \
                                          void* stream) {                                                 \
    return sigmoid_loss_fwd("mk_sigmoid_loss_fwd_" #SUFFIX "_cuda", DT, x, y, n, m, d, x_strides, y_strides, \
                            logit_scale, bias, symmetric, positives, diag_offset, labels_x, labels_y, mask, \
                            mask_strides, loss, true, workspace, workspace_bytes, stream);                \
  }

#define MK_DEFINE_SIGMOID_LOSS_BWD(SUFFIX, T, A, DT)                                                           \
  int mk_sigmoid_loss_bwd_##SUFFIX(MK_SIGMOID_LOSS_BWD_ARGS(T)) {                                            \
    return sigmoid_loss_bwd("mk_sigmoid_loss_bwd_" #SUFFIX, DT, x, y, n, m, d, x_strides, y_strides,          \
                            logit_scale, bias, symmetric, positives, diag_offset, labels_x, labels_y, mask,    \
                            mask_strides, grad_scale, grad_x, grad_x_strides, grad_y, grad_y_strides,          \
                            grad_t_prime, grad_bias);                                                          \
  }                                                                                                             \
  int mk_sigmoid_loss_bwd_##SUFFIX##_cuda(MK_SIGMOID_LOSS_BWD_ARGS(T), void* workspace, size_t workspace_bytes,  \
                                          void* stream) {                                                       \
    return sigmoid_loss_bwd("mk_sigmoid_loss_bwd_" #SUFFIX "_cuda", DT, x, y, n, m, d, x_strides, y_strides,    \
                            logit_scale, bias, symmetric, positives, diag_offset, labels_x, labels_y, mask,    \
                            mask_strides, grad_scale, grad_x, grad_x_strides, grad_y, grad_y_strides,          \
                            grad_t_prime, grad_bias, true, workspace, workspace_bytes, stream);                \
  }

MK_FOR_EACH_DTYPE(MK_DEFINE_SIGMOID_LOSS_BWD)

MK_FOR_EACH_DTYPE(MK_DEFINE_SIGMOID_LOSS)

size_t mk_sigmoid_loss_cuda_workspace_bytes(int64_t n, int64_t m) {
  if (n < 1 || m < 1) return 0;
  medkernels::SigmoidLossParams p;
  p.n = n;
  p.m = m;
  const size_t f = medkernels::detail::sl_cuda_fwd_workspace_bytes(p);
  const size_t b = medkernels::detail::sl_cuda_bwd_workspace_bytes(p);
  return f > b ? f : b;
}


}  // extern "C"

MK_CAPI_PARAMS(mk_sigmoid_loss_params, medkernels::SigmoidLossParams, MK_SIGMOID_LOSS_PARAMS_FIELDS)
MK_CAPI_PARAMS(mk_sigmoid_loss_bwd_params, medkernels::SigmoidLossBwdParams, MK_SIGMOID_LOSS_BWD_PARAMS_FIELDS)
MK_CAPI_PARAMS_SIZE(mk_sigmoid_loss_fwd_workspace_bytes, mk_sigmoid_loss_params, medkernels::SigmoidLossParams,
                    medkernels::cpu::sigmoid_loss_fwd_workspace_bytes(q))
MK_CAPI_PARAMS_SIZE(mk_sigmoid_loss_bwd_workspace_bytes, mk_sigmoid_loss_bwd_params, medkernels::SigmoidLossBwdParams,
                    medkernels::cpu::sigmoid_loss_bwd_workspace_bytes(q))
// the CUDA sizes come from the header-only layout: the same numbers in a library built without CUDA
MK_CAPI_PARAMS_SIZE(mk_sigmoid_loss_fwd_workspace_bytes_cuda, mk_sigmoid_loss_params, medkernels::SigmoidLossParams,
                    medkernels::detail::sl_cuda_fwd_workspace_bytes(q))
MK_CAPI_PARAMS_SIZE(mk_sigmoid_loss_bwd_workspace_bytes_cuda, mk_sigmoid_loss_bwd_params,
                    medkernels::SigmoidLossBwdParams, medkernels::detail::sl_cuda_bwd_workspace_bytes(q.fwd))
MK_CAPI_PARAMS_CALL(mk_sigmoid_loss_fwd, mk_sigmoid_loss_params, medkernels::SigmoidLossParams,
                    medkernels::cpu::sigmoid_loss_fwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_sigmoid_loss_fwd_cuda, mk_sigmoid_loss_params, medkernels::SigmoidLossParams,
                         medkernels::cuda::sigmoid_loss_fwd)
MK_CAPI_PARAMS_CALL(mk_sigmoid_loss_bwd, mk_sigmoid_loss_bwd_params, medkernels::SigmoidLossBwdParams,
                    medkernels::cpu::sigmoid_loss_bwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_sigmoid_loss_bwd_cuda, mk_sigmoid_loss_bwd_params, medkernels::SigmoidLossBwdParams,
                         medkernels::cuda::sigmoid_loss_bwd)
