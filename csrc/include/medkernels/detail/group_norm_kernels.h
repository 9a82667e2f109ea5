// The CUDA group-norm kernels as block programs and per-item bodies (MK_HD), with their launch
// plans: medkernels/cuda/group_norm.cuh launches the plans with the CUDA executor of
// medkernels/detail/exec.h, the tests' host emulation (tests/group_norm_emulate.cpp) runs the same
// plans block by block. See medkernels/group_norm.h for the math.
//
// Forward, three launches:
//   1. sums   blocks (sample x channel tile, split of the spatial axis): per (n, c) and split, the
//             sums of d = h - K_g and d^2 in double, K_g the group's first element (a shift that
//             keeps the sums exact-ish for a large mean); a fixed tree over the block's rows.
//   2. stats  one item per (n, g): the group's channels and splits folded in a fixed order, then
//             mean = K_g + S1 / cnt, var = S2 / cnt - (S1 / cnt)^2 (negative rounding -> 0, NaN
//             kept), rstd = 1 / sqrt(var + eps).
//   3. apply  the sums' grid again, each thread its channel's positions: y = act((xhat w + b)
//             (1 + scale) + shift), the channel's operands loaded once.
// Backward, from the saved mean / rstd (u = dL/d(xhat w + b) = dy act'(z) (1 + scale)):
//   1. sums   per (n, c) and split: sum u, u xhat, dz, dz y0 and xhat.
//   2. chan   per (n, c): the splits folded; grad_scale = sum dz y0, grad_shift = sum dz.
//   3. group  per (n, g): Sa = sum_c w_c sum u, Sb = sum_c w_c sum u xhat.
//   4. param  per c: grad_weight = sum_n sum u xhat, grad_bias = sum_n sum u (samples in order).
//   5. add    per (n, c): grad_add = rstd (w sum u - M Sa / cnt - Sb / cnt sum xhat).
//   6. dx     the sums' grid: grad_x = rstd (w u - Sa / cnt - xhat Sb / cnt).
// No atomics: every sum has one fixed order, so the bits do not depend on the launch.
//
// A block has 256 threads as (channel lane, row): NC... layouts one channel of 256 rows,
// channels-last CT channels (the power of two >= C, at most 32) of 256 / CT rows, so a warp
// reads consecutive addresses in both layouts. Each row walks the split's positions with stride
// rows. The workspace (double) holds the per-split sums, then the backward's per-channel and
// per-group sums: gn_workspace_bytes().
#pragma once

#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/detail/activation.h"
#include "medkernels/detail/exec.h"
#include "medkernels/group_norm.h"

