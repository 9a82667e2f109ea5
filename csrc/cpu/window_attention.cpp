// (Shifted) window attention in 3D on the CPU (OpenMP). See medkernels/window_attention.h.
//
// Forward: one task per (direction, batch, window, head). The window's q, k, v are gathered
// from the strided volumes into small contiguous buffers (keys transposed so the logits of a
// query are a unit-stride loop over keys), each query's logits row gets bias, shift mask and
// softmax in one pass, and the output goes straight back to the token's place.
// Backward: one task per (direction, chunk of windows, head), the chunk's windows in order:
// P is recomputed from the saved log-sum-exp, dS = P (dO V^T - rowsum(dO O)); dq per query,
// dk, dv per key, and dS summed into the task's own (N, N) slice of the workspace. The slices
// and the padding-token gradients are then summed in a fixed order: the bias-table gradient is
// the same bits on every run. The chunk count depends on the sizes only, never on threads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/detail/window_attention_kernels.h"
#include "medkernels/window_attention.h"

// Two primitives carry every O(N^2 E) loop, each over a row of N keys: y += a * x and a dot
// product with 16 fixed lanes (the same summation order on every run). They are built per
// x86 ISA level (AVX-512, AVX2+FMA, baseline) by GCC function multiversioning, as csrc/cpu/vec.cpp.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MK_WA_VERSIONS(DEFINE)                              \
  DEFINE(__attribute__((target("avx512f,avx512vl,fma")))) \
  DEFINE(__attribute__((target("avx2,fma"))))             \
  DEFINE(__attribute__((target("default"))))
#else
#define MK_WA_VERSIONS(DEFINE) DEFINE()
#endif

