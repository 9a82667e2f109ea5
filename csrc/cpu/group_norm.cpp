// GroupNorm + add / FiLM + activation on the CPU (OpenMP). The forward reads x twice (the
// statistics, then the fused normalise-affine-activation pass) and writes y once; the
// backward reads x and grad_y twice and writes grad_x once. float32 / float16 / bfloat16 run
// the vectorised float path below (units of fixed size, float lanes folded in double, Chan
// combination in a fixed order: the bits do not depend on the thread count); float64 runs the
// scalar double path (fwd_generic / bwd_generic).
// vector arguments of the always-inlined helpers: no ABI crosses these functions
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "vec.h"
#include "vec_math.h"
#include "medkernels/detail/activation.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/group_norm.h"

namespace medkernels {

Status group_norm_check(const GroupNormParams& p) {
  MK_CHECK_ARG(p.x, "group_norm: x must be non-null");
  MK_CHECK_ARG(p.batch > 0 && p.channels > 0 && p.spatial > 0,
               "group_norm: batch, channels and spatial size must be positive, got " + std::to_string(p.batch) +
                   ", " + std::to_string(p.channels) + ", " + std::to_string(p.spatial));
  MK_CHECK_ARG(p.groups > 0 && p.channels % p.groups == 0,
               "group_norm: num_groups must be positive and divide the " + std::to_string(p.channels) +
                   " channels, got " + std::to_string(p.groups));
  MK_CHECK_ARG(std::isfinite(p.eps) && p.eps >= 0, "group_norm: eps must be finite and >= 0");
  MK_CHECK_ARG(p.mean && p.rstd, "group_norm: mean and rstd must be non-null");
  const int a = static_cast<int>(p.activation);
  MK_CHECK_ARG(a == 0 || a == 1 || a == 3, "group_norm: activation must be none, gelu or silu");
  return Status::kSuccess;
}

namespace cpu {

#define MK_GN_INLINE __attribute__((always_inline)) inline

// Per-lane coefficients (arrays of the lane period T) of the element formulas below.
struct GnTiles {
  const float *shhi, *shlo, *a, *b0, *r, *k, *d1, *d2;
};

// --- the vector kernels of the float path -----------------------------------------------------
// Every kernel walks a unit of n floats whose lane j = i mod T (T a multiple of 16 unless it
// is C itself) has its own coefficients and accumulators: NCDHW units are one channel (T = 16,
// every lane the same channel), channels-last units whole rows of C channels (T = lcm(C, 16),
// lane j is channel j mod C). Accumulators are per lane and folded by the caller in a fixed
// order, so no result depends on the thread count.
namespace gn_mv {

constexpr int kL = 16;  // the lane period of NCDHW units; every vector width divides it

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
template <typename V> struct IntOf;
template <> struct IntOf<f32x8> { typedef i32x8 type; };
template <> struct IntOf<f32x16> { typedef i32x16 type; };

template <typename V> MK_GN_INLINE V ld(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V> MK_GN_INLINE void st(float* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
template <typename V> MK_GN_INLINE V splat(float v) { return V{} + v; }

// Element loads / stores of the storage type S: float, or bfloat16 bits (uint16_t) widened and
// rounded in registers (round to nearest even, NaN kept quiet, as Io<bfloat16_t>), so 16-bit
// units need no conversion pass through a buffer.
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
template <typename V> struct Bf16Of;
template <> struct Bf16Of<f32x8> { typedef u16x8 h; typedef u32x8 u; };
template <> struct Bf16Of<f32x16> { typedef u16x16 h; typedef u32x16 u; };
template <typename V> MK_GN_INLINE V ldx(const float* p) { return ld<V>(p); }
template <typename V> MK_GN_INLINE V ldx(const uint16_t* p) {
  if constexpr (std::is_same<V, float>::value) {
    return bf16_to_float(*p);
  } else {
    typename Bf16Of<V>::h h;
    std::memcpy(&h, p, sizeof(h));
    const typename Bf16Of<V>::u u = __builtin_convertvector(h, typename Bf16Of<V>::u) << 16;
    V v;
    std::memcpy(&v, &u, sizeof(v));
    return v;
  }
}
template <typename V> MK_GN_INLINE void stx(float* p, const V& v) { st(p, v); }
template <typename V> MK_GN_INLINE void stx(uint16_t* p, const V& v) {
  if constexpr (std::is_same<V, float>::value) {
    *p = float_to_bf16(v);
  } else {
    typedef typename Bf16Of<V>::u U;
    U u;
    std::memcpy(&u, &v, sizeof(u));
    const U rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, nan = (u >> 16) | 0x40u;
    const U r = (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
    const typename Bf16Of<V>::h h = __builtin_convertvector(r, typename Bf16Of<V>::h);
    std::memcpy(p, &h, sizeof(h));
  }
}

// e^t per lane (vec_math.h) at this version's vector width
template <typename V> MK_GN_INLINE V vexp(V t) { return vmath::exp_v<V, typename IntOf<V>::type>(t); }
template <> MK_GN_INLINE float vexp<float>(float t) { return vexp(f32x8{} + t)[0]; }

// erf, Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7), NaN kept
template <typename P, typename V> MK_GN_INLINE V verf(V x) {
  const V zero = V{}, one = splat<V>(1.0f);
  const V a = x < zero ? -x : x;
  const V t = P::recip(one + 0.3275911f * a);
  const V poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const V e = one - poly * vexp(-(a * a));
  return x < zero ? -e : e;
}

// e^-z, inf past 88 (so silu(-inf) is NaN, as torch's)
template <typename V> MK_GN_INLINE V exp_neg(V z) {
  return -z > splat<V>(88.0f) ? splat<V>(INFINITY) : vexp(-z);
}

// How a version divides: IEEE division (every version's scalar lanes, AVX-512 and the baseline),
// or, in the AVX2 version, the 12-bit reciprocal and one Newton step (about 2 ulp): AVX2's
// division has a throughput of one vector per 5-7 cycles, the silu's largest single cost.
struct DivRecip {
  template <typename V> static MK_GN_INLINE V recip(V d) { return 1.0f / d; }
  template <typename V> static MK_GN_INLINE V sigmoid(V z) { return 1.0f / (1.0f + exp_neg(z)); }
  template <typename V> static MK_GN_INLINE V silu(V z) { return z / (1.0f + exp_neg(z)); }
};
#if defined(MK_CPU_MULTIVERSION)
struct Avx2Recip {
  template <typename V> static MK_GN_INLINE V recip(V d) {
    if constexpr (std::is_same<V, f32x8>::value) {
      V r;  // vrcpps as asm: the builtin is only declared where AVX is on for the whole file
      asm("vrcpps %1, %0" : "=x"(r) : "x"(d));
      return r * (2.0f - d * r);
    } else {
      return 1.0f / d;
    }
  }
  // 1 / (1 + e^-z) with e^-z clamped at e^88: the reciprocal of a number past 2^126 is 0, so
  // a very negative z gives 0 (silu(-inf) = -inf * 0 = NaN, as torch's); NaN stays NaN
  template <typename V> static MK_GN_INLINE V sigmoid(V z) {
    if constexpr (std::is_same<V, f32x8>::value) return recip(1.0f + exp_sat(-z));
    else return DivRecip::sigmoid(z);
  }
  // vexp with the clamps as vmaxps / vminps (NaN passes: it is their second source) and no
  // zero select below -87.3 (e^-87.3 instead of 0 changes nothing in 1 + e^-z)
  static MK_GN_INLINE f32x8 exp_sat(f32x8 t) {
    const f32x8 lo = splat<f32x8>(-87.3f), hi = splat<f32x8>(88.0f);
    f32x8 tc;
    asm("vmaxps %2, %1, %0" : "=x"(tc) : "x"(lo), "x"(t));
    asm("vminps %2, %1, %0" : "=x"(tc) : "x"(hi), "x"(tc));
    return vmath::exp_core<f32x8, i32x8>(tc);
  }
  template <typename V> static MK_GN_INLINE V silu(V z) {
    if constexpr (std::is_same<V, f32x8>::value) return z * sigmoid(z);
    else return DivRecip::silu(z);
  }
};
#endif

// act codes as medkernels::Activation: 0 none, 1 gelu, 3 silu
template <int ACT, typename P, typename V> MK_GN_INLINE V act_f(V z) {
  if constexpr (ACT == 1) return 0.5f * z * (1.0f + verf<P>(z * 0.70710678118654752f));
  else if constexpr (ACT == 3) return P::silu(z);
  else return z;
}
template <int ACT, typename P, typename V> MK_GN_INLINE V act_g(V z) {
  if constexpr (ACT == 1) {
    const V cdf = 0.5f * (1.0f + verf<P>(z * 0.70710678118654752f));
    return cdf + z * (vexp(-0.5f * z * z) * 0.39894228040143267794f);
  } else if constexpr (ACT == 3) {
    const V sig = P::sigmoid(z);
    return sig * (1.0f + z * (1.0f - sig));
  } else {
    return splat<V>(1.0f);
  }
}

// op.template step<V>(i, j) for i < n, j = i mod T: whole vectors of lanes, then single lanes.
// Lane j's sums are the same whatever the vector width.
template <typename V, typename Op> MK_GN_INLINE void tiled(Op& op, int64_t n, int64_t T) {
  constexpr int L = sizeof(V) / sizeof(float);
  const int64_t Tv = T - T % L;
  for (int64_t i0 = 0; i0 < n; i0 += T) {
    const int64_t len = n - i0 < T ? n - i0 : T, lv = len < Tv ? len - len % L : Tv;
    int64_t j = 0;
    for (; j < lv; j += L) op.template step<V>(i0 + j, j);
    for (; j < len; ++j) op.template step<float>(i0 + j, j);
  }
}

// Reductions: op.contrib<V>(i, j, a) adds element i's (lane j's) K terms to a[0..K). Each lane
// vector keeps four register accumulators (two lane vectors x even / odd periods), summed in
// that fixed order; the last partial period is added lane by lane. Lane j's sum is a fixed
// function of the shape: no thread count enters.
template <typename V, typename Op> MK_GN_INLINE void reduce(Op& op, int64_t n, int64_t T, float* const* acc) {
  constexpr int L = sizeof(V) / sizeof(float), K = Op::K;
  const int64_t Tv = T - T % L, full = n / T * T, rem = n - full;
  int64_t j = 0;
  for (; j + 2 * L <= Tv; j += 2 * L) {
    V a[K] = {}, b[K] = {}, c[K] = {}, d[K] = {};
    int64_t i0 = 0;
    for (; i0 + 2 * T <= full; i0 += 2 * T) {
      op.template contrib<V>(i0 + j, j, a);
      op.template contrib<V>(i0 + j + L, j + L, b);
      op.template contrib<V>(i0 + T + j, j, c);
      op.template contrib<V>(i0 + T + j + L, j + L, d);
    }
    if (i0 < full) {
      op.template contrib<V>(i0 + j, j, a);
      op.template contrib<V>(i0 + j + L, j + L, b);
    }
    for (int k = 0; k < K; ++k) {
      st(acc[k] + j, ld<V>(acc[k] + j) + (a[k] + c[k]));
      st(acc[k] + j + L, ld<V>(acc[k] + j + L) + (b[k] + d[k]));
    }
  }
  for (; j + L <= Tv; j += L) {
    V a[K] = {}, c[K] = {};
    int64_t i0 = 0;
    for (; i0 + 2 * T <= full; i0 += 2 * T) {
      op.template contrib<V>(i0 + j, j, a);
      op.template contrib<V>(i0 + T + j, j, c);
    }
    if (i0 < full) op.template contrib<V>(i0 + j, j, a);
    for (int k = 0; k < K; ++k) st(acc[k] + j, ld<V>(acc[k] + j) + (a[k] + c[k]));
  }
  for (; j < T; ++j) {
    float a[K] = {};
    for (int64_t i0 = 0; i0 < full; i0 += T) op.template contrib<float>(i0 + j, j, a);
    for (int k = 0; k < K; ++k) acc[k][j] += a[k];
  }
  for (j = 0; j < rem; ++j) {
    float a[K] = {};
    op.template contrib<float>(full + j, j, a);
    for (int k = 0; k < K; ++k) acc[k][j] += a[k];
  }
}

template <typename S> struct SumOp {
  static constexpr int K = 1;
  const S* x;
  template <typename V> MK_GN_INLINE void contrib(int64_t i, int64_t, V* a) { a[0] += ldx<V>(x + i); }
};
template <typename S> struct DevOp {
  static constexpr int K = 2;
  const S* x;
  const float* bm;
  template <typename V> MK_GN_INLINE void contrib(int64_t i, int64_t j, V* a) {
    const V d = ldx<V>(x + i) - ld<V>(bm + j);
    a[0] += d;
    a[1] += d * d;
  }
};

// d = (x + shhi) + shlo is x + add - mean with the mean in two floats (stable for a large
// mean); z = d a + b0; xhat = d r.
template <int ACT, typename P, typename S> struct FwdOp {
  const S* x;
  S* y;
  GnTiles t;
  template <typename V> MK_GN_INLINE void step(int64_t i, int64_t j) {
    const V d = (ldx<V>(x + i) + ld<V>(t.shhi + j)) + ld<V>(t.shlo + j);
    stx(y + i, act_f<ACT, P>(d * ld<V>(t.a + j) + ld<V>(t.b0 + j)));
  }
};
template <int ACT, typename P, typename S> struct Bwd1Op {
  static constexpr int K = 2;
  const S *x, *gy;
  GnTiles t;
  template <typename V> MK_GN_INLINE void contrib(int64_t i, int64_t j, V* a) {
    const V d = (ldx<V>(x + i) + ld<V>(t.shhi + j)) + ld<V>(t.shlo + j);
    const V dz = ldx<V>(gy + i) * act_g<ACT, P>(d * ld<V>(t.a + j) + ld<V>(t.b0 + j));
    a[0] += dz;
    a[1] += dz * (d * ld<V>(t.r + j));
  }
};
// dx = r (k dz - d1 - xhat d2), stored when gx is given; the sum of dx is the add's gradient
template <int ACT, typename P, typename S> struct Bwd2Op {
  static constexpr int K = 1;
  const S *x, *gy;
  S* gx;
  GnTiles t;
  template <typename V> MK_GN_INLINE void contrib(int64_t i, int64_t j, V* a) {
    const V d = (ldx<V>(x + i) + ld<V>(t.shhi + j)) + ld<V>(t.shlo + j);
    const V dz = ldx<V>(gy + i) * act_g<ACT, P>(d * ld<V>(t.a + j) + ld<V>(t.b0 + j));
    const V r = ld<V>(t.r + j);
    const V dx = r * (ld<V>(t.k + j) * dz - ld<V>(t.d1 + j) - d * r * ld<V>(t.d2 + j));
    a[0] += dx;
    if (gx) stx(gx + i, dx);
  }
};

template <typename V, typename P, typename S, template <int, typename, typename> class Op, typename... A>
MK_GN_INLINE void reduce_act(int act, int64_t n, int64_t T, float* const* acc, A... a) {
  if (act == 1) {
    Op<1, P, S> op{a...};
    reduce<V>(op, n, T, acc);
  } else if (act == 3) {
    Op<3, P, S> op{a...};
    reduce<V>(op, n, T, acc);
  } else {
    Op<0, P, S> op{a...};
    reduce<V>(op, n, T, acc);
  }
}

template <typename V, typename P, typename S, template <int, typename, typename> class Op, typename... A>
MK_GN_INLINE void by_act(int act, int64_t n, int64_t T, A... a) {
  if (act == 1) {
    Op<1, P, S> op{a...};
    tiled<V>(op, n, T);
  } else if (act == 3) {
    Op<3, P, S> op{a...};
    tiled<V>(op, n, T);
  } else {
    Op<0, P, S> op{a...};
    tiled<V>(op, n, T);
  }
}

// One version per ISA with its own vector width (8 lanes below AVX-512: 16-lane vectors split
// into AVX2 halves spilled the exp polynomial to the stack). Called from this file only, where
// all versions are visible (GCC's ifunc).
#define MK_GN_DEFINE_S(ATTR, V, P, S, SUF)                                                                      \
  ATTR void sum##SUF(const S* x, int64_t n, int64_t T, float* acc) {                                            \
    SumOp<S> op{x};                                                                                             \
    reduce<V>(op, n, T, &acc);                                                                                  \
  }                                                                                                             \
  ATTR void dev##SUF(const S* x, int64_t n, int64_t T, const float* bm, float* s, float* q) {                   \
    DevOp<S> op{x, bm};                                                                                         \
    float* acc[2] = {s, q};                                                                                     \
    reduce<V>(op, n, T, acc);                                                                                   \
  }                                                                                                             \
  ATTR void fwd##SUF(const S* x, S* y, int64_t n, int64_t T, const GnTiles& t, int act) {                       \
    by_act<V, P, S, FwdOp>(act, n, T, x, y, t);                                                                 \
  }                                                                                                             \
  ATTR void bwd1##SUF(const S* x, const S* gy, int64_t n, int64_t T, const GnTiles& t, int act, float* s1,      \
                      float* s2) {                                                                              \
    float* acc[2] = {s1, s2};                                                                                   \
    reduce_act<V, P, S, Bwd1Op>(act, n, T, acc, x, gy, t);                                                      \
  }                                                                                                             \
  ATTR void bwd2##SUF(const S* x, const S* gy, S* gx, int64_t n, int64_t T, const GnTiles& t, int act,          \
                      float* sdx) {                                                                             \
    reduce_act<V, P, S, Bwd2Op>(act, n, T, &sdx, x, gy, gx, t);                                                 \
  }
#define MK_GN_DEFINE(ATTR, V, P) MK_GN_DEFINE_S(ATTR, V, P, float, ) MK_GN_DEFINE_S(ATTR, V, P, uint16_t, _bf16)
#if defined(MK_CPU_MULTIVERSION)
MK_GN_DEFINE(__attribute__((target("avx512f,avx512vl,fma"))), f32x16, DivRecip)
MK_GN_DEFINE(__attribute__((target("avx2,fma"))), f32x8, Avx2Recip)
#endif
MK_GN_DEFINE(MK_CPU_DEFAULT_VERSION, f32x8, DivRecip)
#undef MK_GN_DEFINE
#undef MK_GN_DEFINE_S

// the storage type picks the entry point
MK_GN_INLINE void k_sum(const float* x, int64_t n, int64_t T, float* a) { sum(x, n, T, a); }
MK_GN_INLINE void k_sum(const uint16_t* x, int64_t n, int64_t T, float* a) { sum_bf16(x, n, T, a); }
MK_GN_INLINE void k_dev(const float* x, int64_t n, int64_t T, const float* bm, float* s, float* q) {
  dev(x, n, T, bm, s, q);
}
MK_GN_INLINE void k_dev(const uint16_t* x, int64_t n, int64_t T, const float* bm, float* s, float* q) {
  dev_bf16(x, n, T, bm, s, q);
}
MK_GN_INLINE void k_fwd(const float* x, float* y, int64_t n, int64_t T, const GnTiles& t, int act) {
  fwd(x, y, n, T, t, act);
}
MK_GN_INLINE void k_fwd(const uint16_t* x, uint16_t* y, int64_t n, int64_t T, const GnTiles& t, int act) {
  fwd_bf16(x, y, n, T, t, act);
}
MK_GN_INLINE void k_bwd1(const float* x, const float* gy, int64_t n, int64_t T, const GnTiles& t, int act,
                         float* s1, float* s2) {
  bwd1(x, gy, n, T, t, act, s1, s2);
}
MK_GN_INLINE void k_bwd1(const uint16_t* x, const uint16_t* gy, int64_t n, int64_t T, const GnTiles& t, int act,
                         float* s1, float* s2) {
  bwd1_bf16(x, gy, n, T, t, act, s1, s2);
}
MK_GN_INLINE void k_bwd2(const float* x, const float* gy, float* gx, int64_t n, int64_t T, const GnTiles& t, int act,
                         float* sdx) {
  bwd2(x, gy, gx, n, T, t, act, sdx);
}
MK_GN_INLINE void k_bwd2(const uint16_t* x, const uint16_t* gy, uint16_t* gx, int64_t n, int64_t T, const GnTiles& t,
                         int act, float* sdx) {
  bwd2_bf16(x, gy, gx, n, T, t, act, sdx);
}

}  // namespace gn_mv