namespace medkernels {
namespace detail {

constexpr int kGnThreads = 256;

struct GnGeom {
  int64_t N, C, G, Cg, M, cnt;  // cnt = Cg * M, the elements of a group
  bool cl;                      // channels-last: the channel is x's fastest axis
  int ct, rows;                 // channel lanes and rows of a block: ct * rows = kGnThreads
  int64_t tiles, splits, chunk;  // channel tiles per sample; splits of M, chunk positions each
};

MK_HD GnGeom gn_geom(const GroupNormParams& p) {
  GnGeom g;
  g.N = p.batch;
  g.C = p.channels;
  g.G = p.groups;
  g.Cg = p.channels / p.groups;
  g.M = p.spatial;
  g.cnt = g.Cg * g.M;
  g.cl = p.channels > 1 && p.x_strides[1] == 1 && p.x_strides[2] != 1;
  g.ct = 1;
  if (g.cl)
    while (g.ct < 32 && g.ct < g.C) g.ct <<= 1;
  g.rows = kGnThreads / g.ct;
  g.tiles = (g.C + g.ct - 1) / g.ct;
  // at least 16 positions a row per split, at most 1024 splits
  int64_t splits = (g.M + 16 * g.rows - 1) / (16 * g.rows);
  splits = splits < 1 ? 1 : (splits > 1024 ? 1024 : splits);
  g.chunk = (g.M + splits - 1) / splits;
  g.splits = (g.M + g.chunk - 1) / g.chunk;  // no empty split
  return g;
}

constexpr int kGnFwdSums = 2, kGnBwdSums = 5;

// Workspace of the forward (bwd = false) or backward, in bytes; 0 for sizes group_norm_check
// refuses (gn_geom divides by them).
MK_HD size_t gn_workspace_bytes(const GroupNormParams& p, bool bwd) {
  if (p.batch < 1 || p.channels < 1 || p.spatial < 1 || p.groups < 1 || p.channels % p.groups) return 0;
  const GnGeom g = gn_geom(p);
  const int64_t nc = g.N * g.C;
  const int64_t doubles = bwd ? nc * g.splits * kGnBwdSums + nc * kGnBwdSums + g.N * g.G * 2 : nc * g.splits * kGnFwdSums;
  return static_cast<size_t>(doubles) * sizeof(double);
}

MK_HD int64_t gn_off(const int64_t* s, int64_t n, int64_t c, int64_t m) { return n * s[0] + c * s[1] + m * s[2]; }

// add[n, c] (0 without add) and weight[c] (1 without weight), in the arithmetic type
template <typename T>
MK_HD typename Io<T>::acc gn_add(const GroupNormParams& p, int64_t n, int64_t c) {
  using A = typename Io<T>::acc;
  return p.add ? Io<T>::load(static_cast<const T*>(p.add) + n * p.channels + c) : A(0);
}
template <typename T>
MK_HD typename Io<T>::acc gn_weight(const GroupNormParams& p, int64_t c) {
  using A = typename Io<T>::acc;
  return p.weight ? Io<T>::load(static_cast<const T*>(p.weight) + c) : A(1);
}

// The per-(sample, channel) and per-channel operands of one channel, in the arithmetic type A.
template <typename T>
struct GnChannel {
  using A = typename Io<T>::acc;
  A add, w, b, sc1, sh;  // add, weight, bias, 1 + scale, shift