namespace medkernels {
namespace cpu {
namespace wa_detail {

// y[i] = exp(y[i] - m) in float, vectorisable: 2^k * p(r) with k = round((y - m) / ln 2), r the
// Cody-Waite reduced argument and p Cephes' expf polynomial (about 1 ulp); below -87.3 (masked
// logits, -inf included) the result is 0. Inlined into each ISA version of exp_shift.
__attribute__((always_inline)) inline void exp_shift_f32(float* __restrict y, float m, int64_t n) {
  int64_t i = 0;
  for (; i < n; i += 16) {
    const int lanes = n - i < 16 ? int(n - i) : 16;
    float t[16], kf[16], p[16];
    int32_t kb[16];
    for (int l = 0; l < 16; ++l) t[l] = l < lanes ? y[i + l] - m : -100.0f;
    for (int l = 0; l < 16; ++l) {
      const float tc = t[l] < -87.3f ? -87.3f : t[l];
      kf[l] = (tc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
      const float r = (tc - kf[l] * 0.693359375f) - kf[l] * -2.12194440e-4f;
      float q = 1.9875691500e-4f;
      q = q * r + 1.3981999507e-3f;
      q = q * r + 8.3334519073e-3f;
      q = q * r + 4.1665795894e-2f;
      q = q * r + 1.6666665459e-1f;
      q = q * r + 5.0000001201e-1f;
      p[l] = q * r * r + r + 1.0f;
      kb[l] = (int32_t(kf[l]) + 127) << 23;
    }
    float scale[16];
    std::memcpy(scale, kb, sizeof(scale));
    for (int l = 0; l < 16; ++l) p[l] = t[l] < -87.3f ? 0.0f : p[l] * scale[l];
    for (int l = 0; l < lanes; ++l) y[i + l] = p[l];
  }
}
// Four query rows at a time: the accumulators of a 4 x LANES tile stay in registers while the
// head dimension is summed (4 FMAs per load), instead of one row's axpy per element.
template <typename A, int L>
__attribute__((always_inline)) inline void gemv4_impl(A* __restrict s, int64_t ld, const A* __restrict x, int64_t E,
                                                      const A* __restrict M, int64_t np) {
  // s[r][j] = sum_e x[r][e] * M[e][j], r < 4, j < np (np a multiple of L; rows of s and M: ld)
  for (int64_t j0 = 0; j0 < np; j0 += L) {
    A a0[L] = {}, a1[L] = {}, a2[L] = {}, a3[L] = {};
    for (int64_t e = 0; e < E; ++e) {
      const A* m = M + e * ld + j0;
      const A x0 = x[e], x1 = x[E + e], x2 = x[2 * E + e], x3 = x[3 * E + e];
      for (int l = 0; l < L; ++l) {
        a0[l] += x0 * m[l];
        a1[l] += x1 * m[l];
        a2[l] += x2 * m[l];
        a3[l] += x3 * m[l];
      }
    }
    for (int l = 0; l < L; ++l) {
      s[j0 + l] = a0[l];
      s[ld + j0 + l] = a1[l];
      s[2 * ld + j0 + l] = a2[l];
      s[3 * ld + j0 + l] = a3[l];
    }
  }
}

template <typename A, int L>
__attribute__((always_inline)) inline void dot4_impl(A* __restrict out, const A* __restrict P, int64_t ld,
                                                     const A* __restrict x, int64_t n) {
  // out[r] = sum_j P[r][j] x[j], fixed lanes: the same order on every run
  A a0[L] = {}, a1[L] = {}, a2[L] = {}, a3[L] = {};
  int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) {
      const A xv = x[j + l];
      a0[l] += P[j + l] * xv;
      a1[l] += P[ld + j + l] * xv;
      a2[l] += P[2 * ld + j + l] * xv;
      a3[l] += P[3 * ld + j + l] * xv;
    }
  for (int l = 0; j + l < n; ++l) {
    const A xv = x[j + l];
    a0[l] += P[j + l] * xv;
    a1[l] += P[ld + j + l] * xv;
    a2[l] += P[2 * ld + j + l] * xv;
    a3[l] += P[3 * ld + j + l] * xv;
  }
  A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int l = 0; l < L; ++l) {
    s0 += a0[l];
    s1 += a1[l];
    s2 += a2[l];
    s3 += a3[l];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

template <typename A>
__attribute__((always_inline)) inline void axpy4_impl(A* __restrict y, const A* a, const A* __restrict X, int64_t ld,
                                                      int64_t n) {
  const A a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  for (int64_t j = 0; j < n; ++j) y[j] += a0 * X[j] + a1 * X[ld + j] + a2 * X[2 * ld + j] + a3 * X[3 * ld + j];
}

#define MK_WA_DEFINE(ATTR)                                                                    \
  ATTR void axpy(float* __restrict y, float a, const float* __restrict x, int64_t n) {        \
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];                                         \
  }                                                                                           \
  ATTR void axpy(double* __restrict y, double a, const double* __restrict x, int64_t n) {     \
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];                                         \
  }                                                                                           \
  ATTR float dot(const float* __restrict a, const float* __restrict b, int64_t n) {           \
    float acc[16] = {0};                                                                      \
    int64_t i = 0;                                                                            \
    for (; i + 16 <= n; i += 16)                                                              \
      for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];                             \
    for (int l = 0; i + l < n; ++l) acc[l] += a[i + l] * b[i + l];                            \
    float s = 0;                                                                              \
    for (int l = 0; l < 16; ++l) s += acc[l];                                                 \
    return s;                                                                                 \
  }                                                                                           \
  ATTR double dot(const double* __restrict a, const double* __restrict b, int64_t n) {        \
    double acc[8] = {0};                                                                      \
    int64_t i = 0;                                                                            \
    for (; i + 8 <= n; i += 8)                                                                \
      for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];                              \
    for (int l = 0; i + l < n; ++l) acc[l] += a[i + l] * b[i + l];                            \
    double s = 0;                                                                             \
    for (int l = 0; l < 8; ++l) s += acc[l];                                                  \
    return s;                                                                                 \
  }                                                                                           \
  ATTR void exp_shift(float* __restrict y, float m, int64_t n) { exp_shift_f32(y, m, n); }    \
  ATTR void exp_shift(double* __restrict y, double m, int64_t n) {                            \
    for (int64_t i = 0; i < n; ++i) y[i] = std::exp(y[i] - m);                                \
  }                                                                                           \
  ATTR void gemv4(float* s, int64_t ld, const float* x, int64_t E, const float* M, int64_t np) { \
    gemv4_impl<float, 16>(s, ld, x, E, M, np);                                                \
  }                                                                                           \
  ATTR void gemv4(double* s, int64_t ld, const double* x, int64_t E, const double* M, int64_t np) { \
    gemv4_impl<double, 8>(s, ld, x, E, M, np);                                                \
  }                                                                                           \
  ATTR void dot4(float* out, const float* P, int64_t ld, const float* x, int64_t n) {         \
    dot4_impl<float, 16>(out, P, ld, x, n);                                                   \
  }                                                                                           \
  ATTR void dot4(double* out, const double* P, int64_t ld, const double* x, int64_t n) {      \
    dot4_impl<double, 8>(out, P, ld, x, n);                                                   \
  }                                                                                           \
  ATTR void axpy4(float* y, const float* a, const float* X, int64_t ld, int64_t n) {          \
    axpy4_impl<float>(y, a, X, ld, n);                                                        \
  }                                                                                           \
  ATTR void axpy4(double* y, const double* a, const double* X, int64_t ld, int64_t n) {       \
    axpy4_impl<double>(y, a, X, ld, n);                                                       \
  }