namespace {

constexpr int64_t kBlock = 1024;  // elements of one channel per statistics block

template <typename T>
using Acc = typename Io<T>::acc;

template <typename T>
Acc<T> param(const void* p, int64_t i, Acc<T> dflt) {
  return p ? Io<T>::load(static_cast<const T*>(p) + i) : dflt;
}

// Per (n, c): mean and M2 of x over M, by blocks (two passes in cache), Chan-combined in order.
template <typename T>
void channel_moments(const GroupNormParams& p, std::vector<double>& mean, std::vector<double>& m2) {
  const int64_t N = p.batch, C = p.channels, M = p.spatial;
  const T* x = static_cast<const T*>(p.x);
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C;
    const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
    double mu = 0, s2 = 0;
    int64_t cnt = 0;
    for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
      const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
      double s = 0;
      for (int64_t i = 0; i < nb; ++i) s += Io<T>::load(xc + (m0 + i) * p.x_strides[2]);
      const double bm = s / nb;
      double q = 0;
      for (int64_t i = 0; i < nb; ++i) {
        const double d = Io<T>::load(xc + (m0 + i) * p.x_strides[2]) - bm;
        q += d * d;
      }
      const double tot = static_cast<double>(cnt + nb), delta = bm - mu;
      mu += delta * nb / tot;
      s2 += q + delta * delta * static_cast<double>(cnt) * nb / tot;
      cnt += nb;
    }
    mean[nc] = mu;
    m2[nc] = s2;
  }
}

