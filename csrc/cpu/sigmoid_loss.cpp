// Pairwise sigmoid (SigLIP) loss on the CPU (OpenMP). See medkernels/sigmoid_loss.h for the math.
//
// x and y are first packed into zero-padded row-major buffers in the accumulation type
// (converting 16-bit inputs and gathering strided ones) in the caller's workspace: O((N + M) d)
// memory. The logits are then produced 64 x 64 tiles at a time by a register-blocked
// outer-product micro-kernel (4 rows x 64 columns in vector registers, the column block
// transposed once per tile into a thread-local buffer), consumed and dropped:
//  - forward: softplus(-z L) summed per tile; one partial per row block, summed in order.
//  - backward: G = grad_scale * dloss/dL per tile (recomputed), then dX_I += G Y_J and
//    dY_J += G^T X_I as register-blocked rank-64 updates. One thread owns a row block and
//    its dX rows. dY: with few threads (T M <= N + M) each thread accumulates its own dY copy,
//    reduced in thread order afterwards (four tile GEMMs in all); with more, a second pass over
//    the column blocks recomputes the tiles instead (five), so memory stays O((N + M) d).
//    Every sum is reduced in a fixed order: the same bits on every run.
//  - symmetric (Med3DVLM): G_s = (G + G^T)/2 is one pass over the row blocks that writes
//    both dX_I = s G_s Y and dY_I = s G_s X for the rows it owns.
// The per-pair math is detail/sigmoid_loss.h's (shared with the CUDA kernels); for float its exp
// and log1p are branch-free polynomials (cephes) so the tile loops vectorise; the inner
// kernels are built per x86 ISA level (AVX-512, AVX2, baseline) and picked at load time.
// vector arguments of the always-inlined helpers: no ABI crosses these functions
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/detail/sigmoid_loss.h"
#include "medkernels/sigmoid_loss.h"
#include "vec_math.h"

#define MK_SL_INLINE __attribute__((always_inline)) inline

