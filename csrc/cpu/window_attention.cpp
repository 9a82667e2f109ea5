// (Shifted) window attention in 3D on the CPU (OpenMP). See medkernels/window_attention.h.
//
// Forward: one task per (direction, batch, window, head). The window's q, k, v are gathered
// from the strided volumes into small contiguous buffers (K^T so the logits of four queries are
// a register tile over keys, V row-major so P V is a register tile over the head dimension);
// each query's logits row gets scale, bias, shift mask, padding mask, max, exp and sum in one
// vectorised pass, and the output goes straight back to the token's place. The (heads, N, N)
// bias is gathered from the table once per call, in parallel.
// Backward: one task per (direction, chunk of windows, head), the chunk's windows in order:
// P is recomputed from the saved log-sum-exp, dS = P (dO V^T - rowsum(dO O)); dq per query,
// dk, dv per key, and dS summed into the task's own (N, N) slice of the workspace. The slices
// and the padding-token gradients are then summed in a fixed order: the bias-table gradient is
// the same bits on every run. The chunk count depends on the sizes only, never on threads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/detail/window_attention_kernels.h"
#include "medkernels/window_attention.h"
#include "vec_math.h"

// Every O(N^2) and O(N^2 E) loop is one of a few row primitives with fixed lanes (the same
// summation order on every run), built per x86 ISA level (AVX-512, AVX2+FMA, baseline) by GCC
// function multiversioning (MK_CPU_VERSIONS, vec_math.h).

