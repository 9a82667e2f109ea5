// Counter-based Philox-4x32-10 and the normal transform of the medkernels noise contract,
// shared (MK_HD) by the C++ CPU and CUDA kernels. The Triton kernels and the PyTorch reference
// (medkernels/reference/diffusion.py) implement the same contract:
//
//   key     = (seed mod 2^32, seed >> 32)
//   element i (row-major within its sample) of sample b:  g = i / 4, lane = i % 4
//   counter = (g, b, offset mod 2^32, offset >> 32)
//   (x0, x1, x2, x3) = Philox-4x32-10(counter, key)          (Salmon et al., SC'11; Random123)
//   u(x)    = ((x >> 9) + 0.5) * 2^-23                        in (0, 1), exact in fp32
//   pair(a, b): r = sqrt(-2 log u(a)), th = 2pi u(b) -> (r cos th, r sin th), in fp32
//   lanes 0, 1 = pair(x0, x1); lanes 2, 3 = pair(x2, x3)
//
// The 32-bit words are the same bits on every backend; the fp32 normals differ between
// platforms only by a few ulps of their logf / cosf / sinf (libm, CUDA, or the C++ CPU kernel's
// vectorised polynomials): at most ~1e-6 absolute.
#pragma once

#include <cmath>
#include <cstdint>

#include "medkernels/common.h"

namespace medkernels {
namespace detail {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t x[4];
};

MK_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  Philox4 out;
  out.x[0] = c0;
  out.x[1] = c1;
  out.x[2] = c2;
  out.x[3] = c3;
  return out;
}

// The words of group g of sample b for (seed, offset).
MK_HD Philox4 philox_words(uint64_t seed, uint64_t offset, uint64_t b, uint64_t g) {
  return philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(b), static_cast<uint32_t>(offset),
                       static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

MK_HD float philox_uniform(uint32_t x) { return (static_cast<float>(x >> 9) + 0.5f) * 1.1920928955078125e-07f; }

// The four fp32 normals of group g of sample b (elements 4g .. 4g + 3).
MK_HD void philox_normal4(uint64_t seed, uint64_t offset, uint64_t b, uint64_t g, float z[4]) {
  const Philox4 w = philox_words(seed, offset, b, g);
  const float two_pi = 6.283185307179586f;
  const float r01 = sqrtf(-2.0f * logf(philox_uniform(w.x[0])));
  const float th01 = philox_uniform(w.x[1]) * two_pi;
  const float r23 = sqrtf(-2.0f * logf(philox_uniform(w.x[2])));
  const float th23 = philox_uniform(w.x[3]) * two_pi;
  z[0] = r01 * cosf(th01);
  z[1] = r01 * sinf(th01);
  z[2] = r23 * cosf(th23);
  z[3] = r23 * sinf(th23);
}

}  // namespace detail
}  // namespace medkernels
