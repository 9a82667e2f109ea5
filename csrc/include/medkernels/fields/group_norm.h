/* Field lists of GroupNormParams and GroupNormBwdParams (see medkernels/fields.h for the kinds and
 * medkernels/group_norm.h for the meaning). */
#ifndef MEDKERNELS_FIELDS_GROUP_NORM_H_
#define MEDKERNELS_FIELDS_GROUP_NORM_H_

#define MK_GROUP_NORM_PARAMS_FIELDS(F)                                                               \
  F(ENUM, DType, dtype, DType::kFloat32)                                                             \
  F(PTR, const void*, x, 0)                                                                          \
  F(PTR, void*, y, 0)                                                                                \
  F(PTR, const void*, weight, 0) /* (C,) in x's dtype, or null (1) */                                \
  F(PTR, const void*, bias, 0)   /* (C,) or null (0) */                                              \
  F(PTR, const void*, scale, 0)  /* (N, C) or null (0) */                                            \
  F(PTR, const void*, shift, 0)  /* (N, C) or null (0) */                                            \
  F(PTR, const void*, add, 0)    /* (N, C) or null (0) */                                            \
  F(PTR, void*, mean, 0)         /* (N, groups) accumulation type, written */                        \
  F(PTR, void*, rstd, 0)         /* (N, groups) accumulation type, written */                        \
  F(VAL, int64_t, batch, 0)                                                                          \
  F(VAL, int64_t, channels, 0)                                                                       \
  F(VAL, int64_t, groups, 1)                                                                         \
  F(VAL, int64_t, spatial, 0)                                                                        \
  F(ARR, int64_t, x_strides, 3) /* elements: N, C, M */                                              \
  F(ARR, int64_t, y_strides, 3)                                                                      \
  F(VAL, double, eps, 1e-5)                                                                          \
  F(ENUM, Activation, activation, Activation::kNone)                                                 \
  F(PTR, void*, workspace, 0) /* the cuda kernels': group_norm_cuda_{fwd,bwd}_workspace_bytes() */   \
  F(VAL, size_t, workspace_bytes, 0)

#define MK_GROUP_NORM_BWD_PARAMS_FIELDS(F)                                                           \
  F(NESTED, GroupNormParams, fwd, mk_group_norm_params) /* x, ..., mean, rstd (read), sizes */       \
  F(PTR, const void*, grad_y, 0)                                                                     \
  F(ARR, int64_t, grad_y_strides, 3)                                                                 \
  F(PTR, void*, grad_x, 0)                                                                           \
  F(ARR, int64_t, grad_x_strides, 3)                                                                 \
  F(PTR, void*, grad_weight, 0)                                                                      \
  F(PTR, void*, grad_bias, 0)                                                                        \
  F(PTR, void*, grad_scale, 0)                                                                       \
  F(PTR, void*, grad_shift, 0)                                                                       \
  F(PTR, void*, grad_add, 0)

#endif /* MEDKERNELS_FIELDS_GROUP_NORM_H_ */