  MK_HD GnChannel(const GroupNormParams& p, int64_t n, int64_t c) {
    const int64_t nc = n * p.channels + c;
    add = gn_add<T>(p, n, c);
    w = gn_weight<T>(p, c);
    b = p.bias ? Io<T>::load(static_cast<const T*>(p.bias) + c) : A(0);
    sc1 = A(1) + (p.scale ? Io<T>::load(static_cast<const T*>(p.scale) + nc) : A(0));
    sh = p.shift ? Io<T>::load(static_cast<const T*>(p.shift) + nc) : A(0);
  }
};

// The group's shift K_g: its first element (channel g * Cg, position 0) plus that channel's add.
template <typename T>
MK_HD typename Io<T>::acc gn_pivot(const GroupNormParams& p, int64_t n, int64_t g) {
  const int64_t c = g * (p.channels / p.groups);
  return Io<T>::load(static_cast<const T*>(p.x) + gn_off(p.x_strides, n, c, 0)) + gn_add<T>(p, n, c);
}

// The backward at one position of a channel: xhat, y0 = xhat w + b, dz = dy act'(y0 (1 + scale)
// + shift) and u = dz (1 + scale), from h = x + add and the group's statistics.
template <typename A>
struct GnBwdPoint {
  A xhat, y0, dz, u;
};
template <typename T>
MK_HD GnBwdPoint<typename Io<T>::acc> gn_bwd_point(const GnChannel<T>& ch, Activation act, typename Io<T>::acc h,
                                                   typename Io<T>::acc dy, typename Io<T>::acc mean,
                                                   typename Io<T>::acc rstd) {
  GnBwdPoint<typename Io<T>::acc> r;
  r.xhat = (h - mean) * rstd;
  r.y0 = r.xhat * ch.w + ch.b;
  r.dz = dy * act_grad(act, r.y0 * ch.sc1 + ch.sh);
  r.u = r.dz * ch.sc1;
  return r;
}

// --- 1. the per-(n, c, split) sums: one block program for both directions ------------------------
// Elem::K sums; Elem(params, n, c) sets up a channel, elem.add(acc, n, c, m) adds one position.
template <typename T>
struct GnFwdElem {
  static constexpr int K = kGnFwdSums;
  using A = typename Io<T>::acc;
  const GroupNormParams& p;
  A add, pivot;
  MK_HD GnFwdElem(const GroupNormParams& prm, int64_t n, int64_t c)
      : p(prm),
        add(gn_add<T>(prm, n, c)),
        pivot(gn_pivot<T>(prm, n, c / (prm.channels / prm.groups))) {}
  MK_HD void operator()(double* acc, int64_t n, int64_t c, int64_t m) const {
    const A d = Io<T>::load(static_cast<const T*>(p.x) + gn_off(p.x_strides, n, c, m)) + add - pivot;
    acc[0] += static_cast<double>(d);
    acc[1] += static_cast<double>(d) * static_cast<double>(d);
  }
};

// The backward's element: xhat, y0 = xhat w + b, z = y0 (1 + scale) + shift, dz = dy act'(z),
// u = dz (1 + scale); sums u, u xhat, dz, dz y0, xhat.
template <typename T>
struct GnBwdElem {
  static constexpr int K = kGnBwdSums;
  using A = typename Io<T>::acc;
  const GroupNormBwdParams& q;
  GnChannel<T> ch;
  A mean, rstd;
  MK_HD GnBwdElem(const GroupNormBwdParams& prm, int64_t n, int64_t c)
      : q(prm), ch(prm.fwd, n, c) {
    const int64_t ng = n * prm.fwd.groups + c / (prm.fwd.channels / prm.fwd.groups);
    mean = static_cast<const A*>(prm.fwd.mean)[ng];
    rstd = static_cast<const A*>(prm.fwd.rstd)[ng];
  }
  MK_HD void operator()(double* acc, int64_t n, int64_t c, int64_t m) const {
    const GroupNormParams& p = q.fwd;
    const A h = Io<T>::load(static_cast<const T*>(p.x) + gn_off(p.x_strides, n, c, m)) + ch.add;
    const A dy = Io<T>::load(static_cast<const T*>(q.grad_y) + gn_off(q.grad_y_strides, n, c, m));
    const GnBwdPoint<A> e = gn_bwd_point<T>(ch, p.activation, h, dy, mean, rstd);
    acc[0] += static_cast<double>(e.u);
    acc[1] += static_cast<double>(e.u * e.xhat);
    acc[2] += static_cast<double>(e.dz);
    acc[3] += static_cast<double>(e.dz * e.y0);
    acc[4] += static_cast<double>(e.xhat);
  }
};

// Block (n * tiles + tile, split); writes ws[((n * C + c) * splits + split) * K + k].
template <class Elem, class P>
struct GnSums {
  static constexpr const char* kName = "group_norm_sums";
  P p;
  GnGeom g;
  double* ws;

