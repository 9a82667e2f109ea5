// Pairwise sigmoid (SigLIP) loss: the per-element math shared by the C++ CPU kernel and the
// CUDA kernels, and the CUDA kernels' block programs and launch plan (see medkernels/sigmoid_loss.h
// for the loss itself).
//
// Per pair, with the logit l = scale * s + bias (s the dot, or the symmetrised dot):
//   loss(l)  = softplus(-z l)         = max(u, 0) + log1p(exp(-|u|)),  u = -z l
//   dloss/dl = -z sigmoid(-z l)       = -z / (1 + exp(z l))
//   symmetric (Med3DVLM): the pair (i, j) and (j, i) share l, so dloss/dl is averaged over z_ij
//   and z_ji (G_s = (G + G^T) / 2).
// The math is written once over a value type V (a scalar, or a GCC vector on the CPU) and a math
// policy M giving M::splat(a), M::exp(V) and M::log1p01(V) (log(1 + e) for e in [0, 1]).
//
// The CUDA side (used by medkernels/cuda/sigmoid_loss.cuh, and by tests/sigmoid_loss_emulate.cpp,
// which runs it on the host) is written "phase-major": a block program walks its phases (stage
// tiles into shared memory, sync, warp tile products, sync, epilogue) and in each phase runs the
// body for every thread slot of the block policy BK. On a GPU a slot is the calling thread
// (BK::kThreads == 1, BK::sync() is __syncthreads()); on the host emulation the slots are all
// 128 threads, run one after the other, and BK::mma emulates mma.sync.m16n8k16 lane by lane from
// the PTX fragment layout. The fragment loaders and the C-fragment index mapping below are the
// ones the GPU runs.
//
// Tiles: 64 x 64 logits per block, 4 warps of 16 rows each. 16-bit inputs: tensor-core MMA
// (m16n8k16, fp32 accumulate) from shared-memory tiles of the raw 16-bit values; float32 and
// float64: the same tiles and fragment ownership, computed with FMA in the input precision (no
// TF32). Forward: grid (row blocks, column splits), one partial per block in the workspace, summed
// in a fixed order by one finishing block. Backward (flash-style): one pass over the row blocks of
// x recomputes each logits tile, forms G (without the grad scale c, so fp16 does not underflow),
// stages it in shared memory and accumulates dX_I[:, d-chunk] += G_IJ Y_J[:, d-chunk] with the same
// warp GEMM; a second launch with x and y swapped gives dY (the symmetric variant writes dX_I and
// dY_I from the one pass). Grid (row blocks, d chunks): the tile is recomputed once per d chunk.
// sum G and sum G s come from the blocks of d chunk 0 of the first pass, summed in a fixed order.
// No float atomics anywhere: the same bits on every run.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "medkernels/common.h"
#include "medkernels/detail/exec.h"
#include "medkernels/sigmoid_loss.h"


namespace medkernels {
namespace detail {

// --- per-element math (CPU and CUDA) ---------------------------------------------------------------
// softplus(u) = log(1 + e^u), stable for any u
template <class M, typename V>
MK_HD V sl_softplus(const V& u) {
  const V zero = M::splat(0);
  const V au = u < zero ? -u : u;
  return (u > zero ? u : zero) + M::log1p01(M::exp(-au));
}

// the loss of one pair: softplus(-z l), z = +1 for a positive pair (pos true), -1 otherwise
template <class M, typename V, typename P>
MK_HD V sl_pair_loss(const V& l, const P& pos) {
  return sl_softplus<M>(pos ? -l : l);
}

// dloss/dl = -z sigmoid(-z l) = -z / (1 + exp(z l)); z is +1 or -1
template <class M, typename V>
MK_HD V sl_pair_dloss(const V& z, const V& l) {
  return -z / (M::exp(z * l) + M::splat(1));
}

// symmetric variant: the mean of dloss/dl over z_ij and z_ji (the two pairs share the logit)
template <class M, typename V>
MK_HD V sl_pair_dloss_sym(const V& z, const V& zt, const V& l) {
  return M::splat(0.5) * (sl_pair_dloss<M>(z, l) + sl_pair_dloss<M>(zt, l));
}

// Accurate libm math: the CUDA kernels (and their host emulation) and the CPU's float64 path.
template <typename A>
struct SlStdMath {
  MK_HD static A splat(double v) { return static_cast<A>(v); }
  MK_HD static float exp(float v) { return ::expf(v); }
  MK_HD static double exp(double v) { return ::exp(v); }
  MK_HD static float log1p01(float e) { return ::log1pf(e); }
  MK_HD static double log1p01(double e) { return ::log1p(e); }
};

// Which pairs are positive, seen from the side whose rows a pass walks (swap: the y side).
struct SlPositives {
  SigmoidLossPositives mode = SigmoidLossPositives::kDiagonal;
  const int64_t* la = nullptr;  // labels of the walked rows
  const int64_t* lb = nullptr;  // labels of the columns
  const uint8_t* mask = nullptr;
  int64_t ms0 = 0, ms1 = 0, off = 0;