namespace medkernels {
namespace cpu {
namespace wa_detail {

// Row lengths: key rows (ld) are padded to a multiple of KEY_ALIGN (keys past N have zero q.k
// and a -inf padding mask), head rows (Ep) to a multiple of HEAD_ALIGN with zero channels.
// Query blocks have 4 rows.
constexpr int64_t KEY_ALIGN = 32, HEAD_ALIGN = 16;

// One 64-byte vector (GCC vector extensions: a zmm register in the AVX-512 version, two ymm or
// four xmm in the others), so the accumulators of every tile below stay in registers.
template <typename A>
struct Vec;
template <>
struct Vec<float> {
  typedef float T __attribute__((vector_size(64)));
  typedef float U __attribute__((vector_size(64), aligned(4)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int L = 16;
};
template <>
struct Vec<double> {
  typedef double T __attribute__((vector_size(64)));
  typedef double U __attribute__((vector_size(64), aligned(8)));
  static constexpr int L = 8;
};
template <typename A>
__attribute__((always_inline)) inline typename Vec<A>::T vload(const A* p) {
  return *reinterpret_cast<const typename Vec<A>::U*>(p);
}
template <typename A>
__attribute__((always_inline)) inline void vstore(A* p, typename Vec<A>::T v) {
  *reinterpret_cast<typename Vec<A>::U*>(p) = v;
}
template <typename A>
__attribute__((always_inline)) inline typename Vec<A>::T vsplat(A x) {
  typename Vec<A>::T v = {};
  return v + x;
}

// exp(t) in float on a vector: vec_math.h (0 below -87.3, so masked logits, -inf included,
// vanish). Doubles use std::exp lane by lane (the float64 test path).
__attribute__((always_inline)) inline Vec<float>::T vexp(Vec<float>::T t) { return vmath::exp(t); }
__attribute__((always_inline)) inline Vec<double>::T vexp(Vec<double>::T t) {
  for (int l = 0; l < 8; ++l) t[l] = std::exp(t[l]);
  return t;
}

// s[r][j] = sum_e x[r][e] * M[e][j] for 4 query rows r and j < np (np a multiple of 2 L; rows
// of s and M: ld): a 4 x 2L tile of 8 register accumulators while the head dimension is summed.
template <typename A>
__attribute__((always_inline)) inline void gemv4_impl(A* __restrict s, int64_t ld, const A* __restrict x, int64_t E,
                                                      const A* __restrict M, int64_t np) {
  using V = typename Vec<A>::T;
  constexpr int L = Vec<A>::L;
  for (int64_t j0 = 0; j0 < np; j0 += 2 * L) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    for (int64_t e = 0; e < E; ++e) {
      const V m0 = vload(M + e * ld + j0), m1 = vload(M + e * ld + j0 + L);
      const A x0 = x[e], x1 = x[E + e], x2 = x[2 * E + e], x3 = x[3 * E + e];
      a0 += x0 * m0, b0 += x0 * m1;
      a1 += x1 * m0, b1 += x1 * m1;
      a2 += x2 * m0, b2 += x2 * m1;
      a3 += x3 * m0, b3 += x3 * m1;
    }
    vstore(s + j0, a0), vstore(s + j0 + L, b0);
    vstore(s + ld + j0, a1), vstore(s + ld + j0 + L, b1);
    vstore(s + 2 * ld + j0, a2), vstore(s + 2 * ld + j0 + L, b2);
    vstore(s + 3 * ld + j0, a3), vstore(s + 3 * ld + j0 + L, b3);
  }
}

// o[r][e] = sum_j P[r][j] * V[j][e] for 4 rows r and e < Ep (a multiple of L), j < n in a fixed
// order (even and odd keys in two accumulator sets, added at the end): 8 register accumulators,
// no horizontal sums.
template <typename A>
__attribute__((always_inline)) inline void pv4_impl(A* __restrict o, const A* __restrict P, int64_t ld,
                                                    const A* __restrict Vm, int64_t Ep, int64_t n) {
  using V = typename Vec<A>::T;
  constexpr int L = Vec<A>::L;
  for (int64_t e0 = 0; e0 < Ep; e0 += L) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
      const V v = vload(Vm + j * Ep + e0), w = vload(Vm + (j + 1) * Ep + e0);
      a0 += P[j] * v, b0 += P[j + 1] * w;
      a1 += P[ld + j] * v, b1 += P[ld + j + 1] * w;
      a2 += P[2 * ld + j] * v, b2 += P[2 * ld + j + 1] * w;
      a3 += P[3 * ld + j] * v, b3 += P[3 * ld + j + 1] * w;
    }
    if (j < n) {
      const V v = vload(Vm + j * Ep + e0);
      a0 += P[j] * v, a1 += P[ld + j] * v, a2 += P[2 * ld + j] * v, a3 += P[3 * ld + j] * v;
    }
    vstore(o + e0, a0 + b0), vstore(o + Ep + e0, a1 + b1);
    vstore(o + 2 * Ep + e0, a2 + b2), vstore(o + 3 * Ep + e0, a3 + b3);
  }
}

// Y[e][j] += sum_r a[r][e] X[r][j] over 16 rows r (a: 16 x E row-major, rows of X and Y: ld),
// j < np (a multiple of 2 L): tiles of 4 e x 2 vectors (8 register accumulators), each Y
// element summed over r in order and added to Y once per 16 rows.
template <typename A>
__attribute__((always_inline)) inline void gemm16_impl(A* __restrict Y, int64_t ld, const A* __restrict a, int64_t E,
                                                       const A* __restrict X, int64_t np) {
  using V = typename Vec<A>::T;
  constexpr int L = Vec<A>::L;
  for (int64_t j = 0; j < np; j += 2 * L) {
    int64_t e = 0;
    for (; e + 4 <= E; e += 4) {
      V y00 = {}, y01 = {}, y10 = {}, y11 = {}, y20 = {}, y21 = {}, y30 = {}, y31 = {};
      for (int r = 0; r < 16; ++r) {
        const V x0 = vload(X + r * ld + j), x1 = vload(X + r * ld + j + L);
        const A* ar = a + r * E + e;
        y00 += ar[0] * x0, y01 += ar[0] * x1;
        y10 += ar[1] * x0, y11 += ar[1] * x1;
        y20 += ar[2] * x0, y21 += ar[2] * x1;
        y30 += ar[3] * x0, y31 += ar[3] * x1;
      }
      A* y = Y + e * ld + j;
      vstore(y, vload(y) + y00), vstore(y + L, vload(y + L) + y01);
      vstore(y + ld, vload(y + ld) + y10), vstore(y + ld + L, vload(y + ld + L) + y11);
      vstore(y + 2 * ld, vload(y + 2 * ld) + y20), vstore(y + 2 * ld + L, vload(y + 2 * ld + L) + y21);
      vstore(y + 3 * ld, vload(y + 3 * ld) + y30), vstore(y + 3 * ld + L, vload(y + 3 * ld + L) + y31);
    }
    for (; e < E; ++e) {
      V y0 = {}, y1 = {};
      for (int r = 0; r < 16; ++r) {
        y0 += a[r * E + e] * vload(X + r * ld + j);
        y1 += a[r * E + e] * vload(X + r * ld + j + L);
      }
      A* y = Y + e * ld + j;
      vstore(y, vload(y) + y0), vstore(y + L, vload(y + L) + y1);
    }
  }
}

// What one logits row needs besides q.k: the bias row (zeros without a table), per key the
// shift region id and the padding mask (0, or -inf for masked padding and keys past N), the
// query's region and the mask value (0 when unshifted). Rows are ld long (a multiple of L).
template <typename A>
struct RowMask {
  const A* bias;
  const A* region;
  const A* kmask;
  A query_region, mask_value, scale;
};

// s[j] = q.k_j * scale + bias[j] + (region differs ? mask_value : 0) + kmask[j]
template <typename A>
__attribute__((always_inline)) inline typename Vec<A>::T logits_at(const A* s, int64_t j, const RowMask<A>& m) {
  using V = typename Vec<A>::T;
  const V x = vload(s + j) * m.scale + vload(m.bias + j);
  const V reg = vload(m.region + j);
  return x + (reg != m.query_region ? vsplat(m.mask_value) : vsplat(A(0))) + vload(m.kmask + j);
}

// Max (or sum) of a vector's lanes by halving (log2 L steps, a fixed order): short rows (27
// keys at Swin UNETR's last stage) would otherwise spend most of their time in a serial chain.
// In registers where the compiler has __builtin_shufflevector (GCC >= 12, clang): lane l < w
// gets op(lane l, lane l + w), the same operations in the same order as the array loop below,
// without its store-to-load round trips through the stack (a fifth of the forward at 3^3).
template <bool SUM, typename V>
__attribute__((always_inline)) inline V halve_op(V a, V b) {
  if constexpr (SUM) {
    return a + b;
  } else {
    return a > b ? a : b;
  }
}
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define MK_WA_SHUFFLE 1
#endif
#endif
#ifdef MK_WA_SHUFFLE
template <bool SUM>
__attribute__((always_inline)) inline float hreduce_shuffle(Vec<float>::T v) {
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7));
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1));
  return v[0];
}
template <bool SUM>
__attribute__((always_inline)) inline double hreduce_shuffle(Vec<double>::T v) {
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7));
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3));
  v = halve_op<SUM>(v, __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1));
  return v[0];
}
#endif

template <typename A, bool SUM>
__attribute__((always_inline)) inline A hreduce(typename Vec<A>::T v) {
#ifdef MK_WA_SHUFFLE
  return hreduce_shuffle<SUM>(v);
#else
  constexpr int L = Vec<A>::L;
  A a[L];
  std::memcpy(a, &v, sizeof(a));
  for (int w = L / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) a[l] = SUM ? a[l] + a[l + w] : (a[l] > a[l + w] ? a[l] : a[l + w]);
  return a[0];
#endif
}

