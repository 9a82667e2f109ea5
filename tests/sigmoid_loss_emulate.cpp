// Host emulation of the CUDA sigmoid-loss kernels, for tests on machines without a GPU.
//
// Runs medkernels::detail::sl_{fwd,bwd}_run (the plan medkernels/cuda/sigmoid_loss.cuh launches)
// with the host executor of medkernels/detail/exec.h, which walks every block of each launch on the
// CPU and runs the block programs with all 128 thread slots (4 warps x 32 lanes), shared memory
// poisoned with NaN before each block.
// The tensor-core step is emulated here from the PTX ISA's fragment layout of
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: a fragment loader or index mapping that
// disagrees with it gives wrong numbers. Prints one line per launch.
//
//   sigmoid_loss_emulate DIR
// DIR/params.txt: dtype n m d xs0 xs1 ys0 ys1 scale bias symmetric positives diag_offset ms0 ms1
//                 grad_scale gxs0 gxs1 gys0 gys1 mode            (mode 0 forward, 1 backward)
// DIR/{x,y}.bin: raw elements over each tensor's span; labels_x.bin / labels_y.bin (int64) and
// mask.bin (uint8, over its span) for those positives. Writes DIR/loss.bin (one double), or
// DIR/{gx,gy}.bin and DIR/sums.bin (grad_t', grad_bias as doubles).
#include <cstdio>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "emulate_io.h"
#include "medkernels/detail/sigmoid_loss.h"

namespace mk = medkernels;
namespace md = medkernels::detail;

template <typename T> float elem_to_float(uint16_t bits);
template <> float elem_to_float<mk::half_t>(uint16_t bits) { return mk::half_to_float(bits); }
template <> float elem_to_float<mk::bfloat16_t>(uint16_t bits) { return mk::bf16_to_float(bits); }

static uint16_t half_of(uint32_t reg, int i) { return static_cast<uint16_t>((i & 1) ? reg >> 16 : reg & 0xffffu); }

// exec.h's host block (all 128 thread slots in turn) with the warp slots and the tensor-core step.
struct SlHostBlock : md::HostBlock {
  static constexpr int kThreads = md::kSlThreads, kWarps = md::kSlWarps, kLanes = 32;
  explicit SlHostBlock(int) : md::HostBlock(kThreads) {}
  int warp(int w) const { return w; }
  int lane(int, int l) const { return l; }

  // D = A B + C for one warp, every lane's fragments given. Layout (PTX ISA, m16n8k16, 16-bit A/B):
  // g = lane / 4, t = lane % 4;
  //   A a_i (i < 8, register i / 2, low half first): row g (i in 0,1,4,5) or g + 8, col 2t + (i & 1) + 8 (i >= 4)
  //   B b_i (i < 4, register i / 2): row (k) 2t + (i & 1) + 8 (i >= 2), col (n) g
  //   C c_i (i < 4): row g + 8 (i >= 2), col 2t + (i & 1)
  template <typename T>
  static void mma(md::SlFragC<float>* c, const md::SlFragA* a, const md::SlFragB* b) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int i = 0; i < 8; ++i) {
        const int row = (i == 2 || i == 3 || i == 6 || i == 7) ? g + 8 : g;
        const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] = elem_to_float<T>(half_of(a[lane].r[i / 2], i));
      }
      for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = elem_to_float<T>(half_of(b[lane].r[i / 2], i));
      for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = c[lane].v[i];
    }
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) {
        float s = C[r][n];
        for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][n];
        C[r][n] = s;
      }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int i = 0; i < 4; ++i) c[lane].v[i] = C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
    }
  }
};

// The executor's trace: the launch and the variant the plan picked, one line per launch.
struct Trace : emulate::Trace {
  template <typename T, bool SYM>
  void blocks(const md::SlFwdProgram<T, SYM>& k, int64_t gx, int64_t gy, int) {
    std::printf("fwd grid=%lldx%lld vec=%d%d sym=%d mma=%d\n", static_cast<long long>(gx), static_cast<long long>(gy),
                int(k.g.vec_a), int(k.g.vec_b), int(SYM), int(md::SlTraits<T>::kMma));
  }
  template <typename T, bool SYM>
  void blocks(const md::SlBwdProgram<T, SYM>&, int64_t gx, int64_t gy, int) {
    std::printf("bwd grid=%lldx%lld sym=%d mma=%d\n", static_cast<long long>(gx), static_cast<long long>(gy), int(SYM),
                int(md::SlTraits<T>::kMma));
  }
  void blocks(const md::SlFinishProgram& k, int64_t, int64_t, int) {
    std::printf("finish count=%lld sums=%d\n", static_cast<long long>(k.f.count), k.f.nsums);
  }
};
using HostExec = md::HostExec<SlHostBlock, Trace>;

using emulate::read_file;
using emulate::write_file;

static int64_t span(int64_t rows, int64_t cols, int64_t s0, int64_t s1) { return 1 + (rows - 1) * s0 + (cols - 1) * s1; }

