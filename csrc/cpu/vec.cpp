// See vec.h. Register-blocked with GCC/Clang vector types: a block of the output stays in
// registers while every tap is added (one load and one FMA per vector per tap). The vector
// width is fixed in the source; each target_clones variant lowers it to its own registers.
#include "vec.h"

#include <cmath>
#include <cstring>

#include "medkernels/detail/fast_math.h"
#include "vec_math.h"

#define MK_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace medkernels {
namespace cpu {
namespace vec {
namespace {

typedef float f16v __attribute__((vector_size(64)));
typedef float f8v __attribute__((vector_size(32)));
typedef double d8v __attribute__((vector_size(64)));
typedef double d4v __attribute__((vector_size(32)));

template <typename V, typename A>
MK_ALWAYS_INLINE V vload(const A* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename A>
MK_ALWAYS_INLINE void vstore(A* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Two vectors of V (2L elements) per step, then one of H (a half-width vector), then scalars.
template <typename V, typename Hv, typename A>
MK_ALWAYS_INLINE void taps_row_impl(A* out, const A* const* src, const A* w, int ntaps, int64_t n, A init) {
  constexpr int L = sizeof(V) / sizeof(A);
  constexpr int LH = sizeof(Hv) / sizeof(A);
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    V a0 = V{} + init, a1 = V{} + init;
    for (int t = 0; t < ntaps; ++t) {
      const A* s = src[t] + i;
      a0 += w[t] * vload<V>(s);
      a1 += w[t] * vload<V>(s + L);
    }
    vstore(out + i, a0);
    vstore(out + i + L, a1);
  }
  for (; i + LH <= n; i += LH) {
    Hv a = Hv{} + init;
    for (int t = 0; t < ntaps; ++t) a += w[t] * vload<Hv>(src[t] + i);
    vstore(out + i, a);
  }
  for (; i < n; ++i) {
    A acc = init;
    for (int t = 0; t < ntaps; ++t) acc += w[t] * src[t][i];
    out[i] = acc;
  }
}

template <typename V, typename A>
MK_ALWAYS_INLINE void taps_vec_impl(A* out, const A* const* src, const A* const* w, int ntaps, int64_t n,
                                    const A* init) {
  constexpr int L = sizeof(V) / sizeof(A);
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    V a0 = init ? vload<V>(init + i) : V{};
    V a1 = init ? vload<V>(init + i + L) : V{};
    for (int t = 0; t < ntaps; ++t) {
      a0 += vload<V>(w[t] + i) * vload<V>(src[t] + i);
      a1 += vload<V>(w[t] + i + L) * vload<V>(src[t] + i + L);
    }
    vstore(out + i, a0);
    vstore(out + i + L, a1);
  }
  for (; i + L <= n; i += L) {
    V a = init ? vload<V>(init + i) : V{};
    for (int t = 0; t < ntaps; ++t) a += vload<V>(w[t] + i) * vload<V>(src[t] + i);
    vstore(out + i, a);
  }
  for (; i < n; ++i) {
    A acc = init ? init[i] : A(0);
    for (int t = 0; t < ntaps; ++t) acc += w[t][i] * src[t][i];
    out[i] = acc;
  }
}


// One block of R rows x NV vectors of output channels starting at channel c0, kept in
// registers across all taps and input channels.
template <typename V, int R, int NV>
MK_ALWAYS_INLINE void dense_block(float* out, const float* const* src, int64_t src_rs, const float* w, int ntaps,
                                  int64_t ci_n, int64_t co_n, int64_t c0, const float* init) {
  constexpr int L = sizeof(V) / sizeof(float);
  V acc[R][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const V b = init ? vload<V>(init + c0 + v * L) : V{};
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int t = 0; t < ntaps; ++t) {
    const float* s = src[t];
    const float* wt = w + static_cast<int64_t>(t) * ci_n * co_n + c0;
    for (int64_t i = 0; i < ci_n; ++i) {
      V wv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) wv[v] = vload<V>(wt + i * co_n + v * L);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float x = s[r * src_rs + i];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] += x * wv[v];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(out + r * co_n + c0 + v * L, acc[r][v]);
}

// nr (1..6) rows of one channel chunk.
template <typename V, int NV>
MK_ALWAYS_INLINE void dense_rows(int nr, float* out, const float* const* src, int64_t src_rs, const float* w,
                                 int ntaps, int64_t ci_n, int64_t co_n, int64_t c0, const float* init) {
  switch (nr) {
    case 6: dense_block<V, 6, NV>(out, src, src_rs, w, ntaps, ci_n, co_n, c0, init); break;
    case 5: dense_block<V, 5, NV>(out, src, src_rs, w, ntaps, ci_n, co_n, c0, init); break;
    case 4: dense_block<V, 4, NV>(out, src, src_rs, w, ntaps, ci_n, co_n, c0, init); break;
    case 3: dense_block<V, 3, NV>(out, src, src_rs, w, ntaps, ci_n, co_n, c0, init); break;
    case 2: dense_block<V, 2, NV>(out, src, src_rs, w, ntaps, ci_n, co_n, c0, init); break;
    default: dense_block<V, 1, NV>(out, src, src_rs, w, ntaps, ci_n, co_n, c0, init); break;
  }
}

// Rows in blocks of R (<= 6; the last block shorter); channels in chunks of NV vectors, then
// single vectors, then scalars.
template <typename V, int R, int NV>
MK_ALWAYS_INLINE void dense_taps_impl(float* out, const float* const* src, int64_t src_rs, const float* w,
                                      int ntaps, int64_t ci_n, int64_t co_n, int64_t rows, const float* init) {
  static_assert(R >= 1 && R <= 6, "dense_rows handles up to 6 rows");
  constexpr int L = sizeof(V) / sizeof(float);
  const float* s[kDenseMaxTaps];
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const int nr = static_cast<int>(rows - r0 < R ? rows - r0 : R);
    for (int t = 0; t < ntaps; ++t) s[t] = src[t] + r0 * src_rs;
    float* o = out + r0 * co_n;
    int64_t c = 0;
    for (; c + NV * L <= co_n; c += NV * L) dense_rows<V, NV>(nr, o, s, src_rs, w, ntaps, ci_n, co_n, c, init);
    for (; c + L <= co_n; c += L) dense_rows<V, 1>(nr, o, s, src_rs, w, ntaps, ci_n, co_n, c, init);
    for (; c < co_n; ++c)  // channels past the last whole vector
      for (int r = 0; r < nr; ++r) {
        float a = init ? init[c] : 0.0f;
        for (int t = 0; t < ntaps; ++t)
          for (int64_t i = 0; i < ci_n; ++i) a += s[t][r * src_rs + i] * w[(t * ci_n + i) * co_n + c];
        o[r * co_n + c] = a;
      }
  }
}

}  // namespace

// The versions are internal; the exported entry points below call them from this file, where
// every version is visible, so GCC builds the ifunc dispatcher here (a caller in another file
// would bind to the default version).
namespace mv {
#define MK_DEFINE_TAPS(ATTR)                                                                                 \
  ATTR void row_f(float* out, const float* const* src, const float* w, int ntaps, int64_t n, float init) {       \
    taps_row_impl<f16v, f8v, float>(out, src, w, ntaps, n, init);                                                \
  }                                                                                                              \
  ATTR void row_d(double* out, const double* const* src, const double* w, int ntaps, int64_t n, double init) {   \
    taps_row_impl<d8v, d4v, double>(out, src, w, ntaps, n, init);                                                \
  }                                                                                                              \
  ATTR void vec_f(float* out, const float* const* src, const float* const* w, int ntaps, int64_t n,              \
                  const float* init) {                                                                           \
    taps_vec_impl<f16v, float>(out, src, w, ntaps, n, init);                                                     \
  }                                                                                                              \
  ATTR void vec_d(double* out, const double* const* src, const double* const* w, int ntaps, int64_t n,           \
                  const double* init) {                                                                          \
    taps_vec_impl<d8v, double>(out, src, w, ntaps, n, init);                                                     \
  }
MK_CPU_VERSIONS(MK_DEFINE_TAPS)
#undef MK_DEFINE_TAPS

// 6 rows x 64 channels = 24 AVX-512 accumulators; the narrower targets use 8-lane vectors
// (6 x 16 channels = 12 AVX2 accumulators).
#if defined(MK_CPU_MULTIVERSION)
__attribute__((target("avx512f,avx512vl,fma"))) void dense_f(float* out, const float* const* src, int64_t src_rs,
                                                             const float* w, int ntaps, int64_t ci_n, int64_t co_n,
                                                             int64_t rows, const float* init) {
  dense_taps_impl<f16v, 6, 4>(out, src, src_rs, w, ntaps, ci_n, co_n, rows, init);
}
__attribute__((target("avx2,fma"))) void dense_f(float* out, const float* const* src, int64_t src_rs,
                                                 const float* w, int ntaps, int64_t ci_n, int64_t co_n, int64_t rows,
                                                 const float* init) {
  dense_taps_impl<f8v, 6, 2>(out, src, src_rs, w, ntaps, ci_n, co_n, rows, init);
}
#endif
MK_CPU_DEFAULT_VERSION void dense_f(float* out, const float* const* src, int64_t src_rs, const float* w, int ntaps,
                                int64_t ci_n, int64_t co_n, int64_t rows, const float* init) {
  dense_taps_impl<f8v, 4, 2>(out, src, src_rs, w, ntaps, ci_n, co_n, rows, init);
}

// Branch-free loops over 32-bit lanes, so every version vectorises them.
#define MK_DEFINE_BF16(ATTR)                                                        \
  ATTR void bf16_to_f(float* dst, const uint16_t* src, int64_t n) {                 \
    for (int64_t i = 0; i < n; ++i) {                                               \
      const uint32_t u = static_cast<uint32_t>(src[i]) << 16;                       \
      std::memcpy(dst + i, &u, 4);                                                  \
    }                                                                               \
  }                                                                                 \
  ATTR void f_to_bf16(uint16_t* dst, const float* src, int64_t n) {                 \
    for (int64_t i = 0; i < n; ++i) {                                               \
      uint32_t u;                                                                   \
      std::memcpy(&u, src + i, 4);                                                  \
      const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;              \
      const uint32_t nan = (u >> 16) | 0x40u;                                       \
      dst[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded); \
    }                                                                               \
  }
MK_CPU_VERSIONS(MK_DEFINE_BF16)
#undef MK_DEFINE_BF16

// act codes as medkernels::Activation: 1 gelu, 2 relu, 3 silu
#define MK_DEFINE_ACT(ATTR)                                                                  \
  ATTR void act_f(float* row, int64_t n, int act) {                                          \
    if (act == 1) {                                                                          \
      for (int64_t i = 0; i < n; ++i)                                                        \
        row[i] = 0.5f * row[i] * (1.0f + detail::fast_erff(row[i] * 0.70710678118654752f)); \
    } else if (act == 2) {                                                                   \
      for (int64_t i = 0; i < n; ++i) row[i] = row[i] < 0.0f ? 0.0f : row[i];  /* NaN stays */\
    } else if (act == 3) {                                                                   \
      for (int64_t i = 0; i < n; ++i) /* exp past 88 is inf (fast_expf clamps): silu(-inf) NaN, as torch */ \
        row[i] = row[i] / (1.0f + (-row[i] > 88.0f ? INFINITY : detail::fast_expf(-row[i])));        \
    }                                                                                        \
  }
MK_CPU_VERSIONS(MK_DEFINE_ACT)
#undef MK_DEFINE_ACT
}  // namespace mv

void act_row(float* row, int64_t n, int act) { mv::act_f(row, n, act); }

void dense_taps(float* out, const float* const* src, int64_t src_rs, const float* w, int ntaps, int64_t ci_n,
                int64_t co_n, int64_t rows, const float* init) {
  mv::dense_f(out, src, src_rs, w, ntaps, ci_n, co_n, rows, init);
}

void bf16_to_float(float* dst, const uint16_t* src, int64_t n) { mv::bf16_to_f(dst, src, n); }
void float_to_bf16(uint16_t* dst, const float* src, int64_t n) { mv::f_to_bf16(dst, src, n); }

void taps_row(float* out, const float* const* src, const float* w, int ntaps, int64_t n, float init) {
  mv::row_f(out, src, w, ntaps, n, init);
}
void taps_row(double* out, const double* const* src, const double* w, int ntaps, int64_t n, double init) {
  mv::row_d(out, src, w, ntaps, n, init);
}
void taps_vec(float* out, const float* const* src, const float* const* w, int ntaps, int64_t n, const float* init) {
  mv::vec_f(out, src, w, ntaps, n, init);
}
void taps_vec(double* out, const double* const* src, const double* const* w, int ntaps, int64_t n,
              const double* init) {
  mv::vec_d(out, src, w, ntaps, n, init);
}

}  // namespace vec

const char* vector_isa() {
#ifdef MK_CPU_MULTIVERSION
  // the same features MK_CPU_VERSIONS dispatches on
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
  return "default";
}

}  // namespace cpu
}  // namespace medkernels