  MK_HD bool operator()(int64_t i, int64_t j) const {
    switch (mode) {
      case SigmoidLossPositives::kDiagonal: return i - j == off;
      case SigmoidLossPositives::kLabels: return la[i] == lb[j];
      default: return mask[i * ms0 + j * ms1] != 0;
    }
  }
};

inline SlPositives sl_positives(const SigmoidLossParams& p, bool swap) {
  SlPositives q;
  q.mode = p.positives;
  q.la = swap ? p.labels_y : p.labels_x;
  q.lb = swap ? p.labels_x : p.labels_y;
  q.mask = p.mask;
  q.ms0 = p.mask_strides[swap ? 1 : 0];
  q.ms1 = p.mask_strides[swap ? 0 : 1];
  q.off = swap ? -p.diag_offset : p.diag_offset;
  return q;
}

// --- CUDA tiles ------------------------------------------------------------------------------------
constexpr int kSlTile = 64;                   // rows and columns of one logits tile
constexpr int kSlWarps = 4;                   // each owns 16 rows of the tile
constexpr int kSlThreads = 32 * kSlWarps;
constexpr int kSlPad = 8;                     // elements of padding per shared-memory row (bank spread)

// Storage type T -> what shared memory holds (E), the accumulation type (A) and the tile shapes:
// KC columns of d staged per step of the logits GEMM; DC (DCS for the symmetric variant, which holds two
// accumulators) columns of d per backward block: the logits tile is recomputed once per d chunk, so
// the chunks are as wide as the registers allow without spilling (ptxas -v, sm_90).
template <typename T> struct SlTraits;
template <> struct SlTraits<float> {
  using E = float; using A = float;
  static constexpr bool kMma = false;
  static constexpr int KC = 16, DC = 64, DCS = 32;
  MK_HD static E load(const float* p) { return *p; }
  MK_HD static E from_acc(float v) { return v; }
  MK_HD static A to_acc(E v) { return v; }
};
template <> struct SlTraits<double> {
  using E = double; using A = double;
  static constexpr bool kMma = false;
  static constexpr int KC = 8, DC = 32, DCS = 16;
  MK_HD static E load(const double* p) { return *p; }
  MK_HD static E from_acc(double v) { return v; }
  MK_HD static A to_acc(E v) { return v; }
};
template <> struct SlTraits<half_t> {
  using E = uint16_t; using A = float;  // raw bits: staged as loaded, no conversion
  static constexpr bool kMma = true;
  static constexpr int KC = 32, DC = 256, DCS = 128;
  MK_HD static E load(const half_t* p) { return p->bits; }
  MK_HD static E from_acc(float v) { return float_to_half(v); }
  MK_HD static A to_acc(E v) { return half_to_float(v); }
};
template <> struct SlTraits<bfloat16_t> {
  using E = uint16_t; using A = float;
  static constexpr bool kMma = true;
  static constexpr int KC = 32, DC = 256, DCS = 128;
  MK_HD static E load(const bfloat16_t* p) { return p->bits; }
  MK_HD static E from_acc(float v) { return float_to_bf16(v); }
  MK_HD static A to_acc(E v) { return bf16_to_float(v); }
};

template <typename T, bool SYM>
constexpr int sl_dc() { return SYM ? SlTraits<T>::DCS : SlTraits<T>::DC; }

template <typename A> struct SlFragC { A v[4]; };  // accumulator fragment of one lane (16 x 8 tile)
struct SlFragA { uint32_t r[4]; };                 // 16 x 16 A fragment of one lane: 8 packed 16-bit
struct SlFragB { uint32_t r[2]; };                 // 16 x 8 B fragment of one lane: 4 packed 16-bit

// C fragment of mma.m16n8k16 (PTX ISA): lane l holds c0,c1 at (l/4, 2(l%4) + {0,1}) and c2,c3 at
// row l/4 + 8. The fp32/fp64 FMA tiles use the same ownership.
MK_HD int sl_frag_row(int lane, int e) { return (lane >> 2) + ((e >> 1) << 3); }
MK_HD int sl_frag_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1); }

MK_HD uint32_t sl_pack2(const uint16_t* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 16); }