// Forward row (ld entries): P = exp(logits - max) in place; *mx = max, *sum = sum of P, both
// over fixed lanes.
template <typename A>
__attribute__((always_inline)) inline void softmax_row_impl(A* __restrict s, int64_t ld, const RowMask<A>& m, A* mx,
                                                            A* sum) {
  using V = typename Vec<A>::T;
  constexpr int L = Vec<A>::L;
  V vm = vsplat(-std::numeric_limits<A>::infinity());
  for (int64_t j = 0; j < ld; j += L) {
    const V x = logits_at(s, j, m);
    vstore(s + j, x);
    vm = vm > x ? vm : x;
  }
  const A r = hreduce<A, false>(vm);
  V acc = {};
  for (int64_t j = 0; j < ld; j += L) {
    const V p = vexp(vload(s + j) - r);
    vstore(s + j, p);
    acc += p;
  }
  *mx = r, *sum = hreduce<A, true>(acc);
}

// Backward row (ld entries): P = exp(logits - lse) into s, dS = P (dP - delta) into d, and
// pair[j] += dS[j] for j < n (if pair).
template <typename A>
__attribute__((always_inline)) inline void dsoftmax_row_impl(A* __restrict s, A* __restrict d, int64_t ld, int64_t n,
                                                             const RowMask<A>& m, A lse, A delta,
                                                             A* __restrict pair) {
  using V = typename Vec<A>::T;
  constexpr int L = Vec<A>::L;
  for (int64_t j = 0; j < ld; j += L) {
    const V p = vexp(logits_at(s, j, m) - lse);
    vstore(s + j, p);
    vstore(d + j, p * (vload(d + j) - delta));
  }
  if (pair)
    for (int64_t j = 0; j < n; ++j) pair[j] += d[j];
}

#define MK_WA_DEFINE(ATTR)                                                                                        \
  ATTR void gemv4(float* s, int64_t ld, const float* x, int64_t E, const float* M, int64_t np) {                  \
    gemv4_impl<float>(s, ld, x, E, M, np);                                                                        \
  }                                                                                                               \
  ATTR void gemv4(double* s, int64_t ld, const double* x, int64_t E, const double* M, int64_t np) {               \
    gemv4_impl<double>(s, ld, x, E, M, np);                                                                       \
  }                                                                                                               \
  ATTR void pv4(float* o, const float* P, int64_t ld, const float* V, int64_t Ep, int64_t n) {                    \
    pv4_impl<float>(o, P, ld, V, Ep, n);                                                                          \
  }                                                                                                               \
  ATTR void pv4(double* o, const double* P, int64_t ld, const double* V, int64_t Ep, int64_t n) {                 \
    pv4_impl<double>(o, P, ld, V, Ep, n);                                                                         \
  }                                                                                                               \
  ATTR void gemm16(float* Y, int64_t ld, const float* a, int64_t E, const float* X, int64_t np) {                \
    gemm16_impl<float>(Y, ld, a, E, X, np);                                                                       \
  }                                                                                                               \
  ATTR void gemm16(double* Y, int64_t ld, const double* a, int64_t E, const double* X, int64_t np) {             \
    gemm16_impl<double>(Y, ld, a, E, X, np);                                                                      \
  }                                                                                                               \
  ATTR void softmax_row(float* s, int64_t ld, const RowMask<float>& m, float* mx, float* sum) {                   \
    softmax_row_impl<float>(s, ld, m, mx, sum);                                                                   \
  }                                                                                                               \
  ATTR void softmax_row(double* s, int64_t ld, const RowMask<double>& m, double* mx, double* sum) {               \
    softmax_row_impl<double>(s, ld, m, mx, sum);                                                                  \
  }                                                                                                               \
  ATTR void dsoftmax_row(float* s, float* d, int64_t ld, int64_t n, const RowMask<float>& m, float lse,           \
                         float delta, float* pair) {                                                              \
    dsoftmax_row_impl<float>(s, d, ld, n, m, lse, delta, pair);                                                   \
  }                                                                                                               \
  ATTR void dsoftmax_row(double* s, double* d, int64_t ld, int64_t n, const RowMask<double>& m, double lse,       \
                         double delta, double* pair) {                                                            \
    dsoftmax_row_impl<double>(s, d, ld, n, m, lse, delta, pair);                                                  \
  }

MK_CPU_VERSIONS(MK_WA_DEFINE)
#undef MK_WA_DEFINE

}  // namespace wa_detail
}  // namespace cpu

Status window_attention_check(const WindowAttentionParams& p) {
  MK_CHECK_ARG(p.directions == 1 || p.directions == 2,
               "window_attention: directions must be 1 or 2, got " + std::to_string(p.directions));
  MK_CHECK_ARG(p.q0 && p.k0 && p.v0 && p.o0 && p.lse, "window_attention: q, k, v, out and lse must not be null");
  MK_CHECK_ARG(p.directions == 1 || (p.q1 && p.k1 && p.v1 && p.o1),
               "window_attention: direction 1 needs q1, k1, v1 and o1");
  MK_CHECK_ARG(p.batch >= 1 && p.heads >= 1 && p.head_dim >= 1,
               "window_attention: batch, heads and head_dim must be >= 1");
  for (int a = 0; a < 3; ++a) {
    MK_CHECK_ARG(p.size[a] >= 1, "window_attention: sizes must be >= 1");
    MK_CHECK_ARG(p.window[a] >= 1 && p.eff_window[a] >= 1 && p.eff_window[a] <= p.window[a],
                 "window_attention: need 1 <= eff_window <= window on every axis");
    MK_CHECK_ARG(p.shift[a] >= 0 && p.shift[a] < p.eff_window[a],
                 "window_attention: shift must be in [0, eff_window) on every axis");
    MK_CHECK_ARG(p.padded[a] >= p.size[a] && p.padded[a] % p.eff_window[a] == 0 &&
                     p.padded[a] - p.size[a] < p.eff_window[a],
                 "window_attention: padded must be size rounded up to a multiple of eff_window");
    // A table holds (2 wd - 1)(2 wh - 1)(2 ww - 1) rows: past 2^20 a side it cannot exist, and
    // the bias index math (64-bit) would wrap.
    MK_CHECK_ARG(!p.table || p.window[a] <= (int64_t(1) << 20),
                 "window_attention: with rel_bias_table, window must be <= 2^20 on every axis, got " +
                     std::to_string(p.window[a]));
  }
  return Status::kSuccess;
}


