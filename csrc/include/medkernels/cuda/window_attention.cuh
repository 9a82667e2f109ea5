// Header-only CUDA kernels of the (shifted, cross-modal) 3D window attention.
//
// Include this from a .cu file to compile the kernels with your own nvcc flags:
//
//   #include "medkernels/cuda/window_attention.cuh"
//   cudaError_t e = medkernels::cuda::launch_window_attention_fwd<float>(params, stream);
//
// T is the storage type: float, double, medkernels::half_t or medkernels::bfloat16_t. The
// launchers do not validate the params (medkernels::window_attention_check does, in the compiled
// library); the backward needs window_attention_cuda_bwd_workspace_bytes() of workspace. One
// thread per item (query, key, token or pair) runs the per-thread functions of
// medkernels/detail/window_attention_kernels.h, which the CPU library also runs on the host.
#pragma once

#include <cuda_runtime.h>

#include "medkernels/detail/window_attention_kernels.h"
#include "medkernels/window_attention.h"

namespace medkernels {
namespace cuda {
namespace wa_impl {

constexpr int kThreads = 128;

inline unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T, typename A, int EMAX>
__global__ void wa_fwd_kernel(WindowAttentionParams p, detail::WaGeo g, int64_t items) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_fwd_item<T, A, EMAX>(p, g, int(blockIdx.y), item);
}

template <typename T, typename A>
__global__ void wa_delta_kernel(WindowAttentionBwdParams bp, detail::WaGeo g, int64_t items, A* delta) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_delta_item<T, A>(bp, g, int(blockIdx.y), item, delta);
}

template <typename T, typename A, int EMAX>
__global__ void wa_dkdv_kernel(WindowAttentionBwdParams bp, detail::WaGeo g, int64_t items, const A* delta,
                               A* slots) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_dkdv_item<T, A, EMAX>(bp, g, int(blockIdx.y), item, delta, slots);
}

template <typename T, typename A, int EMAX>
__global__ void wa_dq_kernel(WindowAttentionBwdParams bp, detail::WaGeo g, int64_t items, const A* delta) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_dq_item<T, A, EMAX>(bp, g, int(blockIdx.y), item, delta);
}

template <typename T, typename A, int EMAX>
__global__ void wa_pair_kernel(WindowAttentionBwdParams bp, detail::WaGeo g, detail::WaBwdLayout L, int64_t items,
                               const A* delta, A* pair) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_pair_item<T, A, EMAX>(bp, g, L, int(blockIdx.y), item, delta, pair);
}

template <typename A>
__global__ void wa_reduce_pair_kernel(WindowAttentionBwdParams bp, detail::WaGeo g, detail::WaBwdLayout L,
                                      int64_t items, const A* pair) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_reduce_pair_item<A>(bp, g, L, item, pair);
}

template <typename A>
__global__ void wa_reduce_pad_kernel(WindowAttentionBwdParams bp, detail::WaGeo g, int64_t items, const A* slots) {
  const int64_t item = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (item < items) detail::wa_reduce_pad_item<A>(bp, g, item, slots);
}

template <typename T, int EMAX>
cudaError_t fwd_e(const WindowAttentionParams& p, cudaStream_t s) {
  using A = typename Io<T>::acc;
  const detail::WaGeo g = detail::wa_geo(p);
  const int64_t items = g.batch * g.nW * g.heads * g.N;
  wa_fwd_kernel<T, A, EMAX><<<dim3(blocks(items), p.directions), kThreads, 0, s>>>(p, g, items);
  return cudaGetLastError();
}

template <typename T, int EMAX>
cudaError_t bwd_e(const WindowAttentionBwdParams& bp, cudaStream_t s) {
  using A = typename Io<T>::acc;
  const detail::WaGeo g = detail::wa_geo(bp.fwd);
  const detail::WaBwdLayout L = detail::wa_bwd_layout(bp);
  const auto [delta, pair, slots] = detail::wa_bwd_work<A>(bp, L);
  const unsigned dirs = unsigned(bp.fwd.directions);
  const int64_t tokens = g.batch * g.vol * g.heads;
  wa_delta_kernel<T, A><<<dim3(blocks(tokens), dirs), kThreads, 0, s>>>(bp, g, tokens, delta);
  const int64_t items = g.batch * g.nW * g.heads * g.N;
  wa_dkdv_kernel<T, A, EMAX><<<dim3(blocks(items), dirs), kThreads, 0, s>>>(bp, g, items, delta, slots);
  wa_dq_kernel<T, A, EMAX><<<dim3(blocks(items), dirs), kThreads, 0, s>>>(bp, g, items, delta);
  if (pair) {
    const int64_t pairs = L.chunks * g.heads * g.N * g.N;
    wa_pair_kernel<T, A, EMAX><<<dim3(blocks(pairs), dirs), kThreads, 0, s>>>(bp, g, L, pairs, delta, pair);
    const int64_t out = g.heads * g.N * g.N;
    wa_reduce_pair_kernel<A><<<blocks(out), kThreads, 0, s>>>(bp, g, L, out, pair);
  }
  if (slots) {
    const int64_t out = 2 * g.heads * g.E;
    wa_reduce_pad_kernel<A><<<blocks(out), kThreads, 0, s>>>(bp, g, out, slots);
  }
  return cudaGetLastError();
}

}  // namespace wa_impl

template <typename T>
cudaError_t launch_window_attention_fwd(const WindowAttentionParams& p, cudaStream_t s) {
  if (p.head_dim <= 16) return wa_impl::fwd_e<T, 16>(p, s);
  if (p.head_dim <= 32) return wa_impl::fwd_e<T, 32>(p, s);
  if (p.head_dim <= 64) return wa_impl::fwd_e<T, 64>(p, s);
  return wa_impl::fwd_e<T, 128>(p, s);
}

template <typename T>
cudaError_t launch_window_attention_bwd(const WindowAttentionBwdParams& bp, cudaStream_t s) {
  if (bp.fwd.head_dim <= 16) return wa_impl::bwd_e<T, 16>(bp, s);
  if (bp.fwd.head_dim <= 32) return wa_impl::bwd_e<T, 32>(bp, s);
  if (bp.fwd.head_dim <= 64) return wa_impl::bwd_e<T, 64>(bp, s);
  return wa_impl::bwd_e<T, 128>(bp, s);
}

}  // namespace cuda
}  // namespace medkernels