// A fragment (row-major 16 x 16 at rows row0.., k0..; smem [row][k], ld elements): register r holds
// (row l/4 + 8 (r & 1), k 2(l%4) + 8 (r >> 1) + {0, 1}).
MK_HD SlFragA sl_load_a(const uint16_t* s, int ld, int row0, int k0, int lane) {
  SlFragA f;
  MK_UNROLL for (int r = 0; r < 4; ++r) {
    const int row = row0 + (lane >> 2) + ((r & 1) << 3);
    const int k = k0 + ((lane & 3) << 1) + ((r >> 1) << 3);
    f.r[r] = sl_pack2(s + row * ld + k);
  }
  return f;
}

// B fragment ("col": 16 (k) x 8 (n) at n0.., k0..; smem [n][k]): register r holds (k 2(l%4) + 8 r + {0, 1}, n l/4).
MK_HD SlFragB sl_load_b(const uint16_t* s, int ld, int n0, int k0, int lane) {
  SlFragB f;
  MK_UNROLL for (int r = 0; r < 2; ++r) {
    const int n = n0 + (lane >> 2);
    const int k = k0 + ((lane & 3) << 1) + (r << 3);
    f.r[r] = sl_pack2(s + n * ld + k);
  }
  return f;
}

// acc[l][f] += A[row0 + r][k] * B[8 f + c][k] summed over k < kdim (a multiple of 16 for MMA), for the
// (r, c) each lane slot l owns. as: [row][k], bs: [n][k] in shared memory.
template <typename T, class BK, int NF>
MK_HD void sl_warp_gemm(const BK& bk, int ws, const typename SlTraits<T>::E* as, int lda,
                           const typename SlTraits<T>::E* bs, int ldb, int kdim, int row0,
                           SlFragC<typename SlTraits<T>::A> (&acc)[BK::kLanes][NF]) {
  using Tr = SlTraits<T>;
  using A = typename Tr::A;
  if constexpr (Tr::kMma) {
    for (int k0 = 0; k0 < kdim; k0 += 16) {
      SlFragA fa[BK::kLanes];
      MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) fa[l] = sl_load_a(as, lda, row0, k0, bk.lane(ws, l));
      MK_UNROLL for (int f = 0; f < NF; ++f) {
        SlFragB fb[BK::kLanes];
        SlFragC<float> fc[BK::kLanes];
        MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
          fb[l] = sl_load_b(bs, ldb, 8 * f, k0, bk.lane(ws, l));
          fc[l] = acc[l][f];
        }
        BK::template mma<T>(fc, fa, fb);
        MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) acc[l][f] = fc[l];
      }
    }
  } else {
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
      const int lane = bk.lane(ws, l);
      MK_UNROLL for (int f = 0; f < NF; ++f)
        MK_UNROLL for (int e = 0; e < 4; ++e) {
          const typename Tr::E* ar = as + (row0 + sl_frag_row(lane, e)) * lda;
          const typename Tr::E* br = bs + (8 * f + sl_frag_col(lane, e)) * ldb;
          A sum = acc[l][f].v[e];
          for (int k = 0; k < kdim; ++k) sum += Tr::to_acc(ar[k]) * Tr::to_acc(br[k]);
          acc[l][f].v[e] = sum;
        }
    }
  }
}

// Kernel arguments: the rows of a (the walked side) against the rows of b.
struct SlArgs {
  const void* a = nullptr;
  const void* b = nullptr;
  int64_t na = 0, nb = 0, d = 0;
  int64_t sa0 = 0, sa1 = 0, sb0 = 0, sb1 = 0;
  double scale = 1, bias = 0, c = 1;
  bool symmetric = false;
  SlPositives pos;
  bool vec_a = false, vec_b = false;  // rows of a / b stage 16 bytes at a time (sl_vec_ok)
  void* out_a = nullptr;  // backward: d(a) rows, strides so_a
  int64_t soa0 = 0, soa1 = 0;
  void* out_b = nullptr;  // symmetric backward: d(b) for the same rows
  int64_t sob0 = 0, sob1 = 0;
  double* part = nullptr;  // forward: [row block][split]; backward: [row block][2] (d chunk 0) or null
  int64_t splits = 1;
};

// Finishing block: out[k] = mul[k] * sum_i part[i * stride + k] for k < nsums, summed in a fixed order.
struct SlFinish {
  const double* part = nullptr;
  int64_t count = 0;
  int stride = 1, nsums = 1;
  double* out[2] = {nullptr, nullptr};
  double mul[2] = {1, 1};
};

MK_HD int64_t sl_blocks(int64_t n) { return (n + kSlTile - 1) / kSlTile; }