MK_WA_VERSIONS(MK_WA_DEFINE)
#undef MK_WA_DEFINE

}  // namespace wa_detail
}  // namespace cpu

Status window_attention_check(const WindowAttentionParams& p) {
  MK_CHECK_ARG(p.directions == 1 || p.directions == 2,
               "window_attention: directions must be 1 or 2, got " + std::to_string(p.directions));
  MK_CHECK_ARG(p.q0 && p.k0 && p.v0 && p.o0 && p.lse, "window_attention: q, k, v, out and lse must not be null");
  MK_CHECK_ARG(p.directions == 1 || (p.q1 && p.k1 && p.v1 && p.o1),
               "window_attention: direction 1 needs q1, k1, v1 and o1");
  MK_CHECK_ARG(p.batch >= 1 && p.heads >= 1 && p.head_dim >= 1,
               "window_attention: batch, heads and head_dim must be >= 1");
  for (int a = 0; a < 3; ++a) {
    MK_CHECK_ARG(p.size[a] >= 1, "window_attention: sizes must be >= 1");
    MK_CHECK_ARG(p.window[a] >= 1 && p.eff_window[a] >= 1 && p.eff_window[a] <= p.window[a],
                 "window_attention: need 1 <= eff_window <= window on every axis");
    MK_CHECK_ARG(p.shift[a] >= 0 && p.shift[a] < p.eff_window[a],
                 "window_attention: shift must be in [0, eff_window) on every axis");
    MK_CHECK_ARG(p.padded[a] >= p.size[a] && p.padded[a] % p.eff_window[a] == 0 &&
                     p.padded[a] - p.size[a] < p.eff_window[a],
                 "window_attention: padded must be size rounded up to a multiple of eff_window");
  }
  return Status::kSuccess;
}

