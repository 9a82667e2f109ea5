// The CUDA kernels of the decomposed 3D convolution, written as per-thread bodies (MK_HD) plus a
// host-side plan that picks kernels and carves the workspace, generic in an executor of
// medkernels/detail/exec.h: medkernels/cuda/decomp_conv.cuh launches it (CudaExec), and
// tests/decomp_conv_emulate.cpp runs the very same plan on the host, block by block and phase by
// phase (HostExec), so the GPU code path is tested on machines without a GPU.
// Plain C++17 apart from the 16-bit conversion intrinsics under __CUDA_ARCH__.
//
// Kernels (see medkernels/decomp_conv.h for the math):
//  conv_generic   one thread per output, any groups/stride/strides (also MODE 1, below)
//  conv_tile      depthwise, stride 1: a block owns a (th x tw) tile of output rows of one
//                 (n, c, d) plane; the x tile with its k/2 halo along H and W is staged in shared
//                 memory (16-byte loads when W is contiguous and aligned); D taps read through L1
//  conv_cl_vec    depthwise, channels-last: a thread owns 16 bytes of contiguous channels at
//                 4 outputs along W, loads each tap's weights once and every x tap as one
//                 16-byte vector
//  gz_copy        gz = dy in the accumulation type (no activation)
//  dw_partial     weight/bias partial sums per (row split, co, ci', tap); dw_reduce sums the
//                 splits in a fixed order: deterministic, no atomics
//  wflip          weights flipped and transposed for dx (stride 1) = conv of gz
//  dx_gather      dx for stride > 1: every tap that lands on an input element
// MODE 0 stores y = act(z) in TO; MODE 1 (backward) stores gz = gy * act'(z) in TO = A, gy
// being read in TI (the input dtype).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "medkernels/common.h"
#include "medkernels/decomp_conv.h"
#include "medkernels/detail/activation.h"
#include "medkernels/detail/decomp_conv_index.h"
#include "medkernels/detail/exec.h"

