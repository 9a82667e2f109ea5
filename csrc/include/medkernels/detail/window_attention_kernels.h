// Per-thread work of the CUDA window-attention kernels, plain C++ marked MK_HD: the CUDA file
// launches one thread per item; the tests' host emulation (tests/window_attention_emulate.cpp) runs
// the very same functions over every item, which is how machines without a GPU test them. See
// medkernels/window_attention.h for the math.
//
// Items:
//   fwd    (dir, batch*window*head, query i): online softmax over the window's keys -> out, lse
//   delta  (dir, batch, token, head): rowsum(dO * O)
//   dkdv   (dir, batch*window*head, key j): dk, dv (padding keys: into their own slot)
//   dq     (dir, batch*window*head, query i): dq
//   pair   (dir, chunk, head, i, j): dS summed over the chunk's windows in order
//   reduce_pair (head, i, j) and reduce_pad (kv, head, e): fixed-order sums of the partials
#pragma once

#include <cmath>
#include <cstdint>

#include "medkernels/common.h"
#include "medkernels/detail/exec.h"
#include "medkernels/window_attention.h"

namespace medkernels {
namespace detail {

struct WaGeo {
  int64_t D, H, W, WD, WH, WW, SD, SH, SW, PD, PH, PW, CWH, CWW, CWD;
  int64_t N, nW, nwh, nww, vol, heads, E, batch;
  bool shifted;
};

MK_HD WaGeo wa_geo(const WindowAttentionParams& p) {
  WaGeo g;
  g.D = p.size[0], g.H = p.size[1], g.W = p.size[2];
  g.WD = p.eff_window[0], g.WH = p.eff_window[1], g.WW = p.eff_window[2];
  g.SD = p.shift[0], g.SH = p.shift[1], g.SW = p.shift[2];
  g.PD = p.padded[0], g.PH = p.padded[1], g.PW = p.padded[2];
  g.CWD = p.window[0], g.CWH = p.window[1], g.CWW = p.window[2];
  g.N = g.WD * g.WH * g.WW;
  g.nwh = g.PH / g.WH;
  g.nww = g.PW / g.WW;
  g.nW = (g.PD / g.WD) * g.nwh * g.nww;
  g.vol = g.D * g.H * g.W;
  g.heads = p.heads;
  g.E = p.head_dim;
  g.batch = p.batch;
  g.shifted = g.SD > 0 || g.SH > 0 || g.SW > 0;
  return g;
}

struct WaToken {
  int64_t od, oh, ow;
  bool valid;
  int region;
};

MK_HD int wa_region(int64_t x, int64_t P, int64_t Wn, int64_t S) {
  return S == 0 ? 0 : int(x >= P - Wn) + int(x >= P - S);  // MONAI compute_mask slices
}

MK_HD WaToken wa_token(const WaGeo& g, int64_t w, int64_t t) {
  const int64_t xd = (w / (g.nwh * g.nww)) * g.WD + t / (g.WH * g.WW);
  const int64_t xh = ((w / g.nww) % g.nwh) * g.WH + (t / g.WW) % g.WH;
  const int64_t xw = (w % g.nww) * g.WW + t % g.WW;
  WaToken k;
  k.od = (xd + g.SD) % g.PD;
  k.oh = (xh + g.SH) % g.PH;
  k.ow = (xw + g.SW) % g.PW;
  k.valid = k.od < g.D && k.oh < g.H && k.ow < g.W;
  k.region = wa_region(xd, g.PD, g.WD, g.SD) * 9 + wa_region(xh, g.PH, g.WH, g.SH) * 3 + wa_region(xw, g.PW, g.WW, g.SW);
  return k;
}

MK_HD int64_t wa_bias_index(const WaGeo& g, int64_t i, int64_t j) {
  const int64_t id = i / (g.CWH * g.CWW), ih = (i / g.CWW) % g.CWH, iw = i % g.CWW;
  const int64_t jd = j / (g.CWH * g.CWW), jh = (j / g.CWW) % g.CWH, jw = j % g.CWW;
  return (id - jd + g.CWD - 1) * (2 * g.CWH - 1) * (2 * g.CWW - 1) + (ih - jh + g.CWH - 1) * (2 * g.CWW - 1) +
         (iw - jw + g.CWW - 1);
}

MK_HD int64_t wa_offset(const int64_t* s, int64_t b, const WaToken& k, int64_t h) {
  return b * s[0] + k.od * s[1] + k.oh * s[2] + k.ow * s[3] + h * s[4];
}

MK_HD int64_t wa_row(const WaGeo& g, int dir, int64_t b, const WaToken& k, int64_t h) {
  return ((dir * g.batch + b) * g.vol + (k.od * g.H + k.oh) * g.W + k.ow) * g.heads + h;
}

template <typename T, typename A>
MK_HD void wa_load(A* dst, const T* base, const int64_t* s, int64_t b, const WaToken& k, int64_t h, int64_t E) {
  const T* src = base + wa_offset(s, b, k, h);
  for (int64_t e = 0; e < E; ++e) dst[e] = Io<T>::load(src + e * s[5]);
}

// key (which = 0) or value (1) of token k: from the volume, or the padding key/value
template <typename T, typename A>
MK_HD void wa_load_kv(A* dst, const WindowAttentionParams& p, const T* base, const int64_t* s, int64_t b,
                      const WaToken& k, int64_t h, int which) {
  if (k.valid) {
    wa_load<T, A>(dst, base, s, b, k, h, p.head_dim);
    return;
  }
  const T* pad = static_cast<const T*>(p.pad_kv);
  for (int64_t e = 0; e < p.head_dim; ++e) dst[e] = pad ? Io<T>::load(pad + (which * p.heads + h) * p.head_dim + e) : A(0);
}

// logit of (query i, key j); -inf when masked out
template <typename T, typename A>
MK_HD A wa_logit(const WindowAttentionParams& p, const WaGeo& g, const A* q, const A* k, int64_t i, int64_t j,
                 const WaToken& ti, const WaToken& tj, int64_t h) {
  if (p.mask_padded && !tj.valid) return -INFINITY;
  A s = A(0);
  for (int64_t e = 0; e < g.E; ++e) s += q[e] * k[e];
  s *= A(p.scale);
  if (p.table) s += Io<T>::load(static_cast<const T*>(p.table) + wa_bias_index(g, i, j) * g.heads + h);
  if (g.shifted && ti.region != tj.region) s += A(p.mask_value);
  return s;
}

MK_HD const void* wa_pick(int dir, const void* a, const void* b) { return dir ? b : a; }

// --- forward: one query ------------------------------------------------------------------------
template <typename T, typename A, int EMAX>
MK_HD void wa_fwd_item(const WindowAttentionParams& p, const WaGeo& g, int dir, int64_t item) {
  const int64_t i = item % g.N, bwh = item / g.N, h = bwh % g.heads, bw = bwh / g.heads;
  const int64_t b = bw / g.nW, w = bw % g.nW;
  const WaToken ti = wa_token(g, w, i);
  if (!ti.valid) return;  // padding queries are dropped
  const T* q = static_cast<const T*>(wa_pick(dir, p.q0, p.q1));
  const T* k = static_cast<const T*>(wa_pick(dir, p.k0, p.k1));
  const T* v = static_cast<const T*>(wa_pick(dir, p.v0, p.v1));
  T* o = static_cast<T*>(dir ? p.o1 : p.o0);
  A qi[EMAX], kj[EMAX], vj[EMAX], acc[EMAX];
  wa_load<T, A>(qi, q, p.q_strides, b, ti, h, g.E);
  for (int64_t e = 0; e < g.E; ++e) acc[e] = A(0);
  A m = -INFINITY, l = A(0);
  for (int64_t j = 0; j < g.N; ++j) {
    const WaToken tj = wa_token(g, w, j);
    if (p.mask_padded && !tj.valid) continue;
    wa_load_kv<T, A>(kj, p, k, p.k_strides, b, tj, h, 0);
    const A s = wa_logit<T, A>(p, g, qi, kj, i, j, ti, tj, h);
    if (s == -INFINITY) continue;
    wa_load_kv<T, A>(vj, p, v, p.v_strides, b, tj, h, 1);
    const A m_new = s > m ? s : m;
    const A alpha = exp(m - m_new), pj = exp(s - m_new);
    l = l * alpha + pj;
    for (int64_t e = 0; e < g.E; ++e) acc[e] = acc[e] * alpha + pj * vj[e];
    m = m_new;
  }
  T* op = o + wa_offset(p.o_strides, b, ti, h);
  for (int64_t e = 0; e < g.E; ++e) Io<T>::store(op + e * p.o_strides[5], acc[e] / l);
  static_cast<A*>(p.lse)[wa_row(g, dir, b, ti, h)] = m + log(l);
}

// --- backward ------------------------------------------------------------------------------------
// Workspace (accumulation type A): delta (dirs*B*vol*heads), pair partials (dirs*chunks*heads*N*N),
// padding-key slots (dirs*B*nW*heads*N*2E).
struct WaBwdLayout {
  int64_t chunks, per_chunk, delta, pair, pad, total;  // offsets and total in elements
};

MK_HD WaBwdLayout wa_bwd_layout(const WindowAttentionBwdParams& bp) {
  const WaGeo g = wa_geo(bp.fwd);
  WaBwdLayout L;
  const int64_t windows = g.batch * g.nW;
  L.chunks = windows < 64 ? windows : 64;
  L.per_chunk = (windows + L.chunks - 1) / L.chunks;
  L.chunks = (windows + L.per_chunk - 1) / L.per_chunk;
  const int64_t dirs = bp.fwd.directions;
  L.delta = 0;
  L.pair = L.delta + dirs * g.batch * g.vol * g.heads;
  L.pad = L.pair + (bp.pair_grad ? dirs * L.chunks * g.heads * g.N * g.N : 0);
  L.total = L.pad + (bp.grad_pad_kv ? dirs * windows * g.heads * g.N * 2 * g.E : 0);
  return L;
}

// The backward's workspace carved by wa_bwd_layout: row deltas, then the per-chunk pair
// gradients and the padding key/value slots (null when not asked for).
template <typename A>
struct WaBwdWork {
  A* delta;
  A* pair;
  A* slots;
};

template <typename A>
MK_HD WaBwdWork<A> wa_bwd_work(const WindowAttentionBwdParams& bp, const WaBwdLayout& L) {
  A* ws = static_cast<A*>(bp.workspace);
  return {ws + L.delta, bp.pair_grad ? ws + L.pair : nullptr, bp.grad_pad_kv ? ws + L.pad : nullptr};
}

template <typename T, typename A>
MK_HD void wa_delta_item(const WindowAttentionBwdParams& bp, const WaGeo& g, int dir, int64_t item, A* delta) {
  const WindowAttentionParams& p = bp.fwd;
  const int64_t h = item % g.heads, pos = (item / g.heads) % g.vol, b = item / (g.heads * g.vol);
  WaToken t;
  t.od = pos / (g.H * g.W);
  t.oh = (pos / g.W) % g.H;
  t.ow = pos % g.W;
  const T* go = static_cast<const T*>(wa_pick(dir, bp.g0, bp.g1));
  const T* o = static_cast<const T*>(wa_pick(dir, p.o0, p.o1));
  const T* gp = go + wa_offset(bp.g_strides, b, t, h);
  const T* op = o + wa_offset(p.o_strides, b, t, h);
  A s = A(0);
  for (int64_t e = 0; e < g.E; ++e) s += Io<T>::load(gp + e * bp.g_strides[5]) * Io<T>::load(op + e * p.o_strides[5]);
  delta[((dir * g.batch + b) * g.vol + pos) * g.heads + h] = s;
}

template <typename T, typename A, int EMAX>
MK_HD void wa_dkdv_item(const WindowAttentionBwdParams& bp, const WaGeo& g, int dir, int64_t item, const A* delta,
                        A* pad_slots) {
  const WindowAttentionParams& p = bp.fwd;
  const int64_t j = item % g.N, bwh = item / g.N, h = bwh % g.heads, bw = bwh / g.heads;
  const int64_t b = bw / g.nW, w = bw % g.nW;
  const WaToken tj = wa_token(g, w, j);
  if (!tj.valid && (p.mask_padded || !pad_slots)) return;
  const T* q = static_cast<const T*>(wa_pick(dir, p.q0, p.q1));
  const T* k = static_cast<const T*>(wa_pick(dir, p.k0, p.k1));
  const T* v = static_cast<const T*>(wa_pick(dir, p.v0, p.v1));
  const T* go = static_cast<const T*>(wa_pick(dir, bp.g0, bp.g1));
  const A* lse = static_cast<const A*>(p.lse);
  A kj[EMAX], vj[EMAX], qi[EMAX], gi[EMAX], dk[EMAX], dv[EMAX];
  wa_load_kv<T, A>(kj, p, k, p.k_strides, b, tj, h, 0);
  wa_load_kv<T, A>(vj, p, v, p.v_strides, b, tj, h, 1);
  for (int64_t e = 0; e < g.E; ++e) dk[e] = dv[e] = A(0);
  for (int64_t i = 0; i < g.N; ++i) {
    const WaToken ti = wa_token(g, w, i);
    if (!ti.valid) continue;
    wa_load<T, A>(qi, q, p.q_strides, b, ti, h, g.E);
    const A s = wa_logit<T, A>(p, g, qi, kj, i, j, ti, tj, h);
    if (s == -INFINITY) continue;
    const int64_t row = wa_row(g, dir, b, ti, h);
    const A pij = exp(s - lse[row]);
    wa_load<T, A>(gi, go, bp.g_strides, b, ti, h, g.E);
    A dp = A(0);
    for (int64_t e = 0; e < g.E; ++e) dp += gi[e] * vj[e];
    const A ds = pij * (dp - delta[row]);
    for (int64_t e = 0; e < g.E; ++e) {
      dv[e] += pij * gi[e];
      dk[e] += ds * qi[e];
    }
  }
  const A scale = A(p.scale);
  if (tj.valid) {
    T* dkp = static_cast<T*>(dir ? bp.dk1 : bp.dk0) + wa_offset(bp.dk_strides, b, tj, h);
    T* dvp = static_cast<T*>(dir ? bp.dv1 : bp.dv0) + wa_offset(bp.dv_strides, b, tj, h);
    for (int64_t e = 0; e < g.E; ++e) {
      Io<T>::store(dkp + e * bp.dk_strides[5], dk[e] * scale);
      Io<T>::store(dvp + e * bp.dv_strides[5], dv[e]);
    }
  } else {
    A* slot = pad_slots + ((dir * g.batch * g.nW + bw) * g.heads * g.N + h * g.N + j) * 2 * g.E;
    for (int64_t e = 0; e < g.E; ++e) {
      slot[e] = dk[e] * scale;
      slot[g.E + e] = dv[e];
    }
  }
}

template <typename T, typename A, int EMAX>
MK_HD void wa_dq_item(const WindowAttentionBwdParams& bp, const WaGeo& g, int dir, int64_t item, const A* delta) {
  const WindowAttentionParams& p = bp.fwd;
  const int64_t i = item % g.N, bwh = item / g.N, h = bwh % g.heads, bw = bwh / g.heads;
  const int64_t b = bw / g.nW, w = bw % g.nW;
  const WaToken ti = wa_token(g, w, i);
  if (!ti.valid) return;
  const T* q = static_cast<const T*>(wa_pick(dir, p.q0, p.q1));
  const T* k = static_cast<const T*>(wa_pick(dir, p.k0, p.k1));
  const T* v = static_cast<const T*>(wa_pick(dir, p.v0, p.v1));
  const T* go = static_cast<const T*>(wa_pick(dir, bp.g0, bp.g1));
  A qi[EMAX], gi[EMAX], kj[EMAX], vj[EMAX], dq[EMAX];
  wa_load<T, A>(qi, q, p.q_strides, b, ti, h, g.E);
  wa_load<T, A>(gi, go, bp.g_strides, b, ti, h, g.E);
  const int64_t row = wa_row(g, dir, b, ti, h);
  const A li = static_cast<const A*>(p.lse)[row], di = delta[row];
  for (int64_t e = 0; e < g.E; ++e) dq[e] = A(0);
  for (int64_t j = 0; j < g.N; ++j) {
    const WaToken tj = wa_token(g, w, j);
    if (p.mask_padded && !tj.valid) continue;
    wa_load_kv<T, A>(kj, p, k, p.k_strides, b, tj, h, 0);
    const A s = wa_logit<T, A>(p, g, qi, kj, i, j, ti, tj, h);
    if (s == -INFINITY) continue;
    wa_load_kv<T, A>(vj, p, v, p.v_strides, b, tj, h, 1);
    A dp = A(0);
    for (int64_t e = 0; e < g.E; ++e) dp += gi[e] * vj[e];
    const A ds = exp(s - li) * (dp - di);
    for (int64_t e = 0; e < g.E; ++e) dq[e] += ds * kj[e];
  }
  T* dqp = static_cast<T*>(dir ? bp.dq1 : bp.dq0) + wa_offset(bp.dq_strides, b, ti, h);
  for (int64_t e = 0; e < g.E; ++e) Io<T>::store(dqp + e * bp.dq_strides[5], dq[e] * A(p.scale));
}

template <typename T, typename A, int EMAX>
MK_HD void wa_pair_item(const WindowAttentionBwdParams& bp, const WaGeo& g, const WaBwdLayout& L, int dir,
                        int64_t item, const A* delta, A* pair) {
  const WindowAttentionParams& p = bp.fwd;
  const int64_t j = item % g.N, i = (item / g.N) % g.N, h = (item / (g.N * g.N)) % g.heads;
  const int64_t c = item / (g.N * g.N * g.heads);
  const T* q = static_cast<const T*>(wa_pick(dir, p.q0, p.q1));
  const T* k = static_cast<const T*>(wa_pick(dir, p.k0, p.k1));
  const T* v = static_cast<const T*>(wa_pick(dir, p.v0, p.v1));
  const T* go = static_cast<const T*>(wa_pick(dir, bp.g0, bp.g1));
  const A* lse = static_cast<const A*>(p.lse);
  A qi[EMAX], gi[EMAX], kj[EMAX], vj[EMAX];
  A acc = A(0);
  const int64_t windows = g.batch * g.nW;
  const int64_t end = (c + 1) * L.per_chunk < windows ? (c + 1) * L.per_chunk : windows;
  for (int64_t bw = c * L.per_chunk; bw < end; ++bw) {
    const int64_t b = bw / g.nW, w = bw % g.nW;
    const WaToken ti = wa_token(g, w, i), tj = wa_token(g, w, j);
    if (!ti.valid || (p.mask_padded && !tj.valid)) continue;
    wa_load<T, A>(qi, q, p.q_strides, b, ti, h, g.E);
    wa_load_kv<T, A>(kj, p, k, p.k_strides, b, tj, h, 0);
    const A s = wa_logit<T, A>(p, g, qi, kj, i, j, ti, tj, h);
    if (s == -INFINITY) continue;
    wa_load_kv<T, A>(vj, p, v, p.v_strides, b, tj, h, 1);
    wa_load<T, A>(gi, go, bp.g_strides, b, ti, h, g.E);
    const int64_t row = wa_row(g, dir, b, ti, h);
    A dp = A(0);
    for (int64_t e = 0; e < g.E; ++e) dp += gi[e] * vj[e];
    acc += exp(s - lse[row]) * (dp - delta[row]);
  }
  pair[((dir * L.chunks + c) * g.heads + h) * g.N * g.N + i * g.N + j] = acc;
}

template <typename A>
MK_HD void wa_reduce_pair_item(const WindowAttentionBwdParams& bp, const WaGeo& g, const WaBwdLayout& L, int64_t item,
                               const A* pair) {
  const int64_t h = item / (g.N * g.N), ij = item % (g.N * g.N);
  A s = A(0);
  for (int dir = 0; dir < bp.fwd.directions; ++dir)
    for (int64_t c = 0; c < L.chunks; ++c) s += pair[((dir * L.chunks + c) * g.heads + h) * g.N * g.N + ij];
  static_cast<A*>(bp.pair_grad)[item] = s;
}

template <typename A>
MK_HD void wa_reduce_pad_item(const WindowAttentionBwdParams& bp, const WaGeo& g, int64_t item, const A* slots) {
  // item = (kv, head, e); sums the padding keys' slots in (dir, window, token) order
  const int64_t e = item % g.E, h = (item / g.E) % g.heads, kv = item / (g.E * g.heads);
  A s = A(0);
  if (!bp.fwd.mask_padded) {
    for (int dir = 0; dir < bp.fwd.directions; ++dir)
      for (int64_t bw = 0; bw < g.batch * g.nW; ++bw)
        for (int64_t j = 0; j < g.N; ++j) {
          if (wa_token(g, bw % g.nW, j).valid) continue;
          s += slots[((dir * g.batch * g.nW + bw) * g.heads * g.N + h * g.N + j) * 2 * g.E + kv * g.E + e];
        }
  }
  static_cast<A*>(bp.grad_pad_kv)[item] = s;
}

// --- the kernels, as the executors launch them (medkernels/detail/exec.h) -----------------------------
// One item per thread; a launch covers both directions (item = dir * per_dir + item in direction).
constexpr int kWaThreads = 128;

template <typename T, typename A, int EMAX>
struct WaFwd {
  static constexpr const char* kName = "fwd";
  WindowAttentionParams p;
  WaGeo g;
  int64_t per_dir;
  MK_HD void operator()(int64_t i) const { wa_fwd_item<T, A, EMAX>(p, g, int(i / per_dir), i % per_dir); }
};

template <typename T, typename A>
struct WaDelta {
  static constexpr const char* kName = "delta";
  WindowAttentionBwdParams bp;
  WaGeo g;
  int64_t per_dir;
  A* delta;
  MK_HD void operator()(int64_t i) const { wa_delta_item<T, A>(bp, g, int(i / per_dir), i % per_dir, delta); }
};

template <typename T, typename A, int EMAX>
struct WaDkDv {
  static constexpr const char* kName = "dkdv";
  WindowAttentionBwdParams bp;
  WaGeo g;
  int64_t per_dir;
  const A* delta;
  A* slots;
  MK_HD void operator()(int64_t i) const {
    wa_dkdv_item<T, A, EMAX>(bp, g, int(i / per_dir), i % per_dir, delta, slots);
  }
};

template <typename T, typename A, int EMAX>
struct WaDq {
  static constexpr const char* kName = "dq";
  WindowAttentionBwdParams bp;
  WaGeo g;
  int64_t per_dir;
  const A* delta;
  MK_HD void operator()(int64_t i) const { wa_dq_item<T, A, EMAX>(bp, g, int(i / per_dir), i % per_dir, delta); }
};

template <typename T, typename A, int EMAX>
struct WaPair {
  static constexpr const char* kName = "pair";
  WindowAttentionBwdParams bp;
  WaGeo g;
  WaBwdLayout L;
  int64_t per_dir;
  const A* delta;
  A* pair;
  MK_HD void operator()(int64_t i) const {
    wa_pair_item<T, A, EMAX>(bp, g, L, int(i / per_dir), i % per_dir, delta, pair);
  }
};

template <typename A>
struct WaReducePair {
  static constexpr const char* kName = "reduce_pair";
  WindowAttentionBwdParams bp;
  WaGeo g;
  WaBwdLayout L;
  const A* pair;
  MK_HD void operator()(int64_t i) const { wa_reduce_pair_item<A>(bp, g, L, i, pair); }
};

template <typename A>
struct WaReducePad {
  static constexpr const char* kName = "reduce_pad";
  WindowAttentionBwdParams bp;
  WaGeo g;
  const A* slots;
  MK_HD void operator()(int64_t i) const { wa_reduce_pad_item<A>(bp, g, i, slots); }
};

// --- launch plan (the .cuh launches it; the tests' emulation runs it on the host) -----------------
// EMAX: the per-thread arrays' length, the head_dim rounded up to 16, 32, 64 or 128.
template <typename T, int EMAX, class X>
int wa_fwd_plan(const WindowAttentionParams& p, X& ex) {
  using A = typename Io<T>::acc;
  const WaGeo g = wa_geo(p);
  const int64_t items = g.batch * g.nW * g.heads * g.N;
  return ex.template items<kWaThreads>(WaFwd<T, A, EMAX>{p, g, items}, p.directions * items);
}

template <typename T, int EMAX, class X>
int wa_bwd_plan(const WindowAttentionBwdParams& bp, X& ex) {
  using A = typename Io<T>::acc;
  const WaGeo g = wa_geo(bp.fwd);
  const WaBwdLayout L = wa_bwd_layout(bp);
  const WaBwdWork<A> w = wa_bwd_work<A>(bp, L);
  const int64_t dirs = bp.fwd.directions;
  const int64_t tokens = g.batch * g.vol * g.heads, items = g.batch * g.nW * g.heads * g.N;
  int rc = ex.template items<kWaThreads>(WaDelta<T, A>{bp, g, tokens, w.delta}, dirs * tokens);
  if (!rc) rc = ex.template items<kWaThreads>(WaDkDv<T, A, EMAX>{bp, g, items, w.delta, w.slots}, dirs * items);
  if (!rc) rc = ex.template items<kWaThreads>(WaDq<T, A, EMAX>{bp, g, items, w.delta}, dirs * items);
  if (!rc && w.pair) {
    const int64_t pairs = L.chunks * g.heads * g.N * g.N;
    rc = ex.template items<kWaThreads>(WaPair<T, A, EMAX>{bp, g, L, pairs, w.delta, w.pair}, dirs * pairs);
    if (!rc) rc = ex.template items<kWaThreads>(WaReducePair<A>{bp, g, L, w.pair}, g.heads * g.N * g.N);
  }
  if (!rc && w.slots) rc = ex.template items<kWaThreads>(WaReducePad<A>{bp, g, w.slots}, 2 * g.heads * g.E);
  return rc;
}

template <typename T, class X>
int wa_fwd_run(const WindowAttentionParams& p, X& ex) {
  if (p.head_dim <= 16) return wa_fwd_plan<T, 16>(p, ex);
  if (p.head_dim <= 32) return wa_fwd_plan<T, 32>(p, ex);
  if (p.head_dim <= 64) return wa_fwd_plan<T, 64>(p, ex);
  return wa_fwd_plan<T, 128>(p, ex);
}

template <typename T, class X>
int wa_bwd_run(const WindowAttentionBwdParams& bp, X& ex) {
  if (bp.fwd.head_dim <= 16) return wa_bwd_plan<T, 16>(bp, ex);
  if (bp.fwd.head_dim <= 32) return wa_bwd_plan<T, 32>(bp, ex);
  if (bp.fwd.head_dim <= 64) return wa_bwd_plan<T, 64>(bp, ex);
  return wa_bwd_plan<T, 128>(bp, ex);
}

}  // namespace detail
}  // namespace medkernels