namespace medkernels {

Status sigmoid_loss_check(const SigmoidLossParams& p) {
  MK_CHECK_ARG(p.x && p.y, "sigmoid_loss: x and y must not be null");
  MK_CHECK_ARG(p.n >= 1 && p.m >= 1 && p.d >= 1, "sigmoid_loss: n, m and d must be >= 1, got n=" +
                                                     std::to_string(p.n) + " m=" + std::to_string(p.m) +
                                                     " d=" + std::to_string(p.d));
  MK_CHECK_ARG(!p.symmetric || p.n == p.m, "sigmoid_loss: the symmetric (Med3DVLM) variant needs n == m, got n=" +
                                               std::to_string(p.n) + " m=" + std::to_string(p.m));
  // A non-finite logit_scale (exp(t') overflows) or bias is not refused: the loss and gradients
  // carry the Inf/NaN, as in the reference and Triton backends.
  const int mode = static_cast<int>(p.positives);
  MK_CHECK_ARG(mode >= 0 && mode <= 2, "sigmoid_loss: unknown positives mode " + std::to_string(mode));
  MK_CHECK_ARG(p.positives != SigmoidLossPositives::kLabels || (p.labels_x && p.labels_y),
               "sigmoid_loss: positives=labels needs labels_x and labels_y");
  MK_CHECK_ARG(p.positives != SigmoidLossPositives::kMask || p.mask, "sigmoid_loss: positives=mask needs mask");
  return Status::kSuccess;
}

namespace cpu {
namespace sl {

constexpr int64_t kTile = 64;  // rows and columns of one logits tile

typedef float fvec __attribute__((vector_size(64)));
typedef double dvec __attribute__((vector_size(64)));
template <typename A> struct VecOf;
template <> struct VecOf<float> { using V = fvec; };
template <> struct VecOf<double> { using V = dvec; };
template <typename A> constexpr int64_t lanes() { return sizeof(typename VecOf<A>::V) / sizeof(A); }

template <typename V, typename A>
MK_SL_INLINE V vload(const A* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename A>
MK_SL_INLINE void vstore(A* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// The per-pair math (softplus, dloss/dlogit) is detail/sigmoid_loss.h's, shared with the CUDA
// kernels: float64 runs it with libm (SlStdMath), float32 with the branch-free vector exp / log1p
// below (VecMath) so the tile loops vectorise.
// --- micro-kernels --------------------------------------------------------------------------
// s[r][c] = a_r . b_c for a 64 x 64 tile. a: 64 rows of dp elements (row-major); bt: the 64
// rows of b transposed, bt[k][c]. Outer products: each step broadcasts R elements of a and
// loads one row of bt (64 columns in Q vectors), R x Q accumulators stay in registers; d is
// walked in chunks of 64 so the bt chunk stays in L1 while every row block uses it.
template <typename A>
MK_SL_INLINE void dots_tile_impl(const A* a, const A* bt, int64_t dp, A* s) {
  using V = typename VecOf<A>::V;
  constexpr int64_t L = lanes<A>();
  constexpr int64_t Q = kTile / L;
  constexpr int64_t R = 16 / Q;
  constexpr int64_t KC = 64;
  for (int64_t kc = 0; kc < dp; kc += KC) {
    const int64_t ke = std::min(dp, kc + KC);
    for (int64_t r0 = 0; r0 < kTile; r0 += R) {
      V acc[R][Q];
      for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) acc[r][q] = kc == 0 ? V{} : vload<V>(s + (r0 + r) * kTile + q * L);
      const A* ar = a + r0 * dp;
      for (int64_t k = kc; k < ke; ++k) {
        V bv[Q];
        for (int q = 0; q < Q; ++q) bv[q] = vload<V>(bt + k * kTile + q * L);
        for (int r = 0; r < R; ++r) {
          const A av = ar[r * dp + k];
          for (int q = 0; q < Q; ++q) acc[r][q] += av * bv[q];
        }
      }
      for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) vstore(s + (r0 + r) * kTile + q * L, acc[r][q]);
    }
  }
}

// out[r][k0 .. k0 + NQ L) += sum_c g[r][c] * b[c][k0 ..]   for all 64 rows r
template <typename A, int NQ>
MK_SL_INLINE void gemm_acc_chunk(const A* g, const A* b, int64_t dp, int64_t k0, A* out) {
  using V = typename VecOf<A>::V;
  constexpr int64_t L = lanes<A>();
  for (int64_t r0 = 0; r0 < kTile; r0 += 4) {
    V acc[4][NQ];
    for (int r = 0; r < 4; ++r)
      for (int q = 0; q < NQ; ++q) acc[r][q] = vload<V>(out + (r0 + r) * dp + k0 + q * L);
    for (int64_t c = 0; c < kTile; ++c) {
      V bv[NQ];
      for (int q = 0; q < NQ; ++q) bv[q] = vload<V>(b + c * dp + k0 + q * L);
      for (int r = 0; r < 4; ++r) {
        const A gr = g[(r0 + r) * kTile + c];
        for (int q = 0; q < NQ; ++q) acc[r][q] += gr * bv[q];
      }
    }
    for (int r = 0; r < 4; ++r)
      for (int q = 0; q < NQ; ++q) vstore(out + (r0 + r) * dp + k0 + q * L, acc[r][q]);
  }
}

// out[r][:] += sum_c g[r][c] * b[c][:]   (out, b: 64 rows of dp, a multiple of the lanes; g: 64 x 64).
// d outermost: one chunk of b (64 x 4 vectors) stays in L1 while all 64 rows use it.
template <typename A>
MK_SL_INLINE void gemm_acc_impl(const A* g, const A* b, int64_t dp, A* out) {
  constexpr int64_t L = lanes<A>();
  int64_t k0 = 0;
  for (; k0 + 4 * L <= dp; k0 += 4 * L) gemm_acc_chunk<A, 4>(g, b, dp, k0, out);
  for (; k0 < dp; k0 += L) gemm_acc_chunk<A, 1>(g, b, dp, k0, out);
}

// sum of softplus(-z L) over the valid nr x nc corner of a tile of dots
template <typename A>
MK_SL_INLINE double loss_tile_impl(const A* s, const uint8_t* pos, A scale, A bias, int64_t nr, int64_t nc) {
  double total = 0;
  for (int64_t r = 0; r < nr; ++r) {
    A acc = 0;
    const A* sr = s + r * kTile;
    const uint8_t* pr = pos + r * kTile;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < nc; ++c) {
      const A l = scale * sr[c] + bias;
      acc += detail::sl_pair_loss<detail::SlStdMath<A>>(l, pr[c] != 0);
    }
    total += acc;
  }
  return total;
}

// g = G over the whole tile (zero outside nr x nc); returns sum G and sum G * dots in sums.
// pos_t (symmetric only) holds the positive flag of the transposed pair (j, i).
template <typename A>
MK_SL_INLINE void grad_tile_impl(const A* s, const uint8_t* pos, const uint8_t* pos_t, A scale, A bias, A c,
                                 int64_t nr, int64_t nc, A* g, double* sums) {
  double gsum = 0, gdsum = 0;
  for (int64_t r = 0; r < kTile; ++r) {
    A* gr = g + r * kTile;
    if (r >= nr) {
      for (int64_t k = 0; k < kTile; ++k) gr[k] = 0;
      continue;
    }
    const A* sr = s + r * kTile;
    const uint8_t* pr = pos + r * kTile;
    A a1 = 0, a2 = 0;
    if (pos_t == nullptr) {
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t k = 0; k < kTile; ++k) {
        const A l = scale * sr[k] + bias;
        const A z = pr[k] ? A(1) : A(-1);
        const A v = k < nc ? c * detail::sl_pair_dloss<detail::SlStdMath<A>>(z, l) : A(0);
        gr[k] = v;
        a1 += v;
        a2 += v * sr[k];
      }
    } else {
      const uint8_t* ptr = pos_t + r * kTile;
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t k = 0; k < kTile; ++k) {
        const A l = scale * sr[k] + bias;
        const A z = pr[k] ? A(1) : A(-1);
        const A zt = ptr[k] ? A(1) : A(-1);
        const A v = k < nc ? c * detail::sl_pair_dloss_sym<detail::SlStdMath<A>>(z, zt, l) : A(0);
        gr[k] = v;
        a1 += v;
        a2 += v * sr[k];
      }
    }
    gsum += a1;
    gdsum += a2;
  }
  sums[0] += gsum;
  sums[1] += gdsum;
}