template <typename T>
static int run(const std::string& dir, mk::SigmoidLossParams p, double grad_scale, const int64_t* gxs,
               const int64_t* gys, int mode) {
  std::vector<unsigned char> x = read_file(dir + "/x.bin"), y = read_file(dir + "/y.bin");
  std::vector<unsigned char> lx, ly, mask;
  if (x.size() < span(p.n, p.d, p.x_strides[0], p.x_strides[1]) * sizeof(T) ||
      y.size() < span(p.m, p.d, p.y_strides[0], p.y_strides[1]) * sizeof(T)) {
    std::fprintf(stderr, "x.bin or y.bin too short\n");
    return 2;
  }
  p.x = x.data();
  p.y = y.data();
  if (p.positives == mk::SigmoidLossPositives::kLabels) {
    lx = read_file(dir + "/labels_x.bin");
    ly = read_file(dir + "/labels_y.bin");
    p.labels_x = reinterpret_cast<const int64_t*>(lx.data());
    p.labels_y = reinterpret_cast<const int64_t*>(ly.data());
  } else if (p.positives == mk::SigmoidLossPositives::kMask) {
    mask = read_file(dir + "/mask.bin");
    p.mask = mask.data();
  }
  HostExec ex;
  if (mode == 0) {
    std::vector<double> ws(md::sl_cuda_fwd_workspace_bytes(p) / sizeof(double), std::nan(""));
    double loss = std::nan("");
    p.workspace = ws.data();
    p.workspace_bytes = ws.size() * sizeof(double);
    p.loss = &loss;
    if (md::sl_fwd_run<T>(p, ex)) return 3;
    write_file(dir + "/loss.bin", &loss, sizeof(loss));
    return 0;
  }
  std::vector<double> ws(md::sl_cuda_bwd_workspace_bytes(p) / sizeof(double), std::nan(""));
  p.workspace = ws.data();
  p.workspace_bytes = ws.size() * sizeof(double);
  const size_t gxn = span(p.n, p.d, gxs[0], gxs[1]) * sizeof(T), gyn = span(p.m, p.d, gys[0], gys[1]) * sizeof(T);
  std::vector<unsigned char> gx(gxn, 0xff), gy(gyn, 0xff);  // NaN: every element must be written
  double sums[2] = {std::nan(""), std::nan("")};
  mk::SigmoidLossBwdParams b;
  b.fwd = p;
  b.grad_scale = grad_scale;
  b.grad_x = gx.data();
  b.grad_y = gy.data();
  std::memcpy(b.grad_x_strides, gxs, sizeof(b.grad_x_strides));
  std::memcpy(b.grad_y_strides, gys, sizeof(b.grad_y_strides));
  b.grad_t_prime = &sums[0];
  b.grad_bias = &sums[1];
  if (md::sl_bwd_run<T>(b, ex)) return 3;
  write_file(dir + "/gx.bin", gx.data(), gx.size());
  write_file(dir + "/gy.bin", gy.data(), gy.size());
  write_file(dir + "/sums.bin", sums, sizeof(sums));
  return 0;
}

int main(int argc, char** argv) {
  std::string dir;
  if (!emulate::case_dir(argc, argv, &dir)) return 2;
  emulate::Params in(dir + "/params.txt");
  double v[21];
  for (double& x : v) x = in.f64();
  if (!in.ok()) {
    std::fprintf(stderr, "bad params.txt\n");
    return 2;
  }
  auto i64 = [](double d) { return static_cast<int64_t>(d); };
  mk::SigmoidLossParams p;
  p.dtype = static_cast<mk::DType>(i64(v[0]));
  p.n = i64(v[1]); p.m = i64(v[2]); p.d = i64(v[3]);
  p.x_strides[0] = i64(v[4]); p.x_strides[1] = i64(v[5]);
  p.y_strides[0] = i64(v[6]); p.y_strides[1] = i64(v[7]);
  p.logit_scale = v[8];
  p.bias = v[9];
  p.symmetric = v[10] != 0;
  p.positives = static_cast<mk::SigmoidLossPositives>(i64(v[11]));
  p.diag_offset = i64(v[12]);
  p.mask_strides[0] = i64(v[13]); p.mask_strides[1] = i64(v[14]);
  const double grad_scale = v[15];
  const int64_t gxs[2] = {i64(v[16]), i64(v[17])}, gys[2] = {i64(v[18]), i64(v[19])};
  const int mode = static_cast<int>(v[20]);
  switch (p.dtype) {
    case mk::DType::kFloat32: return run<float>(dir, p, grad_scale, gxs, gys, mode);
    case mk::DType::kFloat64: return run<double>(dir, p, grad_scale, gxs, gys, mode);
    case mk::DType::kFloat16: return run<mk::half_t>(dir, p, grad_scale, gxs, gys, mode);
    case mk::DType::kBFloat16: return run<mk::bfloat16_t>(dir, p, grad_scale, gxs, gys, mode);
  }
  return 2;
}