// Column splits of the forward: enough blocks to fill a large GPU, chosen from the sizes only so the
// summation order (and the bits) do not depend on the device.
inline int64_t sl_fwd_splits(int64_t n, int64_t m) {
  const int64_t nblk = sl_blocks(n), mblk = sl_blocks(m);
  const int64_t want = (1024 + nblk - 1) / nblk;
  return want < 1 ? 1 : (want > mblk ? mblk : want);
}

inline size_t sl_cuda_fwd_workspace_bytes(const SigmoidLossParams& p) {
  return static_cast<size_t>(sl_blocks(p.n) * sl_fwd_splits(p.n, p.m)) * sizeof(double);
}
inline size_t sl_cuda_bwd_workspace_bytes(const SigmoidLossParams& p) {
  return static_cast<size_t>(2 * sl_blocks(p.n)) * sizeof(double);
}

// Shared-memory layout of one block (element offsets of E, then the reduction doubles).
template <typename T>
struct SlSmem {
  using Tr = SlTraits<T>;
  using E = typename Tr::E;
  static constexpr int ldk = Tr::KC + kSlPad;      // logits-GEMM tiles [row][k]
  static constexpr int ldn = kSlTile + kSlPad;     // G [row][col] and the transposed d chunk [dd][col]
  static constexpr size_t tile = size_t(kSlTile) * ldk;
  static constexpr size_t xs = 0, ys = tile, xs2 = 2 * tile, ys2 = 3 * tile;  // xs2, ys2: symmetric only
  static constexpr size_t gs = 4 * tile;
  static constexpr size_t bt = gs + size_t(kSlTile) * ldn;
  static constexpr size_t bt2 = bt + size_t(Tr::DCS) * ldn;  // symmetric only
  static constexpr size_t fwd_elems = 4 * tile;
  static constexpr size_t bwd_elems = bt + size_t(Tr::DC > 2 * Tr::DCS ? Tr::DC : 2 * Tr::DCS) * ldn;
  static constexpr size_t round16(size_t b) { return (b + 15) / 16 * 16; }
  static constexpr size_t fwd_bytes = round16(fwd_elems * sizeof(E)) + 2 * kSlThreads * sizeof(double);
  static constexpr size_t bwd_bytes = round16(bwd_elems * sizeof(E)) + 2 * kSlThreads * sizeof(double);
  MK_HD static double* red(unsigned char* smem, bool backward) {
    return reinterpret_cast<double*>(smem + round16((backward ? bwd_elems : fwd_elems) * sizeof(E)));
  }
};

// 16 bytes from global to shared memory (both 16-byte aligned)
MK_HD void sl_copy16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__)
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
#else
  memcpy(dst, src, 16);
#endif
}

// Whether rows of src (row stride s0 elements, unit column stride) can be staged 16 bytes at a time.
template <typename T>
inline bool sl_vec_ok(const void* src, int64_t s0, int64_t s1) {
  return s1 == 1 && reinterpret_cast<uintptr_t>(src) % 16 == 0 && (s0 * int64_t(sizeof(T))) % 16 == 0;
}

// Stage rows r0.. (rows x cols tile, [r][k] with ld) of src (n rows, d cols, strides s0, s1) from
// column k0: zero outside. One thread's share (thread tid of kSlThreads). vec (sl_vec_ok): 16-byte
// copies where a whole vector is inside the rows and d (k0, cols and the row pitch ld keep them aligned).
template <typename T>
MK_HD void sl_stage_rows(int tid, const T* src, int64_t n, int64_t d, int64_t s0, int64_t s1, int64_t r0,
                            int64_t k0, int cols, typename SlTraits<T>::E* dst, int ld, bool vec) {
  using E = typename SlTraits<T>::E;
  if (vec) {
    constexpr int V = 16 / int(sizeof(T));
    const int per_row = cols / V;
    for (int e = tid; e < kSlTile * per_row; e += kSlThreads) {
      const int r = e / per_row, k = (e - r * per_row) * V;
      const int64_t row = r0 + r, kk = k0 + k;
      E* o = dst + r * ld + k;
      if (row < n && kk + V <= d) {
        sl_copy16(o, src + row * s0 + kk);
      } else {
        for (int v = 0; v < V; ++v) o[v] = (row < n && kk + v < d) ? SlTraits<T>::load(src + row * s0 + kk + v) : E(0);
      }
    }
    return;
  }
  for (int e = tid; e < kSlTile * cols; e += kSlThreads) {
    const int r = e / cols, k = e - r * cols;
    const int64_t row = r0 + r, kk = k0 + k;
    dst[r * ld + k] = (row < n && kk < d) ? SlTraits<T>::load(src + row * s0 + kk * s1) : E(0);
  }
}