// float tiles, written in vectors so every ISA copy runs them in its widest registers
typedef int32_t ivec __attribute__((vector_size(64)));
typedef uint8_t bvec __attribute__((vector_size(16)));
constexpr int64_t kFL = 16;  // floats per fvec

MK_SL_INLINE fvec fb(float v) { return fvec{} + v; }

template <typename To, typename From>
MK_SL_INLINE To bitcast(const From& f) {
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

MK_SL_INLINE fvec vexp(const fvec& x) { return vmath::exp(x); }  // 0 below -87.3

MK_SL_INLINE fvec vlog_1_2(const fvec& u) {
  ivec bits = bitcast<ivec>(u);
  fvec e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, fvec);
  bits = (bits & static_cast<int32_t>(0x807fffffu)) | 0x3f000000;
  const fvec mnt = bitcast<fvec>(bits);
  const ivec small = mnt < fb(0.707106781186547524f);
  e = small ? e - 1.0f : e;
  const fvec x = small ? mnt + mnt - 1.0f : mnt - 1.0f;
  const fvec z = x * x;
  fvec y = fb(7.0376836292e-2f);
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return x + y + e * 0.693359375f;
}

MK_SL_INLINE fvec vlog1p01(const fvec& e) {
  const fvec u = e + 1.0f;
  const fvec den = u - 1.0f;
  const ivec exact = den == fb(0.0f);
  const fvec safe = exact ? fb(1.0f) : den;
  return exact ? e : vlog_1_2(u) * (e / safe);
}