// Per (n, g): combine the group's channels (shifted by add) in channel order -> mean, rstd.
template <typename T>
void group_stats(const GroupNormParams& p, const std::vector<double>& cm, const std::vector<double>& cm2,
                 std::vector<double>& gmean, std::vector<double>& grstd) {
  const int64_t C = p.channels, G = p.groups, Cg = C / G, M = p.spatial;
  for (int64_t ng = 0; ng < p.batch * G; ++ng) {
    const int64_t n = ng / G, g = ng % G;
    double mu = 0, s2 = 0, cnt = 0;
    for (int64_t j = 0; j < Cg; ++j) {
      const int64_t c = g * Cg + j;
      const double m = cm[n * C + c] + static_cast<double>(param<T>(p.add, n * C + c, 0));
      const double tot = cnt + M, delta = m - mu;
      mu += delta * M / tot;
      s2 += cm2[n * C + c] + delta * delta * cnt * M / tot;
      cnt = tot;
    }
    gmean[ng] = mu;
    grstd[ng] = 1.0 / std::sqrt(s2 / cnt + p.eps);
    using A = Acc<T>;
    static_cast<A*>(p.mean)[ng] = static_cast<A>(mu);
    static_cast<A*>(p.rstd)[ng] = static_cast<A>(grstd[ng]);
  }
}