namespace {

using cpu::wa_detail::HEAD_ALIGN;
using cpu::wa_detail::KEY_ALIGN;
using cpu::wa_detail::RowMask;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Below about 2^20 multiply-adds (the forward of Swin UNETR's last stage, one 3^3 window of 24 heads)
// one thread finishes before a team is woken up, and a loaded machine makes the team's barriers worse.
inline bool worth_threads(int64_t tasks, int64_t N, int64_t E) { return tasks * N * N * E >= (int64_t(1) << 20); }

// Where each window-local token of each window lives and its shift region.
struct Geometry {
  int64_t N = 0, nW = 0;
  std::vector<int64_t> coord;  // (nW, N): ((od * H + oh) * W + ow), or -1 for a padding token
  std::vector<int32_t> od, oh, ow;
  std::vector<uint8_t> region;  // (nW, N) shift region id
};

Geometry make_geometry(const WindowAttentionParams& p) {
  Geometry g;
  const int64_t WD = p.eff_window[0], WH = p.eff_window[1], WW = p.eff_window[2];
  const int64_t nwd = p.padded[0] / WD, nwh = p.padded[1] / WH, nww = p.padded[2] / WW;
  g.N = WD * WH * WW;
  g.nW = nwd * nwh * nww;
  const int64_t total = g.nW * g.N;
  g.coord.resize(total);
  g.od.resize(total);
  g.oh.resize(total);
  g.ow.resize(total);
  g.region.resize(total);
  auto region_of = [&](int a, int64_t x) -> int {
    if (p.shift[a] == 0) return 0;  // MONAI: an unshifted axis is one region
    return int(x >= p.padded[a] - p.eff_window[a]) + int(x >= p.padded[a] - p.shift[a]);
  };
  for (int64_t w = 0; w < g.nW; ++w) {
    const int64_t wd0 = (w / (nwh * nww)) * WD, wh0 = ((w / nww) % nwh) * WH, ww0 = (w % nww) * WW;
    for (int64_t t = 0; t < g.N; ++t) {
      const int64_t xd = wd0 + t / (WH * WW), xh = wh0 + (t / WW) % WH, xw = ww0 + t % WW;
      const int64_t d = (xd + p.shift[0]) % p.padded[0];
      const int64_t h = (xh + p.shift[1]) % p.padded[1];
      const int64_t x = (xw + p.shift[2]) % p.padded[2];
      const bool valid = d < p.size[0] && h < p.size[1] && x < p.size[2];
      const int64_t i = w * g.N + t;
      g.coord[i] = valid ? (d * p.size[1] + h) * p.size[2] + x : -1;
      g.od[i] = int32_t(d);
      g.oh[i] = int32_t(h);
      g.ow[i] = int32_t(x);
      g.region[i] = uint8_t(region_of(0, xd) * 9 + region_of(1, xh) * 3 + region_of(2, xw));
    }
  }
  return g;
}

inline int64_t offset(const int64_t* s, int64_t b, const Geometry& g, int64_t i, int64_t h) {
  return b * s[0] + g.od[i] * s[1] + g.oh[i] * s[2] + g.ow[i] * s[3] + h * s[4];
}

// The (heads, N, ld) bias of every query row (Swin's index of the configured window on flat
// token indices, index[:n, :n] when clamped), gathered from the table inside the caller's
// parallel region (an omp for with its barrier); zeros without a table.
template <typename T, typename A>
void gather_bias(const WindowAttentionParams& p, int64_t N, int64_t ld, A* out) {
  const int64_t HEADS = p.heads, CWH = p.window[1], CWW = p.window[2];
  const int64_t sd = (2 * CWH - 1) * (2 * CWW - 1), sh = 2 * CWW - 1;
  const int64_t base = (p.window[0] - 1) * sd + (CWH - 1) * sh + (CWW - 1);
  const T* table = static_cast<const T*>(p.table);
  // the key's part of the index, subtracted from the query's (in table elements). Only with a
  // table: without one the configured window may be huge (clamped to the volume), and CWH * CWW
  // would wrap to 0 (SIGFPE at window 2^33).
  std::vector<int64_t> key(table ? N : 0);
  for (int64_t t = 0; t < int64_t(key.size()); ++t)
    key[t] = ((t / (CWH * CWW)) * sd + ((t / CWW) % CWH) * sh + t % CWW) * HEADS;
#pragma omp for schedule(static)
  for (int64_t hi = 0; hi < HEADS * N; ++hi) {
    const int64_t h = hi / N, i = hi % N;
    A* row = out + hi * ld;
    if (table) {
      const T* col = table + base * HEADS + key[i] + h;
      const int64_t* kj = key.data();
      for (int64_t j = 0; j < N; ++j) row[j] = Io<T>::load(col - kj[j]);
    } else {
      std::fill(row, row + N, A(0));
    }
    std::fill(row + N, row + ld, A(0));
  }
}

template <typename A>
struct Window {
  // token buffers of one (window, head): Q (N4, E) with N4 = N rounded up to 16 (zero rows);
  // K^T, V^T (E, ld) with ld = N rounded up to KEY_ALIGN (zero columns); K, V (N, Ep) with Ep =
  // E rounded up to HEAD_ALIGN (zero channels); per key its region id and padding mask.
  int64_t N, N4, ld, E, Ep;
  std::vector<A> Q, KT, VT, K, V, region, kmask;
  std::vector<uint8_t> valid;
  Window(int64_t n, int64_t e)
      : N(n), N4(round_up(n, 16)), ld(round_up(n, KEY_ALIGN)), E(e), Ep(round_up(e, HEAD_ALIGN)), Q(N4 * E, A(0)),
        KT(E * ld, A(0)), VT(E * ld, A(0)), K(N * Ep, A(0)), V(N * Ep, A(0)), region(ld, A(0)),
        kmask(ld, -std::numeric_limits<A>::infinity()), valid(N4, 0) {}
  RowMask<A> row(const A* bias, int64_t i, A mask_value, A scale) const {
    return RowMask<A>{bias, region.data(), kmask.data(), region[i], mask_value, scale};
  }
};

// Loads window w of batch b, head h. The transposed copies (K^T for q.k, V^T for dO.v) and the
// row-major ones (V for P v, K for dS k) are all filled: the gather is O(N E), the rest O(N^2 E).
template <typename T, typename A>
void gather(const WindowAttentionParams& p, const Geometry& g, int64_t b, int64_t w, int64_t h, const T* q,
            const T* k, const T* v, Window<A>& win) {
  const int64_t N = g.N, E = p.head_dim, ld = win.ld, Ep = win.Ep;
  const T* pad = static_cast<const T*>(p.pad_kv);
  const A pad_mask = p.mask_padded ? -std::numeric_limits<A>::infinity() : A(0);
  const bool unit = p.q_strides[5] == 1 && p.k_strides[5] == 1 && p.v_strides[5] == 1;
  for (int64_t t = 0; t < N; ++t) {
    const int64_t i = w * N + t;
    const bool ok = g.coord[i] >= 0;
    win.valid[t] = ok;
    win.region[t] = A(g.region[i]);
    win.kmask[t] = ok ? A(0) : pad_mask;
    A* kr = win.K.data() + t * Ep;
    A* vr = win.V.data() + t * Ep;
    if (ok && unit) {  // channels contiguous (the usual layout): plain copies the compiler vectorises
      const T* __restrict qp = q + offset(p.q_strides, b, g, i, h);
      const T* __restrict kp = k + offset(p.k_strides, b, g, i, h);
      const T* __restrict vp = v + offset(p.v_strides, b, g, i, h);
      A* __restrict qr = win.Q.data() + t * E;
      for (int64_t e = 0; e < E; ++e) qr[e] = Io<T>::load(qp + e);
      for (int64_t e = 0; e < E; ++e) kr[e] = Io<T>::load(kp + e);
      for (int64_t e = 0; e < E; ++e) vr[e] = Io<T>::load(vp + e);
    } else if (ok) {
      const T* qp = q + offset(p.q_strides, b, g, i, h);
      const T* kp = k + offset(p.k_strides, b, g, i, h);
      const T* vp = v + offset(p.v_strides, b, g, i, h);
      for (int64_t e = 0; e < E; ++e) {
        win.Q[t * E + e] = Io<T>::load(qp + e * p.q_strides[5]);
        kr[e] = Io<T>::load(kp + e * p.k_strides[5]);
        vr[e] = Io<T>::load(vp + e * p.v_strides[5]);
      }
    } else {
      for (int64_t e = 0; e < E; ++e) {
        win.Q[t * E + e] = A(0);
        kr[e] = pad ? Io<T>::load(pad + h * E + e) : A(0);
        vr[e] = pad ? Io<T>::load(pad + (p.heads + h) * E + e) : A(0);
      }
    }
    for (int64_t e = 0; e < E; ++e) {
      win.KT[e * ld + t] = kr[e];
      win.VT[e * ld + t] = vr[e];
    }
  }
}

template <typename A>
std::unique_ptr<A[]> bias_buffer(const WindowAttentionParams& p, int64_t N, int64_t ld) {
  return std::unique_ptr<A[]>(new A[size_t(p.heads * N * ld)]);
}

template <typename T>
Status fwd_impl(const WindowAttentionParams& p) {
  using A = typename Io<T>::acc;
  const Geometry g = make_geometry(p);
  const int64_t N = g.N, E = p.head_dim, HEADS = p.heads, B = p.batch;
  const int64_t ld = round_up(N, KEY_ALIGN);
  const int64_t vol = p.size[0] * p.size[1] * p.size[2];
  const int64_t tasks = p.directions * B * g.nW * HEADS;
  const bool shifted = p.shift[0] > 0 || p.shift[1] > 0 || p.shift[2] > 0;
  const A mv = shifted ? A(p.mask_value) : A(0), scale = A(p.scale);
  const std::unique_ptr<A[]> bias = bias_buffer<A>(p, N, ld);
  A* lse = static_cast<A*>(p.lse);
#pragma omp parallel if (worth_threads(tasks, N, E))
  {
    gather_bias<T, A>(p, N, ld, bias.get());
    Window<A> win(N, E);
    const int64_t Ep = win.Ep;
    std::vector<A> S(4 * ld), acc(4 * Ep);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t h = task % HEADS, w = (task / HEADS) % g.nW, b = (task / (HEADS * g.nW)) % B;
      const int dir = int(task / (HEADS * g.nW * B));
      const T* q = static_cast<const T*>(dir ? p.q1 : p.q0);
      const T* k = static_cast<const T*>(dir ? p.k1 : p.k0);
      const T* v = static_cast<const T*>(dir ? p.v1 : p.v0);
      T* o = static_cast<T*>(dir ? p.o1 : p.o0);
      gather<T, A>(p, g, b, w, h, q, k, v, win);
      for (int64_t i0 = 0; i0 < N; i0 += 4) {
        if (!(win.valid[i0] | win.valid[i0 + 1] | win.valid[i0 + 2] | win.valid[i0 + 3])) continue;
        cpu::wa_detail::gemv4(S.data(), ld, win.Q.data() + i0 * E, E, win.KT.data(), ld);
        A m[4], l[4];
        for (int r = 0; r < 4; ++r) {
          A* sr = S.data() + r * ld;
          m[r] = A(0), l[r] = A(1);
          if (!win.valid[i0 + r]) {  // padding query (or past N): dropped
            std::fill(sr, sr + N, A(0));
            continue;
          }
          const int64_t i = i0 + r;
          cpu::wa_detail::softmax_row(sr, ld, win.row(bias.get() + (h * N + i) * ld, i, mv, scale), &m[r], &l[r]);
        }
        cpu::wa_detail::pv4(acc.data(), S.data(), ld, win.V.data(), Ep, N);
        for (int r = 0; r < 4; ++r) {
          const int64_t i = i0 + r;
          if (!win.valid[i]) continue;
          const A inv = A(1) / l[r];
          T* op = o + offset(p.o_strides, b, g, w * N + i, h);
          for (int64_t e = 0; e < E; ++e) Io<T>::store(op + e * p.o_strides[5], acc[r * Ep + e] * inv);
          lse[(dir * B + b) * vol * HEADS + g.coord[w * N + i] * HEADS + h] = m[r] + std::log(l[r]);
        }
      }
    }
  }
  return Status::kSuccess;
}

// Fixed chunking of the (batch x window) axis for the backward's dS partial sums: about 12
// tasks over (direction, chunk, head) (even splits for 2, 3, 4 or 6 threads), no more, since
// every task owns an (N, N) partial that is zeroed, written and reduced on every call.
int64_t bwd_chunks(const WindowAttentionParams& p, int64_t N, int64_t nW) {
  const size_t acc = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  const int64_t rows = p.directions * p.heads;
  int64_t chunks = std::min<int64_t>(p.batch * nW, std::max<int64_t>((12 + rows - 1) / rows, 1));
  while (chunks > 1 && size_t(p.directions * chunks * p.heads * N * N) * acc > (size_t(256) << 20)) chunks /= 2;
  return std::max<int64_t>(chunks, 1);
}

void sizes(const WindowAttentionParams& p, int64_t* N, int64_t* nW) {
  *N = p.eff_window[0] * p.eff_window[1] * p.eff_window[2];
  *nW = 1;
  for (int a = 0; a < 3; ++a) *nW *= p.padded[a] / std::max<int64_t>(p.eff_window[a], 1);
}

template <typename A>
Status table_grad_impl(const WindowAttentionParams& p, const A* pair, A* out);

template <typename T>
Status bwd_impl(const WindowAttentionBwdParams& bp) {
  using A = typename Io<T>::acc;
  const WindowAttentionParams& p = bp.fwd;
  const Geometry g = make_geometry(p);
  const int64_t N = g.N, E = p.head_dim, HEADS = p.heads, B = p.batch;
  const int64_t ld = round_up(N, KEY_ALIGN);
  const int64_t vol = p.size[0] * p.size[1] * p.size[2];
  const int64_t chunks = bwd_chunks(p, N, g.nW);
  const int64_t per_chunk = (B * g.nW + chunks - 1) / chunks;
  const int64_t units = p.directions * chunks * HEADS;
  const bool want_pair = bp.pair_grad != nullptr;
  const bool want_pad = bp.grad_pad_kv != nullptr;
  const bool shifted = p.shift[0] > 0 || p.shift[1] > 0 || p.shift[2] > 0;
  const A mv = shifted ? A(p.mask_value) : A(0);
  // dS partials: the first direction's first chunk sums straight into pair_grad (heads, N, N),
  // every other task into its own (N, N) slice of the workspace
  A* pair_out = static_cast<A*>(bp.pair_grad);
  A* pair_parts = static_cast<A*>(bp.workspace);                           // (units - heads, N, N)
  A* pad_parts = pair_parts + (want_pair ? (units - HEADS) * N * N : 0);  // (units, 2, E)
  const A* lse = static_cast<const A*>(p.lse);
  const A scale = A(p.scale);
  const std::unique_ptr<A[]> bias = bias_buffer<A>(p, N, ld);
#pragma omp parallel if (worth_threads(4 * units, N, E))  // about 4x the forward's work a task
  {
    gather_bias<T, A>(p, N, ld, bias.get());
    Window<A> win(N, E);
    const int64_t N4 = win.N4, Ep = win.Ep;
    std::vector<A> dO(N4 * E, A(0)), dKT(E * ld), dVT(E * ld), S(16 * ld), DS(16 * ld), delta(N4, A(0)),
        dq(4 * Ep);
    const int64_t np = round_up(N, 2 * cpu::wa_detail::Vec<A>::L);  // <= ld
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
      const int64_t h = unit % HEADS, c = (unit / HEADS) % chunks;
      const int dir = int(unit / (HEADS * chunks));
      const T* q = static_cast<const T*>(dir ? p.q1 : p.q0);
      const T* k = static_cast<const T*>(dir ? p.k1 : p.k0);
      const T* v = static_cast<const T*>(dir ? p.v1 : p.v0);
      const T* o = static_cast<const T*>(dir ? p.o1 : p.o0);
      const T* go = static_cast<const T*>(dir ? bp.g1 : bp.g0);
      T* dqp = static_cast<T*>(dir ? bp.dq1 : bp.dq0);
      T* dkp = static_cast<T*>(dir ? bp.dk1 : bp.dk0);
      T* dvp = static_cast<T*>(dir ? bp.dv1 : bp.dv0);
      A* pair = !want_pair ? nullptr : unit < HEADS ? pair_out + unit * N * N : pair_parts + (unit - HEADS) * N * N;
      A* padg = want_pad ? pad_parts + unit * 2 * E : nullptr;
      if (pair) std::fill(pair, pair + N * N, A(0));
      if (padg) std::fill(padg, padg + 2 * E, A(0));
      const int64_t bw1 = std::min((c + 1) * per_chunk, B * g.nW);
      for (int64_t bw = c * per_chunk; bw < bw1; ++bw) {
        const int64_t b = bw / g.nW, w = bw % g.nW;
        gather<T, A>(p, g, b, w, h, q, k, v, win);
        for (int64_t t = 0; t < N; ++t) {
          delta[t] = A(0);
          if (!win.valid[t]) {
            for (int64_t e = 0; e < E; ++e) dO[t * E + e] = A(0);
            continue;
          }
          const int64_t i = w * N + t;
          const T* gp = go + offset(bp.g_strides, b, g, i, h);
          const T* op = o + offset(p.o_strides, b, g, i, h);
          A dl = A(0);
          for (int64_t e = 0; e < E; ++e) {
            const A ge = Io<T>::load(gp + e * bp.g_strides[5]);
            dO[t * E + e] = ge;
            dl += ge * Io<T>::load(op + e * p.o_strides[5]);
          }
          delta[t] = dl;
        }
        std::fill(dKT.begin(), dKT.end(), A(0));
        std::fill(dVT.begin(), dVT.end(), A(0));
        for (int64_t i0 = 0; i0 < N; i0 += 16) {  // 16 query rows: 4 blocks of 4, then dk, dv once
          bool any = false;
          for (int r = 0; r < 16; ++r) any |= win.valid[i0 + r] != 0;
          if (!any) continue;
          for (int64_t s0 = 0; s0 < 16; s0 += 4) {
            const int64_t ib = i0 + s0;
            A* S4 = S.data() + s0 * ld;
            A* D4 = DS.data() + s0 * ld;
            cpu::wa_detail::gemv4(S4, ld, win.Q.data() + ib * E, E, win.KT.data(), ld);  // q.k
            cpu::wa_detail::gemv4(D4, ld, dO.data() + ib * E, E, win.VT.data(), ld);     // dP
            for (int r = 0; r < 4; ++r) {
              const int64_t i = ib + r;
              A* sr = S4 + r * ld;
              A* dr = D4 + r * ld;
              if (!win.valid[i]) {  // padding query (or past N): no gradient flows through it
                std::fill(sr, sr + ld, A(0));
                std::fill(dr, dr + ld, A(0));
                continue;
              }
              const A li = lse[(dir * B + b) * vol * HEADS + g.coord[w * N + i] * HEADS + h];
              cpu::wa_detail::dsoftmax_row(sr, dr, ld, N, win.row(bias.get() + (h * N + i) * ld, i, mv, scale), li,
                                           delta[i], pair ? pair + i * N : nullptr);
            }
            cpu::wa_detail::pv4(dq.data(), D4, ld, win.K.data(), Ep, N);  // dS k
            for (int r = 0; r < 4; ++r) {
              const int64_t i = ib + r;
              if (!win.valid[i]) continue;
              T* dqo = dqp + offset(bp.dq_strides, b, g, w * N + i, h);
              for (int64_t e = 0; e < E; ++e) Io<T>::store(dqo + e * bp.dq_strides[5], dq[r * Ep + e] * scale);
            }
          }
          cpu::wa_detail::gemm16(dKT.data(), ld, win.Q.data() + i0 * E, E, DS.data(), np);  // dk^T += q^T dS
          cpu::wa_detail::gemm16(dVT.data(), ld, dO.data() + i0 * E, E, S.data(), np);      // dv^T += dO^T P
        }
        for (int64_t j = 0; j < N; ++j) {
          if (win.valid[j]) {
            const int64_t i = w * N + j;
            T* dko = dkp + offset(bp.dk_strides, b, g, i, h);
            T* dvo = dvp + offset(bp.dv_strides, b, g, i, h);
            for (int64_t e = 0; e < E; ++e) {
              Io<T>::store(dko + e * bp.dk_strides[5], dKT[e * ld + j] * scale);
              Io<T>::store(dvo + e * bp.dv_strides[5], dVT[e * ld + j]);
            }
          } else if (padg) {
            for (int64_t e = 0; e < E; ++e) {
              padg[e] += dKT[e * ld + j] * scale;
              padg[E + e] += dVT[e * ld + j];
            }
          }
        }
      }
    }
  }
  // fixed-order reductions over directions and chunks
  if (want_pair && units > HEADS) {
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < HEADS; ++h) {
      A* dst = pair_out + h * N * N;  // holds task (0, 0, h)'s partial
      for (int64_t dc = 1; dc < p.directions * chunks; ++dc) {
        const A* src = pair_parts + (dc * HEADS + h - HEADS) * N * N;
        for (int64_t ij = 0; ij < N * N; ++ij) dst[ij] += src[ij];
      }
    }
  }
  if (want_pad) {
    A* out = static_cast<A*>(bp.grad_pad_kv);  // (2, heads, E)
    for (int64_t h = 0; h < HEADS; ++h)
      for (int kv = 0; kv < 2; ++kv)
        for (int64_t e = 0; e < E; ++e) {
          A sum = A(0);
          for (int dir = 0; dir < p.directions; ++dir)
            for (int64_t c = 0; c < chunks; ++c) sum += pad_parts[((dir * chunks + c) * HEADS + h) * 2 * E + kv * E + e];
          out[(kv * HEADS + h) * E + e] = sum;
        }
  }
  if (want_pair && bp.table_grad) return table_grad_impl<A>(p, pair_out, static_cast<A*>(bp.table_grad));
  return Status::kSuccess;
}