// the math policy of detail/sigmoid_loss.h's per-pair functions for float vectors
struct VecMath {
  MK_SL_INLINE static fvec splat(double v) { return fb(static_cast<float>(v)); }
  MK_SL_INLINE static fvec exp(const fvec& v) { return vexp(v); }
  MK_SL_INLINE static fvec log1p01(const fvec& e) { return vlog1p01(e); }
};

MK_SL_INLINE ivec col_valid(int64_t c0, int64_t nc) {
  ivec iota;
  for (int l = 0; l < kFL; ++l) iota[l] = static_cast<int32_t>(c0 + l);
  return iota < static_cast<int32_t>(nc);
}

MK_SL_INLINE fvec pos_vec(const uint8_t* p) {
  bvec b;
  std::memcpy(&b, p, sizeof(b));
  return __builtin_convertvector(b, fvec);
}

MK_SL_INLINE float hsum(const fvec& v) {
  float t = 0;
  for (int l = 0; l < kFL; ++l) t += v[l];
  return t;
}

MK_SL_INLINE double loss_tile_f(const float* s, const uint8_t* pos, float scale, float bias, int64_t nr,
                                int64_t nc) {
  double total = 0;
  for (int64_t r = 0; r < nr; ++r) {
    fvec acc = fvec{};
    for (int64_t c0 = 0; c0 < kTile; c0 += kFL) {
      const fvec l = vload<fvec>(s + r * kTile + c0) * scale + bias;
      const fvec sp = detail::sl_pair_loss<VecMath>(l, pos_vec(pos + r * kTile + c0) != fb(0.0f));
      acc += col_valid(c0, nc) ? sp : fb(0.0f);
    }
    total += hsum(acc);
  }
  return total;
}

MK_SL_INLINE void grad_tile_f(const float* s, const uint8_t* pos, const uint8_t* pos_t, float scale, float bias,
                              float c, int64_t nr, int64_t nc, float* g, double* sums) {
  fvec a1 = fvec{}, a2 = fvec{};
  for (int64_t r = 0; r < kTile; ++r) {
    for (int64_t c0 = 0; c0 < kTile; c0 += kFL) {
      const int64_t o = r * kTile + c0;
      if (r >= nr) {
        vstore(g + o, fvec{});
        continue;
      }
      const fvec sv = vload<fvec>(s + o);
      const fvec l = sv * scale + bias;
      const fvec z = pos_vec(pos + o) != fb(0.0f) ? fb(1.0f) : fb(-1.0f);
      fvec v;
      if (pos_t) {
        const fvec zt = pos_vec(pos_t + o) != fb(0.0f) ? fb(1.0f) : fb(-1.0f);
        v = c * detail::sl_pair_dloss_sym<VecMath>(z, zt, l);
      } else {
        v = c * detail::sl_pair_dloss<VecMath>(z, l);
      }
      v = col_valid(c0, nc) ? v : fb(0.0f);
      vstore(g + o, v);
      a1 += v;
      a2 += v * sv;
    }
  }
  sums[0] += hsum(a1);
  sums[1] += hsum(a2);
}

// Multiversioned entry points of the micro-kernels (one copy per ISA level).
#define MK_SL_DEFINE(ATTR)                                                                                 \
  ATTR void dots_tile(const float* a, const float* b, int64_t dp, float* s) { dots_tile_impl(a, b, dp, s); } \
  ATTR void dots_tile(const double* a, const double* b, int64_t dp, double* s) { dots_tile_impl(a, b, dp, s); } \
  ATTR void gemm_acc(const float* g, const float* b, int64_t dp, float* o) { gemm_acc_impl(g, b, dp, o); }    \
  ATTR void gemm_acc(const double* g, const double* b, int64_t dp, double* o) { gemm_acc_impl(g, b, dp, o); } \
  ATTR double loss_tile(const float* s, const uint8_t* p, float sc, float b, int64_t nr, int64_t nc) {         \
    return loss_tile_f(s, p, sc, b, nr, nc);                                                                 \
  }                                                                                                          \
  ATTR double loss_tile(const double* s, const uint8_t* p, double sc, double b, int64_t nr, int64_t nc) {      \
    return loss_tile_impl(s, p, sc, b, nr, nc);                                                              \
  }                                                                                                          \
  ATTR void grad_tile(const float* s, const uint8_t* p, const uint8_t* pt, float sc, float b, float c,        \
                      int64_t nr, int64_t nc, float* g, double* sums) {                                      \
    grad_tile_f(s, p, pt, sc, b, c, nr, nc, g, sums);                                                        \
  }                                                                                                          \
  ATTR void grad_tile(const double* s, const uint8_t* p, const uint8_t* pt, double sc, double b, double c,    \
                      int64_t nr, int64_t nc, double* g, double* sums) {                                     \
    grad_tile_impl(s, p, pt, sc, b, c, nr, nc, g, sums);                                                     \
  }