// y = act(x * a + b): a = rstd w (1 + s), b = ((add - mean) rstd w + bias)(1 + s) + shift.
template <typename T>
void coefficients(const GroupNormParams& p, const double* gmean, const double* grstd, std::vector<Acc<T>>& a,
                  std::vector<Acc<T>>& b) {
  using A = Acc<T>;
  const int64_t C = p.channels, Cg = C / p.groups;
  for (int64_t nc = 0; nc < p.batch * C; ++nc) {
    const int64_t n = nc / C, c = nc % C, ng = n * p.groups + c / Cg;
    const double w = static_cast<double>(param<T>(p.weight, c, 1)), s1 = 1.0 + static_cast<double>(param<T>(p.scale, nc, 0));
    const double r = grstd[ng];
    a[nc] = static_cast<A>(r * w * s1);
    b[nc] = static_cast<A>(((static_cast<double>(param<T>(p.add, nc, 0)) - gmean[ng]) * r * w +
                            static_cast<double>(param<T>(p.bias, c, 0))) * s1 +
                           static_cast<double>(param<T>(p.shift, nc, 0)));
  }
}

template <typename T>
Status fwd_generic(const GroupNormParams& p) {
  using A = Acc<T>;
  const int64_t N = p.batch, C = p.channels, M = p.spatial;
  std::vector<double> cm(N * C), cm2(N * C), gmean(N * p.groups), grstd(N * p.groups);
  channel_moments<T>(p, cm, cm2);
  group_stats<T>(p, cm, cm2, gmean, grstd);
  std::vector<A> a(N * C), b(N * C);
  coefficients<T>(p, gmean.data(), grstd.data(), a, b);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int act = static_cast<int>(p.activation);
#pragma omp parallel
  {
    std::vector<A> buf(kBlock);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
      T* yc = y + n * p.y_strides[0] + c * p.y_strides[1];
      const A ac = a[nc], bc = b[nc];
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
        for (int64_t i = 0; i < nb; ++i) buf[i] = Io<T>::load(xc + (m0 + i) * p.x_strides[2]) * ac + bc;
        if constexpr (sizeof(A) == sizeof(float)) {
          vec::act_row(reinterpret_cast<float*>(buf.data()), nb, act);
        } else {
          for (int64_t i = 0; i < nb; ++i) buf[i] = detail::act_fwd<A>(p.activation, buf[i]);
        }
        for (int64_t i = 0; i < nb; ++i) Io<T>::store(yc + (m0 + i) * p.y_strides[2], buf[i]);
      }
    }
  }
  return Status::kSuccess;
}

// dweight, dbias (sample sums in sample order), dshift and dscale per (n, c) from the per-(n, c)
// sums S1 = sum dz and S2 = sum dz * xhat, written as A (the gradients' accumulation type);
// both the double path and the float path end with it.
template <typename T, typename A>
void write_affine_grads(const GroupNormParams& p, const GroupNormBwdParams& q, const double* S1, const double* S2) {
  const int64_t N = p.batch, C = p.channels;
  A* gw = static_cast<A*>(q.grad_weight);
  A* gb = static_cast<A*>(q.grad_bias);
  for (int64_t c = 0; c < C; ++c) {
    double w = 0, bb = 0;
    for (int64_t n = 0; n < N; ++n) {
      const double s1 = 1.0 + static_cast<double>(param<T>(p.scale, n * C + c, 0));
      w += s1 * S2[n * C + c];
      bb += s1 * S1[n * C + c];
    }
    if (gw) gw[c] = static_cast<A>(w);
    if (gb) gb[c] = static_cast<A>(bb);
  }
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C;
    if (q.grad_shift) static_cast<A*>(q.grad_shift)[nc] = static_cast<A>(S1[nc]);
    if (q.grad_scale)
      static_cast<A*>(q.grad_scale)[nc] = static_cast<A>(static_cast<double>(param<T>(p.weight, c, 1)) * S2[nc] +
                                                         static_cast<double>(param<T>(p.bias, c, 0)) * S1[nc]);
  }
}

