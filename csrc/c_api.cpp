// The extern "C" ABI of medkernels (medkernels/c_api.h): plain C arguments turned into the C++
// params structs, every C++ exception caught here, every failure a status plus a message.
#include "medkernels/c_api.h"

#include <cmath>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "medkernels/common.h"
#include "medkernels/decomp_conv.h"
#include "medkernels/diffusion.h"
#include "medkernels/detail/sigmoid_loss.h"
#include "medkernels/sigmoid_loss.h"
#include "medkernels/window_attention.h"

namespace {

thread_local std::string g_error;

int fail(mk_status st, const std::string& msg) {
  g_error = msg;
  return st;
}

// A C++ Status (its message in medkernels::last_error()) as a C status.
int from_status(medkernels::Status st) {
  if (st == medkernels::Status::kSuccess) return MK_SUCCESS;
  g_error = medkernels::last_error();
  return static_cast<int>(st);
}

// Runs body() with every exception turned into MK_INTERNAL_ERROR.
template <typename F>
int guarded(const char* fn, F&& body) noexcept {
  try {
    g_error.clear();
    return body();
  } catch (const std::exception& e) {
    return fail(MK_INTERNAL_ERROR, std::string(fn) + ": " + e.what());
  } catch (...) {
    return fail(MK_INTERNAL_ERROR, std::string(fn) + ": unknown C++ exception");
  }
}

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
  if (kernel_size < 1 || kernel_size > 15 || kernel_size % 2 == 0)
    return fail(MK_INVALID_ARGUMENT, f + ": kernel_size must be odd and in 1..15, got " + std::to_string(kernel_size));
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

[[maybe_unused]] int no_cuda(const char* fn) {
  return fail(MK_UNSUPPORTED, std::string(fn) + ": this medkernels library was built without CUDA");
}

// --- diffusion ---------------------------------------------------------------------------------
int diffusion_run(const char* fn, bool on_cuda, medkernels::DiffusionParams& p, void* stream) {
  return guarded(fn, [&]() -> int {
    if (!p.table || !p.t) return fail(MK_INVALID_ARGUMENT, std::string(fn) + ": table and t must not be NULL");
    if (!on_cuda) return from_status(medkernels::cpu::diffusion_fwd(p));
#ifdef MEDKERNELS_WITH_CUDA
    return from_status(medkernels::cuda::diffusion_fwd(p, stream));
#else
    (void)stream;
    return no_cuda(fn);
#endif
  });
}

medkernels::DiffusionParams diffusion_params(medkernels::DType dt, medkernels::DiffusionOp op, const void* x,
                                             const void* noise, const int64_t* t, const double* table,
                                             int64_t num_train_timesteps, int64_t batch, int64_t numel, uint64_t seed,
                                             uint64_t offset, void* out) {
  medkernels::DiffusionParams p;
  p.dtype = dt;
  p.op = op;
  p.x = x;
  p.noise = noise;
  p.t = t;
  p.table = table;
  p.num_train_timesteps = num_train_timesteps;
  p.batch = batch;
  p.numel = numel;
  p.seed = seed;
  p.offset = offset;
  p.out = out;
  return p;
}

int diffusion_loss(const char* fn, medkernels::DType dt, const void* eps_pred, const void* noise, int64_t batch,
                   int64_t numel, uint64_t seed, uint64_t offset, double grad_scale, void* grad, double* sum_sq) {
  return guarded(fn, [&]() -> int {
    const std::string f(fn);
    if (!sum_sq) return fail(MK_INVALID_ARGUMENT, f + ": sum_sq must not be NULL");
    if (batch < 1 || numel < 1)
      return fail(MK_INVALID_ARGUMENT, f + ": batch and numel must be >= 1, got batch=" + std::to_string(batch) +
                                           " numel=" + std::to_string(numel));
    medkernels::DiffusionParams p;
    p.dtype = dt;
    p.op = medkernels::DiffusionOp::kLoss;
    p.x = eps_pred;
    p.noise = noise;
    p.batch = batch;
    p.numel = numel;
    p.seed = seed;
    p.offset = offset;
    p.scale = grad_scale;
    const size_t elem = dt == medkernels::DType::kFloat64 ? 8 : (dt == medkernels::DType::kFloat32 ? 4 : 2);
    std::vector<unsigned char> scratch;
    if (grad) {
      p.out = grad;
    } else {
      scratch.resize(static_cast<size_t>(batch * numel) * elem);
      p.out = scratch.data();
    }
    const int64_t nblk = (numel + p.block - 1) / p.block;
    std::vector<double> partial(static_cast<size_t>(batch * nblk));
    p.partial = partial.data();
    const int st = from_status(medkernels::cpu::diffusion_fwd(p));
    if (st != MK_SUCCESS) return st;
    double s = 0.0;
    for (double v : partial) s += v;  // fixed order: the same bits on every run
    *sum_sq = s;
    return MK_SUCCESS;
  });
}

// --- window attention ------------------------------------------------------------------------------
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

// --- sigmoid loss ------------------------------------------------------------------------------------
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

int mk_version(void) {
  return medkernels::kVersionMajor * 10000 + medkernels::kVersionMinor * 100 + medkernels::kVersionPatch;
}

int mk_abi_version(void) { return MK_ABI_VERSION; }

const char* mk_last_error(void) { return g_error.c_str(); }

int mk_cuda_available(void) {
#ifdef MEDKERNELS_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

#define MK_FWD_ARGS_FWD \
  x, x_sizes, x_strides, w_d, w_h, w_w, bias, out_channels, kernel_size, stride, groups, activation, y, y_strides

// Every ABI dtype as DEF(suffix, storage type, accumulation type, DType).
#define MK_FOR_EACH_DTYPE(DEF)                           \
  DEF(f32, float, float, medkernels::DType::kFloat32)    \
  DEF(f64, double, double, medkernels::DType::kFloat64)  \
  DEF(f16, uint16_t, float, medkernels::DType::kFloat16) \
  DEF(bf16, uint16_t, float, medkernels::DType::kBFloat16)

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

#define MK_DEFINE_DIFFUSION(SUFFIX, T, A, DT)                                                                        \
  static int q_sample_##SUFFIX(const char* fn, bool cuda, MK_DIFFUSION_Q_SAMPLE_ARGS(T), void* stream) {         \
    auto p = diffusion_params(DT, medkernels::DiffusionOp::kQSample, x0, noise, t, table, num_train_timesteps,     \
                              batch, numel, seed, offset, out);                                                   \
    return diffusion_run(fn, cuda, p, stream);                                                                    \
  }                                                                                                               \
  int mk_diffusion_q_sample_##SUFFIX(MK_DIFFUSION_Q_SAMPLE_ARGS(T)) {                                             \
    return q_sample_##SUFFIX("mk_diffusion_q_sample_" #SUFFIX, false, x0, noise, t, table, num_train_timesteps,    \
                             batch, numel, seed, offset, out, nullptr);                                          \
  }                                                                                                               \
  int mk_diffusion_q_sample_##SUFFIX##_cuda(MK_DIFFUSION_Q_SAMPLE_ARGS(T), void* stream) {                        \
    return q_sample_##SUFFIX("mk_diffusion_q_sample_" #SUFFIX "_cuda", true, x0, noise, t, table,                  \
                             num_train_timesteps, batch, numel, seed, offset, out, stream);                      \
  }                                                                                                               \
  static int ddim_##SUFFIX(const char* fn, bool cuda, MK_DIFFUSION_DDIM_ARGS(T), void* stream) {                 \
    auto p = diffusion_params(DT, medkernels::DiffusionOp::kDdim, x_t, noise, t, table, num_train_timesteps,       \
                              batch, numel, seed, offset, out);                                                   \
    p.eps = eps;                                                                                                  \
    p.t_next = t_next;                                                                                            \
    p.eta = eta;                                                                                                  \
    p.x0_out = x0_out;                                                                                            \
    return diffusion_run(fn, cuda, p, stream);                                                                    \
  }                                                                                                               \
  int mk_diffusion_ddim_step_##SUFFIX(MK_DIFFUSION_DDIM_ARGS(T)) {                                                \
    return ddim_##SUFFIX("mk_diffusion_ddim_step_" #SUFFIX, false, x_t, eps, noise, t, t_next, table,              \
                         num_train_timesteps, batch, numel, seed, offset, eta, out, x0_out, nullptr);            \
  }                                                                                                               \
  int mk_diffusion_ddim_step_##SUFFIX##_cuda(MK_DIFFUSION_DDIM_ARGS(T), void* stream) {                           \
    return ddim_##SUFFIX("mk_diffusion_ddim_step_" #SUFFIX "_cuda", true, x_t, eps, noise, t, t_next, table,       \
                         num_train_timesteps, batch, numel, seed, offset, eta, out, x0_out, stream);             \
  }                                                                                                               \
  static int ddpm_##SUFFIX(const char* fn, bool cuda, MK_DIFFUSION_DDPM_ARGS(T), void* stream) {                 \
    auto p = diffusion_params(DT, medkernels::DiffusionOp::kDdpm, x_t, noise, t, table, num_train_timesteps,       \
                              batch, numel, seed, offset, out);                                                   \
    p.eps = eps;                                                                                                  \
    p.t_next = t_next;                                                                                            \
    p.clip = clip;                                                                                                \
    p.has_clip = has_clip != 0;                                                                                   \
    p.x0_out = x0_out;                                                                                            \
    return diffusion_run(fn, cuda, p, stream);                                                                    \
  }                                                                                                               \
  int mk_diffusion_ddpm_step_##SUFFIX(MK_DIFFUSION_DDPM_ARGS(T)) {                                                \
    return ddpm_##SUFFIX("mk_diffusion_ddpm_step_" #SUFFIX, false, x_t, eps, noise, t, t_next, table,              \
                         num_train_timesteps, batch, numel, seed, offset, clip, has_clip, out, x0_out, nullptr); \
  }                                                                                                               \
  int mk_diffusion_ddpm_step_##SUFFIX##_cuda(MK_DIFFUSION_DDPM_ARGS(T), void* stream) {                           \
    return ddpm_##SUFFIX("mk_diffusion_ddpm_step_" #SUFFIX "_cuda", true, x_t, eps, noise, t, t_next, table,       \
                         num_train_timesteps, batch, numel, seed, offset, clip, has_clip, out, x0_out, stream);  \
  }

#define MK_DEFINE_DIFFUSION_LOSS(SUFFIX, T, A, DT)                                                          \
  int mk_diffusion_loss_##SUFFIX(MK_DIFFUSION_LOSS_ARGS(T)) {                                            \
    return diffusion_loss("mk_diffusion_loss_" #SUFFIX, DT, eps_pred, noise, batch, numel, seed, offset, \
                          grad_scale, grad, sum_sq);                                                     \
  }

MK_FOR_EACH_DTYPE(MK_DEFINE_DIFFUSION_LOSS)

MK_FOR_EACH_DTYPE(MK_DEFINE_DIFFUSION)

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