namespace {

// Where each window-local token of each window lives, and the pairwise bias index.
struct Geometry {
  int64_t N = 0, nW = 0;
  std::vector<int64_t> coord;  // (nW, N): ((od * H + oh) * W + ow), or -1 for a padding token
  std::vector<int32_t> od, oh, ow;
  std::vector<uint8_t> region;  // (nW, N) shift region id
  std::vector<int32_t> bias_index;  // (N, N)
};

Geometry make_geometry(const WindowAttentionParams& p) {
  Geometry g;
  const int64_t WD = p.eff_window[0], WH = p.eff_window[1], WW = p.eff_window[2];
  const int64_t nwd = p.padded[0] / WD, nwh = p.padded[1] / WH, nww = p.padded[2] / WW;
  g.N = WD * WH * WW;
  g.nW = nwd * nwh * nww;
  const int64_t total = g.nW * g.N;
  g.coord.resize(total);
  g.od.resize(total);
  g.oh.resize(total);
  g.ow.resize(total);
  g.region.resize(total);
  auto region_of = [&](int a, int64_t x) -> int {
    if (p.shift[a] == 0) return 0;  // MONAI: an unshifted axis is one region
    return int(x >= p.padded[a] - p.eff_window[a]) + int(x >= p.padded[a] - p.shift[a]);
  };
  for (int64_t w = 0; w < g.nW; ++w) {
    const int64_t wd0 = (w / (nwh * nww)) * WD, wh0 = ((w / nww) % nwh) * WH, ww0 = (w % nww) * WW;
    for (int64_t t = 0; t < g.N; ++t) {
      const int64_t xd = wd0 + t / (WH * WW), xh = wh0 + (t / WW) % WH, xw = ww0 + t % WW;
      const int64_t d = (xd + p.shift[0]) % p.padded[0];
      const int64_t h = (xh + p.shift[1]) % p.padded[1];
      const int64_t x = (xw + p.shift[2]) % p.padded[2];
      const bool valid = d < p.size[0] && h < p.size[1] && x < p.size[2];
      const int64_t i = w * g.N + t;
      g.coord[i] = valid ? (d * p.size[1] + h) * p.size[2] + x : -1;
      g.od[i] = int32_t(d);
      g.oh[i] = int32_t(h);
      g.ow[i] = int32_t(x);
      g.region[i] = uint8_t(region_of(0, xd) * 9 + region_of(1, xh) * 3 + region_of(2, xw));
    }
  }
  // Swin's index of the configured window on flat token indices (index[:n, :n]); the
  // per-token coordinates first, so the N x N loop has no divisions
  const int64_t CWH = p.window[1], CWW = p.window[2];
  std::vector<int64_t> cd(g.N), ch(g.N), cw(g.N);
  for (int64_t t = 0; t < g.N; ++t) {
    cd[t] = t / (CWH * CWW);
    ch[t] = (t / CWW) % CWH;
    cw[t] = t % CWW;
  }
  const int64_t sd = (2 * CWH - 1) * (2 * CWW - 1), sh = 2 * CWW - 1;
  const int64_t base = (p.window[0] - 1) * sd + (CWH - 1) * sh + (CWW - 1);
  g.bias_index.resize(g.N * g.N);
  for (int64_t i = 0; i < g.N; ++i) {
    const int64_t bi = base + cd[i] * sd + ch[i] * sh + cw[i];
    int32_t* row = g.bias_index.data() + i * g.N;
    for (int64_t j = 0; j < g.N; ++j) row[j] = int32_t(bi - (cd[j] * sd + ch[j] * sh + cw[j]));
  }
  return g;
}

inline int64_t offset(const int64_t* s, int64_t b, const Geometry& g, int64_t i, int64_t h) {
  return b * s[0] + g.od[i] * s[1] + g.oh[i] * s[2] + g.ow[i] * s[3] + h * s[4];
}

// Everything added to q.k * scale, per head: (heads, N, N) bias (+ nothing else; the shift
// mask and padding mask depend on the window and are applied per row).
template <typename T, typename A>
std::vector<A> bias_values(const WindowAttentionParams& p, const Geometry& g) {
  std::vector<A> out;
  if (!p.table) return out;
  const T* table = static_cast<const T*>(p.table);
  const int64_t NN = g.N * g.N;
  out.resize(p.heads * NN);
  for (int64_t ij = 0; ij < NN; ++ij) {
    const T* row = table + int64_t(g.bias_index[ij]) * p.heads;
    for (int64_t h = 0; h < p.heads; ++h) out[h * NN + ij] = Io<T>::load(row + h);
  }
  return out;
}

template <typename A>
struct Window {
  // token buffers of one (window, head): Q (N4, E) with N4 = N rounded up to 4 (zero rows), and
  // K^T, V^T (E, ld) with ld = N rounded up to 16 (zero columns)
  int64_t N, N4, ld;
  std::vector<A> Q, KT, VT;
  std::vector<uint8_t> valid;
  Window(int64_t n, int64_t E)
      : N(n), N4((n + 3) / 4 * 4), ld((n + 15) / 16 * 16), Q(N4 * E, A(0)), KT(E * ld, A(0)), VT(E * ld, A(0)),
        valid(N4, 0) {}
};

template <typename T, typename A>
void gather(const WindowAttentionParams& p, const Geometry& g, int64_t b, int64_t w, int64_t h, const T* q,
            const T* k, const T* v, Window<A>& win) {
  const int64_t N = g.N, E = p.head_dim, ld = win.ld;
  const T* pad = static_cast<const T*>(p.pad_kv);
  for (int64_t t = 0; t < N; ++t) {
    const int64_t i = w * N + t;
    const bool ok = g.coord[i] >= 0;
    win.valid[t] = ok;
    if (ok) {
      const T* qp = q + offset(p.q_strides, b, g, i, h);
      const T* kp = k + offset(p.k_strides, b, g, i, h);
      const T* vp = v + offset(p.v_strides, b, g, i, h);
      for (int64_t e = 0; e < E; ++e) {
        win.Q[t * E + e] = Io<T>::load(qp + e * p.q_strides[5]);
        win.KT[e * ld + t] = Io<T>::load(kp + e * p.k_strides[5]);
        win.VT[e * ld + t] = Io<T>::load(vp + e * p.v_strides[5]);
      }
    } else {
      for (int64_t e = 0; e < E; ++e) {
        win.Q[t * E + e] = A(0);
        win.KT[e * ld + t] = pad ? Io<T>::load(pad + h * E + e) : A(0);
        win.VT[e * ld + t] = pad ? Io<T>::load(pad + (p.heads + h) * E + e) : A(0);
      }
    }
  }
}

// Turns s[0..N) = q_i . k_j into the logits row of query i: scale, bias, shift mask, padding mask.
template <typename A>
void finish_row(const WindowAttentionParams& p, const Geometry& g, const std::vector<A>& bias, int64_t w, int64_t h,
                const Window<A>& win, int64_t i, A* s) {
  const int64_t N = g.N;
  const A scale = A(p.scale);
  for (int64_t j = 0; j < N; ++j) s[j] *= scale;
  if (!bias.empty()) {
    const A* br = bias.data() + (h * N + i) * N;
    for (int64_t j = 0; j < N; ++j) s[j] += br[j];
  }
  const bool shifted = p.shift[0] > 0 || p.shift[1] > 0 || p.shift[2] > 0;
  if (shifted) {
    const uint8_t* reg = g.region.data() + w * N;
    const A mv = A(p.mask_value);
    for (int64_t j = 0; j < N; ++j)
      if (reg[j] != reg[i]) s[j] += mv;
  }
  if (p.mask_padded) {
    for (int64_t j = 0; j < N; ++j)
      if (!win.valid[j]) s[j] = -std::numeric_limits<A>::infinity();
  }
}

template <typename T>
Status fwd_impl(const WindowAttentionParams& p) {
  using A = typename Io<T>::acc;
  const Geometry g = make_geometry(p);
  const std::vector<A> bias = bias_values<T, A>(p, g);
  const int64_t N = g.N, E = p.head_dim, HEADS = p.heads, B = p.batch;
  const int64_t vol = p.size[0] * p.size[1] * p.size[2];
  const int64_t tasks = p.directions * B * g.nW * HEADS;
  A* lse = static_cast<A*>(p.lse);
#pragma omp parallel
  {
    Window<A> win(N, E);
    const int64_t ld = win.ld;
    std::vector<A> S(4 * ld), acc(4 * E);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t h = task % HEADS, w = (task / HEADS) % g.nW, b = (task / (HEADS * g.nW)) % B;
      const int dir = int(task / (HEADS * g.nW * B));
      const T* q = static_cast<const T*>(dir ? p.q1 : p.q0);
      const T* k = static_cast<const T*>(dir ? p.k1 : p.k0);
      const T* v = static_cast<const T*>(dir ? p.v1 : p.v0);
      T* o = static_cast<T*>(dir ? p.o1 : p.o0);
      gather<T, A>(p, g, b, w, h, q, k, v, win);
      for (int64_t i0 = 0; i0 < N; i0 += 4) {
        if (!(win.valid[i0] | win.valid[i0 + 1] | win.valid[i0 + 2] | win.valid[i0 + 3])) continue;
        cpu::wa_detail::gemv4(S.data(), ld, win.Q.data() + i0 * E, E, win.KT.data(), ld);
        A m[4], l[4];
        for (int r = 0; r < 4; ++r) {
          A* sr = S.data() + r * ld;
          m[r] = A(0), l[r] = A(1);
          if (!win.valid[i0 + r]) {  // padding query (or past N): dropped
            std::fill(sr, sr + N, A(0));
            continue;
          }
          finish_row<A>(p, g, bias, w, h, win, i0 + r, sr);
          A mr = -std::numeric_limits<A>::infinity();
          for (int64_t j = 0; j < N; ++j) mr = std::max(mr, sr[j]);
          cpu::wa_detail::exp_shift(sr, mr, N);
          A lr = A(0);
          for (int64_t j = 0; j < N; ++j) lr += sr[j];
          m[r] = mr, l[r] = lr;
        }
        for (int64_t e = 0; e < E; ++e) {
          A o4[4];
          cpu::wa_detail::dot4(o4, S.data(), ld, win.VT.data() + e * ld, N);
          for (int r = 0; r < 4; ++r) acc[r * E + e] = o4[r];
        }
        for (int r = 0; r < 4; ++r) {
          const int64_t i = i0 + r;
          if (!win.valid[i]) continue;
          const A inv = A(1) / l[r];
          T* op = o + offset(p.o_strides, b, g, w * N + i, h);
          for (int64_t e = 0; e < E; ++e) Io<T>::store(op + e * p.o_strides[5], acc[r * E + e] * inv);
          lse[(dir * B + b) * vol * HEADS + g.coord[w * N + i] * HEADS + h] = m[r] + std::log(l[r]);
        }
      }
    }
  }
  return Status::kSuccess;
}

