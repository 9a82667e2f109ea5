/* medkernels C ABI: extern "C" entry points for ctypes, cffi, Rust, Julia or any FFI.
 *
 * Plain C types only (pointers, int64_t sizes and element strides, int enums, void* streams).
 * Every call returns an mk_status; on failure mk_last_error() gives a message for the calling
 * thread, naming the argument, what was expected and what came. Nothing aborts the host
 * process: C++ exceptions are caught at this boundary and returned as MK_INTERNAL_ERROR.
 *
 * Versioning: MK_ABI_VERSION counts breaking changes of this header (it follows the library's
 * major version once that reaches 1); entry points are only ever added within one ABI version.
 * Check at run time that mk_abi_version() == MK_ABI_VERSION.
 *
 * Dtypes: _f32 (float), _f64 (double), _f16 and _bf16 (uint16_t bits of IEEE half and bfloat16).
 * Devices: the plain names run on the CPU (host memory, OpenMP); the _cuda names take device
 * pointers and a cudaStream_t as void* (NULL: the legacy default stream), run asynchronously,
 * and return MK_UNSUPPORTED from a library built without CUDA.
 *
 * Layout: 5-D tensors are described by sizes {N, C, D, H, W} and element strides in that same
 * order, so NCDHW, NDHWC (channels-last) and strided views all work; a NULL strides pointer
 * means contiguous NCDHW.
 */
#ifndef MEDKERNELS_C_API_H_
#define MEDKERNELS_C_API_H_

#include <stddef.h>
#include <stdint.h>

#include "medkernels/fields/decomp_conv.h"
#include "medkernels/fields/diffusion.h"
#include "medkernels/fields/group_norm.h"
#include "medkernels/fields/sigmoid_loss.h"
#include "medkernels/fields/window_attention.h"

#if defined(_WIN32)
#if defined(MK_CAPI_BUILDING)
#define MK_CAPI __declspec(dllexport)
#else
#define MK_CAPI __declspec(dllimport)
#endif
#else
#define MK_CAPI __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MK_ABI_VERSION 1

typedef enum mk_status {
  MK_SUCCESS = 0,
  MK_INVALID_ARGUMENT = 1, /* a pointer, size, stride or option is out of range */
  MK_UNSUPPORTED = 2,      /* valid, but this build or device cannot run it (e.g. _cuda without CUDA) */
  MK_CUDA_ERROR = 3,       /* a CUDA runtime call or kernel launch failed */
  MK_INTERNAL_ERROR = 4    /* an unexpected C++ exception (e.g. out of host memory) */
} mk_status;

typedef enum mk_activation { MK_ACT_NONE = 0, MK_ACT_GELU = 1, MK_ACT_RELU = 2, MK_ACT_SILU = 3 } mk_activation;

/* Library version major * 10000 + minor * 100 + patch (0.1.0 -> 100). */
MK_CAPI int mk_version(void);
/* The MK_ABI_VERSION this library was built with. */
MK_CAPI int mk_abi_version(void);
/* Message of the last non-success status returned on this thread ("" if none). Valid until the
 * next mk_* call on the same thread. */
MK_CAPI const char* mk_last_error(void);
/* 1 when the library holds the CUDA kernels, else 0. */
MK_CAPI int mk_cuda_available(void);

/* ---- params entry points ------------------------------------------------------------------------
 * Besides the flat entry points below, every family takes its C++ params struct as a C struct:
 * mk_<family>_params (and mk_<family>_bwd_params) holds, after a leading struct_size, the fields of
 * medkernels::<Family>Params in the same order with the same names and meanings (the field list in
 * medkernels/fields/<family>.h declares both; enums and bools are ints here, pointers the same
 * types, fixed arrays the same lengths). Set one up with mk_<...>_params_init() (the C++ defaults
 * and struct_size), fill it, call mk_<family>_fwd / _bwd (CPU) or the _cuda twin. The C++
 * validators check every field; a struct_size other than this header's sizeof is refused with
 * MK_INVALID_ARGUMENT, so a caller built against a different c_api.h gets an error, not garbage.
 * mk_params_fields() describes each struct's layout at run time, so an FFI (ctypes, cffi) can
 * build it without transcribing this header. */