template <typename A>
Status table_grad_impl(const WindowAttentionParams& p, const A* pair, A* out) {
  const int64_t N = p.eff_window[0] * p.eff_window[1] * p.eff_window[2], HEADS = p.heads;
  const int64_t CWH = p.window[1], CWW = p.window[2];
  const int64_t sd = (2 * CWH - 1) * (2 * CWW - 1), sh = 2 * CWW - 1;
  const int64_t base = (p.window[0] - 1) * sd + (CWH - 1) * sh + (CWW - 1);
  const int64_t rows = (2 * p.window[0] - 1) * sd;
  std::vector<int64_t> key(N);  // as gather_bias: index(i, j) = base + key[i] - key[j]
  for (int64_t t = 0; t < N; ++t) key[t] = (t / (CWH * CWW)) * sd + ((t / CWW) % CWH) * sh + t % CWW;
  if (HEADS * N * N < (int64_t(1) << 18)) {
    // one thread: sum straight into the (rows, heads) output, each entry in the same (i, j) order
    // as the per-head columns below (the same bits), without a transposing copy of the whole table
    std::fill(out, out + rows * HEADS, A(0));
    for (int64_t i = 0; i < N; ++i) {
      A* oi = out + (base + key[i]) * HEADS;
      const A* pi = pair + i * N;
      for (int64_t j = 0; j < N; ++j) {
        A* o = oi - key[j] * HEADS;
        for (int64_t h = 0; h < HEADS; ++h) o[h] += pi[h * N * N + j];
      }
    }
    return Status::kSuccess;
  }
  std::vector<A> col(HEADS * rows, A(0));  // per head, contiguous: no false sharing
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < HEADS; ++h) {
    A* c = col.data() + h * rows;
    for (int64_t i = 0; i < N; ++i) {
      A* ci = c + base + key[i];
      const A* row = pair + (h * N + i) * N;
      for (int64_t j = 0; j < N; ++j) ci[-key[j]] += row[j];
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < HEADS; ++h) out[r * HEADS + h] = col[h * rows + r];
  return Status::kSuccess;
}

}  // namespace