MK_CPU_VERSIONS(MK_SL_DEFINE)
#undef MK_SL_DEFINE

// --- drivers --------------------------------------------------------------------------------
int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }


// rows x d (strided, storage T) -> rows_pad x dp row-major A, zero padded
template <typename T, typename A>
void pack(const void* src, const int64_t* st, int64_t rows, int64_t d, int64_t rows_pad, int64_t dp, A* out) {
  const T* s = static_cast<const T*>(src);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows_pad; ++i) {
    A* o = out + i * dp;
    std::fill(o, o + dp, A(0));
    if (i >= rows) continue;
    const T* si = s + i * st[0];
    if (st[1] == 1) {
      for (int64_t k = 0; k < d; ++k) o[k] = static_cast<A>(Io<T>::load(si + k));
    } else {
      for (int64_t k = 0; k < d; ++k) o[k] = static_cast<A>(Io<T>::load(si + k * st[1]));
    }
  }
}

// Which pairs are positive, seen from the side whose rows a pass walks (detail::SlPositives, the
// same rule the CUDA kernels evaluate per element).
struct Positives {
  detail::SlPositives q;

  static Positives of(const SigmoidLossParams& p, bool swap) { return Positives{detail::sl_positives(p, swap)}; }
  // out[r][c] = positive(i0 + r, j0 + c) for r < nr, c < nc (0 elsewhere)
  void fill(int64_t i0, int64_t j0, int64_t nr, int64_t nc, uint8_t* out) const {
    std::memset(out, 0, kTile * kTile);
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = i0 + r;
      uint8_t* o = out + r * kTile;
      if (q.mode == SigmoidLossPositives::kDiagonal) {  // one column at most: no scan
        const int64_t c = i - q.off - j0;
        if (c >= 0 && c < nc) o[c] = 1;
      } else {
        for (int64_t c = 0; c < nc; ++c) o[c] = q(i, j0 + c);
      }
    }
  }
};

// Where everything lives in the caller's workspace (byte offsets, 64-byte aligned).
struct Layout {
  int64_t dp = 0, np = 0, mp = 0, nblk = 0;
  int64_t chunks = 1;
  bool fused = false;  // backward: per-chunk dY copies instead of a second pass
  size_t x = 0, y = 0, partials = 0, part = 0, total = 0;

  Layout(const SigmoidLossParams& p, bool backward) {
    const size_t esize = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
    dp = round_up(p.d, static_cast<int64_t>(64 / esize));
    np = round_up(p.n, kTile);
    mp = round_up(p.m, kTile);
    nblk = np / kTile;
    // per-chunk dY copies (one tile GEMM less) only while they cost at most as much as the
    // packed inputs (workspace within 2 (n + m) d) and give at least 8 chunks of parallel work.
    // The chunks (contiguous row blocks, summed in chunk order) depend on the shape only, never
    // on the thread count, so dY has the same bits at any thread count.
    chunks = std::max<int64_t>(1, std::min<int64_t>({nblk, (np + mp) / mp, 32}));
    fused = backward && !p.symmetric && chunks >= 8;
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t off = at;
      at += (bytes + 63) / 64 * 64;
      return off;
    };
    x = take(np * dp * esize);
    y = take(mp * dp * esize);
    partials = take(fused ? static_cast<size_t>(chunks) * mp * dp * esize : 0);
    part = take(2 * nblk * sizeof(double));
    total = at;
  }
};

