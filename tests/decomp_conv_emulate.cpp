// Host emulation of the CUDA decomposed-convolution kernels, for tests on machines without a GPU.
//
// Runs medkernels::detail::decomp_conv_{fwd,bwd}_run (the plan medkernels/cuda/decomp_conv.cuh
// launches) with the host executor of medkernels/detail/exec.h, which walks every item and every
// block of each kernel on the CPU, the tile kernel phase by phase (stage all threads, then compute
// all threads) on a NaN-poisoned shared-memory buffer, so unstaged reads show up as NaN. Prints
// one line per kernel launch.
//
//   decomp_conv_emulate DIR
// DIR/params.txt: dtype N Ci Co D H W K stride groups act has_bias x_offset
//                 xs[5] ys[5] gys[5] gxs[5] mode          (mode 0 forward, 1 backward)
// DIR/{x,wd,wh,ww,bias,gy}.bin: raw elements from each tensor's first element over its span;
// writes DIR/y.bin (forward) or DIR/{gx,gwd,gwh,gww,gb}.bin (backward; weights in the
// accumulation type). tests/test_cuda_build.py drives it and compares with the reference.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "emulate_io.h"
#include "medkernels/detail/decomp_conv_kernels.h"

namespace mk = medkernels;
namespace md = medkernels::detail;

namespace medkernels {
// The library's check, not linked here: the tests only feed valid sizes.
Status decomp_conv_check(const DecompConvParams&) { return Status::kSuccess; }
size_t decomp_conv_bwd_workspace_bytes(const DecompConvBwdParams& b) { return detail::decomp_conv_bwd_layout(b.fwd).total_bytes; }
namespace detail {
Status fail(Status s, const std::string&) { return s; }
}  // namespace detail
}  // namespace medkernels

// The executor's trace: the kernel and the variant the plan picked, one line per launch.
struct Trace : emulate::Trace {
  using emulate::Trace::blocks;
  using emulate::Trace::items;
  template <typename TI, typename TW, typename TO, typename A, int MODE>
  void items(const md::ConvGeneric<TI, TW, TO, A, MODE>& k, int64_t) {
    std::printf("conv_generic mode=%d channels_inner=%d\n", MODE, int(k.a.channels_inner));
  }
  template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
  void items(const md::ConvClVec<TI, TW, TO, A, MODE, VEC>&, int64_t) {
    std::printf("conv_cl_vec mode=%d vec=%d\n", MODE, VEC);
  }
  template <typename TI, typename TW, typename TO, typename A, int MODE, int VEC>
  void blocks(const md::ConvTile<TI, TW, TO, A, MODE, VEC>& k, int64_t, int64_t, int) {
    std::printf("conv_tile mode=%d vec=%d tw=%d th=%d\n", MODE, VEC, k.t.tw, k.t.th);
  }
  template <typename T, typename A>
  void items(const md::DwPartial<T, A>& k, int64_t) {
    std::printf("dw_partial splits=%lld\n", static_cast<long long>(k.b.splits));
  }
  template <typename T, typename A>
  void items(const md::DxGather<T, A>& k, int64_t) {
    std::printf("dx_gather channels_inner=%d\n", int(k.b.gx_cl));
  }
};
using HostExec = md::HostExec<md::HostBlock, Trace>;

// A 64-byte aligned byte buffer.
struct Buf {
  std::vector<unsigned char> raw;
  unsigned char* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t bytes, size_t offset = 0) : raw(bytes + offset + 64, 0xff) {
    const uintptr_t u = reinterpret_cast<uintptr_t>(raw.data());
    p = raw.data() + ((64 - (u & 63)) & 63) + offset;
    n = bytes;
  }
};

static int64_t span(const int64_t* size, const int64_t* st) {
  int64_t s = 1;
  for (int i = 0; i < 5; ++i) s += (size[i] - 1) * st[i];
  return s;
}

static bool read_into(const std::string& path, Buf& b) { return emulate::read_into(path, b.p, b.n); }

