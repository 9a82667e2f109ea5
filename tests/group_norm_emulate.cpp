// Host emulation of the CUDA group-norm kernels, for tests on machines without a GPU.
//
// Runs medkernels::detail::group_norm_fwd_run and group_norm_bwd_run (the plans
// medkernels/cuda/group_norm.cuh launches) with the host executor of medkernels/detail/exec.h:
// block by block, each phase of the sums' block program for all its threads in turn, shared
// memory NaN first; the per-item kernels item by item. Every output and the workspace start as
// NaN, so an element no thread writes shows up. Prints one line per launch.
//
//   group_norm_emulate DIR
// DIR/params.txt: dtype N C G M x_strides[3] y_strides[3] eps activation has_weight has_bias
//                 has_scale has_shift has_add bwd [gy_strides[3] gx_strides[3] need_gx need_gw
//                 need_gb need_gscale need_gshift need_gadd]
// DIR/x.bin (x's strided span), weight.bin / bias.bin (C), scale.bin / shift.bin / add.bin (N*C),
// gy.bin (bwd: grad_y's span). Writes y.bin (y's span), mean.bin / rstd.bin (N*G, the
// accumulation type) and, for bwd, gx.bin (grad_x's span), gw.bin, gb.bin (C), gscale.bin,
// gshift.bin, gadd.bin (N*C) in the accumulation type. tests/test_group_norm.py drives it.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "emulate_io.h"
#include "medkernels/detail/group_norm_kernels.h"

namespace mk = medkernels;
namespace md = medkernels::detail;

using emulate::load;
using emulate::poisoned;
using emulate::save;

static int64_t span(const mk::GroupNormParams& p, const int64_t* s) {
  return 1 + (p.batch - 1) * s[0] + (p.channels - 1) * s[1] + (p.spatial - 1) * s[2];
}

struct Needs {
  bool gx, gw, gb, gsc, gsh, gad;
};

template <typename T>
static int run(const std::string& dir, mk::GroupNormParams p, const bool has[5], bool bwd, const int64_t gy_s[3],
               const int64_t gx_s[3], Needs need) {
  using A = typename mk::Io<T>::acc;
  const int64_t N = p.batch, C = p.channels, NC = N * C, NG = N * p.groups;
  std::vector<T> x, w, b, sc, sh, ad, gy;
  if (!load(dir + "/x.bin", &x, span(p, p.x_strides)) || (has[0] && !load(dir + "/weight.bin", &w, C)) ||
      (has[1] && !load(dir + "/bias.bin", &b, C)) || (has[2] && !load(dir + "/scale.bin", &sc, NC)) ||
      (has[3] && !load(dir + "/shift.bin", &sh, NC)) || (has[4] && !load(dir + "/add.bin", &ad, NC)) ||
      (bwd && !load(dir + "/gy.bin", &gy, span(p, gy_s))))
    return 2;
  std::vector<T> y = poisoned<T>(span(p, p.y_strides));
  std::vector<A> mean = poisoned<A>(NG), rstd = poisoned<A>(NG);
  std::vector<double> ws = poisoned<double>(static_cast<int64_t>(md::gn_workspace_bytes(p, bwd) / sizeof(double)));
  p.x = x.data();
  p.y = y.data();
  p.weight = has[0] ? w.data() : nullptr;
  p.bias = has[1] ? b.data() : nullptr;
  p.scale = has[2] ? sc.data() : nullptr;
  p.shift = has[3] ? sh.data() : nullptr;
  p.add = has[4] ? ad.data() : nullptr;
  p.mean = mean.data();
  p.rstd = rstd.data();
  p.workspace = ws.data();
  p.workspace_bytes = ws.size() * sizeof(double);
  md::HostExec<md::HostBlock, emulate::Trace> ex;
  if (md::group_norm_fwd_run<T>(p, ex)) return 3;
  save(dir + "/y.bin", y);
  save(dir + "/mean.bin", mean);
  save(dir + "/rstd.bin", rstd);
  if (!bwd) return 0;
  std::memset(ws.data(), 0xff, ws.size() * sizeof(double));  // the backward reads none of the forward's sums
  mk::GroupNormBwdParams q;
  q.fwd = p;
  q.grad_y = gy.data();
  for (int i = 0; i < 3; ++i) q.grad_y_strides[i] = gy_s[i], q.grad_x_strides[i] = gx_s[i];
  std::vector<T> gx = poisoned<T>(need.gx ? span(p, gx_s) : 0);
  std::vector<A> gw = poisoned<A>(need.gw ? C : 0), gb = poisoned<A>(need.gb ? C : 0);
  std::vector<A> gsc = poisoned<A>(need.gsc ? NC : 0), gsh = poisoned<A>(need.gsh ? NC : 0),
                 gad = poisoned<A>(need.gad ? NC : 0);
  q.grad_x = need.gx ? gx.data() : nullptr;
  q.grad_weight = need.gw ? gw.data() : nullptr;
  q.grad_bias = need.gb ? gb.data() : nullptr;
  q.grad_scale = need.gsc ? gsc.data() : nullptr;
  q.grad_shift = need.gsh ? gsh.data() : nullptr;
  q.grad_add = need.gad ? gad.data() : nullptr;
  if (md::group_norm_bwd_run<T>(q, ex)) return 3;
  save(dir + "/gx.bin", gx);
  save(dir + "/gw.bin", gw);
  save(dir + "/gb.bin", gb);
  save(dir + "/gscale.bin", gsc);
  save(dir + "/gshift.bin", gsh);
  save(dir + "/gadd.bin", gad);
  return 0;
}

int main(int argc, char** argv) {
  std::string dir;
  if (!emulate::case_dir(argc, argv, &dir)) return 2;
  emulate::Params in(dir + "/params.txt");
  mk::GroupNormParams p;
  p.dtype = static_cast<mk::DType>(in.i64());
  p.batch = in.i64();
  p.channels = in.i64();
  p.groups = in.i64();
  p.spatial = in.i64();
  in.i64s(p.x_strides);
  in.i64s(p.y_strides);
  p.eps = in.f64();
  p.activation = static_cast<mk::Activation>(in.i64());
  bool has[5];
  for (bool& h : has) h = in.flag();
  const bool bwd = in.flag();
  int64_t gy_s[3] = {0, 0, 0}, gx_s[3] = {0, 0, 0};
  Needs need = {false, false, false, false, false, false};
  if (bwd) {
    in.i64s(gy_s);
    in.i64s(gx_s);
    need = {in.flag(), in.flag(), in.flag(), in.flag(), in.flag(), in.flag()};
  }
  if (!in.ok() || p.batch < 1 || p.channels < 1 || p.groups < 1 || p.channels % p.groups || p.spatial < 1) {
    std::fprintf(stderr, "bad params.txt\n");
    return 2;
  }
  switch (p.dtype) {
    case mk::DType::kFloat32: return run<float>(dir, p, has, bwd, gy_s, gx_s, need);
    case mk::DType::kFloat64: return run<double>(dir, p, has, bwd, gy_s, gx_s, need);
    case mk::DType::kFloat16: return run<mk::half_t>(dir, p, has, bwd, gy_s, gx_s, need);
    case mk::DType::kBFloat16: return run<mk::bfloat16_t>(dir, p, has, bwd, gy_s, gx_s, need);
  }
  return 2;
}