namespace medkernels {
namespace detail {

// Io with the hardware conversions on the device; the host keeps common.h's bit math.
template <typename T>
struct Ld {
  using acc = typename Io<T>::acc;
  MK_HD static acc load(const T* p) { return Io<T>::load(p); }
  MK_HD static void store(T* p, acc v) { Io<T>::store(p, v); }
};
template <>
struct Ld<half_t> {
  using acc = float;
  MK_HD static float load(const half_t* p) {
#if defined(__CUDA_ARCH__)
    return __half2float(*reinterpret_cast<const __half*>(p));
#else
    return Io<half_t>::load(p);
#endif
  }
  MK_HD static void store(half_t* p, float v) {
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<__half*>(p) = __float2half_rn(v);
#else
    Io<half_t>::store(p, v);
#endif
  }
};
template <>
struct Ld<bfloat16_t> {
  using acc = float;
  MK_HD static float load(const bfloat16_t* p) {
#if defined(__CUDA_ARCH__)
    return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
#else
    return Io<bfloat16_t>::load(p);
#endif
  }
  MK_HD static void store(bfloat16_t* p, float v) {
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(v);
#else
    Io<bfloat16_t>::store(p, v);
#endif
  }
};

template <typename A, typename T>
MK_HD A load_as(const T* p) {
  return static_cast<A>(Ld<T>::load(p));
}
template <typename T, typename A>
MK_HD void store_from(T* p, A v) {
  Ld<T>::store(p, static_cast<typename Ld<T>::acc>(v));
}

// 16 bytes (VEC elements) loaded as one vector instruction on the device.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T e[VEC];
};

// One convolution launch: the forward, the backward's gz (MODE 1) and the stride-1 dx.
struct ConvArgs {
  const void* x = nullptr;
  const void* w[3] = {nullptr, nullptr, nullptr};  // (C_out, C_in/g, K) each, contiguous
  const void* bias = nullptr;
  void* y = nullptr;
  const void* gy = nullptr;  // MODE 1
  int64_t gys[5] = {0, 0, 0, 0, 0};
  int64_t N = 0, Ci = 0, Co = 0, cin_g = 0, cout_g = 0;
  int64_t in[3] = {0, 0, 0}, out[3] = {0, 0, 0};
  int64_t xs[5] = {0, 0, 0, 0, 0}, ys[5] = {0, 0, 0, 0, 0};
  int K = 1, pad = 0, s = 1;
  Activation act = Activation::kNone;
  bool channels_inner = false;  // conv_generic: consecutive threads walk channels
};

inline ConvArgs conv_args(const DecompConvParams& p) {
  ConvArgs a;
  a.x = p.x;
  a.w[0] = p.w_d; a.w[1] = p.w_h; a.w[2] = p.w_w;
  a.bias = p.bias;
  a.y = p.y;
  a.N = p.batch; a.Ci = p.in_channels; a.Co = p.out_channels;
  a.cin_g = p.in_channels / p.groups; a.cout_g = p.out_channels / p.groups;
  for (int i = 0; i < 3; ++i) { a.in[i] = p.in_size[i]; a.out[i] = p.out_size[i]; }
  for (int i = 0; i < 5; ++i) { a.xs[i] = p.x_strides[i]; a.ys[i] = p.y_strides[i]; }
  a.K = p.kernel_size; a.pad = p.kernel_size / 2; a.s = p.stride;
  a.act = p.activation;
  return a;
}

// The end of every conv kernel: one write of y (MODE 0) or of gz (MODE 1).
template <typename TI, typename TO, typename A, int MODE>
MK_HD void conv_finish(const ConvArgs& a, A z, int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) {
  TO* y = static_cast<TO*>(a.y) + n * a.ys[0] + c * a.ys[1] + d * a.ys[2] + h * a.ys[3] + w * a.ys[4];
  if (MODE == 0) {
    store_from<TO, A>(y, act_fwd<A>(a.act, z));
  } else {
    const TI* gy = static_cast<const TI*>(a.gy) + n * a.gys[0] + c * a.gys[1] + d * a.gys[2] + h * a.gys[3] + w * a.gys[4];
    store_from<TO, A>(y, load_as<A>(gy) * act_grad<A>(a.act, z));
  }
}

// --- conv_generic ----------------------------------------------------------------------------
template <typename TI, typename TW, typename TO, typename A, int MODE>
MK_HD void conv_generic_point(const ConvArgs& a, int64_t idx) {
  int64_t n, co, od, oh, ow, r;
  if (a.channels_inner) {
    co = idx % a.Co; r = idx / a.Co;
    ow = r % a.out[2]; r /= a.out[2];
    oh = r % a.out[1]; r /= a.out[1];
    od = r % a.out[0]; n = r / a.out[0];
  } else {
    ow = idx % a.out[2]; r = idx / a.out[2];
    oh = r % a.out[1]; r /= a.out[1];
    od = r % a.out[0]; r /= a.out[0];
    co = r % a.Co; n = r / a.Co;
  }
  const int64_t g = co / a.cout_g;
  const int64_t ip[3] = {od * a.s, oh * a.s, ow * a.s};
  A acc = a.bias ? load_as<A>(static_cast<const TW*>(a.bias) + co) : A(0);
  for (int64_t cl = 0; cl < a.cin_g; ++cl) {
    const TI* xo = static_cast<const TI*>(a.x) + n * a.xs[0] + (g * a.cin_g + cl) * a.xs[1] + ip[0] * a.xs[2] +
                   ip[1] * a.xs[3] + ip[2] * a.xs[4];
    const int64_t wb = (co * a.cin_g + cl) * a.K;
    for (int br = 0; br < 3; ++br) {
      const TW* w = static_cast<const TW*>(a.w[br]) + wb;
      const int64_t xst = a.xs[2 + br];
      for (int j = 0; j < a.K; ++j) {
        const int64_t i = ip[br] - a.pad + j;
        if (i < 0 || i >= a.in[br]) continue;
        acc += load_as<A>(w + j) * load_as<A>(xo + (j - a.pad) * xst);
      }
    }
  }
  conv_finish<TI, TO, A, MODE>(a, acc, n, co, od, oh, ow);
}

// --- conv_tile: depthwise, stride 1 ------------------------------------------------------------
// Shared memory (A): [3K weights d, h, w][bias][rows x row tile]. Tile row r holds input row
// h0 - pad + r; its element e holds input column cstart + e, cstart = (w0 - pad) rounded down
// to a multiple of vec so every in-range chunk of vec elements is one aligned 16-byte load.
struct TilePlan {
  int tw = 1, th = 1, threads = 1, vec = 1;
  int row = 1, rows = 1;            // tile row length (elements, multiple of vec) and row count
  int64_t tiles_w = 1, tiles_h = 1, tiles = 0;
  int64_t smem_elems = 0;
};

inline int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p *= 2;
  return p;
}