// Fixed chunking of the (batch x window) axis for the backward's dS partial sums.
int64_t bwd_chunks(const WindowAttentionParams& p, int64_t N, int64_t nW) {
  const size_t acc = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  int64_t chunks = std::min<int64_t>(p.batch * nW, 16);
  while (chunks > 1 && size_t(p.directions * chunks * p.heads * N * N) * acc > (size_t(256) << 20)) chunks /= 2;
  return std::max<int64_t>(chunks, 1);
}

void sizes(const WindowAttentionParams& p, int64_t* N, int64_t* nW) {
  *N = p.eff_window[0] * p.eff_window[1] * p.eff_window[2];
  *nW = 1;
  for (int a = 0; a < 3; ++a) *nW *= p.padded[a] / std::max<int64_t>(p.eff_window[a], 1);
}

template <typename T>
Status bwd_impl(const WindowAttentionBwdParams& bp) {
  using A = typename Io<T>::acc;
  const WindowAttentionParams& p = bp.fwd;
  const Geometry g = make_geometry(p);
  const std::vector<A> bias = bias_values<T, A>(p, g);
  const int64_t N = g.N, E = p.head_dim, HEADS = p.heads, B = p.batch;
  const int64_t vol = p.size[0] * p.size[1] * p.size[2];
  const int64_t chunks = bwd_chunks(p, N, g.nW);
  const int64_t per_chunk = (B * g.nW + chunks - 1) / chunks;
  const int64_t units = p.directions * chunks * HEADS;
  const bool want_pair = bp.pair_grad != nullptr;
  const bool want_pad = bp.grad_pad_kv != nullptr;
  A* pair_parts = static_cast<A*>(bp.workspace);                     // (units, N, N)
  A* pad_parts = pair_parts + (want_pair ? units * N * N : 0);       // (units, 2, E)
  const A* lse = static_cast<const A*>(p.lse);
  const A scale = A(p.scale);
#pragma omp parallel
  {
    Window<A> win(N, E);
    const int64_t ld = win.ld, N4 = win.N4;
    std::vector<A> dO(N4 * E, A(0)), dKT(E * ld), dVT(E * ld), S(4 * ld), DS(4 * ld), delta(N4, A(0));
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
      const int64_t h = unit % HEADS, c = (unit / HEADS) % chunks;
      const int dir = int(unit / (HEADS * chunks));
      const T* q = static_cast<const T*>(dir ? p.q1 : p.q0);
      const T* k = static_cast<const T*>(dir ? p.k1 : p.k0);
      const T* v = static_cast<const T*>(dir ? p.v1 : p.v0);
      const T* o = static_cast<const T*>(dir ? p.o1 : p.o0);
      const T* go = static_cast<const T*>(dir ? bp.g1 : bp.g0);
      T* dqp = static_cast<T*>(dir ? bp.dq1 : bp.dq0);
      T* dkp = static_cast<T*>(dir ? bp.dk1 : bp.dk0);
      T* dvp = static_cast<T*>(dir ? bp.dv1 : bp.dv0);
      A* pair = want_pair ? pair_parts + unit * N * N : nullptr;
      A* padg = want_pad ? pad_parts + unit * 2 * E : nullptr;
      if (pair) std::fill(pair, pair + N * N, A(0));
      if (padg) std::fill(padg, padg + 2 * E, A(0));
      const int64_t bw1 = std::min((c + 1) * per_chunk, B * g.nW);
      for (int64_t bw = c * per_chunk; bw < bw1; ++bw) {
        const int64_t b = bw / g.nW, w = bw % g.nW;
        gather<T, A>(p, g, b, w, h, q, k, v, win);
        for (int64_t t = 0; t < N; ++t) {
          delta[t] = A(0);
          if (!win.valid[t]) {
            for (int64_t e = 0; e < E; ++e) dO[t * E + e] = A(0);
            continue;
          }
          const int64_t i = w * N + t;
          const T* gp = go + offset(bp.g_strides, b, g, i, h);
          const T* op = o + offset(p.o_strides, b, g, i, h);
          A dl = A(0);
          for (int64_t e = 0; e < E; ++e) {
            const A ge = Io<T>::load(gp + e * bp.g_strides[5]);
            dO[t * E + e] = ge;
            dl += ge * Io<T>::load(op + e * p.o_strides[5]);
          }
          delta[t] = dl;
        }
        std::fill(dKT.begin(), dKT.end(), A(0));
        std::fill(dVT.begin(), dVT.end(), A(0));
        for (int64_t i0 = 0; i0 < N; i0 += 4) {
          if (!(win.valid[i0] | win.valid[i0 + 1] | win.valid[i0 + 2] | win.valid[i0 + 3])) continue;
          cpu::wa_detail::gemv4(S.data(), ld, win.Q.data() + i0 * E, E, win.KT.data(), ld);  // q.k
          cpu::wa_detail::gemv4(DS.data(), ld, dO.data() + i0 * E, E, win.VT.data(), ld);   // dP
          for (int r = 0; r < 4; ++r) {
            const int64_t i = i0 + r;
            A* sr = S.data() + r * ld;
            A* dr = DS.data() + r * ld;
            if (!win.valid[i]) {  // padding query (or past N): no gradient flows through it
              std::fill(sr, sr + N, A(0));
              std::fill(dr, dr + N, A(0));
              continue;
            }
            finish_row<A>(p, g, bias, w, h, win, i, sr);
            cpu::wa_detail::exp_shift(sr, lse[(dir * B + b) * vol * HEADS + g.coord[w * N + i] * HEADS + h], N);
            const A di = delta[i];
            for (int64_t j = 0; j < N; ++j) dr[j] = sr[j] * (dr[j] - di);  // dS
            if (pair) cpu::wa_detail::axpy(pair + i * N, A(1), dr, N);
          }
          for (int64_t e = 0; e < E; ++e) {
            A dq4[4];
            cpu::wa_detail::dot4(dq4, DS.data(), ld, win.KT.data() + e * ld, N);
            for (int r = 0; r < 4; ++r) {
              const int64_t i = i0 + r;
              if (!win.valid[i]) continue;
              T* dqo = dqp + offset(bp.dq_strides, b, g, w * N + i, h);
              Io<T>::store(dqo + e * bp.dq_strides[5], dq4[r] * scale);
            }
            const A qa[4] = {win.Q[i0 * E + e], win.Q[(i0 + 1) * E + e], win.Q[(i0 + 2) * E + e],
                             win.Q[(i0 + 3) * E + e]};
            const A ga[4] = {dO[i0 * E + e], dO[(i0 + 1) * E + e], dO[(i0 + 2) * E + e], dO[(i0 + 3) * E + e]};
            cpu::wa_detail::axpy4(dKT.data() + e * ld, qa, DS.data(), ld, N);
            cpu::wa_detail::axpy4(dVT.data() + e * ld, ga, S.data(), ld, N);
          }
        }
        for (int64_t j = 0; j < N; ++j) {
          if (win.valid[j]) {
            const int64_t i = w * N + j;
            T* dko = dkp + offset(bp.dk_strides, b, g, i, h);
            T* dvo = dvp + offset(bp.dv_strides, b, g, i, h);
            for (int64_t e = 0; e < E; ++e) {
              Io<T>::store(dko + e * bp.dk_strides[5], dKT[e * ld + j] * scale);
              Io<T>::store(dvo + e * bp.dv_strides[5], dVT[e * ld + j]);
            }
          } else if (padg) {
            for (int64_t e = 0; e < E; ++e) {
              padg[e] += dKT[e * ld + j] * scale;
              padg[E + e] += dVT[e * ld + j];
            }
          }
        }
      }
    }
  }
  // fixed-order reductions over directions and chunks
  if (want_pair) {
    A* out = static_cast<A*>(bp.pair_grad);
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < HEADS; ++h) {
      A* dst = out + h * N * N;
      std::fill(dst, dst + N * N, A(0));
      for (int dir = 0; dir < p.directions; ++dir)
        for (int64_t c = 0; c < chunks; ++c) {
          const A* src = pair_parts + ((dir * chunks + c) * HEADS + h) * N * N;
          for (int64_t ij = 0; ij < N * N; ++ij) dst[ij] += src[ij];
        }
    }
  }
  if (want_pad) {
    A* out = static_cast<A*>(bp.grad_pad_kv);  // (2, heads, E)
    for (int64_t h = 0; h < HEADS; ++h)
      for (int kv = 0; kv < 2; ++kv)
        for (int64_t e = 0; e < E; ++e) {
          A sum = A(0);
          for (int dir = 0; dir < p.directions; ++dir)
            for (int64_t c = 0; c < chunks; ++c) sum += pad_parts[((dir * chunks + c) * HEADS + h) * 2 * E + kv * E + e];
          out[(kv * HEADS + h) * E + e] = sum;
        }
  }
  return Status::kSuccess;
}

}  // namespace