// Stage the transposed d chunk: dst[dd][j] = src[r0 + j][k0 + dd] for dd < cols, j < 64 (zero outside).
template <typename T>
MK_HD void sl_stage_cols(int tid, const T* src, int64_t n, int64_t d, int64_t s0, int64_t s1, int64_t r0,
                            int64_t k0, int cols, typename SlTraits<T>::E* dst, int ld) {
  using E = typename SlTraits<T>::E;
  for (int e = tid; e < kSlTile * cols; e += kSlThreads) {
    const int j = e / cols, dd = e - j * cols;
    const int64_t row = r0 + j, kk = k0 + dd;
    dst[dd * ld + j] = (row < n && kk < d) ? SlTraits<T>::load(src + row * s0 + kk * s1) : E(0);
  }
}

// Fixed-order block reduction of red[0 .. kSlThreads) (and red[kSlThreads ..) when two): a tree
// with the same shape on every run. Leaves the sums in red[0] (and red[kSlThreads]).
template <class BK>
MK_HD void sl_block_reduce(const BK& bk, double* red, int nsums) {
  block_tree_sum(bk, red, kSlThreads, nsums, kSlThreads);
}

// S tile of rows i0.. (of a) against rows j0.. (of b) into acc (and acc2 = b_I . a_J for the symmetric
// variant): the k loop over d, staging KC columns at a time.
template <typename T, bool SYM, class BK>
MK_HD void sl_logits_tile(const BK& bk, const SlArgs& g, int64_t i0, int64_t j0, unsigned char* smem,
                             SlFragC<typename SlTraits<T>::A> (&acc)[BK::kWarps][BK::kLanes][8],
                             SlFragC<typename SlTraits<T>::A> (&acc2)[BK::kWarps][BK::kLanes][8]) {
  using Tr = SlTraits<T>;
  using L = SlSmem<T>;
  using E = typename Tr::E;
  E* s = reinterpret_cast<E*>(smem);
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l)
      MK_UNROLL for (int f = 0; f < 8; ++f)
        MK_UNROLL for (int e = 0; e < 4; ++e) acc[w][l][f].v[e] = acc2[w][l][f].v[e] = 0;
  for (int64_t k0 = 0; k0 < g.d; k0 += Tr::KC) {
    bk.sync();
    for (int t = 0; t < BK::kThreads; ++t) {
      const int tid = bk.thread(t);
      sl_stage_rows<T>(tid, a, g.na, g.d, g.sa0, g.sa1, i0, k0, Tr::KC, s + L::xs, L::ldk, g.vec_a);
      sl_stage_rows<T>(tid, b, g.nb, g.d, g.sb0, g.sb1, j0, k0, Tr::KC, s + L::ys, L::ldk, g.vec_b);
      if (SYM) {
        sl_stage_rows<T>(tid, a, g.na, g.d, g.sa0, g.sa1, j0, k0, Tr::KC, s + L::xs2, L::ldk, g.vec_a);
        sl_stage_rows<T>(tid, b, g.nb, g.d, g.sb0, g.sb1, i0, k0, Tr::KC, s + L::ys2, L::ldk, g.vec_b);
      }
    }
    bk.sync();
    MK_UNROLL for (int w = 0; w < BK::kWarps; ++w) {
      const int row0 = 16 * bk.warp(w);
      sl_warp_gemm<T, BK, 8>(bk, w, s + L::xs, L::ldk, s + L::ys, L::ldk, Tr::KC, row0, acc[w]);
      // symmetric: s2[r][c] = b_{i0 + r} . a_{j0 + c}
      if (SYM) sl_warp_gemm<T, BK, 8>(bk, w, s + L::ys2, L::ldk, s + L::xs2, L::ldk, Tr::KC, row0, acc2[w]);
    }
  }
}

