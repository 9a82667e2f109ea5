/* Field list of DiffusionParams (see medkernels/fields.h for the kinds and medkernels/diffusion.h
 * for the meaning). */
#ifndef MEDKERNELS_FIELDS_DIFFUSION_H_
#define MEDKERNELS_FIELDS_DIFFUSION_H_

#define MK_DIFFUSION_PARAMS_FIELDS(F)                                                                \
  F(ENUM, DType, dtype, DType::kFloat32)                                                             \
  F(OPCODE, DiffusionOp, op, DiffusionOp::kQSample)                                                  \
  F(PTR, const void*, x, 0)      /* x0 (q_sample), x_t (steps), eps_pred (loss); unused by kNormal */ \
  F(PTR, const void*, eps, 0)    /* predicted noise (steps) */                                       \
  F(PTR, const void*, noise, 0)  /* z, or null: made from (seed, offset) */                          \
  F(PTR, void*, out, 0)          /* result (the gradient for kLoss) */                               \
  F(PTR, void*, x0_out, 0)       /* x0 prediction (steps), may be null */                            \
  F(PTR, double*, partial, 0)    /* kLoss: (batch, ceil(numel / block)) sums of d^2 */               \
  F(PTR, const double*, table, 0) /* (num_train_timesteps + 1) [1, abar_0, ...] */                   \
  F(VAL, int64_t, num_train_timesteps, 0)                                                            \
  F(PTR, const int64_t*, t, 0)      /* (batch,) in 0..T-1 */                                         \
  F(PTR, const int64_t*, t_next, 0) /* (batch,) in -1..t-1 */                                        \
  F(VAL, int64_t, batch, 0)                                                                          \
  F(VAL, int64_t, numel, 0) /* elements per sample */                                                \
  F(VAL, uint64_t, seed, 0)                                                                          \
  F(VAL, uint64_t, offset, 0)                                                                        \
  F(VAL, double, eta, 0.0)                                                                           \
  F(VAL, double, clip, 1.0)                                                                          \
  F(BOOL, bool, has_clip, false)                                                                     \
  F(VAL, double, scale, 0.0)    /* kLoss gradient scale */                                           \
  F(VAL, int64_t, block, 1024) /* kLoss partial-sum block (a multiple of 4) */

#endif /* MEDKERNELS_FIELDS_DIFFUSION_H_ */