#define MK_C_FIELD(kind, type, name, arg) MK_C_FIELD_##kind(type, name, arg)
#define MK_C_FIELD_VAL(type, name, arg) type name;
#define MK_C_FIELD_BOOL(type, name, arg) int name;
#define MK_C_FIELD_ENUM(type, name, arg) int name;
#define MK_C_FIELD_OPCODE(type, name, arg) int name;
#define MK_C_FIELD_PTR(type, name, arg) type name;
#define MK_C_FIELD_ARR(type, name, arg) type name[arg];
#define MK_C_FIELD_NESTED(type, name, arg) arg name;
#define MK_C_PARAMS(c_name, LIST) \
  typedef struct c_name {         \
    size_t struct_size;           \
    LIST(MK_C_FIELD)              \
  } c_name;                       \
  MK_CAPI void c_name##_init(c_name* p);

/* One field of a params struct: name, kind (VAL, BOOL, ENUM, OPCODE, PTR, ARR, NESTED, as in
 * medkernels/fields.h), C type ("int64_t", "const void*", a nested struct's name), byte offset,
 * byte size and element count (the array length for ARR, else 1). */
typedef struct mk_field {
  const char* name;
  const char* kind;
  const char* type;
  size_t offset;
  size_t size;
  size_t count;
} mk_field;
/* The fields of the params struct named `name` (e.g. "mk_decomp_conv_params") in layout order,
 * ending with an entry whose name is NULL, and its sizeof in *size (when size is not NULL); NULL
 * for an unknown name. */
MK_CAPI const mk_field* mk_params_fields(const char* name, size_t* size);

/* ---- decomposed 3D convolution (DCFormer DecompConv3D), see medkernels/decomp_conv.h ------
 *   y = act(conv_d(x) + conv_h(x) + conv_w(x) + bias)
 * x_sizes    {N, C_in, D, H, W}
 * w_d/h/w    contiguous (C_out, C_in/groups, kernel_size); kernel_size odd, 1..15
 * bias       (C_out,) or NULL
 * y          (N, C_out, Do, Ho, Wo), every output size (S - 1) / stride + 1, through y_strides
 * activation an mk_activation
 */
#define MK_DECOMP_CONV3D_FWD_ARGS(T)                                                                    \
  const T *x, const int64_t *x_sizes, const int64_t *x_strides, const T *w_d, const T *w_h, const T *w_w, \
      const T *bias, int64_t out_channels, int64_t kernel_size, int64_t stride, int64_t groups,             \
      int activation, T *y, const int64_t *y_strides

MK_CAPI int mk_decomp_conv3d_fwd_f32(MK_DECOMP_CONV3D_FWD_ARGS(float));
MK_CAPI int mk_decomp_conv3d_fwd_f64(MK_DECOMP_CONV3D_FWD_ARGS(double));
MK_CAPI int mk_decomp_conv3d_fwd_f16(MK_DECOMP_CONV3D_FWD_ARGS(uint16_t));
MK_CAPI int mk_decomp_conv3d_fwd_bf16(MK_DECOMP_CONV3D_FWD_ARGS(uint16_t));
MK_CAPI int mk_decomp_conv3d_fwd_f32_cuda(MK_DECOMP_CONV3D_FWD_ARGS(float), void* stream);
MK_CAPI int mk_decomp_conv3d_fwd_f64_cuda(MK_DECOMP_CONV3D_FWD_ARGS(double), void* stream);
MK_CAPI int mk_decomp_conv3d_fwd_f16_cuda(MK_DECOMP_CONV3D_FWD_ARGS(uint16_t), void* stream);
MK_CAPI int mk_decomp_conv3d_fwd_bf16_cuda(MK_DECOMP_CONV3D_FWD_ARGS(uint16_t), void* stream);

/* Backward of the same call given grad_y (y's shape, through grad_y_strides). Writes grad_x
 * (x's shape and dtype, through grad_x_strides; NULL to skip), and grad_w_d/h/w (C_out,
 * C_in/groups, kernel_size) and grad_bias (C_out,) contiguous in the accumulation type: double
 * for _f64, float otherwise (each may be NULL). workspace: *_bwd_workspace_bytes() bytes of
 * host (CPU) or device (_cuda) memory. The weight and bias sums run in a fixed order. */