size_t window_attention_bwd_workspace_bytes(const WindowAttentionBwdParams& bp) {
  const WindowAttentionParams& p = bp.fwd;
  int64_t N, nW;
  sizes(p, &N, &nW);
  const size_t acc = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  const int64_t units = p.directions * bwd_chunks(p, N, nW) * p.heads;
  size_t n = 0;
  if (bp.pair_grad) n += size_t(units * N * N);
  if (bp.grad_pad_kv) n += size_t(units * 2 * p.head_dim);
  return n * acc;
}

size_t window_attention_cuda_bwd_workspace_bytes(const WindowAttentionBwdParams& bp) {
  const size_t acc = bp.fwd.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return size_t(detail::wa_bwd_layout(bp).total) * acc;
}

namespace {

// Every "thread" of the CUDA kernels, in turn (OpenMP over the independent items of a launch).
template <typename T, int EMAX>
Status fwd_emulated(const WindowAttentionParams& p) {
  using A = typename Io<T>::acc;
  const detail::WaGeo g = detail::wa_geo(p);
  const int64_t items = g.batch * g.nW * g.heads * g.N;
  for (int dir = 0; dir < p.directions; ++dir) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < items; ++i) detail::wa_fwd_item<T, A, EMAX>(p, g, dir, i);
  }
  return Status::kSuccess;
}

