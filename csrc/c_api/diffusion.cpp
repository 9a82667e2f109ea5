// The C ABI of the few-step diffusion steps (medkernels/c_api.h): the flat entry points, whose C
// arguments become a DiffusionParams, and the params form generated from its field list.
#include <string>
#include <vector>

#include "common.h"
#include "medkernels/diffusion.h"

namespace {

using mk_capi::fail;
using mk_capi::from_status;
using mk_capi::guarded;
using mk_capi::no_cuda;

int diffusion_run(const char* fn, bool on_cuda, medkernels::DiffusionParams& p, void* stream) {
  return guarded(fn, [&]() -> int {
    if (!p.table || !p.t) return fail(MK_INVALID_ARGUMENT, std::string(fn) + ": table and t must not be NULL");
    if (!on_cuda) {
      // C callers have no Python check in front: the host timesteps are range-checked here (the
      // kernels themselves clamp, as every backend does under check_timesteps=False)
      const int checked = from_status(medkernels::diffusion_check(p, true));
      if (checked != MK_SUCCESS) return checked;
      return from_status(medkernels::cpu::diffusion_fwd(p));
    }
#ifdef MEDKERNELS_WITH_CUDA
    return from_status(medkernels::cuda::diffusion_fwd(p, stream));
#else
    (void)stream;
    return no_cuda(fn);
#endif
  });
}

medkernels::DiffusionParams diffusion_params(medkernels::DType dt, medkernels::DiffusionOp op, const void* x,
                                             const void* noise, const int64_t* t, const double* table,
                                             int64_t num_train_timesteps, int64_t batch, int64_t numel, uint64_t seed,
                                             uint64_t offset, void* out) {
  medkernels::DiffusionParams p;
  p.dtype = dt;
  p.op = op;
  p.x = x;
  p.noise = noise;
  p.t = t;
  p.table = table;
  p.num_train_timesteps = num_train_timesteps;
  p.batch = batch;
  p.numel = numel;
  p.seed = seed;
  p.offset = offset;
  p.out = out;
  return p;
}

int diffusion_loss(const char* fn, medkernels::DType dt, const void* eps_pred, const void* noise, int64_t batch,
                   int64_t numel, uint64_t seed, uint64_t offset, double grad_scale, void* grad, double* sum_sq) {
  return guarded(fn, [&]() -> int {
    const std::string f(fn);
    if (!sum_sq) return fail(MK_INVALID_ARGUMENT, f + ": sum_sq must not be NULL");
    if (batch < 1 || numel < 1)
      return fail(MK_INVALID_ARGUMENT, f + ": batch and numel must be >= 1, got batch=" + std::to_string(batch) +
                                           " numel=" + std::to_string(numel));
    medkernels::DiffusionParams p;
    p.dtype = dt;
    p.op = medkernels::DiffusionOp::kLoss;
    p.x = eps_pred;
    p.noise = noise;
    p.batch = batch;
    p.numel = numel;
    p.seed = seed;
    p.offset = offset;
    p.scale = grad_scale;
    const size_t elem = dt == medkernels::DType::kFloat64 ? 8 : (dt == medkernels::DType::kFloat32 ? 4 : 2);
    std::vector<unsigned char> scratch;
    if (grad) {
      p.out = grad;
    } else {
      scratch.resize(static_cast<size_t>(batch * numel) * elem);
      p.out = scratch.data();
    }
    const int64_t nblk = (numel + p.block - 1) / p.block;
    std::vector<double> partial(static_cast<size_t>(batch * nblk));
    p.partial = partial.data();
    int st = from_status(medkernels::diffusion_check(p, true));
    if (st == MK_SUCCESS) st = from_status(medkernels::cpu::diffusion_fwd(p));
    if (st != MK_SUCCESS) return st;
    double s = 0.0;
    for (double v : partial) s += v;  // fixed order: the same bits on every run
    *sum_sq = s;
    return MK_SUCCESS;
  });
}

}  // namespace