#define MK_DECOMP_CONV3D_BWD_ARGS(T, A)                                                                    \
  const T *grad_y, const int64_t *grad_y_strides, const T *x, const int64_t *x_sizes,                      \
      const int64_t *x_strides, const T *w_d, const T *w_h, const T *w_w, const T *bias,                    \
      int64_t out_channels, int64_t kernel_size, int64_t stride, int64_t groups, int activation, T *grad_x, \
      const int64_t *grad_x_strides, A *grad_w_d, A *grad_w_h, A *grad_w_w, A *grad_bias, void *workspace,  \
      size_t workspace_bytes

/* Workspace bytes the backward needs for these sizes and dtype (0 on bad arguments, with
 * mk_last_error() set). dtype: 0 float32, 1 float16, 2 bfloat16, 3 float64. */
MK_CAPI size_t mk_decomp_conv3d_bwd_workspace_bytes(int dtype, const int64_t* x_sizes, int64_t out_channels,
                                                    int64_t kernel_size, int64_t stride, int64_t groups);
MK_CAPI int mk_decomp_conv3d_bwd_f32(MK_DECOMP_CONV3D_BWD_ARGS(float, float));
MK_CAPI int mk_decomp_conv3d_bwd_f64(MK_DECOMP_CONV3D_BWD_ARGS(double, double));
MK_CAPI int mk_decomp_conv3d_bwd_f32_cuda(MK_DECOMP_CONV3D_BWD_ARGS(float, float), void* stream);
MK_CAPI int mk_decomp_conv3d_bwd_f64_cuda(MK_DECOMP_CONV3D_BWD_ARGS(double, double), void* stream);

/* The params form (see "params entry points"): medkernels::DecompConvParams / DecompConvBwdParams. */
MK_C_PARAMS(mk_decomp_conv_params, MK_DECOMP_CONV_PARAMS_FIELDS)
MK_C_PARAMS(mk_decomp_conv_bwd_params, MK_DECOMP_CONV_BWD_PARAMS_FIELDS)
MK_CAPI int mk_decomp_conv_fwd(const mk_decomp_conv_params* p);
MK_CAPI int mk_decomp_conv_fwd_cuda(const mk_decomp_conv_params* p, void* stream);
MK_CAPI size_t mk_decomp_conv_bwd_workspace_bytes(const mk_decomp_conv_bwd_params* p);
MK_CAPI int mk_decomp_conv_bwd(const mk_decomp_conv_bwd_params* p);
MK_CAPI int mk_decomp_conv_bwd_cuda(const mk_decomp_conv_bwd_params* p, void* stream);

/* ---- few-step diffusion (Fast-DDPM) steps, see medkernels/diffusion.h -----------------------
 * Tensors are contiguous (batch, numel). table: float64 (num_train_timesteps + 1,) holding
 * [1, abar_0, ..., abar_{T-1}]; t (batch,) in 0..T-1 and t_next (batch,) in -1..t-1 as int64
 * (host memory for the CPU calls, device memory for _cuda, where they are not range-checked).
 * noise: the eps/z tensor, or NULL to draw it from (seed, offset) by the Philox contract of
 * medkernels/detail/philox.h, identical on every device. x0_out may be NULL.
 *   q_sample   out = sqrt(abar_t) x0 + sqrt(1 - abar_t) z
 *   ddim_step  out = DDIM update of x_t with predicted noise eps (eta: stochasticity)
 *   ddpm_step  out = DDPM posterior sample, x0 clamped to [-clip, clip] when has_clip */
#define MK_DIFFUSION_COMMON_ARGS \
  const double *table, int64_t num_train_timesteps, int64_t batch, int64_t numel, uint64_t seed, uint64_t offset
#define MK_DIFFUSION_Q_SAMPLE_ARGS(T) \
  const T *x0, const T *noise, const int64_t *t, MK_DIFFUSION_COMMON_ARGS, T *out
#define MK_DIFFUSION_DDIM_ARGS(T)                                                                          \
  const T *x_t, const T *eps, const T *noise, const int64_t *t, const int64_t *t_next, MK_DIFFUSION_COMMON_ARGS, \
      double eta, T *out, T *x0_out
#define MK_DIFFUSION_DDPM_ARGS(T)                                                                          \
  const T *x_t, const T *eps, const T *noise, const int64_t *t, const int64_t *t_next, MK_DIFFUSION_COMMON_ARGS, \
      double clip, int has_clip, T *out, T *x0_out