// dst[k][r] = src[r][k] for one 64-row block (the dot micro-kernel's layout of its b side);
// done per tile into a thread-local buffer: 1/64 of the tile's FMAs, no global copy.
template <typename A>
void transpose_block(const A* src, int64_t dp, A* dst) {
  for (int64_t r0 = 0; r0 < kTile; r0 += 8)
    for (int64_t k = 0; k < dp; ++k)
      for (int64_t r = r0; r < r0 + 8; ++r) dst[k * kTile + r] = src[r * dp + k];
}

template <typename A>
struct Packed {
  const A *x, *y;  // row-major, rows padded to whole tiles with zeros
  A* partials;
  double* part;
  int64_t dp, np, mp;
};

template <typename T, typename A>
Packed<A> pack_both(const SigmoidLossParams& p, const Layout& lay) {
  char* ws = static_cast<char*>(p.workspace);
  A* x = reinterpret_cast<A*>(ws + lay.x);
  A* y = reinterpret_cast<A*>(ws + lay.y);
  pack<T, A>(p.x, p.x_strides, p.n, p.d, lay.np, lay.dp, x);
  pack<T, A>(p.y, p.y_strides, p.m, p.d, lay.mp, lay.dp, y);
  double* part = reinterpret_cast<double*>(ws + lay.part);
  std::fill(part, part + 2 * lay.nblk, 0.0);
  return Packed<A>{x, y, reinterpret_cast<A*>(ws + lay.partials), part, lay.dp, lay.np, lay.mp};
}

// S tile of rows i0.. of a against rows j0.. of b; symmetric: (a_i.b_j + b_i.a_j) / 2.
template <typename A>
void logit_dots(const A* a, const A* b, int64_t i0, int64_t j0, int64_t dp, bool symmetric, A* s, A* s2, A* tr) {
  transpose_block(b + j0 * dp, dp, tr);
  dots_tile(a + i0 * dp, tr, dp, s);
  if (symmetric) {
    transpose_block(a + j0 * dp, dp, tr);
    dots_tile(b + i0 * dp, tr, dp, s2);
    for (int64_t e = 0; e < kTile * kTile; ++e) s[e] = A(0.5) * (s[e] + s2[e]);
  }
}

template <typename T, typename A>
Status fwd_impl(const SigmoidLossParams& p) {
  const Layout lay(p, false);
  const Packed<A> k = pack_both<T, A>(p, lay);
  const int64_t nblk = k.np / kTile, mblk = k.mp / kTile;
  const Positives q = Positives::of(p, false);
  double* part = k.part;
  const A scale = static_cast<A>(p.logit_scale), bias = static_cast<A>(p.bias);
#pragma omp parallel
  {
    std::vector<A> s(kTile * kTile), s2(p.symmetric ? kTile * kTile : 0), tr(static_cast<size_t>(kTile * k.dp));
    std::vector<uint8_t> pos(kTile * kTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ib = 0; ib < nblk; ++ib) {
      const int64_t i0 = ib * kTile, nr = std::min(kTile, p.n - i0);
      double acc = 0;
      for (int64_t jb = 0; jb < mblk; ++jb) {
        const int64_t j0 = jb * kTile, nc = std::min(kTile, p.m - j0);
        logit_dots(k.x, k.y, i0, j0, k.dp, p.symmetric, s.data(), s2.data(), tr.data());
        q.fill(i0, j0, nr, nc, pos.data());
        acc += loss_tile(s.data(), pos.data(), scale, bias, nr, nc);
      }
      part[ib] = acc;
    }
  }
  double total = 0;
  for (int64_t ib = 0; ib < nblk; ++ib) total += part[ib];
  *p.loss = total;
  return Status::kSuccess;
}

template <typename T, typename A>
void store_rows(const A* acc, int64_t i0, int64_t nr, int64_t d, int64_t dp, A scale, void* out,
                const int64_t* st) {
  T* o = static_cast<T*>(out);
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t kk = 0; kk < d; ++kk) Io<T>::store(o + (i0 + r) * st[0] + kk * st[1], scale * acc[r * dp + kk]);
}