inline TilePlan tile_plan(const ConvArgs& a, int vec) {
  TilePlan t;
  t.vec = vec;
  // near-square tiles: (th + 2p) x (tw + 2p) staged elements per th x tw outputs; a warp still
  // spans 32 consecutive outputs along W (coalesced)
  t.tw = pow2_at_least(a.out[2], 32);
  if (t.tw < 8) t.tw = 8;
  t.th = pow2_at_least(a.out[1], 256 / t.tw);
  t.threads = t.tw * t.th;
  t.rows = t.th + 2 * a.pad;
  t.row = static_cast<int>(ceil_div(t.tw + 2 * a.pad + vec - 1, vec) * vec);
  t.tiles_w = ceil_div(a.out[2], t.tw);
  t.tiles_h = ceil_div(a.out[1], t.th);
  t.tiles = a.N * a.Co * a.out[0] * t.tiles_h * t.tiles_w;
  t.smem_elems = 3 * a.K + 1 + static_cast<int64_t>(t.rows) * t.row;
  return t;
}

struct TileCoord {
  int64_t n, c, d, h0, w0;
};

MK_HD TileCoord tile_coord(const ConvArgs& a, const TilePlan& t, int64_t tile) {
  TileCoord q;
  q.w0 = (tile % t.tiles_w) * t.tw;
  int64_t r = tile / t.tiles_w;
  q.h0 = (r % t.tiles_h) * t.th;
  r /= t.tiles_h;
  q.d = r % a.out[0];
  r /= a.out[0];
  q.c = r % a.Co;
  q.n = r / a.Co;
  return q;
}

// Phase 1 (all threads of the block, then a barrier): weights, bias and the x tile to shared.
template <typename TI, typename TW, typename A, int VEC>
MK_HD void tile_stage(const ConvArgs& a, const TilePlan& t, int64_t tile, int tid, A* smem) {
  const TileCoord q = tile_coord(a, t, tile);
  const int K = a.K;
  for (int e = tid; e < 3 * K; e += t.threads)
    smem[e] = load_as<A>(static_cast<const TW*>(a.w[e / K]) + q.c * K + e % K);
  if (tid == 0) smem[3 * K] = a.bias ? load_as<A>(static_cast<const TW*>(a.bias) + q.c) : A(0);
  A* tl = smem + 3 * K + 1;
  const int64_t cstart = floor_div(q.w0 - a.pad, VEC) * VEC;
  const int nch = t.row / VEC;
  const int64_t H = a.in[1], W = a.in[2];
  const TI* xp = static_cast<const TI*>(a.x) + q.n * a.xs[0] + q.c * a.xs[1] + q.d * a.xs[2];
  for (int e = tid; e < t.rows * nch; e += t.threads) {
    const int r = e / nch, ch = e % nch;
    const int64_t ih = q.h0 - a.pad + r;
    const int64_t gc = cstart + static_cast<int64_t>(ch) * VEC;
    A* dst = tl + static_cast<int64_t>(r) * t.row + ch * VEC;
    if (ih < 0 || ih >= H) {
      for (int v = 0; v < VEC; ++v) dst[v] = A(0);
      continue;
    }
    const TI* src = xp + ih * a.xs[3];
    if (VEC > 1 && gc >= 0 && gc + VEC <= W) {
      const Vec<TI, VEC> v16 = *reinterpret_cast<const Vec<TI, VEC>*>(src + gc);  // xs[4] == 1 here
      for (int v = 0; v < VEC; ++v) dst[v] = load_as<A>(&v16.e[v]);
    } else {
      for (int v = 0; v < VEC; ++v) {
        const int64_t iw = gc + v;
        dst[v] = (iw >= 0 && iw < W) ? load_as<A>(src + iw * a.xs[4]) : A(0);
      }
    }
  }
}