/* The eps-prediction training loss: d = eps_pred - z (z: noise, or drawn from (seed, offset));
 * *sum_sq = sum of d^2 over all batch * numel elements (summed in a fixed order), and grad (may be
 * NULL) = grad_scale * d, e.g. 2 / batch for the official noise_estimation_loss (sum over C and
 * space, mean over the batch: loss = *sum_sq / batch). CPU only. */
#define MK_DIFFUSION_LOSS_ARGS(T)                                                                        \
  const T *eps_pred, const T *noise, int64_t batch, int64_t numel, uint64_t seed, uint64_t offset, \
      double grad_scale, T *grad, double *sum_sq
MK_CAPI int mk_diffusion_loss_f32(MK_DIFFUSION_LOSS_ARGS(float));
MK_CAPI int mk_diffusion_loss_f64(MK_DIFFUSION_LOSS_ARGS(double));
MK_CAPI int mk_diffusion_loss_f16(MK_DIFFUSION_LOSS_ARGS(uint16_t));
MK_CAPI int mk_diffusion_loss_bf16(MK_DIFFUSION_LOSS_ARGS(uint16_t));

#define MK_DECLARE_DIFFUSION(SUFFIX, T)                                                                     \
  MK_CAPI int mk_diffusion_q_sample_##SUFFIX(MK_DIFFUSION_Q_SAMPLE_ARGS(T));                                \
  MK_CAPI int mk_diffusion_q_sample_##SUFFIX##_cuda(MK_DIFFUSION_Q_SAMPLE_ARGS(T), void* stream);           \
  MK_CAPI int mk_diffusion_ddim_step_##SUFFIX(MK_DIFFUSION_DDIM_ARGS(T));                                   \
  MK_CAPI int mk_diffusion_ddim_step_##SUFFIX##_cuda(MK_DIFFUSION_DDIM_ARGS(T), void* stream);              \
  MK_CAPI int mk_diffusion_ddpm_step_##SUFFIX(MK_DIFFUSION_DDPM_ARGS(T));                                   \
  MK_CAPI int mk_diffusion_ddpm_step_##SUFFIX##_cuda(MK_DIFFUSION_DDPM_ARGS(T), void* stream);
MK_DECLARE_DIFFUSION(f32, float)
MK_DECLARE_DIFFUSION(f64, double)
MK_DECLARE_DIFFUSION(f16, uint16_t)
MK_DECLARE_DIFFUSION(bf16, uint16_t)

/* The params form: medkernels::DiffusionParams (op: 0 q_sample, 1 ddim, 2 ddpm, 3 loss, 4 normal). */
MK_C_PARAMS(mk_diffusion_params, MK_DIFFUSION_PARAMS_FIELDS)
MK_CAPI int mk_diffusion_fwd(const mk_diffusion_params* p);
MK_CAPI int mk_diffusion_fwd_cuda(const mk_diffusion_params* p, void* stream);

/* ---- 3D (shifted) window self-attention (Swin / MONAI), see medkernels/window_attention.h ----
 * sizes {B, D, H, W, heads, head_dim}; q, k, v, out (B, D, H, W, heads, head_dim) through their
 * element strides (NULL: contiguous). window and shift: 3 values each, shift in [0, window); on an
 * axis whose size is <= the window, the window becomes the size and the shift 0 (MONAI). rel_bias_table
 * ((2wd-1)(2wh-1)(2ww-1), heads) or NULL; pad_kv (2, heads, head_dim) or NULL (zeros); scale <= 0
 * means head_dim^-0.5; mask_value is added across shift regions (-100 in Swin/MONAI). lse
 * (B, D, H, W, heads) in the accumulation type (double for _f64, else float) receives the
 * log-sum-exp for a backward, or NULL (CPU calls only). */
#define MK_WINDOW_ATTENTION3D_FWD_ARGS(T, A)                                                                 \
  const T *q, const T *k, const T *v, const int64_t *sizes, const int64_t *q_strides, const int64_t *k_strides, \
      const int64_t *v_strides, const int64_t *window, const int64_t *shift, const T *rel_bias_table,          \
      const T *pad_kv, double scale, double mask_value, int mask_padded, T *out, const int64_t *out_strides, A *lse
