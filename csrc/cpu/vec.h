// Vector primitives for the CPU kernels. Built once per x86 ISA level (AVX-512, AVX2+FMA,
// baseline) through target_clones, so the package needs no -march flag and still runs the
// widest FMA the CPU has; elsewhere they are plain loops the compiler vectorises.
#pragma once

#include <cstdint>

namespace medkernels {
namespace cpu {
namespace vec {

// out[i] = init + sum_t w[t] * src[t][i]   for i < n   (one weight per tap)
void taps_row(float* out, const float* const* src, const float* w, int ntaps, int64_t n, float init);
void taps_row(double* out, const double* const* src, const double* w, int ntaps, int64_t n, double init);

// out[i] = init[i] + sum_t w[t][i] * src[t][i] for i < n  (a weight vector per tap)
void taps_vec(float* out, const float* const* src, const float* const* w, int ntaps, int64_t n, const float* init);
void taps_vec(double* out, const double* const* src, const double* const* w, int ntaps, int64_t n,
              const double* init);

// row[i] = act(row[i]) for GELU (erf form), ReLU or SiLU, vectorised (detail/fast_math.h).
void act_row(float* row, int64_t n, int act);

// bfloat16 rows <-> float rows (round to nearest even, NaN kept quiet): vectorised conversions
// for the 16-bit storage paths.
void bf16_to_float(float* dst, const uint16_t* src, int64_t n);
void float_to_bf16(uint16_t* dst, const float* src, int64_t n);

}  // namespace vec
}  // namespace cpu
}  // namespace medkernels