template <typename T>
Status bwd_generic(const GroupNormBwdParams& q) {
  using A = Acc<T>;
  const GroupNormParams& p = q.fwd;
  const int64_t N = p.batch, C = p.channels, G = p.groups, Cg = C / G, M = p.spatial;
  std::vector<double> gmean(N * G), grstd(N * G);
  for (int64_t i = 0; i < N * G; ++i) {
    gmean[i] = static_cast<const A*>(p.mean)[i];
    grstd[i] = static_cast<const A*>(p.rstd)[i];
  }
  std::vector<A> a(N * C), b(N * C);
  coefficients<T>(p, gmean.data(), grstd.data(), a, b);
  const T* x = static_cast<const T*>(p.x);
  const T* gy = static_cast<const T*>(q.grad_y);
  std::vector<double> S1(N * C), S2(N * C);
  // pass 1: S1 = sum dz, S2 = sum dz * xhat per (n, c), dz = gy act'(x a + b)
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
    const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
    const T* gc = gy + n * q.grad_y_strides[0] + c * q.grad_y_strides[1];
    const A ac = a[nc], bc = b[nc];
    const A sh = static_cast<A>(param<T>(p.add, nc, 0) - gmean[ng]), r = static_cast<A>(grstd[ng]);
    double s1 = 0, s2 = 0;
    for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
      const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
      A b1 = 0, b2 = 0;
      for (int64_t i = 0; i < nb; ++i) {
        const A xv = Io<T>::load(xc + (m0 + i) * p.x_strides[2]);
        const A dz = Io<T>::load(gc + (m0 + i) * q.grad_y_strides[2]) * detail::act_grad<A>(p.activation, xv * ac + bc);
        b1 += dz;
        b2 += dz * ((xv + sh) * r);
      }
      s1 += b1;
      s2 += b2;
    }
    S1[nc] = s1;
    S2[nc] = s2;
  }
  // per (n, g): c1 = mean of dxhat, c2 = mean of dxhat * xhat; dxhat = dz w (1 + s)
  std::vector<double> k(N * C), c1(N * G, 0.0), c2(N * G, 0.0);
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
    k[nc] = static_cast<double>(param<T>(p.weight, c, 1)) * (1.0 + static_cast<double>(param<T>(p.scale, nc, 0)));
    c1[ng] += k[nc] * S1[nc];
    c2[ng] += k[nc] * S2[nc];
  }
  const double cnt = static_cast<double>(Cg) * M;
  for (int64_t ng = 0; ng < N * G; ++ng) {
    c1[ng] /= cnt;
    c2[ng] /= cnt;
  }
  std::vector<double> dadd(N * C, 0.0);
  if (q.grad_x || q.grad_add) {
    T* gx = static_cast<T*>(q.grad_x);
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
      const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
      const T* gc = gy + n * q.grad_y_strides[0] + c * q.grad_y_strides[1];
      T* gxc = gx ? gx + n * q.grad_x_strides[0] + c * q.grad_x_strides[1] : nullptr;
      const A ac = a[nc], bc = b[nc], kc = static_cast<A>(k[nc]), r = static_cast<A>(grstd[ng]);
      const A sh = static_cast<A>(param<T>(p.add, nc, 0) - gmean[ng]);
      const A d1 = static_cast<A>(c1[ng]), d2 = static_cast<A>(c2[ng]);
      double sum = 0;
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
        A bs = 0;
        for (int64_t i = 0; i < nb; ++i) {
          const A xv = Io<T>::load(xc + (m0 + i) * p.x_strides[2]);
          const A dz = Io<T>::load(gc + (m0 + i) * q.grad_y_strides[2]) * detail::act_grad<A>(p.activation, xv * ac + bc);
          const A dx = r * (kc * dz - d1 - (xv + sh) * r * d2);
          bs += dx;
          if (gxc) Io<T>::store(gxc + (m0 + i) * q.grad_x_strides[2], dx);
        }
        sum += bs;
      }
      dadd[nc] = sum;
    }
  }
  write_affine_grads<T, A>(p, q, S1.data(), S2.data());
  if (q.grad_add)
    for (int64_t nc = 0; nc < N * C; ++nc) static_cast<A*>(q.grad_add)[nc] = static_cast<A>(dadd[nc]);
  return Status::kSuccess;
}

// --- the float path (float32, float16, bfloat16) ----------------------------------------------
// Work is cut into units fixed by the shape alone: NCDHW, kUnit positions of one channel;
// channels-last, whole rows of all C channels for about kUnit floats. A unit's sums run in
// float lanes, folded in double in lane order; units combine (Chan) in unit order, channels in
// channel order. Groups whose units all fit a thread's caches run stats then output back to
// back, so x comes from DRAM once for NCDHW.
constexpr int64_t kUnit = 4096;

struct Geo {
  int64_t N, C, G, Cg, M;
  bool cl;       // channels-last organisation: units are rows of C channels
  int64_t T;     // lane period
  int64_t F;     // columns a unit folds to: 1 (NCDHW) or C
  int64_t rows;  // channels-last: positions per unit
  int64_t nblk;  // units per channel (NCDHW) or per sample (channels-last)
};

Geo geometry(const GroupNormParams& p) {
  Geo g{};
  g.N = p.batch, g.C = p.channels, g.G = p.groups, g.Cg = g.C / g.G, g.M = p.spatial;
  g.cl = p.x_strides[1] == 1 && p.x_strides[2] != 1 && g.C > 1;
  if (g.cl) {
    const int64_t l = std::lcm(g.C, static_cast<int64_t>(gn_mv::kL));
    g.T = l <= kUnit ? l : g.C;
    g.F = g.C;
    const int64_t per = g.T / g.C;  // rows per lane period
    // at least 64 rows (up to 64 Ki floats) so that the per-column work of a unit (its fold,
    // its moments, its step of the cross-unit combination) stays small next to its elements
    int64_t rows = std::max((kUnit + g.C - 1) / g.C, std::min<int64_t>(64, (16 * kUnit + g.C - 1) / g.C));
    rows = (rows + per - 1) / per * per;
    g.rows = rows;
    g.nblk = (g.M + rows - 1) / rows;
  } else {
    g.T = gn_mv::kL, g.F = 1, g.rows = 1;
    g.nblk = (g.M + kUnit - 1) / kUnit;
  }
  return g;
}

struct View {
  int64_t off, rows, cols, rs, cs;
  bool flat() const { return cs == 1 && (rows == 1 || rs == cols); }
  int64_t size() const { return rows * cols; }
};

// NCDHW unit b of channel (n, c); channels-last unit b of sample n; s the tensor's strides
View unit_view(const Geo& g, const int64_t* s, int64_t n, int64_t c, int64_t b) {
  if (g.cl) {
    const int64_t p0 = b * g.rows, len = std::min(g.rows, g.M - p0);
    return {n * s[0] + p0 * s[2], len, g.C, s[2], s[1]};
  }
  const int64_t m0 = b * kUnit, len = std::min(kUnit, g.M - m0);
  return {n * s[0] + c * s[1] + m0 * s[2], 1, len, 0, s[2]};
}

template <typename T>
const float* load(float* buf, const void* base, const View& v) {
  const T* src = static_cast<const T*>(base) + v.off;
  if (v.flat()) {
    if constexpr (std::is_same<T, float>::value) {
      return src;
    } else if constexpr (std::is_same<T, bfloat16_t>::value) {
      vec::bf16_to_float(buf, reinterpret_cast<const uint16_t*>(src), v.size());
    } else {
      for (int64_t i = 0; i < v.size(); ++i) buf[i] = Io<T>::load(src + i);
    }
    return buf;
  }
  for (int64_t r = 0; r < v.rows; ++r)
    for (int64_t c = 0; c < v.cols; ++c) buf[r * v.cols + c] = Io<T>::load(src + r * v.rs + c * v.cs);
  return buf;
}

// where a unit's output is computed: in place for float32 flat units, else a buffer
template <typename T>
float* out_buffer(float* buf, void* base, const View& v) {
  if constexpr (std::is_same<T, float>::value) {
    if (v.flat()) return static_cast<float*>(base) + v.off;
  }
  return buf;
}

template <typename T>
void store(void* base, const View& v, const float* val) {
  T* dst = static_cast<T*>(base) + v.off;
  if (v.flat()) {
    if constexpr (std::is_same<T, float>::value) {
      if (val != dst) std::memcpy(dst, val, sizeof(float) * v.size());
    } else if constexpr (std::is_same<T, bfloat16_t>::value) {
      vec::float_to_bf16(reinterpret_cast<uint16_t*>(dst), val, v.size());
    } else {
      for (int64_t i = 0; i < v.size(); ++i) Io<T>::store(dst + i, val[i]);
    }
    return;
  }
  for (int64_t r = 0; r < v.rows; ++r)
    for (int64_t c = 0; c < v.cols; ++c) Io<T>::store(dst + r * v.rs + c * v.cs, val[r * v.cols + c]);
}

// bfloat16 units that are flat go to the kernels as they are (converted in registers)
template <typename T>
constexpr bool kDirect = std::is_same<T, bfloat16_t>::value;
inline const uint16_t* raw(const void* base, const View& v) { return static_cast<const uint16_t*>(base) + v.off; }
inline uint16_t* raw(void* base, const View& v) { return static_cast<uint16_t*>(base) + v.off; }