// Forward block (row block ib, column split): the sum of the pair losses of its tiles -> g.part.
template <typename T, bool SYM, class BK>
MK_HD void sl_fwd_block(const BK& bk, const SlArgs& g, int64_t ib, int64_t split, unsigned char* smem) {
  using Tr = SlTraits<T>;
  using A = typename Tr::A;
  using M = SlStdMath<A>;
  const int64_t i0 = ib * kSlTile, mblk = sl_blocks(g.nb);
  const int64_t per = (mblk + g.splits - 1) / g.splits;
  const int64_t jb0 = split * per, jb1 = jb0 + per < mblk ? jb0 + per : mblk;
  const A scale = static_cast<A>(g.scale), bias = static_cast<A>(g.bias);
  SlFragC<A> acc[BK::kWarps][BK::kLanes][8], acc2[BK::kWarps][BK::kLanes][8];
  double total[BK::kWarps][BK::kLanes];
  MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) total[w][l] = 0;
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    const int64_t j0 = jb * kSlTile;
    sl_logits_tile<T, SYM, BK>(bk, g, i0, j0, smem, acc, acc2);
    MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
      MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
        const int lane = bk.lane(w, l), row0 = 16 * bk.warp(w);
        A sum = 0;
        MK_UNROLL for (int f = 0; f < 8; ++f)
          MK_UNROLL for (int e = 0; e < 4; ++e) {
            const int64_t i = i0 + row0 + sl_frag_row(lane, e), j = j0 + 8 * f + sl_frag_col(lane, e);
            if (i >= g.na || j >= g.nb) continue;
            const A s = SYM ? A(0.5) * (acc[w][l][f].v[e] + acc2[w][l][f].v[e]) : acc[w][l][f].v[e];
            sum += sl_pair_loss<M>(scale * s + bias, g.pos(i, j));
          }
        total[w][l] += sum;
      }
  }
  double* red = SlSmem<T>::red(smem, false);
  bk.sync();
  MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) red[32 * bk.warp(w) + bk.lane(w, l)] = total[w][l];
  sl_block_reduce(bk, red, 1);
  for (int t = 0; t < BK::kThreads; ++t)
    if (bk.thread(t) == 0) g.part[ib * g.splits + split] = red[0];
}

// Backward block (row block ib, d chunk dc): d(a)[rows, chunk] = scale c sum_J G_IJ b_J[:, chunk]
// (symmetric: also d(b)[rows, chunk] = scale c sum_J G_s,IJ a_J[:, chunk]); chunk 0 records
// sum dloss and sum dloss * s of its rows in g.part (when set).
template <typename T, bool SYM, class BK>
MK_HD void sl_bwd_block(const BK& bk, const SlArgs& g, int64_t ib, int64_t dc, unsigned char* smem) {
  using Tr = SlTraits<T>;
  using L = SlSmem<T>;
  using A = typename Tr::A;
  using E = typename Tr::E;
  using M = SlStdMath<A>;
  constexpr int DC = sl_dc<T, SYM>(), NF = DC / 8;
  E* s = reinterpret_cast<E*>(smem);
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  const int64_t i0 = ib * kSlTile, d0 = dc * DC, mblk = sl_blocks(g.nb);
  const A scale = static_cast<A>(g.scale), bias = static_cast<A>(g.bias);
  SlFragC<A> acc[BK::kWarps][BK::kLanes][8], acc2[BK::kWarps][BK::kLanes][8];
  SlFragC<A> da[BK::kWarps][BK::kLanes][NF], db[BK::kWarps][BK::kLanes][NF];
  double sums[BK::kWarps][BK::kLanes][2];
  MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
      sums[w][l][0] = sums[w][l][1] = 0;
      MK_UNROLL for (int f = 0; f < NF; ++f)
        MK_UNROLL for (int e = 0; e < 4; ++e) da[w][l][f].v[e] = db[w][l][f].v[e] = 0;
    }
  for (int64_t jb = 0; jb < mblk; ++jb) {
    const int64_t j0 = jb * kSlTile;
    sl_logits_tile<T, SYM, BK>(bk, g, i0, j0, smem, acc, acc2);
    // G (without c) into shared memory in the operand type; zero outside the valid corner
    MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
      MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
        const int lane = bk.lane(w, l), row0 = 16 * bk.warp(w);
        A g1 = 0, g2 = 0;
        MK_UNROLL for (int f = 0; f < 8; ++f)
          MK_UNROLL for (int e = 0; e < 4; ++e) {
            const int r = row0 + sl_frag_row(lane, e), c = 8 * f + sl_frag_col(lane, e);
            const int64_t i = i0 + r, j = j0 + c;
            A v = 0, sv = 0;
            if (i < g.na && j < g.nb) {
              sv = SYM ? A(0.5) * (acc[w][l][f].v[e] + acc2[w][l][f].v[e]) : acc[w][l][f].v[e];
              const A lg = scale * sv + bias;
              const A z = g.pos(i, j) ? A(1) : A(-1);
              if (SYM) {
                const A zt = g.pos(j, i) ? A(1) : A(-1);
                v = sl_pair_dloss_sym<M>(z, zt, lg);
              } else {
                v = sl_pair_dloss<M>(z, lg);
              }
            }
            s[L::gs + r * L::ldn + c] = Tr::from_acc(v);
            g1 += v;
            g2 += v * sv;
          }
        sums[w][l][0] += g1;
        sums[w][l][1] += g2;
      }
    // the d chunk of the column rows, transposed: bt[dd][j] = b[j0 + j][d0 + dd]
    for (int t = 0; t < BK::kThreads; ++t) {
      const int tid = bk.thread(t);
      sl_stage_cols<T>(tid, b, g.nb, g.d, g.sb0, g.sb1, j0, d0, DC, s + L::bt, L::ldn);
      if (SYM) sl_stage_cols<T>(tid, a, g.na, g.d, g.sa0, g.sa1, j0, d0, DC, s + L::bt2, L::ldn);
    }
    bk.sync();
    MK_UNROLL for (int w = 0; w < BK::kWarps; ++w) {
      const int row0 = 16 * bk.warp(w);
      sl_warp_gemm<T, BK, NF>(bk, w, s + L::gs, L::ldn, s + L::bt, L::ldn, kSlTile, row0, da[w]);
      if (SYM) sl_warp_gemm<T, BK, NF>(bk, w, s + L::gs, L::ldn, s + L::bt2, L::ldn, kSlTile, row0, db[w]);
    }
  }
  // store scale * c * acc through the output strides
  const A mul = static_cast<A>(g.scale * g.c);
  MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
      const int lane = bk.lane(w, l), row0 = 16 * bk.warp(w);
      MK_UNROLL for (int f = 0; f < NF; ++f)
        MK_UNROLL for (int e = 0; e < 4; ++e) {
          const int64_t i = i0 + row0 + sl_frag_row(lane, e), k = d0 + 8 * f + sl_frag_col(lane, e);
          if (i >= g.na || k >= g.d) continue;
          Io<T>::store(static_cast<T*>(g.out_a) + i * g.soa0 + k * g.soa1, mul * da[w][l][f].v[e]);
          if (SYM) Io<T>::store(static_cast<T*>(g.out_b) + i * g.sob0 + k * g.sob1, mul * db[w][l][f].v[e]);
        }
    }
  if (g.part == nullptr || dc != 0) return;
  double* red = SlSmem<T>::red(smem, true);
  bk.sync();
  MK_UNROLL for (int w = 0; w < BK::kWarps; ++w)
    MK_UNROLL for (int l = 0; l < BK::kLanes; ++l) {
      const int tid = 32 * bk.warp(w) + bk.lane(w, l);
      red[tid] = sums[w][l][0];
      red[kSlThreads + tid] = sums[w][l][1];
    }
  sl_block_reduce(bk, red, 2);
  for (int t = 0; t < BK::kThreads; ++t)
    if (bk.thread(t) == 0) {
      g.part[2 * ib] = red[0];
      g.part[2 * ib + 1] = red[kSlThreads];
    }
}

