/* Field lists of SigmoidLossParams and SigmoidLossBwdParams (see medkernels/fields.h for the kinds
 * and medkernels/sigmoid_loss.h for the meaning). workspace: scratch of *_workspace_bytes() bytes
 * from the caller (the packed inputs live there), so the caller's allocator sees all of the memory
 * the loss needs. */
#ifndef MEDKERNELS_FIELDS_SIGMOID_LOSS_H_
#define MEDKERNELS_FIELDS_SIGMOID_LOSS_H_

#define MK_SIGMOID_LOSS_PARAMS_FIELDS(F)                                                             \
  F(ENUM, DType, dtype, DType::kFloat32)                                                             \
  F(PTR, const void*, x, 0)                                                                          \
  F(PTR, const void*, y, 0)                                                                          \
  F(VAL, int64_t, n, 0)                                                                              \
  F(VAL, int64_t, m, 0)                                                                              \
  F(VAL, int64_t, d, 0)                                                                              \
  F(ARR, int64_t, x_strides, 2) /* elements */                                                       \
  F(ARR, int64_t, y_strides, 2)                                                                      \
  F(VAL, double, logit_scale, 1.0) /* exp(t') */                                                     \
  F(VAL, double, bias, 0.0)                                                                          \
  F(BOOL, bool, symmetric, false) /* Med3DVLM: logits (L + L^T) / 2, needs n == m */                 \
  F(ENUM, SigmoidLossPositives, positives, SigmoidLossPositives::kDiagonal)                          \
  F(VAL, int64_t, diag_offset, 0)                                                                    \
  F(PTR, const int64_t*, labels_x, 0) /* (n,) */                                                     \
  F(PTR, const int64_t*, labels_y, 0) /* (m,) */                                                     \
  F(PTR, const uint8_t*, mask, 0)     /* (n, m) */                                                   \
  F(ARR, int64_t, mask_strides, 2)                                                                   \
  F(PTR, double*, loss, 0) /* the unscaled sum (host memory for cpu::, device memory for cuda::) */  \
  F(PTR, void*, workspace, 0)                                                                        \
  F(VAL, size_t, workspace_bytes, 0)

#define MK_SIGMOID_LOSS_BWD_PARAMS_FIELDS(F)                                                         \
  F(NESTED, SigmoidLossParams, fwd, mk_sigmoid_loss_params)                                          \
  F(VAL, double, grad_scale, 1.0)                                                                    \
  F(PTR, void*, grad_x, 0)                                                                           \
  F(ARR, int64_t, grad_x_strides, 2)                                                                 \
  F(PTR, void*, grad_y, 0)                                                                           \
  F(ARR, int64_t, grad_y_strides, 2)                                                                 \
  F(PTR, double*, grad_t_prime, 0)                                                                   \
  F(PTR, double*, grad_bias, 0)

#endif /* MEDKERNELS_FIELDS_SIGMOID_LOSS_H_ */
