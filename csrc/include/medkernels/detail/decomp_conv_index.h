// Index math of the decomposed 3D convolution shared by the CPU (csrc/cpu/decomp_conv.cpp) and
// the CUDA kernels (medkernels/cuda/decomp_conv.cuh): which outputs a tap touches, which taps
// land on an input element, dense workspace strides and the backward workspace layout.
// Plain C++17 with MK_HD, so the CPU build and the host tests run the same functions the GPU does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "medkernels/common.h"
#include "medkernels/decomp_conv.h"
#include "medkernels/detail/error.h"

namespace medkernels {
namespace detail {

// floor(a / b) for b > 0 and any sign of a.
MK_HD int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ceil(a / b) for a >= 0, b > 0.
MK_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The outputs o in [*lo, *hi) whose tap o*s + off lies inside [0, in), clipped to [0, out).
// The range may be empty (*lo >= *hi).
MK_HD void tap_out_range(int64_t off, int s, int64_t in, int64_t out, int64_t* lo, int64_t* hi) {
  *lo = off >= 0 ? 0 : (-off + s - 1) / s;
  const int64_t h = (in - 1 - off) >= 0 ? (in - 1 - off) / s + 1 : 0;
  *hi = h < out ? h : out;
}

// Along a convolved axis: the output o whose tap j reads input i (o*s - pad + j == i), if any.
MK_HD bool gather_tap(int64_t i, int pad, int j, int s, int64_t out, int64_t* o) {
  const int64_t t = i + pad - j;
  if (t < 0 || t % s != 0 || t / s >= out) return false;
  *o = t / s;
  return true;
}

// Along an axis the branch does not convolve: the output o with o*s == i, if any.
MK_HD bool on_output_grid(int64_t i, int s, int64_t out, int64_t* o) {
  if (i % s != 0 || i / s >= out) return false;
  *o = i / s;
  return true;
}

// NCDHW-ordered strides of a dense (N, C, D, H, W) buffer, channels-last or not.
MK_HD void dense_strides(int64_t c, int64_t d, int64_t h, int64_t w, bool channels_last, int64_t* st) {
  if (channels_last) {
    st[1] = 1; st[4] = c; st[3] = c * w; st[2] = c * w * h; st[0] = c * w * h * d;
  } else {
    st[4] = 1; st[3] = w; st[2] = w * h; st[1] = w * h * d; st[0] = w * h * d * c;
  }
}

// The backward keeps gz = dy * act'(z) channels-last exactly when x is (and there is more than
// one channel), so the dx pass reads it in x's order.
MK_HD bool bwd_gz_channels_last(const DecompConvParams& p) { return p.x_strides[1] == 1 && p.out_channels > 1; }

// Backward workspace, in the accumulation type A (float, double for float64), each part
// 256-byte aligned:
//   gz     N*C_out*Do*Ho*Wo     (CPU and CUDA)
//   wflip  3*C_in*(C_out/g)*K   flipped, transposed weights for the stride-1 dx (CUDA)
//   part   splits*C_out*(C_in/g)*(3K+1)  per-split weight/bias partial sums (CUDA)
// splits depends only on the sizes, so the reduction order and bits do not depend on the GPU.
struct DecompConvBwdLayout {
  size_t acc_bytes = 4;
  size_t gz_offset = 0, wflip_offset = 0, part_offset = 0, total_bytes = 0;
  int64_t taps = 0;            // 3K + 1: the K taps of d, h, w and the bias
  int64_t work = 0;            // C_out * C_in/g * taps: one partial per (co, ci', tap)
  int64_t rows = 0;            // N * Do * Ho output rows reduced over
  int64_t splits = 1, rows_per_split = 1;
};

constexpr int64_t kDecompConvDwTargetThreads = int64_t(1) << 18;

inline size_t align_up_256(size_t v) { return (v + 255) & ~size_t(255); }

inline DecompConvBwdLayout decomp_conv_bwd_layout(const DecompConvParams& p) {
  DecompConvBwdLayout L;
  L.acc_bytes = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  const int64_t g = p.groups > 0 ? p.groups : 1;
  const int64_t cin_g = p.in_channels / g, cout_g = p.out_channels / g;
  const int64_t K = p.kernel_size > 0 ? p.kernel_size : 1;
  const int64_t out_numel = p.batch * p.out_channels * p.out_size[0] * p.out_size[1] * p.out_size[2];
  L.taps = 3 * K + 1;
  L.work = p.out_channels * cin_g * L.taps;
  L.rows = p.batch * p.out_size[0] * p.out_size[1];
  if (L.rows > 0 && L.work > 0) {
    int64_t splits = ceil_div(kDecompConvDwTargetThreads, L.work);
    splits = splits < L.rows ? splits : L.rows;
    L.rows_per_split = ceil_div(L.rows, splits);
    L.splits = ceil_div(L.rows, L.rows_per_split);
  }
  const size_t gz = out_numel > 0 ? static_cast<size_t>(out_numel) * L.acc_bytes : 0;
  const size_t wf = static_cast<size_t>(3 * p.in_channels * cout_g * K > 0 ? 3 * p.in_channels * cout_g * K : 0) * L.acc_bytes;
  const size_t part = static_cast<size_t>(L.splits * (L.work > 0 ? L.work : 0)) * L.acc_bytes;
  L.gz_offset = 0;
  L.wflip_offset = align_up_256(L.gz_offset + gz);
  L.part_offset = align_up_256(L.wflip_offset + wf);
  L.total_bytes = L.part_offset + part;
  return L;
}

// The backward's own argument checks beyond decomp_conv_check (shared by the CPU and CUDA entries).
inline Status decomp_conv_bwd_check(const DecompConvBwdParams& b) {
  DecompConvParams chk = b.fwd;
  chk.y = b.grad_x ? b.grad_x : const_cast<void*>(b.grad_y);  // y is unused in the backward
  const Status st = decomp_conv_check(chk);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(b.grad_y, "decomp_conv_bwd: grad_y must not be null");
  const size_t need = decomp_conv_bwd_layout(b.fwd).total_bytes;  // == decomp_conv_bwd_workspace_bytes(b)
  MK_CHECK_ARG(b.workspace && b.workspace_bytes >= need,
               "decomp_conv_bwd: workspace must hold decomp_conv_bwd_workspace_bytes() = " + std::to_string(need) +
                   " bytes, got " + std::to_string(b.workspace_bytes));
  return Status::kSuccess;
}

}  // namespace detail
}  // namespace medkernels
