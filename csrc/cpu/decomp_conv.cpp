// Decomposed 3D convolution on the CPU (OpenMP). See medkernels/decomp_conv.h for the math.
//
// Two loop orders, picked from the strides, so neither layout needs a copy:
//  - row order (NCDHW and strided views): one thread owns an output row (n, co, od, oh) and
//    accumulates the three branches into a float row buffer; with W contiguous the inner
//    loops are unit-stride FMAs the compiler vectorises.
//  - channel order (NDHWC, channels-last): one thread owns an output position and the inner
//    loop runs over contiguous channels.
// Backward: gz = dy * act'(z) (z recomputed by the forward), then the weight and bias
// gradients per output channel in a fixed order (deterministic), then dx as the forward of gz
// with flipped, transposed weights (stride 1) or a gather over the taps (stride > 1).
#include <algorithm>
#include <cstring>
#include <fstream>
#include <new>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "medkernels/decomp_conv.h"
#include "medkernels/detail/activation.h"
#include "medkernels/detail/decomp_conv_index.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "vec.h"

namespace medkernels {

using detail::act_fwd;
using detail::act_grad;

Status decomp_conv_check(const DecompConvParams& p) {
  MK_CHECK_ARG(p.x && p.w_d && p.w_h && p.w_w && p.y, "decomp_conv: x, weights and y must not be null");
  MK_CHECK_ARG(p.batch >= 1, "decomp_conv: batch must be >= 1, got " + std::to_string(p.batch));
  MK_CHECK_ARG(p.kernel_size >= 1 && p.kernel_size <= kDecompConvMaxKernel && p.kernel_size % 2 == 1,
               "decomp_conv: kernel_size must be odd and in 1.." + std::to_string(kDecompConvMaxKernel) + ", got " +
                   std::to_string(p.kernel_size));
  MK_CHECK_ARG(p.stride >= 1, "decomp_conv: stride must be >= 1, got " + std::to_string(p.stride));
  MK_CHECK_ARG(p.groups >= 1 && p.in_channels % p.groups == 0 && p.out_channels % p.groups == 0,
               "decomp_conv: groups=" + std::to_string(p.groups) + " must divide in_channels=" +
                   std::to_string(p.in_channels) + " and out_channels=" + std::to_string(p.out_channels));
  for (int a = 0; a < 3; ++a) {
    MK_CHECK_ARG(p.in_size[a] >= 1, "decomp_conv: spatial sizes must be >= 1");
    MK_CHECK_ARG(p.out_size[a] == detail::conv_out_size(p.in_size[a], p.stride),
                 "decomp_conv: out_size must be (in_size - 1) / stride + 1 on every axis");
  }
  const int act = static_cast<int>(p.activation);
  MK_CHECK_ARG(act >= 0 && act <= 3, "decomp_conv: unknown activation " + std::to_string(act));
  return Status::kSuccess;
}

static int64_t numel_out(const DecompConvParams& p) {
  return p.batch * p.out_channels * p.out_size[0] * p.out_size[1] * p.out_size[2];
}

// gz at offset 0 (the CPU uses only that part) plus what the CUDA backward needs; see
// detail::decomp_conv_bwd_layout.
size_t decomp_conv_bwd_workspace_bytes(const DecompConvBwdParams& b) {
  return detail::decomp_conv_bwd_layout(b.fwd).total_bytes;
}

namespace cpu {
namespace {

// Weights converted once to the accumulation type, laid out [branch][co][ci'][j].
template <typename T, typename A>
std::vector<A> load_weights(const DecompConvParams& p) {
  const int64_t per = p.out_channels * (p.in_channels / p.groups) * p.kernel_size;
  std::vector<A> w(3 * per);
  const void* src[3] = {p.w_d, p.w_h, p.w_w};
  for (int br = 0; br < 3; ++br)
    for (int64_t i = 0; i < per; ++i) w[br * per + i] = Io<T>::load(static_cast<const T*>(src[br]) + i);
  return w;
}

// Rows of storage type T to and from the accumulation type; contiguous bfloat16 rows take the
// vectorised conversions, everything else the per-element Io path.
template <typename T, typename A>
inline void load_row(A* dst, const T* src, int64_t stride, int64_t n) {
  if constexpr (std::is_same<T, bfloat16_t>::value && std::is_same<A, float>::value) {
    if (stride == 1) return vec::bf16_to_float(dst, reinterpret_cast<const uint16_t*>(src), n);
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(Io<T>::load(src + i * stride));
}

template <typename T, typename A>
inline void store_row(T* dst, int64_t stride, A* row, int64_t n, Activation act) {
  if constexpr (std::is_same<A, float>::value) {
    if (act != Activation::kNone) vec::act_row(row, n, static_cast<int>(act));
  } else if (act != Activation::kNone) {
    for (int64_t i = 0; i < n; ++i) row[i] = act_fwd<A>(act, row[i]);
  }
  if constexpr (std::is_same<T, bfloat16_t>::value && std::is_same<A, float>::value) {
    if (stride == 1) return vec::float_to_bf16(reinterpret_cast<uint16_t*>(dst), row, n);
  }
  for (int64_t i = 0; i < n; ++i) Io<T>::store(dst + i * stride, row[i]);
}

// Depthwise, stride 1: one thread owns a channel volume (n, c). It copies the volume into a
// float buffer with a zero halo of k/2 on every side (this also converts 16-bit inputs and
// gathers strided ones), after which every one of the 3k taps of every output row is a plain
// shifted row of that buffer: an output row is one register-blocked multi-tap FMA
// (vec::taps_row) with no bounds checks.
template <typename TI, typename TO, typename A>
void fwd_depthwise_planes(const DecompConvParams& p, const std::vector<A>& w, const std::vector<A>& bias) {
  const TI* x = static_cast<const TI*>(p.x);
  TO* y = static_cast<TO*>(p.y);
  const int K = p.kernel_size, pad = K / 2, T = 3 * K;
  const int64_t N = p.batch, C = p.out_channels;
  const int64_t D = p.in_size[0], H = p.in_size[1], W = p.in_size[2];
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad, plane = Hp * Wp;
  const int64_t* xs = p.x_strides;
  const int64_t* ys = p.y_strides;
  const int64_t wper = C * K;
#pragma omp parallel
  {
    std::vector<A> vol((D + 2 * pad) * plane);
    std::vector<A> row(W);
    std::vector<const A*> src(T);
    std::vector<A> wt(T);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < N * C; ++item) {
      const int64_t n = item / C, c = item % C;
      const TI* xc = x + n * xs[0] + c * xs[1];
      // the zero halo is written once, when vol is allocated: items only overwrite the interior
      for (int64_t d = 0; d < D; ++d)
        for (int64_t h = 0; h < H; ++h) {
          const TI* s = xc + d * xs[2] + h * xs[3];
          A* dst = vol.data() + (d + pad) * plane + (h + pad) * Wp + pad;
          load_row(dst, s, xs[4], W);
        }
      for (int br = 0; br < 3; ++br)
        for (int j = 0; j < K; ++j) wt[br * K + j] = w[br * wper + c * K + j];
      const A b = bias.empty() ? A(0) : bias[c];
      for (int64_t od = 0; od < D; ++od)
        for (int64_t oh = 0; oh < H; ++oh) {
          // the padded buffer index of output (od, oh, 0) is (od+pad, oh+pad, pad)
          const A* center = vol.data() + (od + pad) * plane + (oh + pad) * Wp + pad;
          for (int j = 0; j < K; ++j) {
            src[j] = center + (j - pad) * plane;
            src[K + j] = center + (j - pad) * Wp;
            src[2 * K + j] = center + (j - pad);
          }
          vec::taps_row(row.data(), src.data(), wt.data(), T, W, b);
          TO* yr = y + n * ys[0] + c * ys[1] + od * ys[2] + oh * ys[3];
          store_row(yr, ys[4], row.data(), W, p.activation);
        }
    }
  }
}

// Bytes the OS can still hand out without swapping (Linux MemAvailable), or -1 when unknown.
int64_t available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return -1;
}

Status padded_copy_failed(int64_t elems, int64_t avail) {
  const double gib = double(elems) * sizeof(float) / double(int64_t(1) << 30);
  std::string msg = "decomp_conv3d (cpu): the zero-padded float32 copy of x needs " + std::to_string(gib) + " GiB";
  msg += avail >= 0 ? ", more than the " + std::to_string(double(avail) / double(int64_t(1) << 30)) + " GiB available"
                    : " and could not be allocated";
  msg += "; use a smaller batch or volume, or another backend";
  return detail::fail(Status::kUnsupported, msg);
}

// Only copies over 256 MiB look at /proc/meminfo (a few microseconds).
Status padded_copy_fits(int64_t elems) {
  const int64_t bytes = elems * int64_t(sizeof(float));
  if (elems < 0 || elems > (int64_t(1) << 61)) return padded_copy_failed(elems, -1);
  if (bytes < (int64_t(1) << 28)) return Status::kSuccess;
  const int64_t avail = available_bytes();
  if (avail >= 0 && bytes > avail) return padded_copy_failed(elems, avail);
  return Status::kSuccess;
}

// Dense (groups 1) layers: the input is copied once into a zero-halo channels-last float
// volume, so each of the 3(k-1)+1 taps (the three branches' centre taps merged into one) is
// valid at every output position, and an output line (n, od, oh) is one register-blocked
// product over taps x input channels (vec::dense_taps) written straight into y when y is
// channels-last float, through a line buffer otherwise.
template <typename TI, typename TO>
Status fwd_dense_padded(const DecompConvParams& p, const std::vector<float>& w, const std::vector<float>& bias) {
  const TI* x = static_cast<const TI*>(p.x);
  TO* y = static_cast<TO*>(p.y);
  const int K = p.kernel_size, pad = K / 2, s = p.stride;
  const int64_t N = p.batch, Ci = p.in_channels, Co = p.out_channels;
  const int64_t D = p.in_size[0], H = p.in_size[1], W = p.in_size[2];
  const int64_t Do = p.out_size[0], Ho = p.out_size[1], Wo = p.out_size[2];
  const int64_t Dp = D + 2 * pad, Hp = H + 2 * pad, Wp = W + 2 * pad;
  const int64_t* xs = p.x_strides;
  const int64_t* ys = p.y_strides;
  const int64_t wper = Co * Ci * K;

  const int ntaps = 3 * (K - 1) + 1;
  std::vector<float> wt(static_cast<size_t>(ntaps) * Ci * Co);
  std::vector<int64_t> toff(ntaps);  // tap offset in the padded volume, elements
  const int64_t pst[3] = {Hp * Wp * Ci, Wp * Ci, Ci};
  for (int64_t ci = 0; ci < Ci; ++ci)
    for (int64_t co = 0; co < Co; ++co) {
      const int64_t k = (co * Ci + ci) * K;
      wt[ci * Co + co] = w[k + pad] + w[wper + k + pad] + w[2 * wper + k + pad];
    }
  toff[0] = pad * (pst[0] + pst[1] + pst[2]);
  int t = 1;
  for (int br = 0; br < 3; ++br)
    for (int j = 0; j < K; ++j) {
      if (j == pad) continue;
      for (int64_t ci = 0; ci < Ci; ++ci)
        for (int64_t co = 0; co < Co; ++co) wt[(t * Ci + ci) * Co + co] = w[br * wper + (co * Ci + ci) * K + j];
      toff[t] = toff[0] + (j - pad) * pst[br];
      ++t;
    }

  // The one large allocation: refuse it with a clear error when it cannot fit, instead of
  // letting the OS kill the process once the overcommitted pages are touched.
  const int64_t elems = N * Dp * Hp * Wp * Ci;
  const Status fits = padded_copy_fits(elems);
  if (fits != Status::kSuccess) return fits;
  std::unique_ptr<float[]> xp(new (std::nothrow) float[elems]);
  if (!xp) return padded_copy_failed(elems, -1);
#pragma omp parallel for schedule(static)
  for (int64_t l = 0; l < N * Dp * Hp; ++l) {
    const int64_t hp = l % Hp, dp = (l / Hp) % Dp, n = l / (Hp * Dp);
    float* dst = xp.get() + l * Wp * Ci;
    const int64_t id = dp - pad, ih = hp - pad;
    if (id < 0 || id >= D || ih < 0 || ih >= H) {
      std::fill(dst, dst + Wp * Ci, 0.0f);
      continue;
    }
    std::fill(dst, dst + pad * Ci, 0.0f);
    std::fill(dst + (pad + W) * Ci, dst + Wp * Ci, 0.0f);
    const TI* src = x + n * xs[0] + id * xs[2] + ih * xs[3];
    float* d = dst + pad * Ci;
    if (std::is_same<TI, float>::value && (Ci == 1 || xs[1] == 1) && xs[4] == Ci) {
      std::memcpy(d, src, W * Ci * sizeof(float));  // a channels-last (or 1-channel) row
    } else {
      for (int64_t iw = 0; iw < W; ++iw)
        for (int64_t c = 0; c < Ci; ++c) d[iw * Ci + c] = static_cast<float>(Io<TI>::load(src + iw * xs[4] + c * xs[1]));
    }
  }

  const bool direct = std::is_same<TO, float>::value && ys[1] == 1 && ys[4] == Co;
  const int act = static_cast<int>(p.activation);
#pragma omp parallel
  {
    std::vector<float> line(direct ? 0 : Wo * Co);
    std::vector<const float*> src(ntaps);
    // Tiles of kTileH x kTileD lines, od outer within a tile: the input rows a line reads are
    // read again by the next few lines while they are still in L2.
    constexpr int64_t kTileH = 4, kTileD = 8;
    const int64_t th = (Ho + kTileH - 1) / kTileH, td = (Do + kTileD - 1) / kTileD;
#pragma omp for schedule(static)
    for (int64_t l = 0; l < N * td * th * kTileD * kTileH; ++l) {
      const int64_t ih = l % kTileH, id = (l / kTileH) % kTileD, tile = l / (kTileH * kTileD);
      const int64_t oh = (tile % th) * kTileH + ih, od = ((tile / th) % td) * kTileD + id, n = tile / (th * td);
      if (oh >= Ho || od >= Do) continue;
      const float* base = xp.get() + ((n * Dp + od * s) * Hp + oh * s) * Wp * Ci;
      for (int q = 0; q < ntaps; ++q) src[q] = base + toff[q];
      TO* yl = y + n * ys[0] + od * ys[2] + oh * ys[3];
      float* out = direct ? reinterpret_cast<float*>(yl) : line.data();
      vec::dense_taps(out, src.data(), s * Ci, wt.data(), ntaps, Ci, Co, Wo, bias.empty() ? nullptr : bias.data());
      if (act != 0) vec::act_row(out, Wo * Co, act);
      if (direct) continue;
      if (ys[4] <= ys[1]) {  // NCDHW-like y: write each channel's row
        for (int64_t co = 0; co < Co; ++co)
          for (int64_t ow = 0; ow < Wo; ++ow) Io<TO>::store(yl + ow * ys[4] + co * ys[1], out[ow * Co + co]);
      } else {
        for (int64_t ow = 0; ow < Wo; ++ow)
          for (int64_t co = 0; co < Co; ++co) Io<TO>::store(yl + ow * ys[4] + co * ys[1], out[ow * Co + co]);
      }
    }
  }
  return Status::kSuccess;
}

// The forward, generic in the input storage type TI and output storage type TO.
// w: [3][C_out][C_in/g][k] in A; bias: C_out values in A or empty.
template <typename TI, typename TO, typename A>
Status fwd_impl(const DecompConvParams& p, const std::vector<A>& w, const std::vector<A>& bias) {
  const TI* x = static_cast<const TI*>(p.x);
  TO* y = static_cast<TO*>(p.y);
  const int K = p.kernel_size, pad = K / 2, s = p.stride;
  const int64_t N = p.batch, Ci = p.in_channels, Co = p.out_channels;
  const int64_t cin_g = Ci / p.groups, cout_g = Co / p.groups;
  const int64_t D = p.in_size[0], H = p.in_size[1], W = p.in_size[2];
  const int64_t Do = p.out_size[0], Ho = p.out_size[1], Wo = p.out_size[2];
  const int64_t* xs = p.x_strides;
  const int64_t* ys = p.y_strides;
  const int64_t wper = Co * cin_g * K;
  const bool has_bias = !bias.empty();

  if constexpr (std::is_same<A, float>::value) {
    if (p.groups == 1 && Co >= 8 && 3 * (K - 1) + 1 <= vec::kDenseMaxTaps) {
      return fwd_dense_padded<TI, TO>(p, w, bias);
    }
  }
  const bool channel_order = xs[1] == 1 && ys[1] == 1 && Co > 1;
  if (!channel_order && s == 1 && cin_g == 1 && cout_g == 1) {
    fwd_depthwise_planes<TI, TO, A>(p, w, bias);
    return Status::kSuccess;
  }
  if (!channel_order) {
    const int64_t rows = N * Co * Do * Ho;
#pragma omp parallel
    {
      std::vector<A> acc(Wo);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t oh = r % Ho, od = (r / Ho) % Do, co = (r / (Ho * Do)) % Co, n = r / (Ho * Do * Co);
        const int64_t g = co / cout_g;
        std::fill(acc.begin(), acc.end(), has_bias ? bias[co] : A(0));
        for (int64_t cl = 0; cl < cin_g; ++cl) {
          const int64_t ci = g * cin_g + cl;
          const TI* xc = x + n * xs[0] + ci * xs[1];
          const A* wd = w.data() + (co * cin_g + cl) * K;
          const A* wh = wd + wper;
          const A* ww = wh + wper;
          // D and H branches: whole shifted rows
          for (int j = 0; j < K; ++j) {
            const int64_t id = od * s - pad + j;
            if (id >= 0 && id < D) {
              const TI* row = xc + id * xs[2] + (oh * s) * xs[3];
              const A wj = wd[j];
              const int64_t st = s * xs[4];
              for (int64_t ow = 0; ow < Wo; ++ow) acc[ow] += wj * Io<TI>::load(row + ow * st);
            }
            const int64_t ih = oh * s - pad + j;
            if (ih >= 0 && ih < H) {
              const TI* row = xc + (od * s) * xs[2] + ih * xs[3];
              const A wj = wh[j];
              const int64_t st = s * xs[4];
              for (int64_t ow = 0; ow < Wo; ++ow) acc[ow] += wj * Io<TI>::load(row + ow * st);
            }
          }
          // W branch: taps shift along the row; clip the range of ow instead of branching
          const TI* row = xc + (od * s) * xs[2] + (oh * s) * xs[3];
          for (int j = 0; j < K; ++j) {
            const int64_t off = j - pad;  // iw = ow*s + off
            int64_t lo, hi;
            detail::tap_out_range(off, s, W, Wo, &lo, &hi);
            const A wj = ww[j];
            for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += wj * Io<TI>::load(row + (ow * s + off) * xs[4]);
          }
        }
        TO* yrow = y + n * ys[0] + co * ys[1] + od * ys[2] + oh * ys[3];
        for (int64_t ow = 0; ow < Wo; ++ow) Io<TO>::store(yrow + ow * ys[4], act_fwd<A>(p.activation, acc[ow]));
      }
    }
    return Status::kSuccess;
  }