// Finishing block: each thread sums a fixed strided share in order, then the fixed tree.
template <class BK>
MK_HD void sl_finish_block(const BK& bk, const SlFinish& f, double* red) {
  for (int t = 0; t < BK::kThreads; ++t) {
    const int tid = bk.thread(t);
    for (int k = 0; k < f.nsums; ++k) {
      double acc = 0;
      for (int64_t i = tid; i < f.count; i += kSlThreads) acc += f.part[i * f.stride + k];
      red[k * kSlThreads + tid] = acc;
    }
  }
  sl_block_reduce(bk, red, f.nsums);
  for (int t = 0; t < BK::kThreads; ++t)
    if (bk.thread(t) == 0)
      for (int k = 0; k < f.nsums; ++k)
        if (f.out[k]) *f.out[k] = f.mul[k] * red[k * kSlThreads];
}

// --- the kernels, as the executors launch them (medkernels/detail/exec.h) -----------------------------
// Block programs of kSlThreads threads. The executor's Block type BK adds to exec.h's block the
// warp slots (BK::kThreads, kWarps, kLanes, warp(w), lane(w, l)) and BK::mma<T>: the .cuh's
// device block and the tests' host block.
template <typename T, bool SYM>
struct SlFwdProgram {
  static constexpr const char* kName = "fwd";
  SlArgs g;
  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char* smem) const {
    sl_fwd_block<T, SYM>(bk, g, pos.x, pos.y, smem);
  }
};

template <typename T, bool SYM>
struct SlBwdProgram {
  static constexpr const char* kName = "bwd";
  SlArgs g;
  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char* smem) const {
    sl_bwd_block<T, SYM>(bk, g, pos.x, pos.y, smem);
  }
};

struct SlFinishProgram {
  static constexpr const char* kName = "finish";
  static constexpr size_t kSmemBytes = 2 * kSlThreads * sizeof(double);
  SlFinish f;
  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos&, unsigned char* smem) const {
    sl_finish_block(bk, f, reinterpret_cast<double*>(smem));
  }
};