// per (n, c): the coefficients of the element formulas (gn_mv), in GnTiles' order
struct Coef {
  float v[8];  // shhi, shlo, a, b0, r, k, d1, d2
};

// One thread's buffers.
struct Scratch {
  std::vector<float> xb, gb, ob, lanes, tiles;
  std::vector<double> cols;
  int64_t T, F;
  explicit Scratch(const Geo& g)
      : xb(g.cl ? g.rows * g.C : kUnit), gb(xb.size()), ob(xb.size()), lanes(4 * g.T), tiles(8 * g.T),
        cols(3 * g.F), T(g.T), F(g.F) {}
  float* lane(int i) { return lanes.data() + i * T; }
  // lane j of tile q = coef[j mod F].v[q]
  GnTiles tiles_from(const Coef* coef) {
    for (int q = 0; q < 8; ++q)
      for (int64_t j = 0; j < T; ++j) tiles[q * T + j] = coef[j % F].v[q];
    const float* t = tiles.data();
    return {t, t + T, t + 2 * T, t + 3 * T, t + 4 * T, t + 5 * T, t + 6 * T, t + 7 * T};
  }
  // col[c] = sum over the lanes of column c, in lane order
  void fold(const float* lane, double* col) const {
    for (int64_t c = 0; c < F; ++c) col[c] = 0;
    for (int64_t j = 0; j < T; ++j) col[j % F] += lane[j];
  }
  void zero(int i) { std::fill(lanes.begin() + i * T, lanes.begin() + (i + 1) * T, 0.0f); }
};

// Moments of one unit per column: block mean in float, then shifted sums (corrected two-pass).
template <typename S>
void unit_moments(const S* x, int64_t n, Scratch& s, double* mean, double* m2) {
  const int64_t T = s.T, F = s.F;
  float *acc = s.lane(0), *bm = s.lane(1), *sd = s.lane(2), *sq = s.lane(3);
  double *c0 = s.cols.data(), *c1 = c0 + F, *c2 = c1 + F;
  s.zero(0);
  gn_mv::k_sum(x, n, T, acc);
  s.fold(acc, c0);
  const double cnt = static_cast<double>(n / F), inv = 1.0 / cnt;
  for (int64_t c = 0; c < F; ++c) c0[c] = static_cast<float>(c0[c] * inv);
  for (int64_t j = 0; j < T; ++j) bm[j] = static_cast<float>(c0[j % F]);
  s.zero(2);
  s.zero(3);
  gn_mv::k_dev(x, n, T, bm, sd, sq);
  s.fold(sd, c1);
  s.fold(sq, c2);
  for (int64_t c = 0; c < F; ++c) {
    mean[c] = c0[c] + c1[c] * inv;
    const double v = c2[c] - c1[c] * c1[c] * inv;
    m2[c] = v < 0 ? 0.0 : v;  // rounding only; NaN stays
  }
}

// Chan's combination of (count, mean, M2) pairs, in order.
struct Moments {
  double cnt = 0, mu = 0, m2 = 0;
  void add(double n, double m, double q) {
    const double tot = cnt + n, delta = m - mu, f = n / tot;
    mu += delta * f;
    m2 += q + delta * delta * cnt * f;
    cnt = tot;
  }
};

template <typename T>
double pval(const void* p, int64_t i, double dflt) {
  return p ? static_cast<double>(Io<T>::load(static_cast<const T*>(p) + i)) : dflt;
}


// Coefficients of group ng's channels from its mean and rstd.
template <typename T>
void set_coefs(const GroupNormParams& p, int64_t ng, double mean, double rstd, Coef* coef) {
  const int64_t C = p.channels, G = p.groups, Cg = C / G, n = ng / G, c0 = (ng % G) * Cg;
  for (int64_t c = c0; c < c0 + Cg; ++c) {
    const int64_t nc = n * C + c;
    const double sh = pval<T>(p.add, nc, 0) - mean, w = pval<T>(p.weight, c, 1), s1 = 1 + pval<T>(p.scale, nc, 0);
    const float hi = static_cast<float>(sh);
    coef[nc] = {{hi, static_cast<float>(sh - hi), static_cast<float>(rstd * w * s1),
                 static_cast<float>(pval<T>(p.bias, c, 0) * s1 + pval<T>(p.shift, nc, 0)), static_cast<float>(rstd),
                 static_cast<float>(w * s1), 0.0f, 0.0f}};
  }
}

// Group ng from its channels' moments (shifted by add), then its channels' coefficients.
template <typename T>
void finish_group(const GroupNormParams& p, int64_t ng, const double* cm, const double* cm2, Coef* coef) {
  const int64_t C = p.channels, G = p.groups, Cg = C / G, n = ng / G, c0 = (ng % G) * Cg;
  Moments g;
  for (int64_t c = c0; c < c0 + Cg; ++c) g.add(static_cast<double>(p.spatial), cm[n * C + c] + pval<T>(p.add, n * C + c, 0), cm2[n * C + c]);
  const double rstd = 1.0 / std::sqrt(g.m2 / g.cnt + p.eps);
  static_cast<float*>(p.mean)[ng] = static_cast<float>(g.mu);
  static_cast<float*>(p.rstd)[ng] = static_cast<float>(rstd);
  set_coefs<T>(p, ng, g.mu, rstd, coef);
}

// A large output about to be written whole gets transparent huge pages where the system leaves
// them to madvise (the Linux default): a fresh tensor's first touch then faults once per 2 MiB,
// not once per 4 KiB (on the 2-core test machine, 48 ms -> 11 ms for a 56 MiB output, more than
// the kernel's own time). Only the 2 MiB-aligned interior of the tensor's own span is advised;
// failure (not anonymous memory, no THP) is ignored.
void advise_huge_pages(void* base, const int64_t* strides, const Geo& g, int64_t elem) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (strides[0] < 0 || strides[1] < 0 || strides[2] < 0) return;
  const int64_t span = ((g.N - 1) * strides[0] + (g.C - 1) * strides[1] + (g.M - 1) * strides[2] + 1) * elem;
  constexpr int64_t kHuge = int64_t(1) << 21;
  if (span < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(base) + kHuge - 1) & ~static_cast<uintptr_t>(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(base) + span) & ~static_cast<uintptr_t>(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)base, (void)strides, (void)g, (void)elem;
