// medkernels common definitions: status codes, dtypes, half/bfloat16 conversions and the
// MK_HD macro that marks every function shared by the C++ CPU and the CUDA kernels.
// Plain C++17: no torch, no Python, so other frameworks can vendor it.
#pragma once

#include <cstdint>
#include <cstring>

// MK_HD: the one marker of shared code (per-element math, per-thread bodies, block programs).
// Under nvcc: __host__ __device__, force-inlined. On the host with GCC/Clang: always inlined, so
// each ISA version of a CPU loop (target_clones, MK_CPU_VERSIONS) gets its own copy of the math
// instead of a call to one baseline-ISA copy. Elsewhere: inline.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MK_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MK_HD __attribute__((always_inline)) inline
#else
#define MK_HD inline
#endif
// MK_UNROLL before a loop: unrolled on the device (register arrays must be indexed by
// constants); a no-op elsewhere.
#if defined(__CUDA_ARCH__)
#define MK_UNROLL _Pragma("unroll")
#else
#define MK_UNROLL
#endif

namespace medkernels {

// Library version (semantic): the C ABI and headers are versioned by this.
constexpr int kVersionMajor = 0;
constexpr int kVersionMinor = 1;
constexpr int kVersionPatch = 0;

enum class Status : int {
  kSuccess = 0,
  kInvalidArgument = 1,  // a shape, stride, size or option is out of range
  kUnsupported = 2,      // a valid request this build or device cannot run
  kCudaError = 3,        // a CUDA runtime call or launch failed
};

// Message for the last non-success Status returned on the calling thread.
const char* last_error();

namespace cuda {
// True when this library was built with the CUDA kernels.
bool available();
}  // namespace cuda

namespace cpu {
// The vector ISA the CPU kernels' multiversioned loops run on this machine: "avx512" (AVX-512F+VL
// with FMA), "avx2" (AVX2+FMA) or "default" (baseline, or a build without multiversioning).
const char* vector_isa();
}  // namespace cpu

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

MK_HD const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

enum class Activation : int { kNone = 0, kGelu = 1, kRelu = 2, kSilu = 3 };

// Storage types for 16-bit floats on the host: raw bits. The CUDA side uses __half and
// __nv_bfloat16 instead; both convert through float with the functions below.
struct half_t { uint16_t bits; };
struct bfloat16_t { uint16_t bits; };

MK_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
MK_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

MK_HD float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays a quiet NaN.
MK_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

MK_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // subnormal: value = mant * 2^-24
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round to nearest even, overflow to inf, NaN kept.
MK_HD uint16_t float_to_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (au >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
  if (au < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    const float a = bits_to_float(au);
    // a * 2^24 rounded to nearest even integer gives the subnormal mantissa
    const float scaled = a * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t v = au + 0xc8000fffu + ((au >> 13) & 1u);  // rebias exponent (-112 << 23) and round
  return static_cast<uint16_t>(sign | (v >> 13));
}

// Load / store one element of storage type T as float (or double for double).
template <typename T> struct Io;
template <> struct Io<float> {
  using acc = float;
  MK_HD static float load(const float* p) { return *p; }
  MK_HD static void store(float* p, float v) { *p = v; }
};
template <> struct Io<double> {
  using acc = double;
  MK_HD static double load(const double* p) { return *p; }
  MK_HD static void store(double* p, double v) { *p = v; }
};
template <> struct Io<half_t> {
  using acc = float;
  MK_HD static float load(const half_t* p) { return half_to_float(p->bits); }
  MK_HD static void store(half_t* p, float v) { p->bits = float_to_half(v); }
};
template <> struct Io<bfloat16_t> {
  using acc = float;
  MK_HD static float load(const bfloat16_t* p) { return bf16_to_float(p->bits); }
  MK_HD static void store(bfloat16_t* p, float v) { p->bits = float_to_bf16(v); }
};

}  // namespace medkernels