// One pass over the row blocks of a (na rows) against b (nb rows): writes out_a (and, for the
// symmetric variant, out_b for the same rows); with b_partials, accumulates G^T a into the
// slice of b_partials of its chunk (chunks contiguous runs of row blocks); with part, records sum
// G and sum G dots per row block.
template <typename T, typename A>
void grad_pass(const A* a, const A* b, int64_t na, int64_t nb, int64_t d, int64_t dp, int64_t nbp,
               const Positives& q, bool symmetric, A scale, A bias, A c, void* out_a, const int64_t* st_a,
               void* out_b, const int64_t* st_b, A* b_partials, int64_t chunks, double* part) {
  const int64_t nblk = round_up(na, kTile) / kTile, mblk = round_up(nb, kTile) / kTile;
  const int64_t units = b_partials ? chunks : nblk, per = b_partials ? (nblk + chunks - 1) / chunks : 1;
#pragma omp parallel
  {
    std::vector<A> s(kTile * kTile), s2(symmetric ? kTile * kTile : 0), g(kTile * kTile);
    std::vector<A> gt(b_partials ? kTile * kTile : 0), tr(static_cast<size_t>(kTile * dp));
    std::vector<uint8_t> pos(kTile * kTile), pos_t(symmetric ? kTile * kTile : 0), pos_tt;
    std::vector<A> acc_a(static_cast<size_t>(kTile * dp)), acc_b(symmetric ? static_cast<size_t>(kTile * dp) : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < units; ++u) {
     A* mine = b_partials ? b_partials + static_cast<size_t>(u) * nbp * dp : nullptr;
     for (int64_t ib = u * per; ib < std::min(nblk, (u + 1) * per); ++ib) {
      const int64_t i0 = ib * kTile, nr = std::min(kTile, na - i0);
      std::fill(acc_a.begin(), acc_a.end(), A(0));
      std::fill(acc_b.begin(), acc_b.end(), A(0));
      double sums[2] = {0, 0};
      for (int64_t jb = 0; jb < mblk; ++jb) {
        const int64_t j0 = jb * kTile, nc = std::min(kTile, nb - j0);
        logit_dots(a, b, i0, j0, dp, symmetric, s.data(), s2.data(), tr.data());
        q.fill(i0, j0, nr, nc, pos.data());
        if (symmetric) {
          // pos_t[r][c] = positive(j0 + c, i0 + r): fill the transposed block, then transpose
          pos_tt.resize(kTile * kTile);
          q.fill(j0, i0, nc, nr, pos_tt.data());
          for (int64_t r = 0; r < kTile; ++r)
            for (int64_t cc = 0; cc < kTile; ++cc) pos_t[r * kTile + cc] = pos_tt[cc * kTile + r];
        }
        grad_tile(s.data(), pos.data(), symmetric ? pos_t.data() : nullptr, scale, bias, c, nr, nc, g.data(), sums);
        gemm_acc(g.data(), b + j0 * dp, dp, acc_a.data());
        if (symmetric) gemm_acc(g.data(), a + j0 * dp, dp, acc_b.data());
        if (mine) {
          for (int64_t r = 0; r < kTile; ++r)
            for (int64_t cc = 0; cc < kTile; ++cc) gt[cc * kTile + r] = g[r * kTile + cc];
          gemm_acc(gt.data(), a + i0 * dp, dp, mine + j0 * dp);
        }
      }
      store_rows<T, A>(acc_a.data(), i0, nr, d, dp, scale, out_a, st_a);
      if (symmetric) store_rows<T, A>(acc_b.data(), i0, nr, d, dp, scale, out_b, st_b);
      if (part) {
        part[2 * ib] = sums[0];
        part[2 * ib + 1] = sums[1];
      }
     }
    }
  }
}