#endif
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Whole groups per thread (no barriers; each group's data stays in its thread's caches between
// the passes; dynamic schedule, so a descheduled thread on a busy machine does not hold the
// others) when there are at least two groups a thread, else every group by the whole team.
bool groups_per_thread(int64_t ng) { return ng >= 2 * static_cast<int64_t>(max_threads()); }

// --- forward ---
template <typename T>
struct Fwd {
  const GroupNormParams& p;
  const Geo& g;
  std::vector<double> pm, pq, cm, cm2;
  std::vector<Coef> coef;
  Fwd(const GroupNormParams& p_, const Geo& g_)
      : p(p_), g(g_), pm(g.N * g.C * g.nblk), pq(pm.size()), cm(g.N * g.C), cm2(g.N * g.C), coef(g.N * g.C) {}

  // NCDHW: unit u of group ng is channel g*Cg + u / nblk, block u % nblk
  void nc_stats(Scratch& s, int64_t ng, int64_t u) {
    const int64_t nc = (ng / g.G) * g.C + (ng % g.G) * g.Cg + u / g.nblk, b = u % g.nblk;
    const View v = unit_view(g, p.x_strides, nc / g.C, nc % g.C, b);
    if constexpr (kDirect<T>) {
      if (v.flat()) return unit_moments(raw(p.x, v), v.size(), s, &pm[nc * g.nblk + b], &pq[nc * g.nblk + b]);
    }
    unit_moments(load<T>(s.xb.data(), p.x, v), v.size(), s, &pm[nc * g.nblk + b], &pq[nc * g.nblk + b]);
  }
  void nc_finish(int64_t ng) {
    const int64_t c0 = (ng / g.G) * g.C + (ng % g.G) * g.Cg;
    for (int64_t nc = c0; nc < c0 + g.Cg; ++nc) {
      Moments m;
      for (int64_t b = 0; b < g.nblk; ++b)
        m.add(static_cast<double>(std::min(kUnit, g.M - b * kUnit)), pm[nc * g.nblk + b], pq[nc * g.nblk + b]);
      cm[nc] = m.mu, cm2[nc] = m.m2;
    }
    finish_group<T>(p, ng, cm.data(), cm2.data(), coef.data());
  }
  void nc_apply(Scratch& s, int64_t ng, int64_t u) {
    const int64_t nc = (ng / g.G) * g.C + (ng % g.G) * g.Cg + u / g.nblk, b = u % g.nblk;
    const int64_t n = nc / g.C, c = nc % g.C;
    apply(s, s.tiles_from(&coef[nc]), unit_view(g, p.x_strides, n, c, b), unit_view(g, p.y_strides, n, c, b));
  }
  void apply(Scratch& s, const GnTiles& t, const View& vx, const View& vy) {
    const int act = static_cast<int>(p.activation);
    if constexpr (kDirect<T>) {
      if (vx.flat() && vy.flat()) return gn_mv::k_fwd(raw(p.x, vx), raw(p.y, vy), vx.size(), g.T, t, act);
    }
    const float* x = load<T>(s.xb.data(), p.x, vx);
    float* y = out_buffer<T>(s.ob.data(), p.y, vy);
    gn_mv::k_fwd(x, y, vx.size(), g.T, t, act);
    store<T>(p.y, vy, y);
  }

  void cl_stats(Scratch& s, int64_t n, int64_t b) {
    const View v = unit_view(g, p.x_strides, n, 0, b);
    const int64_t at = (n * g.nblk + b) * g.C;
    if constexpr (kDirect<T>) {
      if (v.flat()) return unit_moments(raw(p.x, v), v.size(), s, &pm[at], &pq[at]);
    }
    unit_moments(load<T>(s.xb.data(), p.x, v), v.size(), s, &pm[at], &pq[at]);
  }
  void cl_channel(int64_t n, int64_t c) {
    Moments m;
    for (int64_t b = 0; b < g.nblk; ++b) {
      const int64_t at = (n * g.nblk + b) * g.C + c;
      m.add(static_cast<double>(std::min(g.rows, g.M - b * g.rows)), pm[at], pq[at]);
    }
    cm[n * g.C + c] = m.mu, cm2[n * g.C + c] = m.m2;
  }
  void cl_apply(Scratch& s, const GnTiles& t, int64_t n, int64_t b) {
    apply(s, t, unit_view(g, p.x_strides, n, 0, b), unit_view(g, p.y_strides, n, 0, b));
  }

  void run() {
    const int64_t NG = g.N * g.G, per_group = g.Cg * g.nblk;
    const bool own = !g.cl && groups_per_thread(NG);
    advise_huge_pages(p.y, p.y_strides, g, sizeof(T));
#pragma omp parallel
    {
      Scratch s(g);
      if (own) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t ng = 0; ng < NG; ++ng) {
          for (int64_t u = 0; u < per_group; ++u) nc_stats(s, ng, u);
          nc_finish(ng);
          for (int64_t u = 0; u < per_group; ++u) nc_apply(s, ng, u);
        }
      } else if (!g.cl) {
        for (int64_t ng = 0; ng < NG; ++ng) {
#pragma omp for schedule(dynamic, 4)
          for (int64_t u = 0; u < per_group; ++u) nc_stats(s, ng, u);
#pragma omp single
          nc_finish(ng);
#pragma omp for schedule(dynamic, 4) nowait
          for (int64_t u = 0; u < per_group; ++u) nc_apply(s, ng, u);
        }
      } else {
        for (int64_t n = 0; n < g.N; ++n) {
#pragma omp for schedule(dynamic, 4)
          for (int64_t b = 0; b < g.nblk; ++b) cl_stats(s, n, b);
#pragma omp for schedule(static)
          for (int64_t c = 0; c < g.C; ++c) cl_channel(n, c);
#pragma omp single
          for (int64_t gg = 0; gg < g.G; ++gg) finish_group<T>(p, n * g.G + gg, cm.data(), cm2.data(), coef.data());
          const GnTiles t = s.tiles_from(&coef[n * g.C]);
#pragma omp for schedule(dynamic, 4) nowait
          for (int64_t b = 0; b < g.nblk; ++b) cl_apply(s, t, n, b);
        }
      }
    }
  }
};