  static size_t smem_bytes() { return static_cast<size_t>(Elem::K) * kGnThreads * sizeof(double); }

  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char* smem) const {
    constexpr int K = Elem::K;
    double* red = reinterpret_cast<double*>(smem);  // [K][ct][rows]
    const int64_t n = pos.x / g.tiles, tile = pos.x - n * g.tiles, split = pos.y;
    const int64_t m0 = split * g.chunk, m1 = m0 + g.chunk < g.M ? m0 + g.chunk : g.M;
    for (int s = 0; s < bk.slots(); ++s) {
      const int t = bk.thread(s), ci = t % g.ct, ri = t / g.ct;
      const int64_t c = tile * g.ct + ci;
      double acc[K];
      for (int k = 0; k < K; ++k) acc[k] = 0.0;
      if (c < g.C) {
        const Elem e(p, n, c);
        for (int64_t m = m0 + ri; m < m1; m += g.rows) e(acc, n, c, m);
      }
      for (int k = 0; k < K; ++k) red[(k * g.ct + ci) * g.rows + ri] = acc[k];
    }
    for (int stride = g.rows / 2; stride > 0; stride >>= 1) {  // rows is a power of two
      bk.sync();
      for (int s = 0; s < bk.slots(); ++s) {
        const int t = bk.thread(s), ci = t % g.ct, ri = t / g.ct;
        if (ri < stride)
          for (int k = 0; k < K; ++k) red[(k * g.ct + ci) * g.rows + ri] += red[(k * g.ct + ci) * g.rows + ri + stride];
      }
    }
    bk.sync();
    for (int s = 0; s < bk.slots(); ++s) {
      const int t = bk.thread(s), ci = t % g.ct, ri = t / g.ct;
      const int64_t c = tile * g.ct + ci;
      if (ri == 0 && c < g.C)
        for (int k = 0; k < K; ++k) ws[((n * g.C + c) * g.splits + split) * K + k] = red[(k * g.ct + ci) * g.rows];
    }
  }
};

// --- forward --------------------------------------------------------------------------------
template <typename T>
struct GnStats {
  static constexpr const char* kName = "group_norm_stats";
  GroupNormParams p;
  GnGeom g;
  const double* ws;
  MK_HD void operator()(int64_t i) const {  // i = n * G + group
    using A = typename Io<T>::acc;
    const int64_t n = i / g.G, grp = i - n * g.G;
    double s1 = 0.0, s2 = 0.0;
    for (int64_t c = grp * g.Cg; c < (grp + 1) * g.Cg; ++c)
      for (int64_t k = 0; k < g.splits; ++k) {
        const double* w = ws + ((n * g.C + c) * g.splits + k) * kGnFwdSums;
        s1 += w[0];
        s2 += w[1];
      }
    const double m1 = s1 / static_cast<double>(g.cnt);
    double var = s2 / static_cast<double>(g.cnt) - m1 * m1;
    var = var < 0.0 ? 0.0 : var;  // rounding below 0 only; NaN stays NaN
    static_cast<A*>(p.mean)[i] = static_cast<A>(static_cast<double>(gn_pivot<T>(p, n, grp)) + m1);
    static_cast<A*>(p.rstd)[i] = static_cast<A>(1.0 / sqrt(var + p.eps));
  }
};

// The block's positions (channel c of its tile, rows of its split), as the sums walk them: body(c, m)
// for each, no division per element.
template <class BK, class F>
MK_HD void gn_block_walk(const BK& bk, const BlockPos& pos, const GnGeom& g, const F& per_channel) {
  const int64_t n = pos.x / g.tiles, tile = pos.x - n * g.tiles;
  const int64_t m0 = pos.y * g.chunk, m1 = m0 + g.chunk < g.M ? m0 + g.chunk : g.M;
  for (int s = 0; s < bk.slots(); ++s) {
    const int t = bk.thread(s), ci = t % g.ct, ri = t / g.ct;
    const int64_t c = tile * g.ct + ci;
    if (c < g.C) per_channel(n, c, m0 + ri, m1);
  }
}

template <typename T>
struct GnApplyChannel {
  const GroupNormParams& p;
  const GnGeom& g;
  MK_HD void operator()(int64_t n, int64_t c, int64_t m_first, int64_t m_end) const {
    using A = typename Io<T>::acc;
    const GnChannel<T> ch(p, n, c);
    const int64_t ng = n * g.G + c / g.Cg;
    const A mean = static_cast<const A*>(p.mean)[ng], rstd = static_cast<const A*>(p.rstd)[ng];
    const A k = rstd * ch.w, k0 = ch.b - mean * k;  // h * k + k0 = (h - mean) rstd w + b
    const T* x = static_cast<const T*>(p.x) + n * p.x_strides[0] + c * p.x_strides[1];
    T* y = static_cast<T*>(p.y) + n * p.y_strides[0] + c * p.y_strides[1];
    for (int64_t m = m_first; m < m_end; m += g.rows) {
      const A h = Io<T>::load(x + m * p.x_strides[2]) + ch.add;
      Io<T>::store(y + m * p.y_strides[2], act_fwd<A>(p.activation, (h * k + k0) * ch.sc1 + ch.sh));
    }
  }
};

// Block (n * tiles + tile, split), the sums' grid: y for the block's positions.
template <typename T>
struct GnApply {
  static constexpr const char* kName = "group_norm_apply";
  GroupNormParams p;
  GnGeom g;
  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char*) const {
    gn_block_walk(bk, pos, g, GnApplyChannel<T>{p, g});
  }
};

