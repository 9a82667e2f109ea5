// What the CPU kernels share for their vector code: the ISA versions every hot loop is built
// in, and math on whole GCC vectors of 16 floats (window attention's softmax, the sigmoid
// loss's softplus). The multiversioned loops inline the math, so every ISA build lowers it to
// its own registers.
#pragma once

#include <cstdint>

// GCC function multiversioning by feature (not by "arch=", whose resolver checks the CPU
// model and so never picks the AVX-512 copy on an AMD EPYC that has AVX-512):
// MK_CPU_VERSIONS(DEFINE) expands DEFINE(attribute) once per version; elsewhere one plain
// version. MK_CPU_DEFAULT_VERSION marks the fallback of a hand-written set of versions.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MK_CPU_MULTIVERSION 1
#define MK_CPU_VERSIONS(DEFINE)                              \
  DEFINE(__attribute__((target("avx512f,avx512vl,fma"))))    \
  DEFINE(__attribute__((target("avx2,fma"))))                \
  DEFINE(__attribute__((target("default"))))
#define MK_CPU_DEFAULT_VERSION __attribute__((target("default")))
#else
#define MK_CPU_VERSIONS(DEFINE) DEFINE()
#define MK_CPU_DEFAULT_VERSION
#endif

namespace medkernels {
namespace cpu {
namespace vmath {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

// e^t per lane: 2^k p(r) with k = round(t / ln 2) (the 1.5 * 2^23 rounding trick), r the
// Cody-Waite reduced argument and p Cephes' expf polynomial, about 1 ulp: detail/fast_math.h's
// fast_expf written on whole vectors (fast_expf per lane measured 1.7-2.4x slower in the
// softmax). exp_core takes t already clamped to [-87.3, 88]; exp_v clamps (t above 88 gives
// e^88, no overflow to garbage) and returns 0 below -87.3 (masked logits, -inf included). Any
// GCC float vector V with I its int32 vector of the same lanes.
template <typename V, typename I>
__attribute__((always_inline)) inline V exp_core(V tc) {
  const V kf = (tc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const V r = (tc - kf * 0.693359375f) - kf * -2.12194440e-4f;
  V q = V{} + 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const V p = q * r * r + r + 1.0f;
  const I kb = (__builtin_convertvector(kf, I) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &kb, sizeof(scale));
  return p * scale;
}
template <typename V, typename I>
__attribute__((always_inline)) inline V exp_v(V t) {
  const V lo = V{} - 87.3f, hi = V{} + 88.0f;
  V tc = t < lo ? lo : t;
  tc = tc > hi ? hi : tc;
  return t < lo ? V{} : exp_core<V, I>(tc);
}
__attribute__((always_inline)) inline f32x16 exp(f32x16 t) { return exp_v<f32x16, i32x16>(t); }

}  // namespace vmath
}  // namespace cpu
}  // namespace medkernels