// Phase 2: each thread one output of the tile.
template <typename TI, typename TO, typename A, int MODE>
MK_HD void tile_compute(const ConvArgs& a, const TilePlan& t, int64_t tile, int tid, const A* smem) {
  const TileCoord q = tile_coord(a, t, tile);
  const int ty = tid / t.tw, tx = tid % t.tw;
  const int64_t oh = q.h0 + ty, ow = q.w0 + tx;
  if (oh >= a.out[1] || ow >= a.out[2]) return;
  const int K = a.K, pad = a.pad;
  const int64_t shift = (q.w0 - pad) - floor_div(q.w0 - pad, t.vec) * t.vec;
  const A* tl = smem + 3 * K + 1;
  A acc = smem[3 * K];
  const A* wrow = tl + static_cast<int64_t>(ty + pad) * t.row + tx + shift;  // input (oh, ow - pad)
  for (int j = 0; j < K; ++j) acc += smem[2 * K + j] * wrow[j];
  const A* hcol = tl + static_cast<int64_t>(ty) * t.row + tx + pad + shift;  // input (oh - pad, ow)
  for (int j = 0; j < K; ++j) acc += smem[K + j] * hcol[static_cast<int64_t>(j) * t.row];
  const TI* xd = static_cast<const TI*>(a.x) + q.n * a.xs[0] + q.c * a.xs[1] + oh * a.xs[3] + ow * a.xs[4];
  for (int j = 0; j < K; ++j) {
    const int64_t id = q.d - pad + j;
    if (id >= 0 && id < a.in[0]) acc += smem[j] * load_as<A>(xd + id * a.xs[2]);
  }
  conv_finish<TI, TO, A, MODE>(a, acc, q.n, q.c, q.d, oh, ow);
}

// --- conv_cl_vec: depthwise, channels-last ------------------------------------------------------
// A thread owns VEC contiguous channels (16 bytes) at kClOw consecutive outputs along W: each
// tap's VEC weights are loaded once for the kClOw outputs, every x tap is one 16-byte load.
constexpr int kClOw = 4;

MK_HD int64_t cl_vec_threads(const ConvArgs& a, int vec) {
  return a.N * a.out[0] * a.out[1] * ceil_div(a.out[2], kClOw) * (a.Co / vec);
}