size_t window_attention_bwd_workspace_bytes(const WindowAttentionBwdParams& bp) {
  const WindowAttentionParams& p = bp.fwd;
  int64_t N, nW;
  sizes(p, &N, &nW);
  const size_t acc = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  const int64_t units = p.directions * bwd_chunks(p, N, nW) * p.heads;
  size_t n = 0;
  if (bp.pair_grad) n += size_t((units - p.heads) * N * N);  // task (0, 0, h) writes pair_grad itself
  if (bp.grad_pad_kv) n += size_t(units * 2 * p.head_dim);
  return n * acc;
}

size_t window_attention_cuda_bwd_workspace_bytes(const WindowAttentionBwdParams& bp) {
  const size_t acc = bp.fwd.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return size_t(detail::wa_bwd_layout(bp).total) * acc;
}

namespace cpu {

Status window_attention_fwd(const WindowAttentionParams& p) {
  const Status st = window_attention_check(p);
  if (st != Status::kSuccess) return st;
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_impl<T>(p);)
}

Status window_attention_table_grad(const WindowAttentionParams& p, const void* pair_grad, void* table_grad) {
  MK_CHECK_ARG(pair_grad && table_grad, "window_attention_table_grad: pair_grad and table_grad must not be null");
  MK_CHECK_ARG(p.heads >= 1, "window_attention_table_grad: heads must be >= 1");
  for (int a = 0; a < 3; ++a)
    MK_CHECK_ARG(p.window[a] >= 1 && p.eff_window[a] >= 1 && p.eff_window[a] <= p.window[a],
                 "window_attention_table_grad: need 1 <= eff_window <= window on every axis");
  if (p.dtype == DType::kFloat64)
    return table_grad_impl<double>(p, static_cast<const double*>(pair_grad), static_cast<double*>(table_grad));
  return table_grad_impl<float>(p, static_cast<const float*>(pair_grad), static_cast<float*>(table_grad));
}

Status window_attention_bwd(const WindowAttentionBwdParams& bp) {
  const Status st = window_attention_check(bp.fwd);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(bp.g0 && bp.dq0 && bp.dk0 && bp.dv0, "window_attention: grad_out, dq, dk and dv must not be null");
  MK_CHECK_ARG(bp.fwd.directions == 1 || (bp.g1 && bp.dq1 && bp.dk1 && bp.dv1),
               "window_attention: direction 1 needs g1, dq1, dk1 and dv1");
  MK_CHECK_ARG(bp.workspace_bytes >= window_attention_bwd_workspace_bytes(bp),
               "window_attention: workspace smaller than window_attention_bwd_workspace_bytes()");
  MK_DTYPE_SWITCH(bp.fwd.dtype, T, return bwd_impl<T>(bp);)
}

}  // namespace cpu
}  // namespace medkernels
