// See vec.h. Register-blocked with GCC/Clang vector types: a block of the output stays in
// registers while every tap is added (one load and one FMA per vector per tap). The vector
// width is fixed in the source; each target_clones variant lowers it to its own registers.
#include "vec.h"

#include <cstring>

#include "medkernels/detail/fast_math.h"

// GCC function multiversioning by feature (not by "arch=", whose resolver checks the CPU
// model and so never picks the AVX-512 copy on an AMD EPYC that has AVX-512).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MK_MULTIVERSION 1
#define MK_VERSIONS(DEFINE)                                     \
  DEFINE(__attribute__((target("avx512f,avx512vl,fma"))))       \
  DEFINE(__attribute__((target("avx2,fma"))))                   \
  DEFINE(__attribute__((target("default"))))
#else
#define MK_VERSIONS(DEFINE) DEFINE()
#endif
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
MK_VERSIONS(MK_DEFINE_TAPS)
#undef MK_DEFINE_TAPS

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
MK_VERSIONS(MK_DEFINE_BF16)
#undef MK_DEFINE_BF16

// act codes as medkernels::Activation: 1 gelu, 2 relu, 3 silu
#define MK_DEFINE_ACT(ATTR)                                                                  \
  ATTR void act_f(float* row, int64_t n, int act) {                                          \
    if (act == 1) {                                                                          \
      for (int64_t i = 0; i < n; ++i)                                                        \
        row[i] = 0.5f * row[i] * (1.0f + detail::fast_erff(row[i] * 0.70710678118654752f)); \
    } else if (act == 2) {                                                                   \
      for (int64_t i = 0; i < n; ++i) row[i] = row[i] > 0.0f ? row[i] : 0.0f;                \
    } else if (act == 3) {                                                                   \
      for (int64_t i = 0; i < n; ++i) row[i] = row[i] / (1.0f + detail::fast_expf(-row[i])); \
    }                                                                                        \
  }
MK_VERSIONS(MK_DEFINE_ACT)
#undef MK_DEFINE_ACT
}  // namespace mv

void act_row(float* row, int64_t n, int act) { mv::act_f(row, n, act); }

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
}  // namespace cpu
}  // namespace medkernels
