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

// Dense taps (a direct convolution's inner block): for r < rows, c < co_n
//   out[r * co_n + c] = init[c] + sum_t sum_i src[t][r * src_rs + i] * w[(t * ci_n + i) * co_n + c]
// src[t] points at row 0's ci_n input channels for tap t; w is [ntaps][ci_n][co_n]; init may be
// null; ntaps <= kDenseMaxTaps. Rows x output channels are register-blocked; every tap and input channel is one
// broadcast-FMA step per accumulator.
constexpr int kDenseMaxTaps = 64;
void dense_taps(float* out, const float* const* src, int64_t src_rs, const float* w, int ntaps, int64_t ci_n,
                int64_t co_n, int64_t rows, const float* init);

// row[i] = act(row[i]) for GELU (erf form), ReLU or SiLU, vectorised (detail/fast_math.h).
void act_row(float* row, int64_t n, int act);

// bfloat16 rows <-> float rows (round to nearest even, NaN kept quiet): vectorised conversions
// for the 16-bit storage paths.
void bf16_to_float(float* dst, const uint16_t* src, int64_t n);
void float_to_bf16(uint16_t* dst, const float* src, int64_t n);

}  // namespace vec
}  // namespace cpu
}  // namespace medkernels