template <typename T, int EMAX>
Status bwd_emulated(const WindowAttentionBwdParams& bp) {
  using A = typename Io<T>::acc;
  const detail::WaGeo g = detail::wa_geo(bp.fwd);
  const detail::WaBwdLayout L = detail::wa_bwd_layout(bp);
  A* ws = static_cast<A*>(bp.workspace);
  A* delta = ws + L.delta;
  A* pair = bp.pair_grad ? ws + L.pair : nullptr;
  A* slots = bp.grad_pad_kv ? ws + L.pad : nullptr;
  const int dirs = bp.fwd.directions;
  const int64_t tokens = g.batch * g.vol * g.heads, items = g.batch * g.nW * g.heads * g.N;
  for (int dir = 0; dir < dirs; ++dir) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < tokens; ++i) detail::wa_delta_item<T, A>(bp, g, dir, i, delta);
  }
  for (int dir = 0; dir < dirs; ++dir) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < items; ++i) detail::wa_dkdv_item<T, A, EMAX>(bp, g, dir, i, delta, slots);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < items; ++i) detail::wa_dq_item<T, A, EMAX>(bp, g, dir, i, delta);
  }
  if (pair) {
    const int64_t pairs = L.chunks * g.heads * g.N * g.N;
    for (int dir = 0; dir < dirs; ++dir) {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < pairs; ++i) detail::wa_pair_item<T, A, EMAX>(bp, g, L, dir, i, delta, pair);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < g.heads * g.N * g.N; ++i) detail::wa_reduce_pair_item<A>(bp, g, L, i, pair);
  }
  if (slots) {
    for (int64_t i = 0; i < 2 * g.heads * g.E; ++i) detail::wa_reduce_pad_item<A>(bp, g, i, slots);
  }
  return Status::kSuccess;
}

