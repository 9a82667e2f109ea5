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
#include "medkernels/fields.h"
#include "medkernels/fields/window_attention.h"

namespace medkernels {

struct WindowAttentionParams {
  MK_WINDOW_ATTENTION_PARAMS_FIELDS(MK_CXX_FIELD)
};

// Backward. dq_d, dk_d, dv_d are the gradients of q_d, k_d, v_d (written). pair_grad (heads, N,
// N) receives dS summed over windows, batch and directions; grad_pad_kv (2, heads, head_dim) the
// summed gradient of the padding key/value; both in the accumulation type, may be null. Every
// sum runs in a fixed order: the same bits on every run.
struct WindowAttentionBwdParams {
  MK_WINDOW_ATTENTION_BWD_PARAMS_FIELDS(MK_CXX_FIELD)
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
