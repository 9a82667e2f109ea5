// Host emulation of the CUDA diffusion-step kernel, for tests on machines without a GPU.
//
// Runs medkernels::detail::diffusion_fwd_run (the plan medkernels/cuda/diffusion.cuh launches)
// with the host executor of medkernels/detail/exec.h: block by block, each phase of the block
// program (thread 0's coefficients, every thread's detail::diffusion_thread, the loss's fixed
// tree sum) for all its threads in turn, shared memory NaN first. Outputs start as NaN, so an
// element no thread writes shows up. Prints one line for the launch.
//
//   diffusion_emulate DIR
// DIR/params.txt: dtype op batch numel num_train_timesteps seed offset eta clip has_clip scale
//                 block has_noise has_t_next has_x0
// DIR/x.bin, DIR/eps.bin (the steps), DIR/noise.bin (has_noise): contiguous (batch, numel);
// DIR/table.bin (num_train_timesteps + 1 doubles), DIR/t.bin and DIR/t_next.bin (batch int64,
// the steps and q_sample). Writes DIR/out.bin, DIR/x0.bin (has_x0) and DIR/partial.bin (the loss:
// (batch, ceil(numel / block)) doubles). tests/test_diffusion.py drives it and compares with the
// float64 reference.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "emulate_io.h"
#include "medkernels/detail/diffusion.h"

namespace mk = medkernels;
namespace md = medkernels::detail;

using emulate::load;
using emulate::save;

template <typename T>
static int run(const std::string& dir, mk::DiffusionParams p, bool has_t_next, bool has_x0) {
  const int64_t n = p.batch * p.numel, nblk = (p.numel + p.block - 1) / p.block;
  const bool step = p.op == mk::DiffusionOp::kDdim || p.op == mk::DiffusionOp::kDdpm;
  std::vector<T> x, eps, noise;
  std::vector<double> table;
  std::vector<int64_t> t, t_next;
  if ((p.op != mk::DiffusionOp::kNormal && !load(dir + "/x.bin", &x, n)) ||
      (step && !load(dir + "/eps.bin", &eps, n)) || (p.noise && !load(dir + "/noise.bin", &noise, n)) ||
      (p.op <= mk::DiffusionOp::kDdpm &&
       (!load(dir + "/table.bin", &table, p.num_train_timesteps + 1) || !load(dir + "/t.bin", &t, p.batch))) ||
      (has_t_next && !load(dir + "/t_next.bin", &t_next, p.batch)))
    return 2;
  std::vector<T> out(static_cast<size_t>(n)), x0(has_x0 ? static_cast<size_t>(n) : 0);
  std::vector<double> partial(p.op == mk::DiffusionOp::kLoss ? static_cast<size_t>(p.batch * nblk) : 0);
  std::memset(out.data(), 0xff, out.size() * sizeof(T));  // NaN in every float type
  std::memset(x0.data(), 0xff, x0.size() * sizeof(T));
  std::memset(partial.data(), 0xff, partial.size() * sizeof(double));
  p.x = x.data();
  p.eps = eps.data();
  p.noise = p.noise ? noise.data() : nullptr;
  p.table = table.data();
  p.t = t.data();
  p.t_next = has_t_next ? t_next.data() : nullptr;
  p.out = out.data();
  p.x0_out = has_x0 ? x0.data() : nullptr;
  p.partial = partial.data();
  md::HostExec<md::HostBlock, emulate::Trace> ex;
  if (md::diffusion_fwd_run<T>(p, ex)) return 3;
  save(dir + "/out.bin", out);
  if (has_x0) save(dir + "/x0.bin", x0);
  if (!partial.empty()) save(dir + "/partial.bin", partial);
  return 0;
}

int main(int argc, char** argv) {
  std::string dir;
  if (!emulate::case_dir(argc, argv, &dir)) return 2;
  emulate::Params in(dir + "/params.txt");
  mk::DiffusionParams p;
  p.dtype = static_cast<mk::DType>(in.i64());
  p.op = static_cast<mk::DiffusionOp>(in.i64());
  p.batch = in.i64();
  p.numel = in.i64();
  p.num_train_timesteps = in.i64();
  p.seed = in.u64();
  p.offset = in.u64();
  p.eta = in.f64();
  p.clip = in.f64();
  p.has_clip = in.flag();
  p.scale = in.f64();
  p.block = in.i64();
  p.noise = in.flag() ? &p : nullptr;  // non-null: read noise.bin
  const bool has_t_next = in.flag(), has_x0 = in.flag();
  // the launcher's contract: p.block / 4 threads of whole warps, at most 1024
  if (!in.ok() || p.block % 128 != 0 || p.block > 4096) {
    std::fprintf(stderr, "bad params.txt\n");
    return 2;
  }
  switch (p.dtype) {
    case mk::DType::kFloat32: return run<float>(dir, p, has_t_next, has_x0);
    case mk::DType::kFloat64: return run<double>(dir, p, has_t_next, has_x0);
    case mk::DType::kFloat16: return run<mk::half_t>(dir, p, has_t_next, has_x0);
    case mk::DType::kBFloat16: return run<mk::bfloat16_t>(dir, p, has_t_next, has_x0);
  }
  return 2;
}