template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
MK_HD void conv_cl_vec_point(const ConvArgs& a, int64_t idx) {
  const int64_t nchunk = a.Co / VEC;
  const int64_t c0 = (idx % nchunk) * VEC;
  int64_t r = idx / nchunk;
  const int64_t wblocks = ceil_div(a.out[2], kClOw);
  const int64_t ow0 = (r % wblocks) * kClOw; r /= wblocks;
  const int64_t oh = r % a.out[1]; r /= a.out[1];
  const int64_t od = r % a.out[0];
  const int64_t n = r / a.out[0];
  const int nq = a.out[2] - ow0 < kClOw ? static_cast<int>(a.out[2] - ow0) : kClOw;
  A acc[kClOw][VEC];
  MK_UNROLL for (int u = 0; u < VEC; ++u) {
    const A b0 = a.bias ? load_as<A>(static_cast<const TW*>(a.bias) + c0 + u) : A(0);
    MK_UNROLL for (int q = 0; q < kClOw; ++q) acc[q][u] = b0;
  }
  const TI* xb = static_cast<const TI*>(a.x) + n * a.xs[0] + c0;  // xs[1] == 1
  for (int br = 0; br < 3; ++br) {
    const TW* w = static_cast<const TW*>(a.w[br]) + c0 * a.K;
    for (int j = 0; j < a.K; ++j) {
      const int64_t off = j - a.pad;
      // the tap's input position on the branch axis must be inside the volume
      const int64_t id = od * a.s + (br == 0 ? off : 0), ih = oh * a.s + (br == 1 ? off : 0);
      if (id < 0 || id >= a.in[0] || ih < 0 || ih >= a.in[1]) continue;
      A wv[VEC];
      MK_UNROLL for (int u = 0; u < VEC; ++u) wv[u] = load_as<A>(w + u * a.K + j);
      const TI* xrow = xb + id * a.xs[2] + ih * a.xs[3];
      MK_UNROLL for (int q = 0; q < kClOw; ++q) {
        const int64_t iw = (ow0 + q) * a.s + (br == 2 ? off : 0);
        if (q < nq && iw >= 0 && iw < a.in[2]) {
          const Vec<TI, VEC> v16 = *reinterpret_cast<const Vec<TI, VEC>*>(xrow + iw * a.xs[4]);
          MK_UNROLL for (int u = 0; u < VEC; ++u) acc[q][u] += wv[u] * load_as<A>(&v16.e[u]);
        }
      }
    }
  }
  MK_UNROLL for (int q = 0; q < kClOw; ++q) {
    if (q < nq) {
      MK_UNROLL for (int u = 0; u < VEC; ++u) conv_finish<TI, TO, A, MODE>(a, acc[q][u], n, c0 + u, od, oh, ow0 + q);
    }
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// --- backward pieces -------------------------------------------------------------------------------
struct BwdArgs {
  const void* x = nullptr;
  const void* gy = nullptr;
  void* gz = nullptr;       // A, dense with strides gs
  const void* w[3] = {nullptr, nullptr, nullptr};
  void* wflip = nullptr;    // A, [3][C_in][C_out/g][K]
  void* part = nullptr;     // A, [splits][C_out][C_in/g][taps]
  void* gw[3] = {nullptr, nullptr, nullptr};  // A or null
  void* gb = nullptr;       // A or null
  void* gx = nullptr;       // T
  int64_t N = 0, Ci = 0, Co = 0, cin_g = 0, cout_g = 0;
  int64_t in[3] = {0, 0, 0}, out[3] = {0, 0, 0};
  int64_t xs[5] = {0, 0, 0, 0, 0}, gys[5] = {0, 0, 0, 0, 0}, gs[5] = {0, 0, 0, 0, 0}, gxs[5] = {0, 0, 0, 0, 0};
  int K = 1, pad = 0, s = 1;
  bool gz_cl = false;       // gz channels-last
  bool gx_cl = false;       // dx_gather: consecutive threads walk channels
  int64_t taps = 0, work = 0, rows = 0, splits = 1, rows_per_split = 1;
};

// Coordinates of element idx of a dense (N, C, D, H, W) enumeration, channels innermost or W innermost.
MK_HD void unflatten(int64_t idx, bool channels_inner, int64_t C, const int64_t* sz, int64_t* n, int64_t* c,
                     int64_t* d, int64_t* h, int64_t* w) {
  int64_t r;
  if (channels_inner) {
    *c = idx % C; r = idx / C;
    *w = r % sz[2]; r /= sz[2];
    *h = r % sz[1]; r /= sz[1];
    *d = r % sz[0]; *n = r / sz[0];
  } else {
    *w = idx % sz[2]; r = idx / sz[2];
    *h = r % sz[1]; r /= sz[1];
    *d = r % sz[0]; r /= sz[0];
    *c = r % C; *n = r / C;
  }
}

template <typename T, typename A>
MK_HD void gz_copy_point(const BwdArgs& b, int64_t idx) {
  int64_t n, c, d, h, w;
  unflatten(idx, b.gz_cl, b.Co, b.out, &n, &c, &d, &h, &w);
  const T* gy = static_cast<const T*>(b.gy) + n * b.gys[0] + c * b.gys[1] + d * b.gys[2] + h * b.gys[3] + w * b.gys[4];
  static_cast<A*>(b.gz)[n * b.gs[0] + c * b.gs[1] + d * b.gs[2] + h * b.gs[3] + w * b.gs[4]] = load_as<A>(gy);
}

// One partial sum: tap (branch, j) or the bias (tap 3K), channel pair (co, ci'), rows of one split.
template <typename T, typename A>
MK_HD void dw_partial_point(const BwdArgs& b, int64_t idx) {
  const int64_t tap = idx % b.taps;
  int64_t r = idx / b.taps;
  const int64_t cl = r % b.cin_g;
  r /= b.cin_g;
  const int64_t co = r % b.Co;
  const int64_t split = r / b.Co;
  const int64_t r0 = split * b.rows_per_split;
  const int64_t r1 = r0 + b.rows_per_split < b.rows ? r0 + b.rows_per_split : b.rows;
  const A* gz = static_cast<const A*>(b.gz);
  const int64_t Do = b.out[0], Ho = b.out[1], Wo = b.out[2];
  A sum = A(0);
  if (tap == 3 * b.K) {
    if (cl == 0) {
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t oh = row % Ho, od = (row / Ho) % Do, n = row / (Ho * Do);
        const A* grow = gz + n * b.gs[0] + co * b.gs[1] + od * b.gs[2] + oh * b.gs[3];
        for (int64_t ow = 0; ow < Wo; ++ow) sum += grow[ow * b.gs[4]];
      }
    }
  } else {
    const int br = static_cast<int>(tap / b.K);
    const int64_t off = tap % b.K - b.pad;
    const int64_t ci = (co / b.cout_g) * b.cin_g + cl;
    const int s = b.s;
    int64_t lo = 0, hi = Wo;
    if (br == 2) tap_out_range(off, s, b.in[2], Wo, &lo, &hi);
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t oh = row % Ho, od = (row / Ho) % Do, n = row / (Ho * Do);
      const int64_t id = od * s + (br == 0 ? off : 0), ih = oh * s + (br == 1 ? off : 0);
      if (id < 0 || id >= b.in[0] || ih < 0 || ih >= b.in[1]) continue;
      const A* grow = gz + n * b.gs[0] + co * b.gs[1] + od * b.gs[2] + oh * b.gs[3];
      const T* xrow = static_cast<const T*>(b.x) + n * b.xs[0] + ci * b.xs[1] + id * b.xs[2] + ih * b.xs[3] +
                      (br == 2 ? off : 0) * b.xs[4];
      for (int64_t ow = lo; ow < hi; ++ow) sum += grow[ow * b.gs[4]] * load_as<A>(xrow + ow * s * b.xs[4]);
    }
  }
  static_cast<A*>(b.part)[idx] = sum;
}