template <typename T, typename A>
Status bwd_impl(const SigmoidLossBwdParams& bp) {
  const SigmoidLossParams& p = bp.fwd;
  const Layout lay(p, true);
  const Packed<A> k = pack_both<T, A>(p, lay);
  const A scale = static_cast<A>(p.logit_scale), bias = static_cast<A>(p.bias), c = static_cast<A>(bp.grad_scale);
  const int64_t nblk = lay.nblk;
  double* part = k.part;
  const Positives fwd_side = Positives::of(p, false);
  if (p.symmetric) {
    grad_pass<T, A>(k.x, k.y, p.n, p.m, p.d, k.dp, k.mp, fwd_side, true, scale, bias, c, bp.grad_x,
                    bp.grad_x_strides, bp.grad_y, bp.grad_y_strides, nullptr, 1, part);
  } else if (lay.fused) {
    const int64_t chunks = lay.chunks;
    const size_t slice = static_cast<size_t>(k.mp) * k.dp;
    std::fill(k.partials, k.partials + chunks * slice, A(0));
    grad_pass<T, A>(k.x, k.y, p.n, p.m, p.d, k.dp, k.mp, fwd_side, false, scale, bias, c, bp.grad_x,
                    bp.grad_x_strides, nullptr, nullptr, k.partials, chunks, part);
    T* gy = static_cast<T*>(bp.grad_y);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < p.m; ++j)
      for (int64_t kk = 0; kk < p.d; ++kk) {
        A v = 0;
        for (int64_t t = 0; t < chunks; ++t) v += k.partials[t * slice + j * k.dp + kk];
        Io<T>::store(gy + j * bp.grad_y_strides[0] + kk * bp.grad_y_strides[1], scale * v);
      }
  } else {
    grad_pass<T, A>(k.x, k.y, p.n, p.m, p.d, k.dp, k.mp, fwd_side, false, scale, bias, c, bp.grad_x,
                    bp.grad_x_strides, nullptr, nullptr, nullptr, 1, part);
    grad_pass<T, A>(k.y, k.x, p.m, p.n, p.d, k.dp, k.np, Positives::of(p, true), false, scale, bias, c,
                    bp.grad_y, bp.grad_y_strides, nullptr, nullptr, nullptr, 1, nullptr);
  }
  double gsum = 0, gdsum = 0;
  for (int64_t ib = 0; ib < nblk; ++ib) {
    gsum += part[2 * ib];
    gdsum += part[2 * ib + 1];
  }
  if (bp.grad_bias) *bp.grad_bias = gsum;
  if (bp.grad_t_prime) *bp.grad_t_prime = p.logit_scale * gdsum;
  return Status::kSuccess;
}

}  // namespace sl

size_t sigmoid_loss_fwd_workspace_bytes(const SigmoidLossParams& p) { return sl::Layout(p, false).total; }
size_t sigmoid_loss_bwd_workspace_bytes(const SigmoidLossBwdParams& b) { return sl::Layout(b.fwd, true).total; }

Status sigmoid_loss_fwd(const SigmoidLossParams& p) {
  Status st = sigmoid_loss_check(p);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.loss, "sigmoid_loss_fwd: loss must not be null");
  MK_CHECK_ARG(p.workspace && p.workspace_bytes >= sigmoid_loss_fwd_workspace_bytes(p),
               "sigmoid_loss_fwd: workspace must hold sigmoid_loss_fwd_workspace_bytes() bytes");
  MK_DTYPE_SWITCH(p.dtype, T, return sl::fwd_impl<T, typename Io<T>::acc>(p);)
}

Status sigmoid_loss_bwd(const SigmoidLossBwdParams& b) {
  Status st = sigmoid_loss_check(b.fwd);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(b.grad_x && b.grad_y, "sigmoid_loss_bwd: grad_x and grad_y must not be null");
  // a non-finite incoming gradient gives non-finite gradients, as in the other backends
  MK_CHECK_ARG(b.fwd.workspace && b.fwd.workspace_bytes >= sigmoid_loss_bwd_workspace_bytes(b),
               "sigmoid_loss_bwd: fwd.workspace must hold sigmoid_loss_bwd_workspace_bytes() bytes");
  MK_DTYPE_SWITCH(b.fwd.dtype, T, return sl::bwd_impl<T, typename Io<T>::acc>(b);)
}

}  // namespace cpu
}  // namespace medkernels