MK_CAPI int mk_window_attention3d_fwd_f32(MK_WINDOW_ATTENTION3D_FWD_ARGS(float, float));
MK_CAPI int mk_window_attention3d_fwd_f64(MK_WINDOW_ATTENTION3D_FWD_ARGS(double, double));
MK_CAPI int mk_window_attention3d_fwd_f16(MK_WINDOW_ATTENTION3D_FWD_ARGS(uint16_t, float));
MK_CAPI int mk_window_attention3d_fwd_bf16(MK_WINDOW_ATTENTION3D_FWD_ARGS(uint16_t, float));
/* On the GPU (head_dim <= 128): device pointers, lse required (device memory). */
MK_CAPI int mk_window_attention3d_fwd_f32_cuda(MK_WINDOW_ATTENTION3D_FWD_ARGS(float, float), void* stream);
MK_CAPI int mk_window_attention3d_fwd_f64_cuda(MK_WINDOW_ATTENTION3D_FWD_ARGS(double, double), void* stream);
MK_CAPI int mk_window_attention3d_fwd_f16_cuda(MK_WINDOW_ATTENTION3D_FWD_ARGS(uint16_t, float), void* stream);
MK_CAPI int mk_window_attention3d_fwd_bf16_cuda(MK_WINDOW_ATTENTION3D_FWD_ARGS(uint16_t, float), void* stream);

/* Backward of the CPU forward above, given its out and lse and grad_out (through grad_out_strides):
 * dq, dk, dv (q's shape and dtype, all through dqkv_strides; NULL strides: contiguous). pair_grad
 * (heads, N, N), N = the product of the (clamped) window, receives dS summed over windows and
 * batch in the accumulation type: the relative-position bias table's gradient is its scatter-add
 * through Swin's relative position index; grad_pad_kv (2, heads, head_dim) the padding key/value
 * gradient. Both may be NULL. Every sum runs in a fixed order. CPU only. */
#define MK_WINDOW_ATTENTION3D_BWD_ARGS(T, A)                                                                   \
  const T *q, const T *k, const T *v, const int64_t *sizes, const int64_t *q_strides, const int64_t *k_strides,   \
      const int64_t *v_strides, const int64_t *window, const int64_t *shift, const T *rel_bias_table,            \
      const T *pad_kv, double scale, double mask_value, int mask_padded, const T *out, const int64_t *out_strides, \
      const A *lse, const T *grad_out, const int64_t *grad_out_strides, T *dq, T *dk, T *dv,                      \
      const int64_t *dqkv_strides, A *pair_grad, A *grad_pad_kv
MK_CAPI int mk_window_attention3d_bwd_f32(MK_WINDOW_ATTENTION3D_BWD_ARGS(float, float));
MK_CAPI int mk_window_attention3d_bwd_f64(MK_WINDOW_ATTENTION3D_BWD_ARGS(double, double));
MK_CAPI int mk_window_attention3d_bwd_f16(MK_WINDOW_ATTENTION3D_BWD_ARGS(uint16_t, float));
MK_CAPI int mk_window_attention3d_bwd_bf16(MK_WINDOW_ATTENTION3D_BWD_ARGS(uint16_t, float));

/* The params form: medkernels::WindowAttentionParams / WindowAttentionBwdParams (two directions,
 * the clamped window and every stride as the C++ API takes them; the caller owns lse and the
 * backward workspace: mk_window_attention_bwd_workspace_bytes() for the CPU,
 * mk_window_attention_cuda_bwd_workspace_bytes() for _cuda). */
MK_C_PARAMS(mk_window_attention_params, MK_WINDOW_ATTENTION_PARAMS_FIELDS)
MK_C_PARAMS(mk_window_attention_bwd_params, MK_WINDOW_ATTENTION_BWD_PARAMS_FIELDS)
MK_CAPI int mk_window_attention_fwd(const mk_window_attention_params* p);
MK_CAPI int mk_window_attention_fwd_cuda(const mk_window_attention_params* p, void* stream);
MK_CAPI size_t mk_window_attention_bwd_workspace_bytes(const mk_window_attention_bwd_params* p);
MK_CAPI size_t mk_window_attention_cuda_bwd_workspace_bytes(const mk_window_attention_bwd_params* p);
MK_CAPI int mk_window_attention_bwd(const mk_window_attention_bwd_params* p);
MK_CAPI int mk_window_attention_bwd_cuda(const mk_window_attention_bwd_params* p, void* stream);