// Sum of the splits in a fixed order, written to grad_w_* / grad_bias.
template <typename A>
MK_HD void dw_reduce_point(const BwdArgs& b, int64_t idx) {
  const A* part = static_cast<const A*>(b.part);
  A sum = A(0);
  for (int64_t sp = 0; sp < b.splits; ++sp) sum += part[sp * b.work + idx];
  const int64_t tap = idx % b.taps;
  const int64_t pair = idx / b.taps;  // co * cin_g + cl
  if (tap == 3 * b.K) {
    if (b.gb && pair % b.cin_g == 0) static_cast<A*>(b.gb)[pair / b.cin_g] = sum;
  } else {
    const int br = static_cast<int>(tap / b.K);
    if (b.gw[br]) static_cast<A*>(b.gw[br])[pair * b.K + tap % b.K] = sum;
  }
}

// wflip[br][ci][col][K-1-j] = w[br][co][ci'][j]: dx (stride 1) is the conv of gz with these.
template <typename T, typename A>
MK_HD void wflip_point(const BwdArgs& b, int64_t idx) {
  const int64_t jj = idx % b.K;
  int64_t r = idx / b.K;
  const int64_t col = r % b.cout_g;
  r /= b.cout_g;
  const int64_t ci = r % b.Ci;
  const int br = static_cast<int>(r / b.Ci);
  const int64_t g = ci / b.cin_g, cl = ci - g * b.cin_g, co = g * b.cout_g + col;
  static_cast<A*>(b.wflip)[idx] = load_as<A>(static_cast<const T*>(b.w[br]) + (co * b.cin_g + cl) * b.K + (b.K - 1 - jj));
}

// dx for stride > 1, one thread per input element.
template <typename T, typename A>
MK_HD void dx_gather_point(const BwdArgs& b, int64_t idx) {
  int64_t n, ci, id, ih, iw;
  unflatten(idx, b.gx_cl, b.Ci, b.in, &n, &ci, &id, &ih, &iw);
  const int64_t g = ci / b.cin_g, cl = ci - g * b.cin_g;
  const int64_t ip[3] = {id, ih, iw};
  const A* gz = static_cast<const A*>(b.gz);
  A acc = A(0);
  for (int br = 0; br < 3; ++br) {
    int64_t o[3] = {0, 0, 0};
    bool ok = true;
    for (int ax = 0; ax < 3 && ok; ++ax)
      if (ax != br) ok = on_output_grid(ip[ax], b.s, b.out[ax], &o[ax]);
    if (!ok) continue;
    const T* w = static_cast<const T*>(b.w[br]);
    for (int j = 0; j < b.K; ++j) {
      if (!gather_tap(ip[br], b.pad, j, b.s, b.out[br], &o[br])) continue;
      const A* gp = gz + n * b.gs[0] + o[0] * b.gs[2] + o[1] * b.gs[3] + o[2] * b.gs[4];
      for (int64_t col = 0; col < b.cout_g; ++col) {
        const int64_t co = g * b.cout_g + col;
        acc += load_as<A>(w + (co * b.cin_g + cl) * b.K + j) * gp[co * b.gs[1]];
      }
    }
  }
  store_from<T, A>(static_cast<T*>(b.gx) + n * b.gxs[0] + ci * b.gxs[1] + id * b.gxs[2] + ih * b.gxs[3] + iw * b.gxs[4],
                   acc);
}

// --- the kernels, as the executors launch them (medkernels/detail/exec.h) -----------------------------
constexpr int kConvThreads = 256;  // threads per block of the per-item kernels (and the tiles' limit)

template <typename TI, typename TW, typename TO, typename A, int MODE>
struct ConvGeneric {
  static constexpr const char* kName = "conv_generic";
  ConvArgs a;
  MK_HD void operator()(int64_t i) const { conv_generic_point<TI, TW, TO, A, MODE>(a, i); }
};

template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
struct ConvClVec {
  static constexpr const char* kName = "conv_cl_vec";
  ConvArgs a;
  MK_HD void operator()(int64_t i) const { conv_cl_vec_point<TI, TW, TO, A, MODE, VEC>(a, i); }
};

