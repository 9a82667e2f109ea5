// (Shifted) window attention in 3D (Swin / MONAI Swin UNETR / SwinCross), plain C++ API.
//
// Per window and head:  out = softmax(q k^T * scale + B_rel + M_shift) v, where
//   B_rel[i, j]   = table[idx(i, j) * heads + head], idx the Swin relative-position index of the
//                   *configured* window (rows (2wd-1)(2wh-1)(2ww-1)), evaluated on the tokens'
//                   flat indices inside the effective window (Swin's index[:n, :n] when clamped);
//   M_shift[i, j] = mask_value when i and j lie in different shift regions (MONAI compute_mask),
//                   only when some shift is > 0.
// Windows tile the volume after MONAI's clamp (window = size and shift = 0 on every axis whose
// size is <= the window), padding at the end of each axis to a multiple of the window and the
// cyclic shift by -shift. Padding tokens have key/value pad_kv (2, heads, head_dim) (null: zeros)
// or, with mask_padded, are masked out; their queries are dropped. Tensors are (B, D, H, W, heads,
// head_dim) addressed by element strides. Two directions (cross-modal attention) run in one
// call: direction d reads q_d, k_d, v_d and writes o_d. Math in float (double for float64).
#pragma once

#include <cstddef>
#include <cstdint>

#include "medkernels/common.h"

namespace medkernels {

struct WindowAttentionParams {
  DType dtype = DType::kFloat32;
  int directions = 1;  // 1 or 2
  const void* q0 = nullptr;
  const void* k0 = nullptr;
  const void* v0 = nullptr;
  const void* q1 = nullptr;
  const void* k1 = nullptr;
  const void* v1 = nullptr;
  void* o0 = nullptr;
  void* o1 = nullptr;
  const void* table = nullptr;   // (rows, heads) contiguous, or null
  const void* pad_kv = nullptr;  // (2, heads, head_dim) contiguous, or null (zeros)
  void* lse = nullptr;           // (directions, B, D, H, W, heads) accumulation type: log-sum-exp
  int64_t batch = 0, heads = 0, head_dim = 0;
  int64_t size[3] = {0, 0, 0};        // D, H, W
  int64_t window[3] = {0, 0, 0};      // configured window (bias table)
  int64_t eff_window[3] = {0, 0, 0};  // after the clamp
  int64_t shift[3] = {0, 0, 0};       // after the clamp
  int64_t padded[3] = {0, 0, 0};      // size rounded up to a multiple of eff_window
  double scale = 1.0;
  double mask_value = -100.0;
  bool mask_padded = false;
  int64_t q_strides[6] = {0, 0, 0, 0, 0, 0};  // elements: B D H W heads head_dim
  int64_t k_strides[6] = {0, 0, 0, 0, 0, 0};
  int64_t v_strides[6] = {0, 0, 0, 0, 0, 0};
  int64_t o_strides[6] = {0, 0, 0, 0, 0, 0};
};

// Backward. dq_d, dk_d, dv_d are the gradients of q_d, k_d, v_d (written). pair_grad (heads, N,
// N) receives dS summed over windows, batch and directions; grad_pad_kv (2, heads, head_dim) the
// summed gradient of the padding key/value; both in the accumulation type, may be null. Every
// sum runs in a fixed order: the same bits on every run.
struct WindowAttentionBwdParams {
  WindowAttentionParams fwd;  // inputs, o0/o1 (the forward output) and lse
  const void* g0 = nullptr;
  const void* g1 = nullptr;
  int64_t g_strides[6] = {0, 0, 0, 0, 0, 0};
  void* dq0 = nullptr;
  void* dq1 = nullptr;
  void* dk0 = nullptr;
  void* dk1 = nullptr;
  void* dv0 = nullptr;
  void* dv1 = nullptr;
  int64_t dq_strides[6] = {0, 0, 0, 0, 0, 0};
  int64_t dk_strides[6] = {0, 0, 0, 0, 0, 0};
  int64_t dv_strides[6] = {0, 0, 0, 0, 0, 0};
  void* pair_grad = nullptr;
  void* grad_pad_kv = nullptr;
  void* workspace = nullptr;  // window_attention_bwd_workspace_bytes() bytes
  size_t workspace_bytes = 0;
  // cpu:: only: when set (with pair_grad), the bias-table gradient (rows, heads) in the
  // accumulation type, as window_attention_table_grad writes it from pair_grad, in the same call
  void* table_grad = nullptr;
};

Status window_attention_check(const WindowAttentionParams& p);
size_t window_attention_bwd_workspace_bytes(const WindowAttentionBwdParams& p);       // cpu::
size_t window_attention_cuda_bwd_workspace_bytes(const WindowAttentionBwdParams& p);  // cuda::

namespace cpu {
Status window_attention_fwd(const WindowAttentionParams& p);
Status window_attention_bwd(const WindowAttentionBwdParams& p);
// The bias-table gradient (rows, heads) from pair_grad (heads, N, N) of window_attention_bwd:
// table_grad[r * heads + h] = sum of pair_grad[h][i][j] over the (i, j) whose Swin index is r,
// in (i, j) order (the same bits on every run); heads in parallel. Both in the accumulation type
// (double for float64, float otherwise); reads p.dtype, p.heads, p.window and p.eff_window.
Status window_attention_table_grad(const WindowAttentionParams& p, const void* pair_grad, void* table_grad);
}  // namespace cpu

namespace cuda {
// stream is a cudaStream_t (null: the legacy default stream). head_dim <= 128.
Status window_attention_fwd(const WindowAttentionParams& p, void* stream);
Status window_attention_bwd(const WindowAttentionBwdParams& p, void* stream);
}  // namespace cuda

}  // namespace medkernels