/* ---- pairwise sigmoid (SigLIP) loss, see medkernels/sigmoid_loss.h ------------------------------
 * x (n, d) and y (m, d) through element strides (NULL: contiguous). *loss receives the unscaled
 * sum over all pairs of softplus(-z_ij L_ij), L_ij = logit_scale * x_i.y_j + bias (symmetric:
 * logit_scale * (x_i.y_j + x_j.y_i) / 2 + bias, n == m); divide by n for SigLIP's mean.
 * positives: 0 the pairs i - j == diag_offset, 1 labels_x[i] == labels_y[j] ((n,) and (m,) int64),
 * 2 mask[i * mask_strides[0] + j * mask_strides[1]] != 0 (uint8; NULL strides: contiguous (n, m)).
 * CPU: the scratch memory is allocated inside the call. _cuda: device pointers (loss too), and a
 * device workspace of mk_sigmoid_loss_cuda_workspace_bytes(n, m) bytes (the per-block partial sums,
 * O(n / 64 * splits) doubles; the same size serves the forward and the backward). */
#define MK_SIGMOID_LOSS_FWD_ARGS(T)                                                                        \
  const T *x, const T *y, int64_t n, int64_t m, int64_t d, const int64_t *x_strides, const int64_t *y_strides, \
      double logit_scale, double bias, int symmetric, int positives, int64_t diag_offset,                     \
      const int64_t *labels_x, const int64_t *labels_y, const uint8_t *mask, const int64_t *mask_strides,     \
      double *loss
MK_CAPI int mk_sigmoid_loss_fwd_f32(MK_SIGMOID_LOSS_FWD_ARGS(float));
MK_CAPI int mk_sigmoid_loss_fwd_f64(MK_SIGMOID_LOSS_FWD_ARGS(double));
MK_CAPI int mk_sigmoid_loss_fwd_f16(MK_SIGMOID_LOSS_FWD_ARGS(uint16_t));
MK_CAPI int mk_sigmoid_loss_fwd_bf16(MK_SIGMOID_LOSS_FWD_ARGS(uint16_t));
MK_CAPI size_t mk_sigmoid_loss_cuda_workspace_bytes(int64_t n, int64_t m);
#define MK_SIGMOID_LOSS_CUDA_TAIL void *workspace, size_t workspace_bytes, void *stream
MK_CAPI int mk_sigmoid_loss_fwd_f32_cuda(MK_SIGMOID_LOSS_FWD_ARGS(float), MK_SIGMOID_LOSS_CUDA_TAIL);
MK_CAPI int mk_sigmoid_loss_fwd_f64_cuda(MK_SIGMOID_LOSS_FWD_ARGS(double), MK_SIGMOID_LOSS_CUDA_TAIL);
MK_CAPI int mk_sigmoid_loss_fwd_f16_cuda(MK_SIGMOID_LOSS_FWD_ARGS(uint16_t), MK_SIGMOID_LOSS_CUDA_TAIL);
MK_CAPI int mk_sigmoid_loss_fwd_bf16_cuda(MK_SIGMOID_LOSS_FWD_ARGS(uint16_t), MK_SIGMOID_LOSS_CUDA_TAIL);

/* Backward of grad_scale * loss (the same arguments as the forward, loss excepted): grad_x (n, d) and
 * grad_y (m, d) in the inputs' dtype through their strides (NULL: contiguous), *grad_t_prime =
 * d/d t' with logit_scale = exp(t') and *grad_bias as doubles (these two may be NULL). CPU, and
 * _cuda with device pointers and workspace as for the forward. */
#define MK_SIGMOID_LOSS_BWD_ARGS(T)                                                                        \
  const T *x, const T *y, int64_t n, int64_t m, int64_t d, const int64_t *x_strides, const int64_t *y_strides, \
      double logit_scale, double bias, int symmetric, int positives, int64_t diag_offset,                     \
      const int64_t *labels_x, const int64_t *labels_y, const uint8_t *mask, const int64_t *mask_strides,     \
      double grad_scale, T *grad_x, const int64_t *grad_x_strides, T *grad_y, const int64_t *grad_y_strides,  \
      double *grad_t_prime, double *grad_bias