template <typename T>
Status fwd_emulated_t(const WindowAttentionParams& p) {
  if (p.head_dim <= 16) return fwd_emulated<T, 16>(p);
  if (p.head_dim <= 32) return fwd_emulated<T, 32>(p);
  if (p.head_dim <= 64) return fwd_emulated<T, 64>(p);
  return fwd_emulated<T, 128>(p);
}

template <typename T>
Status bwd_emulated_t(const WindowAttentionBwdParams& bp) {
  if (bp.fwd.head_dim <= 16) return bwd_emulated<T, 16>(bp);
  if (bp.fwd.head_dim <= 32) return bwd_emulated<T, 32>(bp);
  if (bp.fwd.head_dim <= 64) return bwd_emulated<T, 64>(bp);
  return bwd_emulated<T, 128>(bp);
}

}  // namespace

namespace cpu {

Status window_attention_fwd_emulated(const WindowAttentionParams& p) {
  const Status st = window_attention_check(p);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(p.head_dim <= 128, "window_attention (cuda): head_dim must be <= 128");
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_emulated_t<T>(p);)
}

Status window_attention_bwd_emulated(const WindowAttentionBwdParams& bp) {
  const Status st = window_attention_check(bp.fwd);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(bp.fwd.head_dim <= 128, "window_attention (cuda): head_dim must be <= 128");
  MK_CHECK_ARG(bp.workspace_bytes >= window_attention_cuda_bwd_workspace_bytes(bp),
               "window_attention: workspace smaller than window_attention_cuda_bwd_workspace_bytes()");
  MK_DTYPE_SWITCH(bp.fwd.dtype, T, return bwd_emulated_t<T>(bp);)
}

Status window_attention_fwd(const WindowAttentionParams& p) {
  const Status st = window_attention_check(p);
  if (st != Status::kSuccess) return st;
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_impl<T>(p);)
}

Status window_attention_bwd(const WindowAttentionBwdParams& bp) {
  const Status st = window_attention_check(bp.fwd);
  if (st != Status::kSuccess) return st;
  MK_CHECK_ARG(bp.g0 && bp.dq0 && bp.dk0 && bp.dv0, "window_attention: grad_out, dq, dk and dv must not be null");
  MK_CHECK_ARG(bp.fwd.directions == 1 || (bp.g1 && bp.dq1 && bp.dk1 && bp.dv1),
               "window_attention: direction 1 needs g1, dq1, dk1 and dv1");
  MK_CHECK_ARG(bp.workspace_bytes >= window_attention_bwd_workspace_bytes(bp),
               "window_attention: workspace smaller than window_attention_bwd_workspace_bytes()");
  MK_DTYPE_SWITCH(bp.fwd.dtype, T, return bwd_impl<T>(bp);)
}

}  // namespace cpu
}  // namespace medkernels
