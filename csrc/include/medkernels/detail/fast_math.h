// Branch-free float math that compilers vectorise (Cephes-style polynomials), shared by the CPU
// kernels' vector loops. Accuracy: exp ~1 ulp on [-87, 88]; log ~1e-7 relative for normal
// positive finite floats; erf max abs error 1.5e-7 (Abramowitz & Stegun 7.1.26).
// Always inlined on the host, so each ISA version of a vector loop gets its own copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "medkernels/common.h"

namespace medkernels {
namespace detail {

MK_HD float fast_expf(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float y = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(two_k));
  return y * two_k;
}

// Natural log of a normal positive finite float (Cephes logf), branch-free: x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), the mantissa select done with bit masks so it vectorises.
MK_HD float fast_logf(float x) {
  const uint32_t ux = float_to_bits(x);
  int e = static_cast<int>((ux >> 23) & 0xff) - 126;  // x = m * 2^e, m in [0.5, 1)
  const float m = bits_to_float((ux & 0x007fffffu) | 0x3f000000u);
  const uint32_t small = 0u - static_cast<uint32_t>(m < 0.707106781186547524f);  // all ones when m < sqrt(1/2)
  e -= static_cast<int>(small & 1u);
  const float f = bits_to_float((float_to_bits(m + m - 1.0f) & small) | (float_to_bits(m - 1.0f) & ~small));
  const float z = f * f;
  float y = 7.0376836292E-2f;
  y = y * f - 1.1514610310E-1f;
  y = y * f + 1.1676998740E-1f;
  y = y * f - 1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f;
  y = y * f - 1.6668057665E-1f;
  y = y * f + 2.0000714765E-1f;
  y = y * f - 2.4999993993E-1f;
  y = y * f + 3.3333331174E-1f;
  y = y * f * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440E-4f * fe;
  y += -0.5f * z;
  return f + y + 0.693359375f * fe;
}

MK_HD float fast_erff(float x) {
  const float a = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float e = 1.0f - poly * fast_expf(-a * a);
  return std::copysign(e, x);
}

}  // namespace detail
}  // namespace medkernels