// --- backward ---
template <typename T>
struct Bwd {
  const GroupNormBwdParams& q;
  const GroupNormParams& p;
  const Geo& g;
  std::vector<double> ps1, ps2, pdx, S1, S2;
  std::vector<Coef> coef;
  const int act;
  const bool pass2;
  Bwd(const GroupNormBwdParams& q_, const Geo& g_)
      : q(q_), p(q_.fwd), g(g_), ps1(g.N * g.C * g.nblk), ps2(ps1.size()), pdx(ps1.size()), S1(g.N * g.C),
        S2(g.N * g.C), coef(g.N * g.C), act(static_cast<int>(p.activation)), pass2(q.grad_x || q.grad_add) {
    for (int64_t ng = 0; ng < g.N * g.G; ++ng)
      set_coefs<T>(p, ng, static_cast<const float*>(p.mean)[ng], static_cast<const float*>(p.rstd)[ng], coef.data());
  }
  // per (n, g): d1 = mean of dxhat, d2 = mean of dxhat xhat; dxhat = dz w (1 + s)
  void finish_dx_group(int64_t ng) {
    const int64_t c0 = (ng / g.G) * g.C + (ng % g.G) * g.Cg;
    double c1 = 0, c2 = 0;
    for (int64_t nc = c0; nc < c0 + g.Cg; ++nc) {
      const double k = pval<T>(p.weight, nc % g.C, 1) * (1 + pval<T>(p.scale, nc, 0));
      c1 += k * S1[nc];
      c2 += k * S2[nc];
    }
    const double cnt = static_cast<double>(g.Cg) * g.M;
    for (int64_t nc = c0; nc < c0 + g.Cg; ++nc) {
      coef[nc].v[6] = static_cast<float>(c1 / cnt);
      coef[nc].v[7] = static_cast<float>(c2 / cnt);
    }
  }
  // the unit's lanes folded into its columns' partial sums at ps[at ...]
  void fold_to(Scratch& s, const float* lane, std::vector<double>& ps, int64_t at) {
    s.fold(lane, &ps[at]);
  }
  void unit(Scratch& s, const GnTiles& t, int64_t n, int64_t c, int64_t b, int64_t at, bool second) {
    const View vx = unit_view(g, p.x_strides, n, c, b), vg = unit_view(g, q.grad_y_strides, n, c, b);
    if constexpr (kDirect<T>) {
      const View vo = q.grad_x ? unit_view(g, q.grad_x_strides, n, c, b) : vx;
      if (vx.flat() && vg.flat() && vo.flat()) {
        if (!second) {
          s.zero(0);
          s.zero(1);
          gn_mv::k_bwd1(raw(p.x, vx), raw(q.grad_y, vg), vx.size(), g.T, t, act, s.lane(0), s.lane(1));
          fold_to(s, s.lane(0), ps1, at);
          fold_to(s, s.lane(1), ps2, at);
        } else {
          s.zero(2);
          gn_mv::k_bwd2(raw(p.x, vx), raw(q.grad_y, vg), q.grad_x ? raw(q.grad_x, vo) : nullptr, vx.size(), g.T, t,
                        act, s.lane(2));
          fold_to(s, s.lane(2), pdx, at);
        }
        return;
      }
    }
    const float* x = load<T>(s.xb.data(), p.x, vx);
    const float* gy = load<T>(s.gb.data(), q.grad_y, vg);
    if (!second) {
      s.zero(0);
      s.zero(1);
      gn_mv::k_bwd1(x, gy, vx.size(), g.T, t, act, s.lane(0), s.lane(1));
      fold_to(s, s.lane(0), ps1, at);
      fold_to(s, s.lane(1), ps2, at);
      return;
    }
    s.zero(2);
    if (q.grad_x) {
      const View vo = unit_view(g, q.grad_x_strides, n, c, b);
      float* gx = out_buffer<T>(s.ob.data(), q.grad_x, vo);
      gn_mv::k_bwd2(x, gy, gx, vx.size(), g.T, t, act, s.lane(2));
      store<T>(q.grad_x, vo, gx);
    } else {
      gn_mv::k_bwd2(x, gy, static_cast<float*>(nullptr), vx.size(), g.T, t, act, s.lane(2));
    }
    fold_to(s, s.lane(2), pdx, at);
  }
  void nc_unit(Scratch& s, int64_t ng, int64_t u, bool second) {
    const int64_t nc = (ng / g.G) * g.C + (ng % g.G) * g.Cg + u / g.nblk, b = u % g.nblk;
    unit(s, s.tiles_from(&coef[nc]), nc / g.C, nc % g.C, b, nc * g.nblk + b, second);
  }
  void nc_sums(int64_t ng) {
    const int64_t c0 = (ng / g.G) * g.C + (ng % g.G) * g.Cg;
    for (int64_t nc = c0; nc < c0 + g.Cg; ++nc) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < g.nblk; ++k) a += ps1[nc * g.nblk + k], b += ps2[nc * g.nblk + k];
      S1[nc] = a, S2[nc] = b;
    }
    finish_dx_group(ng);
  }
  void cl_sums(int64_t n, int64_t c) {
    double a = 0, b = 0;
    for (int64_t k = 0; k < g.nblk; ++k) {
      const int64_t at = (n * g.nblk + k) * g.C + c;
      a += ps1[at], b += ps2[at];
    }
    S1[n * g.C + c] = a, S2[n * g.C + c] = b;
  }

  void run() {
    const int64_t NG = g.N * g.G, per_group = g.Cg * g.nblk;
    const bool own = !g.cl && groups_per_thread(NG);
    if (q.grad_x) advise_huge_pages(q.grad_x, q.grad_x_strides, g, sizeof(T));
#pragma omp parallel
    {
      Scratch s(g);
      if (own) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t ng = 0; ng < NG; ++ng) {
          for (int64_t u = 0; u < per_group; ++u) nc_unit(s, ng, u, false);
          nc_sums(ng);
          if (pass2)
            for (int64_t u = 0; u < per_group; ++u) nc_unit(s, ng, u, true);
        }
      } else if (!g.cl) {
        for (int64_t ng = 0; ng < NG; ++ng) {
#pragma omp for schedule(dynamic, 4)
          for (int64_t u = 0; u < per_group; ++u) nc_unit(s, ng, u, false);
#pragma omp single
          nc_sums(ng);
          if (pass2) {
#pragma omp for schedule(dynamic, 4) nowait
            for (int64_t u = 0; u < per_group; ++u) nc_unit(s, ng, u, true);
          }
        }
      } else {
        for (int64_t n = 0; n < g.N; ++n) {
          GnTiles t = s.tiles_from(&coef[n * g.C]);
#pragma omp for schedule(dynamic, 4)
          for (int64_t b = 0; b < g.nblk; ++b) unit(s, t, n, 0, b, (n * g.nblk + b) * g.C, false);
#pragma omp for schedule(static)
          for (int64_t c = 0; c < g.C; ++c) cl_sums(n, c);
#pragma omp single
          for (int64_t gg = 0; gg < g.G; ++gg) finish_dx_group(n * g.G + gg);
          if (pass2) {
            t = s.tiles_from(&coef[n * g.C]);
#pragma omp for schedule(dynamic, 4) nowait
            for (int64_t b = 0; b < g.nblk; ++b) unit(s, t, n, 0, b, (n * g.nblk + b) * g.C, true);
          }
        }
      }
    }
    write_param_grads();
  }

  void write_param_grads() {
    const int64_t N = g.N, C = g.C;
    write_affine_grads<T, float>(p, q, S1.data(), S2.data());
    if (!q.grad_add) return;
    for (int64_t nc = 0; nc < N * C; ++nc) {  // dadd: dx's unit sums in unit order
      const int64_t c = nc % C;
      double sum = 0;
      if (g.cl) {
        for (int64_t k = 0; k < g.nblk; ++k) sum += pdx[((nc / C) * g.nblk + k) * C + c];
      } else {
        for (int64_t k = 0; k < g.nblk; ++k) sum += pdx[nc * g.nblk + k];
      }
      static_cast<float*>(q.grad_add)[nc] = static_cast<float>(sum);
    }
  }
};

template <typename T>
Status fwd_impl(const GroupNormParams& p) {
  if constexpr (std::is_same<T, double>::value) {
    return fwd_generic<T>(p);
  } else {
    const Geo g = geometry(p);
    Fwd<T>(p, g).run();
    return Status::kSuccess;
  }
}

template <typename T>
Status bwd_impl(const GroupNormBwdParams& q) {
  if constexpr (std::is_same<T, double>::value) {
    return bwd_generic<T>(q);
  } else {
    const Geo g = geometry(q.fwd);
    Bwd<T>(q, g).run();
    return Status::kSuccess;
  }
}

}  // namespace

Status group_norm_fwd(const GroupNormParams& p) {
  const Status s = group_norm_check(p);
  if (s != Status::kSuccess) return s;
  MK_CHECK_ARG(p.y, "group_norm_fwd: y must be non-null");
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_impl<T>(p);)
}

Status group_norm_bwd(const GroupNormBwdParams& q) {
  const Status s = group_norm_check(q.fwd);
  if (s != Status::kSuccess) return s;
  MK_CHECK_ARG(q.grad_y, "group_norm_bwd: grad_y must be non-null");
  MK_DTYPE_SWITCH(q.fwd.dtype, T, return bwd_impl<T>(q);)
}

}  // namespace cpu
}  // namespace medkernels