  // Channel order: contiguous channels innermost.
  const bool depthwise = cin_g == 1 && cout_g == 1;
  if (depthwise) {
    // Depthwise weights transposed to [branch][j][c]; each valid tap of an output position is
    // a channel vector, and vec::taps_vec sums them with the channels in registers.
    std::vector<A> wt(3 * K * Co);
    for (int br = 0; br < 3; ++br)
      for (int j = 0; j < K; ++j)
        for (int64_t c = 0; c < Co; ++c) wt[(br * K + j) * Co + c] = w[br * wper + c * K + j];
    // 16-bit (or channel-strided) inputs: one float copy, dense NDHWC
    std::vector<A> xbuf;
    const A* xf = reinterpret_cast<const A*>(x);
    int64_t fs[5] = {xs[0], xs[1], xs[2], xs[3], xs[4]};
    if (!std::is_same<TI, A>::value) {
      const int64_t D = p.in_size[0], H = p.in_size[1], W = p.in_size[2];
      xbuf.resize(N * D * H * W * Ci);
      fs[1] = 1; fs[4] = Ci; fs[3] = Ci * W; fs[2] = Ci * W * H; fs[0] = Ci * W * H * D;
#pragma omp parallel for schedule(static)
      for (int64_t q = 0; q < N * D * H * W; ++q) {
        const int64_t iw = q % W, ih = (q / W) % H, id = (q / (W * H)) % D, n = q / (W * H * D);
        const TI* s = x + n * xs[0] + id * xs[2] + ih * xs[3] + iw * xs[4];
        A* d = xbuf.data() + q * Ci;
        for (int64_t c = 0; c < Ci; ++c) d[c] = static_cast<A>(Io<TI>::load(s + c * xs[1]));
      }
      xf = xbuf.data();
    }
    const int64_t positions = N * Do * Ho * Wo;
#pragma omp parallel
    {
      std::vector<A> acc(Co);
      std::vector<const A*> src(3 * K), wp(3 * K);
#pragma omp for schedule(static)
      for (int64_t q = 0; q < positions; ++q) {
        const int64_t ow = q % Wo, oh = (q / Wo) % Ho, od = (q / (Wo * Ho)) % Do, n = q / (Wo * Ho * Do);
        const int64_t in_pos[3] = {od * s, oh * s, ow * s};
        int nt = 0;
        for (int br = 0; br < 3; ++br)
          for (int j = 0; j < K; ++j) {
            int64_t ip[3] = {in_pos[0], in_pos[1], in_pos[2]};
            ip[br] += j - pad;
            if (ip[br] < 0 || ip[br] >= p.in_size[br]) continue;
            src[nt] = xf + n * fs[0] + ip[0] * fs[2] + ip[1] * fs[3] + ip[2] * fs[4];
            wp[nt] = wt.data() + (br * K + j) * Co;
            ++nt;
          }
        vec::taps_vec(acc.data(), src.data(), wp.data(), nt, Co, has_bias ? bias.data() : nullptr);
        TO* yp = y + n * ys[0] + od * ys[2] + oh * ys[3] + ow * ys[4];
        for (int64_t c = 0; c < Co; ++c) Io<TO>::store(yp + c, act_fwd<A>(p.activation, acc[c]));
      }
    }
    return Status::kSuccess;
  }
  // Grouped / dense channel-order: per position, per output channel, a short dot over C_in/g.
  const int64_t positions = N * Do * Ho * Wo;
#pragma omp parallel
  {
    std::vector<A> acc(Co);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < positions; ++q) {
      const int64_t ow = q % Wo, oh = (q / Wo) % Ho, od = (q / (Wo * Ho)) % Do, n = q / (Wo * Ho * Do);
      for (int64_t c = 0; c < Co; ++c) acc[c] = has_bias ? bias[c] : A(0);
      const int64_t in_pos[3] = {od * s, oh * s, ow * s};
      for (int br = 0; br < 3; ++br) {
        for (int j = 0; j < K; ++j) {
          int64_t ip[3] = {in_pos[0], in_pos[1], in_pos[2]};
          ip[br] += j - pad;
          if (ip[br] < 0 || ip[br] >= p.in_size[br]) continue;
          const TI* xp = x + n * xs[0] + ip[0] * xs[2] + ip[1] * xs[3] + ip[2] * xs[4];
          for (int64_t c = 0; c < Co; ++c) {
            const int64_t g = c / cout_g;
            const A* wc = w.data() + br * wper + c * cin_g * K + j;
            A sum = A(0);
            for (int64_t cl = 0; cl < cin_g; ++cl) sum += wc[cl * K] * Io<TI>::load(xp + (g * cin_g + cl) * xs[1]);
            acc[c] += sum;
          }
        }
      }
      TO* yp = y + n * ys[0] + od * ys[2] + oh * ys[3] + ow * ys[4];
      for (int64_t c = 0; c < Co; ++c) Io<TO>::store(yp + c * ys[1], act_fwd<A>(p.activation, acc[c]));
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status fwd_typed(const DecompConvParams& p) {
  using A = typename Io<T>::acc;
  const std::vector<A> w = load_weights<T, A>(p);
  std::vector<A> bias;
  if (p.bias) {
    bias.resize(p.out_channels);
    for (int64_t c = 0; c < p.out_channels; ++c) bias[c] = Io<T>::load(static_cast<const T*>(p.bias) + c);
  }
  return fwd_impl<T, T, A>(p, w, bias);
}

template <typename T>
Status bwd_typed(const DecompConvBwdParams& b) {
  using A = typename Io<T>::acc;
  const DecompConvParams& p = b.fwd;
  const int K = p.kernel_size, pad = K / 2, s = p.stride;
  const int64_t N = p.batch, Ci = p.in_channels, Co = p.out_channels;
  const int64_t cin_g = Ci / p.groups, cout_g = Co / p.groups;
  const int64_t Do = p.out_size[0], Ho = p.out_size[1], Wo = p.out_size[2];
  const int64_t* xs = p.x_strides;
  const std::vector<A> w = load_weights<T, A>(p);
  const int64_t wper = Co * cin_g * K;

  // 1. gz = dy * act'(z), in A, laid out like the output would be (channels-last if x is).
  A* gz = static_cast<A*>(b.workspace);
  const bool cl = detail::bwd_gz_channels_last(p);
  int64_t gs[5];
  detail::dense_strides(Co, Do, Ho, Wo, cl, gs);
  const int64_t total = numel_out(p);
  const T* gy = static_cast<const T*>(b.grad_y);
  const int64_t* gys = b.grad_y_strides;
  if (p.activation != Activation::kNone) {
    std::vector<A> bias;
    if (p.bias) {
      bias.resize(Co);
      for (int64_t c = 0; c < Co; ++c) bias[c] = Io<T>::load(static_cast<const T*>(p.bias) + c);
    }
    DecompConvParams zp = p;
    zp.y = gz;
    zp.activation = Activation::kNone;
    std::memcpy(zp.y_strides, gs, sizeof(gs));
    const Status zs = fwd_impl<T, A, A>(zp, w, bias);
    if (zs != Status::kSuccess) return zs;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    // i enumerates the workspace in memory order; recover (n, c, d, h, w) from its layout
    int64_t n, c, d, h, ww;
    if (cl) {
      c = i % Co; ww = (i / Co) % Wo; h = (i / (Co * Wo)) % Ho; d = (i / (Co * Wo * Ho)) % Do; n = i / (Co * Wo * Ho * Do);
    } else {
      ww = i % Wo; h = (i / Wo) % Ho; d = (i / (Wo * Ho)) % Do; c = (i / (Wo * Ho * Do)) % Co; n = i / (Wo * Ho * Do * Co);
    }
    const A g = Io<T>::load(gy + n * gys[0] + c * gys[1] + d * gys[2] + h * gys[3] + ww * gys[4]);
    gz[i] = p.activation == Activation::kNone ? g : g * act_grad<A>(p.activation, gz[i]);
  }

  // 2. bias and weight gradients: one thread per output channel, fixed order.
  const T* x = static_cast<const T*>(p.x);
  if (b.grad_bias || b.grad_w_d || b.grad_w_h || b.grad_w_w) {
    A* gw[3] = {static_cast<A*>(b.grad_w_d), static_cast<A*>(b.grad_w_h), static_cast<A*>(b.grad_w_w)};
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t co = 0; co < Co; ++co) {
      const int64_t g = co / cout_g;
      double sb = 0;
      std::vector<double> sw(3 * cin_g * K, 0.0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t od = 0; od < Do; ++od)
          for (int64_t oh = 0; oh < Ho; ++oh) {
            const A* grow = gz + n * gs[0] + co * gs[1] + od * gs[2] + oh * gs[3];
            A rb = 0;
            for (int64_t ow = 0; ow < Wo; ++ow) rb += grow[ow * gs[4]];
            sb += rb;
            for (int64_t cl2 = 0; cl2 < cin_g; ++cl2) {
              const T* xc = x + n * xs[0] + (g * cin_g + cl2) * xs[1];
              for (int br = 0; br < 3; ++br) {
                for (int j = 0; j < K; ++j) {
                  int64_t base[3] = {od * s, oh * s, 0};
                  const int64_t off = j - pad;
                  A acc = 0;
                  if (br < 2) {
                    base[br] += off;
                    if (base[br] < 0 || base[br] >= p.in_size[br]) continue;
                    const T* row = xc + base[0] * xs[2] + base[1] * xs[3];
                    for (int64_t ow = 0; ow < Wo; ++ow) acc += grow[ow * gs[4]] * Io<T>::load(row + ow * s * xs[4]);
                  } else {
                    const T* row = xc + base[0] * xs[2] + base[1] * xs[3];
                    int64_t lo, hi;
                    detail::tap_out_range(off, s, p.in_size[2], Wo, &lo, &hi);
                    for (int64_t ow = lo; ow < hi; ++ow) acc += grow[ow * gs[4]] * Io<T>::load(row + (ow * s + off) * xs[4]);
                  }
                  sw[(br * cin_g + cl2) * K + j] += acc;
                }
              }
            }
          }
      if (b.grad_bias) static_cast<A*>(b.grad_bias)[co] = static_cast<A>(sb);
      for (int br = 0; br < 3; ++br)
        if (gw[br])
          for (int64_t cl2 = 0; cl2 < cin_g; ++cl2)
            for (int j = 0; j < K; ++j) gw[br][(co * cin_g + cl2) * K + j] = static_cast<A>(sw[(br * cin_g + cl2) * K + j]);
    }
  }

  // 3. dx
  if (!b.grad_x) return Status::kSuccess;
  T* gx = static_cast<T*>(b.grad_x);
  const int64_t* gxs = b.grad_x_strides;
  if (s == 1) {
    // dx = forward of gz with in/out channels swapped per group and the taps reversed
    std::vector<A> wf(3 * Ci * cout_g * K);
    const int64_t fper = Ci * cout_g * K;
    for (int br = 0; br < 3; ++br)
      for (int64_t co = 0; co < Co; ++co)
        for (int64_t cl2 = 0; cl2 < cin_g; ++cl2) {
          const int64_t g = co / cout_g, ci = g * cin_g + cl2, col = co - g * cout_g;
          for (int j = 0; j < K; ++j)
            wf[br * fper + (ci * cout_g + col) * K + (K - 1 - j)] = w[br * wper + (co * cin_g + cl2) * K + j];
        }
    DecompConvParams tp = p;
    tp.x = gz;
    tp.y = gx;
    tp.in_channels = Co;
    tp.out_channels = Ci;
    tp.activation = Activation::kNone;
    std::memcpy(tp.x_strides, gs, sizeof(gs));
    std::memcpy(tp.y_strides, gxs, sizeof(int64_t) * 5);
    return fwd_impl<A, T, A>(tp, wf, std::vector<A>());
  }
  // stride > 1: gather every tap that lands on each input element
  const int64_t D = p.in_size[0], H = p.in_size[1], W = p.in_size[2];
  const int64_t osz[3] = {Do, Ho, Wo};
  const int64_t in_total = N * Ci * D * H * W;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < in_total; ++i) {
    const int64_t iw = i % W, ih = (i / W) % H, id = (i / (W * H)) % D, ci = (i / (W * H * D)) % Ci, n = i / (W * H * D * Ci);
    const int64_t g = ci / cin_g, cl2 = ci - g * cin_g;
    const int64_t ip[3] = {id, ih, iw};
    A acc = 0;
    for (int br = 0; br < 3; ++br) {
      int64_t o[3];
      bool ok = true;
      for (int a = 0; a < 3 && ok; ++a)
        if (a != br) ok = detail::on_output_grid(ip[a], s, osz[a], &o[a]);
      if (!ok) continue;
      for (int j = 0; j < K; ++j) {
        if (!detail::gather_tap(ip[br], pad, j, s, osz[br], &o[br])) continue;
        const A* gp = gz + n * gs[0] + o[0] * gs[2] + o[1] * gs[3] + o[2] * gs[4];
        for (int64_t col = 0; col < cout_g; ++col) {
          const int64_t co = g * cout_g + col;
          acc += w[br * wper + (co * cin_g + cl2) * K + j] * gp[co * gs[1]];
        }
      }
    }
    Io<T>::store(gx + n * gxs[0] + ci * gxs[1] + id * gxs[2] + ih * gxs[3] + iw * gxs[4], acc);
  }
  return Status::kSuccess;
}

}  // namespace

Status decomp_conv_fwd(const DecompConvParams& p) {
  const Status st = decomp_conv_check(p);
  if (st != Status::kSuccess) return st;
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_typed<T>(p);)
}

Status decomp_conv_bwd(const DecompConvBwdParams& b) {
  const Status st = detail::decomp_conv_bwd_check(b);
  if (st != Status::kSuccess) return st;
  MK_DTYPE_SWITCH(b.fwd.dtype, T, return bwd_typed<T>(b);)
}

}  // namespace cpu
}  // namespace medkernels
