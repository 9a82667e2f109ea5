// GroupNorm + add / FiLM + activation on the CPU (OpenMP). The forward reads x twice (the
// statistics, then the fused normalise-affine-activation pass) and writes y once; the
// backward reads x and grad_y twice and writes grad_x once. Every reduction is split into
// fixed blocks of a channel and combined in order, so the bits do not depend on the thread count.
#include <cmath>
#include <string>
#include <vector>

#include "vec.h"
#include "medkernels/detail/activation.h"
#include "medkernels/detail/dtype_switch.h"
#include "medkernels/detail/error.h"
#include "medkernels/group_norm.h"

namespace medkernels {

Status group_norm_check(const GroupNormParams& p) {
  MK_CHECK_ARG(p.x, "group_norm: x must be non-null");
  MK_CHECK_ARG(p.batch > 0 && p.channels > 0 && p.spatial > 0,
               "group_norm: batch, channels and spatial size must be positive, got " + std::to_string(p.batch) +
                   ", " + std::to_string(p.channels) + ", " + std::to_string(p.spatial));
  MK_CHECK_ARG(p.groups > 0 && p.channels % p.groups == 0,
               "group_norm: num_groups must be positive and divide the " + std::to_string(p.channels) +
                   " channels, got " + std::to_string(p.groups));
  MK_CHECK_ARG(std::isfinite(p.eps) && p.eps >= 0, "group_norm: eps must be finite and >= 0");
  MK_CHECK_ARG(p.mean && p.rstd, "group_norm: mean and rstd must be non-null");
  const int a = static_cast<int>(p.activation);
  MK_CHECK_ARG(a == 0 || a == 1 || a == 3, "group_norm: activation must be none, gelu or silu");
  return Status::kSuccess;
}

namespace cpu {
namespace {

constexpr int64_t kBlock = 1024;  // elements of one channel per statistics block

template <typename T>
using Acc = typename Io<T>::acc;

template <typename T>
Acc<T> param(const void* p, int64_t i, Acc<T> dflt) {
  return p ? Io<T>::load(static_cast<const T*>(p) + i) : dflt;
}

// Per (n, c): mean and M2 of x over M, by blocks (two passes in cache), Chan-combined in order.
template <typename T>
void channel_moments(const GroupNormParams& p, std::vector<double>& mean, std::vector<double>& m2) {
  const int64_t N = p.batch, C = p.channels, M = p.spatial;
  const T* x = static_cast<const T*>(p.x);
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C;
    const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
    double mu = 0, s2 = 0;
    int64_t cnt = 0;
    for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
      const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
      double s = 0;
      for (int64_t i = 0; i < nb; ++i) s += Io<T>::load(xc + (m0 + i) * p.x_strides[2]);
      const double bm = s / nb;
      double q = 0;
      for (int64_t i = 0; i < nb; ++i) {
        const double d = Io<T>::load(xc + (m0 + i) * p.x_strides[2]) - bm;
        q += d * d;
      }
      const double tot = static_cast<double>(cnt + nb), delta = bm - mu;
      mu += delta * nb / tot;
      s2 += q + delta * delta * static_cast<double>(cnt) * nb / tot;
      cnt += nb;
    }
    mean[nc] = mu;
    m2[nc] = s2;
  }
}

// Per (n, g): combine the group's channels (shifted by add) in channel order -> mean, rstd.
template <typename T>
void group_stats(const GroupNormParams& p, const std::vector<double>& cm, const std::vector<double>& cm2,
                 std::vector<double>& gmean, std::vector<double>& grstd) {
  const int64_t C = p.channels, G = p.groups, Cg = C / G, M = p.spatial;
  for (int64_t ng = 0; ng < p.batch * G; ++ng) {
    const int64_t n = ng / G, g = ng % G;
    double mu = 0, s2 = 0, cnt = 0;
    for (int64_t j = 0; j < Cg; ++j) {
      const int64_t c = g * Cg + j;
      const double m = cm[n * C + c] + static_cast<double>(param<T>(p.add, n * C + c, 0));
      const double tot = cnt + M, delta = m - mu;
      mu += delta * M / tot;
      s2 += cm2[n * C + c] + delta * delta * cnt * M / tot;
      cnt = tot;
    }
    gmean[ng] = mu;
    grstd[ng] = 1.0 / std::sqrt(s2 / cnt + p.eps);
    using A = Acc<T>;
    static_cast<A*>(p.mean)[ng] = static_cast<A>(mu);
    static_cast<A*>(p.rstd)[ng] = static_cast<A>(grstd[ng]);
  }
}

// y = act(x * a + b): a = rstd w (1 + s), b = ((add - mean) rstd w + bias)(1 + s) + shift.
template <typename T>
void coefficients(const GroupNormParams& p, const double* gmean, const double* grstd, std::vector<Acc<T>>& a,
                  std::vector<Acc<T>>& b) {
  using A = Acc<T>;
  const int64_t C = p.channels, Cg = C / p.groups;
  for (int64_t nc = 0; nc < p.batch * C; ++nc) {
    const int64_t n = nc / C, c = nc % C, ng = n * p.groups + c / Cg;
    const double w = static_cast<double>(param<T>(p.weight, c, 1)), s1 = 1.0 + static_cast<double>(param<T>(p.scale, nc, 0));
    const double r = grstd[ng];
    a[nc] = static_cast<A>(r * w * s1);
    b[nc] = static_cast<A>(((static_cast<double>(param<T>(p.add, nc, 0)) - gmean[ng]) * r * w +
                            static_cast<double>(param<T>(p.bias, c, 0))) * s1 +
                           static_cast<double>(param<T>(p.shift, nc, 0)));
  }
}

template <typename T>
Status fwd_impl(const GroupNormParams& p) {
  using A = Acc<T>;
  const int64_t N = p.batch, C = p.channels, M = p.spatial;
  std::vector<double> cm(N * C), cm2(N * C), gmean(N * p.groups), grstd(N * p.groups);
  channel_moments<T>(p, cm, cm2);
  group_stats<T>(p, cm, cm2, gmean, grstd);
  std::vector<A> a(N * C), b(N * C);
  coefficients<T>(p, gmean.data(), grstd.data(), a, b);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int act = static_cast<int>(p.activation);
#pragma omp parallel
  {
    std::vector<A> buf(kBlock);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
      T* yc = y + n * p.y_strides[0] + c * p.y_strides[1];
      const A ac = a[nc], bc = b[nc];
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
        for (int64_t i = 0; i < nb; ++i) buf[i] = Io<T>::load(xc + (m0 + i) * p.x_strides[2]) * ac + bc;
        if constexpr (sizeof(A) == sizeof(float)) {
          vec::act_row(reinterpret_cast<float*>(buf.data()), nb, act);
        } else {
          for (int64_t i = 0; i < nb; ++i) buf[i] = detail::act_fwd<A>(p.activation, buf[i]);
        }
        for (int64_t i = 0; i < nb; ++i) Io<T>::store(yc + (m0 + i) * p.y_strides[2], buf[i]);
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status bwd_impl(const GroupNormBwdParams& q) {
  using A = Acc<T>;
  const GroupNormParams& p = q.fwd;
  const int64_t N = p.batch, C = p.channels, G = p.groups, Cg = C / G, M = p.spatial;
  std::vector<double> gmean(N * G), grstd(N * G);
  for (int64_t i = 0; i < N * G; ++i) {
    gmean[i] = static_cast<const A*>(p.mean)[i];
    grstd[i] = static_cast<const A*>(p.rstd)[i];
  }
  std::vector<A> a(N * C), b(N * C);
  coefficients<T>(p, gmean.data(), grstd.data(), a, b);
  const T* x = static_cast<const T*>(p.x);
  const T* gy = static_cast<const T*>(q.grad_y);
  std::vector<double> S1(N * C), S2(N * C);
  // pass 1: S1 = sum dz, S2 = sum dz * xhat per (n, c), dz = gy act'(x a + b)
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
    const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
    const T* gc = gy + n * q.grad_y_strides[0] + c * q.grad_y_strides[1];
    const A ac = a[nc], bc = b[nc];
    const A sh = static_cast<A>(param<T>(p.add, nc, 0) - gmean[ng]), r = static_cast<A>(grstd[ng]);
    double s1 = 0, s2 = 0;
    for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
      const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
      A b1 = 0, b2 = 0;
      for (int64_t i = 0; i < nb; ++i) {
        const A xv = Io<T>::load(xc + (m0 + i) * p.x_strides[2]);
        const A dz = Io<T>::load(gc + (m0 + i) * q.grad_y_strides[2]) * detail::act_grad<A>(p.activation, xv * ac + bc);
        b1 += dz;
        b2 += dz * ((xv + sh) * r);
      }
      s1 += b1;
      s2 += b2;
    }
    S1[nc] = s1;
    S2[nc] = s2;
  }
  // per (n, g): c1 = mean of dxhat, c2 = mean of dxhat * xhat; dxhat = dz w (1 + s)
  std::vector<double> k(N * C), c1(N * G, 0.0), c2(N * G, 0.0);
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
    k[nc] = static_cast<double>(param<T>(p.weight, c, 1)) * (1.0 + static_cast<double>(param<T>(p.scale, nc, 0)));
    c1[ng] += k[nc] * S1[nc];
    c2[ng] += k[nc] * S2[nc];
  }
  const double cnt = static_cast<double>(Cg) * M;
  for (int64_t ng = 0; ng < N * G; ++ng) {
    c1[ng] /= cnt;
    c2[ng] /= cnt;
  }
  std::vector<double> dadd(N * C, 0.0);
  if (q.grad_x || q.grad_add) {
    T* gx = static_cast<T*>(q.grad_x);
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
      const T* xc = x + n * p.x_strides[0] + c * p.x_strides[1];
      const T* gc = gy + n * q.grad_y_strides[0] + c * q.grad_y_strides[1];
      T* gxc = gx ? gx + n * q.grad_x_strides[0] + c * q.grad_x_strides[1] : nullptr;
      const A ac = a[nc], bc = b[nc], kc = static_cast<A>(k[nc]), r = static_cast<A>(grstd[ng]);
      const A sh = static_cast<A>(param<T>(p.add, nc, 0) - gmean[ng]);
      const A d1 = static_cast<A>(c1[ng]), d2 = static_cast<A>(c2[ng]);
      double sum = 0;
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t nb = M - m0 < kBlock ? M - m0 : kBlock;
        A bs = 0;
        for (int64_t i = 0; i < nb; ++i) {
          const A xv = Io<T>::load(xc + (m0 + i) * p.x_strides[2]);
          const A dz = Io<T>::load(gc + (m0 + i) * q.grad_y_strides[2]) * detail::act_grad<A>(p.activation, xv * ac + bc);
          const A dx = r * (kc * dz - d1 - (xv + sh) * r * d2);
          bs += dx;
          if (gxc) Io<T>::store(gxc + (m0 + i) * q.grad_x_strides[2], dx);
        }
        sum += bs;
      }
      dadd[nc] = sum;
    }
  }
  A* gw = static_cast<A*>(q.grad_weight);
  A* gb = static_cast<A*>(q.grad_bias);
  for (int64_t c = 0; c < C; ++c) {
    double w = 0, bb = 0;
    for (int64_t n = 0; n < N; ++n) {
      const double s1 = 1.0 + static_cast<double>(param<T>(p.scale, n * C + c, 0));
      w += s1 * S2[n * C + c];
      bb += s1 * S1[n * C + c];
    }
    if (gw) gw[c] = static_cast<A>(w);
    if (gb) gb[c] = static_cast<A>(bb);
  }
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C;
    if (q.grad_shift) static_cast<A*>(q.grad_shift)[nc] = static_cast<A>(S1[nc]);
    if (q.grad_scale)
      static_cast<A*>(q.grad_scale)[nc] = static_cast<A>(static_cast<double>(param<T>(p.weight, c, 1)) * S2[nc] +
                                                         static_cast<double>(param<T>(p.bias, c, 0)) * S1[nc]);
    if (q.grad_add) static_cast<A*>(q.grad_add)[nc] = static_cast<A>(dadd[nc]);
  }
  return Status::kSuccess;
}

}  // namespace

Status group_norm_fwd(const GroupNormParams& p) {
  const Status s = group_norm_check(p);
  if (s != Status::kSuccess) return s;
  MK_CHECK_ARG(p.y, "group_norm_fwd: y must be non-null");
  MK_DTYPE_SWITCH(p.dtype, T, return fwd_impl<T>(p);)
}

Status group_norm_bwd(const GroupNormBwdParams& q) {
  const Status s = group_norm_check(q.fwd);
  if (s != Status::kSuccess) return s;
  MK_CHECK_ARG(q.grad_y, "group_norm_bwd: grad_y must be non-null");
  MK_DTYPE_SWITCH(q.fwd.dtype, T, return bwd_impl<T>(q);)
}

}  // namespace cpu
}  // namespace medkernels