// Block program: a grid-stride loop over the tiles; each tile staged (with its halo) into shared
// memory by all threads, then computed.
template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
struct ConvTile {
  static constexpr const char* kName = "conv_tile";
  ConvArgs a;
  TilePlan t;
  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char* raw) const {
    A* smem = reinterpret_cast<A*>(raw);
    for (int64_t tile = pos.x; tile < t.tiles; tile += pos.nx) {
      for (int s = 0; s < bk.slots(); ++s) tile_stage<TI, TW, A, VEC>(a, t, tile, bk.thread(s), smem);
      bk.sync();
      for (int s = 0; s < bk.slots(); ++s) tile_compute<TI, TO, A, MODE>(a, t, tile, bk.thread(s), smem);
      bk.sync();  // the next tile's staging overwrites shared memory
    }
  }
};

template <typename T, typename A>
struct GzCopy {
  static constexpr const char* kName = "gz_copy";
  BwdArgs b;
  MK_HD void operator()(int64_t i) const { gz_copy_point<T, A>(b, i); }
};

template <typename T, typename A>
struct DwPartial {
  static constexpr const char* kName = "dw_partial";
  BwdArgs b;
  MK_HD void operator()(int64_t i) const { dw_partial_point<T, A>(b, i); }
};

template <typename A>
struct DwReduce {
  static constexpr const char* kName = "dw_reduce";
  BwdArgs b;
  MK_HD void operator()(int64_t i) const { dw_reduce_point<A>(b, i); }
};

template <typename T, typename A>
struct WFlip {
  static constexpr const char* kName = "wflip";
  BwdArgs b;
  MK_HD void operator()(int64_t i) const { wflip_point<T, A>(b, i); }
};

template <typename T, typename A>
struct DxGather {
  static constexpr const char* kName = "dx_gather";
  BwdArgs b;
  MK_HD void operator()(int64_t i) const { dx_gather_point<T, A>(b, i); }
};

// --- the plan: which kernels run, generic in the executor --------------------------------------------
template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC, typename Exec>
int run_tile(const ConvArgs& a, const TilePlan& t, Exec& ex) {
  if (t.tiles <= 0) return 0;
  if (t.threads > kConvThreads) return 9;  // cudaErrorInvalidConfiguration: the plan keeps tiles within
  return ex.template blocks<kConvThreads>(ConvTile<TI, TW, TO, A, MODE, VEC>{a, t}, grid_for(t.tiles, 1), 1,
                                          t.threads, static_cast<size_t>(t.smem_elems) * sizeof(A));
}

template <typename TI, typename TW, typename TO, typename A, int MODE, typename Exec>
int run_conv(ConvArgs a, Exec& ex) {
  const int64_t total = a.N * a.Co * a.out[0] * a.out[1] * a.out[2];
  if (total <= 0) return 0;
  constexpr int VEC = static_cast<int>(16 / sizeof(TI));
  const bool depthwise = a.cin_g == 1 && a.cout_g == 1;
  if (depthwise && a.xs[1] == 1 && a.Co > 1) {
    const bool vec_ok = a.Co % VEC == 0 && aligned16(a.x) && a.xs[0] % VEC == 0 && a.xs[2] % VEC == 0 &&
                        a.xs[3] % VEC == 0 && a.xs[4] % VEC == 0;
    if (vec_ok) return ex.template items<kConvThreads>(ConvClVec<TI, TW, TO, A, MODE, VEC>{a}, cl_vec_threads(a, VEC));
  } else if (depthwise && a.s == 1) {
    const bool vec_ok = a.xs[4] == 1 && aligned16(a.x) && a.xs[0] % VEC == 0 && a.xs[1] % VEC == 0 &&
                        a.xs[2] % VEC == 0 && a.xs[3] % VEC == 0;
    if (vec_ok) return run_tile<TI, TW, TO, A, MODE, VEC>(a, tile_plan(a, VEC), ex);
    return run_tile<TI, TW, TO, A, MODE, 1>(a, tile_plan(a, 1), ex);
  }
  a.channels_inner = a.ys[1] == 1 && a.Co > 1;
  return ex.template items<kConvThreads>(ConvGeneric<TI, TW, TO, A, MODE>{a}, total);
}

template <typename T, typename Exec>
int decomp_conv_fwd_run(const DecompConvParams& p, Exec& ex) {
  using A = typename Io<T>::acc;
  return run_conv<T, T, T, A, 0>(conv_args(p), ex);
}