template <typename T, class X>
int group_norm_fwd_run(const GroupNormParams& p, X& ex) {
  const GnGeom g = gn_geom(p);
  double* ws = static_cast<double*>(p.workspace);
  using Sums = GnSums<GnFwdElem<T>, GroupNormParams>;
  int e = ex.template blocks<kGnThreads>(Sums{p, g, ws}, g.N * g.tiles, g.splits, kGnThreads, Sums::smem_bytes());
  if (!e) e = ex.template items<256>(GnStats<T>{p, g, ws}, g.N * g.G);
  if (!e) e = ex.template blocks<kGnThreads>(GnApply<T>{p, g}, g.N * g.tiles, g.splits, kGnThreads, 0);
  return e;
}

// --- backward -------------------------------------------------------------------------------
struct GnBwdWs {
  double *part, *chan, *grp;
};
MK_HD GnBwdWs gn_bwd_ws(const GnGeom& g, void* base) {
  GnBwdWs w;
  w.part = static_cast<double*>(base);
  w.chan = w.part + g.N * g.C * g.splits * kGnBwdSums;
  w.grp = w.chan + g.N * g.C * kGnBwdSums;
  return w;
}

template <typename T>
struct GnChan {
  static constexpr const char* kName = "group_norm_bwd_chan";
  GroupNormBwdParams q;
  GnGeom g;
  GnBwdWs w;
  MK_HD void operator()(int64_t i) const {  // i = n * C + c
    using A = typename Io<T>::acc;
    double s[kGnBwdSums] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int64_t k = 0; k < g.splits; ++k)
      for (int j = 0; j < kGnBwdSums; ++j) s[j] += w.part[(i * g.splits + k) * kGnBwdSums + j];
    for (int j = 0; j < kGnBwdSums; ++j) w.chan[i * kGnBwdSums + j] = s[j];
    if (q.grad_shift) static_cast<A*>(q.grad_shift)[i] = static_cast<A>(s[2]);
    if (q.grad_scale) static_cast<A*>(q.grad_scale)[i] = static_cast<A>(s[3]);
  }
};

template <typename T>
struct GnGroup {
  static constexpr const char* kName = "group_norm_bwd_group";
  GroupNormBwdParams q;
  GnGeom g;
  GnBwdWs w;
  MK_HD void operator()(int64_t i) const {  // i = n * G + group
    const int64_t n = i / g.G, grp = i - n * g.G;
    double sa = 0.0, sb = 0.0;
    for (int64_t c = grp * g.Cg; c < (grp + 1) * g.Cg; ++c) {
      const double wc = static_cast<double>(gn_weight<T>(q.fwd, c));
      sa += wc * w.chan[(n * g.C + c) * kGnBwdSums + 0];
      sb += wc * w.chan[(n * g.C + c) * kGnBwdSums + 1];
    }
    w.grp[i * 2] = sa;
    w.grp[i * 2 + 1] = sb;
  }
};

template <typename T>
struct GnParam {
  static constexpr const char* kName = "group_norm_bwd_param";
  GroupNormBwdParams q;
  GnGeom g;
  GnBwdWs w;
  MK_HD void operator()(int64_t c) const {
    using A = typename Io<T>::acc;
    double sw = 0.0, sb = 0.0;
    for (int64_t n = 0; n < g.N; ++n) {
      sw += w.chan[(n * g.C + c) * kGnBwdSums + 1];
      sb += w.chan[(n * g.C + c) * kGnBwdSums + 0];
    }
    if (q.grad_weight) static_cast<A*>(q.grad_weight)[c] = static_cast<A>(sw);
    if (q.grad_bias) static_cast<A*>(q.grad_bias)[c] = static_cast<A>(sb);
  }
};