// --- launch plan (the .cuh launches it; the tests' emulation runs it on the host) -----------------
template <typename T, bool SYM, class X>
int sl_fwd_launch(X& ex, const SlArgs& g, int64_t gx, int64_t gy) {
  return ex.template blocks<kSlThreads>(SlFwdProgram<T, SYM>{g}, gx, gy, kSlThreads, SlSmem<T>::fwd_bytes);
}

template <typename T, bool SYM, class X>
int sl_bwd_launch(X& ex, const SlArgs& g, int64_t gx, int64_t gy) {
  return ex.template blocks<kSlThreads>(SlBwdProgram<T, SYM>{g}, gx, gy, kSlThreads, SlSmem<T>::bwd_bytes);
}

template <class X>
int sl_finish_launch(X& ex, const SlFinish& f) {
  return ex.template blocks<kSlThreads>(SlFinishProgram{f}, 1, 1, kSlThreads, SlFinishProgram::kSmemBytes);
}

template <typename T>
SlArgs sl_args(const SigmoidLossParams& p, bool swap) {
  SlArgs g;
  g.a = swap ? p.y : p.x;
  g.b = swap ? p.x : p.y;
  g.na = swap ? p.m : p.n;
  g.nb = swap ? p.n : p.m;
  g.d = p.d;
  const int64_t* sa = swap ? p.y_strides : p.x_strides;
  const int64_t* sb = swap ? p.x_strides : p.y_strides;
  g.sa0 = sa[0]; g.sa1 = sa[1]; g.sb0 = sb[0]; g.sb1 = sb[1];
  g.scale = p.logit_scale;
  g.bias = p.bias;
  g.symmetric = p.symmetric;
  g.pos = sl_positives(p, swap);
  g.vec_a = sl_vec_ok<T>(g.a, g.sa0, g.sa1);
  g.vec_b = sl_vec_ok<T>(g.b, g.sb0, g.sb1);
  return g;
}

template <typename T, class X>
int sl_fwd_run(const SigmoidLossParams& p, X& ex) {
  SlArgs g = sl_args<T>(p, false);
  g.splits = sl_fwd_splits(p.n, p.m);
  g.part = static_cast<double*>(p.workspace);
  const int64_t nblk = sl_blocks(p.n);
  int rc = p.symmetric ? sl_fwd_launch<T, true>(ex, g, nblk, g.splits) : sl_fwd_launch<T, false>(ex, g, nblk, g.splits);
  if (rc) return rc;
  SlFinish f;
  f.part = g.part;
  f.count = nblk * g.splits;
  f.out[0] = p.loss;
  return sl_finish_launch(ex, f);
}

template <typename T, class X>
int sl_bwd_run(const SigmoidLossBwdParams& bp, X& ex) {
  const SigmoidLossParams& p = bp.fwd;
  const int64_t dc = p.symmetric ? sl_dc<T, true>() : sl_dc<T, false>();
  const int64_t dchunks = (p.d + dc - 1) / dc;
  SlArgs g = sl_args<T>(p, false);
  g.c = bp.grad_scale;
  g.part = static_cast<double*>(p.workspace);
  g.out_a = bp.grad_x;
  g.soa0 = bp.grad_x_strides[0]; g.soa1 = bp.grad_x_strides[1];
  if (p.symmetric) {
    g.out_b = bp.grad_y;
    g.sob0 = bp.grad_y_strides[0]; g.sob1 = bp.grad_y_strides[1];
  }
  int rc = p.symmetric ? sl_bwd_launch<T, true>(ex, g, sl_blocks(p.n), dchunks)
                       : sl_bwd_launch<T, false>(ex, g, sl_blocks(p.n), dchunks);
  if (rc) return rc;
  if (!p.symmetric) {
    SlArgs h = sl_args<T>(p, true);
    h.c = bp.grad_scale;
    h.out_a = bp.grad_y;
    h.soa0 = bp.grad_y_strides[0]; h.soa1 = bp.grad_y_strides[1];
    rc = sl_bwd_launch<T, false>(ex, h, sl_blocks(p.m), dchunks);
    if (rc) return rc;
  }
  SlFinish f;
  f.part = g.part;
  f.count = sl_blocks(p.n);
  f.stride = 2;
  f.nsums = 2;
  f.out[0] = bp.grad_bias;
  f.out[1] = bp.grad_t_prime;
  f.mul[0] = bp.grad_scale;
  f.mul[1] = bp.grad_scale * p.logit_scale;
  return sl_finish_launch(ex, f);
}

}  // namespace detail
}  // namespace medkernels
