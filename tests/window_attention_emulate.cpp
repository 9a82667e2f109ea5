// Host emulation of the CUDA window-attention kernels, for tests on machines without a GPU.
//
// Runs medkernels::detail::wa_{fwd,bwd}_run (the plan medkernels/cuda/window_attention.cuh
// launches) with the host executor of medkernels/detail/exec.h: every item of every launch, in
// the plan's order, one after the other. Outputs and the workspace start as NaN, so an element no
// thread writes, or a partial read before it is written, shows up as NaN. Prints one line per
// launch.
//
//   window_attention_emulate DIR
// DIR/params.txt: dtype B heads head_dim size[3] window[3] eff_window[3] shift[3] padded[3]
//                 scale mask_value mask_padded has_table has_pad
//                 q_strides[6] k_strides[6] v_strides[6] g_strides[6] mode   (0 forward, 1 backward)
// DIR/{q,k,v}.bin: raw elements over each tensor's span; table.bin (rows, heads) and pad.bin
// (2, heads, head_dim) when present. The forward writes DIR/o.bin (contiguous (B, D, H, W, heads,
// head_dim)) and DIR/lse.bin (accumulation type); the backward reads those and DIR/g.bin and
// writes DIR/{dq,dk,dv}.bin (contiguous), DIR/pair.bin ((heads, N, N) summed dS, accumulation
// type) and DIR/dpad.bin (2, heads, head_dim) when has_pad. tests/test_window_attention.py
// drives it and compares with the float64 reference.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "emulate_io.h"
#include "medkernels/detail/window_attention_kernels.h"

namespace mk = medkernels;
namespace md = medkernels::detail;

using emulate::load;
using emulate::poisoned;
using emulate::save;

static int64_t span(const int64_t* size, const int64_t* st) {
  int64_t s = 1;
  for (int i = 0; i < 6; ++i) s += (size[i] - 1) * st[i];
  return s;
}

using HostExec = md::HostExec<md::HostBlock, emulate::Trace>;

template <typename T>
static int run(const std::string& dir, mk::WindowAttentionParams p, bool has_table, bool has_pad,
               const int64_t* g_strides, int mode) {
  using A = typename mk::Io<T>::acc;
  const int64_t size[6] = {p.batch, p.size[0], p.size[1], p.size[2], p.heads, p.head_dim};
  const int64_t numel = span(size, p.o_strides);  // the contiguous strides of the outputs
  const int64_t rows = (2 * p.window[0] - 1) * (2 * p.window[1] - 1) * (2 * p.window[2] - 1);
  std::vector<T> q, k, v, table, pad, o, g;
  std::vector<A> lse;
  if (!load(dir + "/q.bin", &q, span(size, p.q_strides)) || !load(dir + "/k.bin", &k, span(size, p.k_strides)) ||
      !load(dir + "/v.bin", &v, span(size, p.v_strides)) ||
      (has_table && !load(dir + "/table.bin", &table, rows * p.heads)) ||
      (has_pad && !load(dir + "/pad.bin", &pad, 2 * p.heads * p.head_dim)))
    return 2;
  p.q0 = q.data(), p.k0 = k.data(), p.v0 = v.data();
  p.table = has_table ? table.data() : nullptr;
  p.pad_kv = has_pad ? pad.data() : nullptr;
  const int64_t lse_n = p.batch * p.size[0] * p.size[1] * p.size[2] * p.heads;
  HostExec ex;
  if (mode == 0) {
    o = poisoned<T>(numel);
    lse = poisoned<A>(lse_n);
    p.o0 = o.data();
    p.lse = lse.data();
    if (md::wa_fwd_run<T>(p, ex)) return 3;
    save(dir + "/o.bin", o);
    save(dir + "/lse.bin", lse);
    return 0;
  }
  if (!load(dir + "/o.bin", &o, numel) || !load(dir + "/lse.bin", &lse, lse_n) ||
      !load(dir + "/g.bin", &g, span(size, g_strides)))
    return 2;
  p.o0 = o.data();
  p.lse = lse.data();
  mk::WindowAttentionBwdParams b;
  b.fwd = p;
  b.g0 = g.data();
  std::memcpy(b.g_strides, g_strides, sizeof(b.g_strides));
  std::vector<T> dq = poisoned<T>(numel), dk = poisoned<T>(numel), dv = poisoned<T>(numel);
  const int64_t N = p.eff_window[0] * p.eff_window[1] * p.eff_window[2];
  std::vector<A> pair = poisoned<A>(p.heads * N * N), dpad = poisoned<A>(has_pad ? 2 * p.heads * p.head_dim : 0);
  b.dq0 = dq.data(), b.dk0 = dk.data(), b.dv0 = dv.data();
  for (int i = 0; i < 6; ++i) b.dq_strides[i] = b.dk_strides[i] = b.dv_strides[i] = p.o_strides[i];
  b.pair_grad = pair.data();
  b.grad_pad_kv = has_pad ? dpad.data() : nullptr;
  std::vector<A> ws = poisoned<A>(md::wa_bwd_layout(b).total);
  b.workspace = ws.data();
  b.workspace_bytes = ws.size() * sizeof(A);
  if (md::wa_bwd_run<T>(b, ex)) return 3;
  save(dir + "/dq.bin", dq);
  save(dir + "/dk.bin", dk);
  save(dir + "/dv.bin", dv);
  save(dir + "/pair.bin", pair);
  if (has_pad) save(dir + "/dpad.bin", dpad);
  return 0;
}

int main(int argc, char** argv) {
  std::string dir;
  if (!emulate::case_dir(argc, argv, &dir)) return 2;
  emulate::Params in(dir + "/params.txt");
  mk::WindowAttentionParams p;
  p.dtype = static_cast<mk::DType>(in.i64());
  p.batch = in.i64();
  p.heads = in.i64();
  p.head_dim = in.i64();
  in.i64s(p.size);
  in.i64s(p.window);
  in.i64s(p.eff_window);
  in.i64s(p.shift);
  in.i64s(p.padded);
  p.scale = in.f64();
  p.mask_value = in.f64();
  p.mask_padded = in.flag();
  const bool has_table = in.flag(), has_pad = in.flag();
  in.i64s(p.q_strides);
  in.i64s(p.k_strides);
  in.i64s(p.v_strides);
  int64_t g_strides[6];
  in.i64s(g_strides);
  const int mode = static_cast<int>(in.i64());
  if (!in.ok() || p.head_dim < 1 || p.head_dim > 128) {  // the kernels' per-thread arrays hold 128
    std::fprintf(stderr, "bad params.txt\n");
    return 2;
  }
  // outputs: contiguous (B, D, H, W, heads, head_dim), as the op allocates them
  int64_t s = 1;
  const int64_t size[6] = {p.batch, p.size[0], p.size[1], p.size[2], p.heads, p.head_dim};
  for (int i = 5; i >= 0; --i) {
    p.o_strides[i] = s;
    s *= size[i];
  }
  switch (p.dtype) {
    case mk::DType::kFloat32: return run<float>(dir, p, has_table, has_pad, g_strides, mode);
    case mk::DType::kFloat64: return run<double>(dir, p, has_table, has_pad, g_strides, mode);
    case mk::DType::kFloat16: return run<mk::half_t>(dir, p, has_table, has_pad, g_strides, mode);
    case mk::DType::kBFloat16: return run<mk::bfloat16_t>(dir, p, has_table, has_pad, g_strides, mode);
  }
  return 2;
}