MK_CAPI int mk_sigmoid_loss_bwd_f32(MK_SIGMOID_LOSS_BWD_ARGS(float));
MK_CAPI int mk_sigmoid_loss_bwd_f64(MK_SIGMOID_LOSS_BWD_ARGS(double));
MK_CAPI int mk_sigmoid_loss_bwd_f16(MK_SIGMOID_LOSS_BWD_ARGS(uint16_t));
MK_CAPI int mk_sigmoid_loss_bwd_bf16(MK_SIGMOID_LOSS_BWD_ARGS(uint16_t));
MK_CAPI int mk_sigmoid_loss_bwd_f32_cuda(MK_SIGMOID_LOSS_BWD_ARGS(float), MK_SIGMOID_LOSS_CUDA_TAIL);
MK_CAPI int mk_sigmoid_loss_bwd_f64_cuda(MK_SIGMOID_LOSS_BWD_ARGS(double), MK_SIGMOID_LOSS_CUDA_TAIL);
MK_CAPI int mk_sigmoid_loss_bwd_f16_cuda(MK_SIGMOID_LOSS_BWD_ARGS(uint16_t), MK_SIGMOID_LOSS_CUDA_TAIL);
MK_CAPI int mk_sigmoid_loss_bwd_bf16_cuda(MK_SIGMOID_LOSS_BWD_ARGS(uint16_t), MK_SIGMOID_LOSS_CUDA_TAIL);

/* The params form: medkernels::SigmoidLossParams / SigmoidLossBwdParams; the caller owns the
 * workspace (mk_sigmoid_loss_{fwd,bwd}_workspace_bytes[_cuda]() bytes of host or device memory). */
MK_C_PARAMS(mk_sigmoid_loss_params, MK_SIGMOID_LOSS_PARAMS_FIELDS)
MK_C_PARAMS(mk_sigmoid_loss_bwd_params, MK_SIGMOID_LOSS_BWD_PARAMS_FIELDS)
MK_CAPI size_t mk_sigmoid_loss_fwd_workspace_bytes(const mk_sigmoid_loss_params* p);
MK_CAPI size_t mk_sigmoid_loss_bwd_workspace_bytes(const mk_sigmoid_loss_bwd_params* p);
MK_CAPI size_t mk_sigmoid_loss_fwd_workspace_bytes_cuda(const mk_sigmoid_loss_params* p);
MK_CAPI size_t mk_sigmoid_loss_bwd_workspace_bytes_cuda(const mk_sigmoid_loss_bwd_params* p);
MK_CAPI int mk_sigmoid_loss_fwd(const mk_sigmoid_loss_params* p);
MK_CAPI int mk_sigmoid_loss_fwd_cuda(const mk_sigmoid_loss_params* p, void* stream);
MK_CAPI int mk_sigmoid_loss_bwd(const mk_sigmoid_loss_bwd_params* p);
MK_CAPI int mk_sigmoid_loss_bwd_cuda(const mk_sigmoid_loss_bwd_params* p, void* stream);

/* ---- GroupNorm + add / FiLM scale-shift + activation, see medkernels/group_norm.h --------------
 * The params form only: medkernels::GroupNormParams / GroupNormBwdParams. The CPU entry points
 * ignore workspace; the _cuda ones take device pointers, a device workspace of
 * mk_group_norm_{fwd,bwd}_workspace_bytes_cuda() bytes (bwd: in fwd.workspace) and a
 * cudaStream_t. */
MK_C_PARAMS(mk_group_norm_params, MK_GROUP_NORM_PARAMS_FIELDS)
MK_C_PARAMS(mk_group_norm_bwd_params, MK_GROUP_NORM_BWD_PARAMS_FIELDS)
MK_CAPI int mk_group_norm_fwd(const mk_group_norm_params* p);
MK_CAPI int mk_group_norm_bwd(const mk_group_norm_bwd_params* p);
MK_CAPI size_t mk_group_norm_fwd_workspace_bytes_cuda(const mk_group_norm_params* p);
MK_CAPI size_t mk_group_norm_bwd_workspace_bytes_cuda(const mk_group_norm_bwd_params* p);
MK_CAPI int mk_group_norm_fwd_cuda(const mk_group_norm_params* p, void* stream);
MK_CAPI int mk_group_norm_bwd_cuda(const mk_group_norm_bwd_params* p, void* stream);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* MEDKERNELS_C_API_H_ */