template <typename T>
struct GnAdd {
  static constexpr const char* kName = "group_norm_bwd_add";
  GroupNormBwdParams q;
  GnGeom g;
  GnBwdWs w;
  MK_HD void operator()(int64_t i) const {  // i = n * C + c
    using A = typename Io<T>::acc;
    const int64_t n = i / g.C, c = i - n * g.C, ng = n * g.G + c / g.Cg;
    const double wc = static_cast<double>(gn_weight<T>(q.fwd, c));
    const double rstd = static_cast<double>(static_cast<const A*>(q.fwd.rstd)[ng]), cnt = static_cast<double>(g.cnt);
    const double* s = w.chan + i * kGnBwdSums;
    const double d = rstd * (wc * s[0] - static_cast<double>(g.M) * w.grp[ng * 2] / cnt - s[4] * w.grp[ng * 2 + 1] / cnt);
    static_cast<A*>(q.grad_add)[i] = static_cast<A>(d);
  }
};

template <typename T>
struct GnDxChannel {
  const GroupNormBwdParams& q;
  const GnGeom& g;
  const GnBwdWs& w;
  MK_HD void operator()(int64_t n, int64_t c, int64_t m_first, int64_t m_end) const {
    using A = typename Io<T>::acc;
    const GroupNormParams& p = q.fwd;
    const GnChannel<T> ch(p, n, c);
    const int64_t ng = n * g.G + c / g.Cg;
    const A mean = static_cast<const A*>(p.mean)[ng], rstd = static_cast<const A*>(p.rstd)[ng];
    const A ma = static_cast<A>(w.grp[ng * 2] / static_cast<double>(g.cnt));
    const A mb = static_cast<A>(w.grp[ng * 2 + 1] / static_cast<double>(g.cnt));
    const T* x = static_cast<const T*>(p.x) + n * p.x_strides[0] + c * p.x_strides[1];
    const T* gy = static_cast<const T*>(q.grad_y) + n * q.grad_y_strides[0] + c * q.grad_y_strides[1];
    T* gx = static_cast<T*>(q.grad_x) + n * q.grad_x_strides[0] + c * q.grad_x_strides[1];
    for (int64_t m = m_first; m < m_end; m += g.rows) {
      const GnBwdPoint<A> e = gn_bwd_point<T>(ch, p.activation, Io<T>::load(x + m * p.x_strides[2]) + ch.add,
                                              Io<T>::load(gy + m * q.grad_y_strides[2]), mean, rstd);
      Io<T>::store(gx + m * q.grad_x_strides[2], rstd * (ch.w * e.u - ma - e.xhat * mb));
    }
  }
};

// Block (n * tiles + tile, split), the sums' grid: grad_x for the block's positions.
template <typename T>
struct GnDx {
  static constexpr const char* kName = "group_norm_bwd_dx";
  GroupNormBwdParams q;
  GnGeom g;
  GnBwdWs w;
  template <class BK>
  MK_HD void operator()(const BK& bk, const BlockPos& pos, unsigned char*) const {
    gn_block_walk(bk, pos, g, GnDxChannel<T>{q, g, w});
  }
};

template <typename T, class X>
int group_norm_bwd_run(const GroupNormBwdParams& q, X& ex) {
  const GnGeom g = gn_geom(q.fwd);
  const GnBwdWs w = gn_bwd_ws(g, q.fwd.workspace);
  using Sums = GnSums<GnBwdElem<T>, GroupNormBwdParams>;
  int e = ex.template blocks<kGnThreads>(Sums{q, g, w.part}, g.N * g.tiles, g.splits, kGnThreads, Sums::smem_bytes());
  if (!e) e = ex.template items<256>(GnChan<T>{q, g, w}, g.N * g.C);
  const bool dx = q.grad_x || q.grad_add;
  if (!e && dx) e = ex.template items<256>(GnGroup<T>{q, g, w}, g.N * g.G);
  if (!e && (q.grad_weight || q.grad_bias)) e = ex.template items<256>(GnParam<T>{q, g, w}, g.C);
  if (!e && q.grad_add) e = ex.template items<256>(GnAdd<T>{q, g, w}, g.N * g.C);
  if (!e && q.grad_x) e = ex.template blocks<kGnThreads>(GnDx<T>{q, g, w}, g.N * g.tiles, g.splits, kGnThreads, 0);
  return e;
}

}  // namespace detail
}  // namespace medkernels