template <typename T, typename Exec>
int decomp_conv_bwd_run(const DecompConvBwdParams& bp, Exec& ex) {
  using A = typename Io<T>::acc;
  const DecompConvParams& p = bp.fwd;
  const DecompConvBwdLayout L = decomp_conv_bwd_layout(p);
  const int64_t out_total = p.batch * p.out_channels * p.out_size[0] * p.out_size[1] * p.out_size[2];
  if (out_total <= 0) return 0;
  char* ws = static_cast<char*>(bp.workspace);
  BwdArgs b;
  b.x = p.x;
  b.gy = bp.grad_y;
  b.gz = ws + L.gz_offset;
  b.w[0] = p.w_d; b.w[1] = p.w_h; b.w[2] = p.w_w;
  b.wflip = ws + L.wflip_offset;
  b.part = ws + L.part_offset;
  b.gw[0] = bp.grad_w_d; b.gw[1] = bp.grad_w_h; b.gw[2] = bp.grad_w_w;
  b.gb = bp.grad_bias;
  b.gx = bp.grad_x;
  b.N = p.batch; b.Ci = p.in_channels; b.Co = p.out_channels;
  b.cin_g = p.in_channels / p.groups; b.cout_g = p.out_channels / p.groups;
  for (int i = 0; i < 3; ++i) { b.in[i] = p.in_size[i]; b.out[i] = p.out_size[i]; }
  for (int i = 0; i < 5; ++i) { b.xs[i] = p.x_strides[i]; b.gys[i] = bp.grad_y_strides[i]; b.gxs[i] = bp.grad_x_strides[i]; }
  b.K = p.kernel_size; b.pad = p.kernel_size / 2; b.s = p.stride;
  b.gz_cl = bwd_gz_channels_last(p);
  dense_strides(b.Co, b.out[0], b.out[1], b.out[2], b.gz_cl, b.gs);
  b.gx_cl = b.gxs[1] == 1 && b.Ci > 1;
  b.taps = L.taps; b.work = L.work; b.rows = L.rows; b.splits = L.splits; b.rows_per_split = L.rows_per_split;

  // 1. gz = dy * act'(z), z recomputed by the forward kernel in MODE 1
  int err = 0;
  if (p.activation != Activation::kNone) {
    ConvArgs a = conv_args(p);
    a.y = b.gz;
    a.gy = bp.grad_y;
    for (int i = 0; i < 5; ++i) { a.ys[i] = b.gs[i]; a.gys[i] = bp.grad_y_strides[i]; }
    err = run_conv<T, T, A, A, 1>(a, ex);
  } else {
    err = ex.template items<kConvThreads>(GzCopy<T, A>{b}, out_total);
  }
  if (err) return err;

  // 2. weight and bias gradients
  if (bp.grad_bias || bp.grad_w_d || bp.grad_w_h || bp.grad_w_w) {
    if (b.work > 0) {
      if ((err = ex.template items<kConvThreads>(DwPartial<T, A>{b}, b.splits * b.work))) return err;
      if ((err = ex.template items<kConvThreads>(DwReduce<A>{b}, b.work))) return err;
    }
  }

  // 3. dx
  if (!bp.grad_x) return 0;
  const int64_t in_total = p.batch * p.in_channels * p.in_size[0] * p.in_size[1] * p.in_size[2];
  if (in_total <= 0) return 0;
  if (p.stride == 1) {
    if ((err = ex.template items<kConvThreads>(WFlip<T, A>{b}, 3 * b.Ci * b.cout_g * b.K))) return err;
    ConvArgs t;
    t.x = b.gz;
    const int64_t fper = b.Ci * b.cout_g * b.K;
    for (int br = 0; br < 3; ++br) t.w[br] = static_cast<const A*>(b.wflip) + br * fper;
    t.y = bp.grad_x;
    t.N = b.N; t.Ci = b.Co; t.Co = b.Ci; t.cin_g = b.cout_g; t.cout_g = b.cin_g;
    for (int i = 0; i < 3; ++i) { t.in[i] = b.out[i]; t.out[i] = b.in[i]; }
    for (int i = 0; i < 5; ++i) { t.xs[i] = b.gs[i]; t.ys[i] = b.gxs[i]; }
    t.K = b.K; t.pad = b.pad; t.s = 1;
    t.act = Activation::kNone;
    return run_conv<A, A, T, A, 0>(t, ex);
  }
  return ex.template items<kConvThreads>(DxGather<T, A>{b}, in_total);
}

}  // namespace detail
}  // namespace medkernels