template <typename T>
static int run(const std::string& dir, mk::DecompConvParams p, const int64_t* gys, const int64_t* gxs, int mode,
               int64_t x_offset) {
  using A = typename mk::Io<T>::acc;
  const int64_t cin_g = p.in_channels / p.groups, K = p.kernel_size;
  const int64_t xsize[5] = {p.batch, p.in_channels, p.in_size[0], p.in_size[1], p.in_size[2]};
  const int64_t ysize[5] = {p.batch, p.out_channels, p.out_size[0], p.out_size[1], p.out_size[2]};
  const size_t wn = static_cast<size_t>(p.out_channels * cin_g * K);
  Buf x(span(xsize, p.x_strides) * sizeof(T), static_cast<size_t>(x_offset) * sizeof(T));
  Buf wd(wn * sizeof(T)), wh(wn * sizeof(T)), ww(wn * sizeof(T)), bias(p.out_channels * sizeof(T));
  if (!read_into(dir + "/x.bin", x) || !read_into(dir + "/wd.bin", wd) || !read_into(dir + "/wh.bin", wh) ||
      !read_into(dir + "/ww.bin", ww)) {
    std::fprintf(stderr, "cannot read the inputs in %s\n", dir.c_str());
    return 2;
  }
  p.x = x.p; p.w_d = wd.p; p.w_h = wh.p; p.w_w = ww.p;
  if (p.bias) {
    if (!read_into(dir + "/bias.bin", bias)) return 2;
    p.bias = bias.p;
  }
  if (mode == 0) {
    Buf y(span(ysize, p.y_strides) * sizeof(T));  // 0xff bytes: NaN in every float type
    p.y = y.p;
    HostExec ex;
    if (md::decomp_conv_fwd_run<T>(p, ex)) return 3;
    emulate::write_file(dir + "/y.bin", y.p, y.n);
    return 0;
  }
  mk::DecompConvBwdParams b;
  Buf gy(span(ysize, gys) * sizeof(T));
  if (!read_into(dir + "/gy.bin", gy)) return 2;
  Buf gx(span(xsize, gxs) * sizeof(T));
  Buf gw0(wn * sizeof(A)), gw1(wn * sizeof(A)), gw2(wn * sizeof(A)), gb(p.out_channels * sizeof(A));
  const md::DecompConvBwdLayout L = md::decomp_conv_bwd_layout(p);
  Buf ws(L.total_bytes);
  p.y = nullptr;
  b.fwd = p;
  b.grad_y = gy.p;
  std::memcpy(b.grad_y_strides, gys, sizeof(b.grad_y_strides));
  b.grad_x = gx.p;
  std::memcpy(b.grad_x_strides, gxs, sizeof(b.grad_x_strides));
  b.grad_w_d = gw0.p; b.grad_w_h = gw1.p; b.grad_w_w = gw2.p; b.grad_bias = gb.p;
  b.workspace = ws.p;
  b.workspace_bytes = L.total_bytes;
  HostExec ex;
  if (md::decomp_conv_bwd_run<T>(b, ex)) return 3;
  emulate::write_file(dir + "/gx.bin", gx.p, gx.n);
  emulate::write_file(dir + "/gwd.bin", gw0.p, gw0.n);
  emulate::write_file(dir + "/gwh.bin", gw1.p, gw1.n);
  emulate::write_file(dir + "/gww.bin", gw2.p, gw2.n);
  emulate::write_file(dir + "/gb.bin", gb.p, gb.n);
  return 0;
}

int main(int argc, char** argv) {
  std::string dir;
  if (!emulate::case_dir(argc, argv, &dir)) return 2;
  emulate::Params in(dir + "/params.txt");
  int64_t v[13 + 20 + 1];
  for (int64_t& x : v) x = in.i64();
  if (!in.ok()) {
    std::fprintf(stderr, "bad params.txt\n");
    return 2;
  }
  mk::DecompConvParams p;
  p.dtype = static_cast<mk::DType>(v[0]);
  p.batch = v[1]; p.in_channels = v[2]; p.out_channels = v[3];
  p.in_size[0] = v[4]; p.in_size[1] = v[5]; p.in_size[2] = v[6];
  p.kernel_size = static_cast<int>(v[7]);
  p.stride = static_cast<int>(v[8]);
  p.groups = v[9];
  p.activation = static_cast<mk::Activation>(v[10]);
  p.bias = v[11] ? reinterpret_cast<const void*>(1) : nullptr;
  const int64_t x_offset = v[12];
  for (int a = 0; a < 3; ++a) p.out_size[a] = md::conv_out_size(p.in_size[a], p.stride);
  int64_t gys[5], gxs[5];
  for (int i = 0; i < 5; ++i) {
    p.x_strides[i] = v[13 + i];
    p.y_strides[i] = v[18 + i];
    gys[i] = v[23 + i];
    gxs[i] = v[28 + i];
  }
  const int mode = static_cast<int>(v[33]);
  switch (p.dtype) {
    case mk::DType::kFloat32: return run<float>(dir, p, gys, gxs, mode, x_offset);
    case mk::DType::kFloat64: return run<double>(dir, p, gys, gxs, mode, x_offset);
    case mk::DType::kFloat16: return run<mk::half_t>(dir, p, gys, gxs, mode, x_offset);
    case mk::DType::kBFloat16: return run<mk::bfloat16_t>(dir, p, gys, gxs, mode, x_offset);
  }
  return 2;
}