extern "C" {

#define MK_DEFINE_DIFFUSION(SUFFIX, T, A, DT)                                                                        \
  static int q_sample_##SUFFIX(const char* fn, bool cuda, MK_DIFFUSION_Q_SAMPLE_ARGS(T), void* stream) {         \
    auto p = diffusion_params(DT, medkernels::DiffusionOp::kQSample, x0, noise, t, table, num_train_timesteps,     \
                              batch, numel, seed, offset, out);                                                   \
    return diffusion_run(fn, cuda, p, stream);                                                                    \
  }                                                                                                               \
  int mk_diffusion_q_sample_##SUFFIX(MK_DIFFUSION_Q_SAMPLE_ARGS(T)) {                                             \
    return q_sample_##SUFFIX("mk_diffusion_q_sample_" #SUFFIX, false, x0, noise, t, table, num_train_timesteps,    \
                             batch, numel, seed, offset, out, nullptr);                                          \
  }                                                                                                               \
  int mk_diffusion_q_sample_##SUFFIX##_cuda(MK_DIFFUSION_Q_SAMPLE_ARGS(T), void* stream) {                        \
    return q_sample_##SUFFIX("mk_diffusion_q_sample_" #SUFFIX "_cuda", true, x0, noise, t, table,                  \
                             num_train_timesteps, batch, numel, seed, offset, out, stream);                      \
  }                                                                                                               \
  static int ddim_##SUFFIX(const char* fn, bool cuda, MK_DIFFUSION_DDIM_ARGS(T), void* stream) {                 \
    auto p = diffusion_params(DT, medkernels::DiffusionOp::kDdim, x_t, noise, t, table, num_train_timesteps,       \
                              batch, numel, seed, offset, out);                                                   \
    p.eps = eps;                                                                                                  \
    p.t_next = t_next;                                                                                            \
    p.eta = eta;                                                                                                  \
    p.x0_out = x0_out;                                                                                            \
    return diffusion_run(fn, cuda, p, stream);                                                                    \
  }                                                                                                               \
  int mk_diffusion_ddim_step_##SUFFIX(MK_DIFFUSION_DDIM_ARGS(T)) {                                                \
    return ddim_##SUFFIX("mk_diffusion_ddim_step_" #SUFFIX, false, x_t, eps, noise, t, t_next, table,              \
                         num_train_timesteps, batch, numel, seed, offset, eta, out, x0_out, nullptr);            \
  }                                                                                                               \
  int mk_diffusion_ddim_step_##SUFFIX##_cuda(MK_DIFFUSION_DDIM_ARGS(T), void* stream) {                           \
    return ddim_##SUFFIX("mk_diffusion_ddim_step_" #SUFFIX "_cuda", true, x_t, eps, noise, t, t_next, table,       \
                         num_train_timesteps, batch, numel, seed, offset, eta, out, x0_out, stream);             \
  }                                                                                                               \
  static int ddpm_##SUFFIX(const char* fn, bool cuda, MK_DIFFUSION_DDPM_ARGS(T), void* stream) {                 \
    auto p = diffusion_params(DT, medkernels::DiffusionOp::kDdpm, x_t, noise, t, table, num_train_timesteps,       \
                              batch, numel, seed, offset, out);                                                   \
    p.eps = eps;                                                                                                  \
    p.t_next = t_next;                                                                                            \
    p.clip = clip;                                                                                                \
    p.has_clip = has_clip != 0;                                                                                   \
    p.x0_out = x0_out;                                                                                            \
    return diffusion_run(fn, cuda, p, stream);                                                                    \
  }                                                                                                               \
  int mk_diffusion_ddpm_step_##SUFFIX(MK_DIFFUSION_DDPM_ARGS(T)) {                                                \
    return ddpm_##SUFFIX("mk_diffusion_ddpm_step_" #SUFFIX, false, x_t, eps, noise, t, t_next, table,              \
                         num_train_timesteps, batch, numel, seed, offset, clip, has_clip, out, x0_out, nullptr); \
  }                                                                                                               \
  int mk_diffusion_ddpm_step_##SUFFIX##_cuda(MK_DIFFUSION_DDPM_ARGS(T), void* stream) {                           \
    return ddpm_##SUFFIX("mk_diffusion_ddpm_step_" #SUFFIX "_cuda", true, x_t, eps, noise, t, t_next, table,       \
                         num_train_timesteps, batch, numel, seed, offset, clip, has_clip, out, x0_out, stream);  \
  }

#define MK_DEFINE_DIFFUSION_LOSS(SUFFIX, T, A, DT)                                                          \
  int mk_diffusion_loss_##SUFFIX(MK_DIFFUSION_LOSS_ARGS(T)) {                                            \
    return diffusion_loss("mk_diffusion_loss_" #SUFFIX, DT, eps_pred, noise, batch, numel, seed, offset, \
                          grad_scale, grad, sum_sq);                                                     \
  }

MK_FOR_EACH_DTYPE(MK_DEFINE_DIFFUSION_LOSS)

MK_FOR_EACH_DTYPE(MK_DEFINE_DIFFUSION)

}  // extern "C"

MK_CAPI_PARAMS(mk_diffusion_params, medkernels::DiffusionParams, MK_DIFFUSION_PARAMS_FIELDS)
MK_CAPI_PARAMS_CALL(mk_diffusion_fwd, mk_diffusion_params, medkernels::DiffusionParams, medkernels::cpu::diffusion_fwd(q))
MK_CAPI_PARAMS_CALL_CUDA(mk_diffusion_fwd_cuda, mk_diffusion_params, medkernels::DiffusionParams,
                         medkernels::cuda::diffusion_fwd)
