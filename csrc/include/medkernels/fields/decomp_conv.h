/* Field lists of DecompConvParams and DecompConvBwdParams (see medkernels/fields.h for the kinds
 * and medkernels/decomp_conv.h for the meaning). */
#ifndef MEDKERNELS_FIELDS_DECOMP_CONV_H_
#define MEDKERNELS_FIELDS_DECOMP_CONV_H_

#define MK_DECOMP_CONV_PARAMS_FIELDS(F)                                                   \
  F(ENUM, DType, dtype, DType::kFloat32)                                                  \
  F(PTR, const void*, x, 0)                                                               \
  F(PTR, const void*, w_d, 0)                                                             \
  F(PTR, const void*, w_h, 0)                                                             \
  F(PTR, const void*, w_w, 0)                                                             \
  F(PTR, const void*, bias, 0) /* may be null */                                          \
  F(PTR, void*, y, 0)                                                                     \
  F(VAL, int64_t, batch, 0)                                                               \
  F(VAL, int64_t, in_channels, 0)                                                         \
  F(VAL, int64_t, out_channels, 0)                                                        \
  F(ARR, int64_t, in_size, 3)  /* D, H, W */                                              \
  F(ARR, int64_t, out_size, 3) /* (in - 1) / stride + 1 */                                \
  F(VAL, int, kernel_size, 3)  /* odd, 1..15 */                                           \
  F(VAL, int, stride, 1)                                                                  \
  F(VAL, int64_t, groups, 1)                                                              \
  F(ENUM, Activation, activation, Activation::kNone)                                      \
  F(ARR, int64_t, x_strides, 5) /* elements, N C D H W */                                 \
  F(ARR, int64_t, y_strides, 5)

#define MK_DECOMP_CONV_BWD_PARAMS_FIELDS(F)                                               \
  F(NESTED, DecompConvParams, fwd, mk_decomp_conv_params) /* as the forward; y unused */  \
  F(PTR, const void*, grad_y, 0)                                                          \
  F(ARR, int64_t, grad_y_strides, 5)                                                      \
  F(PTR, void*, grad_x, 0)                                                                \
  F(ARR, int64_t, grad_x_strides, 5)                                                      \
  F(PTR, void*, grad_w_d, 0)                                                              \
  F(PTR, void*, grad_w_h, 0)                                                              \
  F(PTR, void*, grad_w_w, 0)                                                              \
  F(PTR, void*, grad_bias, 0)                                                             \
  F(PTR, void*, workspace, 0) /* decomp_conv_bwd_workspace_bytes() bytes, device memory */ \
  F(VAL, size_t, workspace_bytes, 0)

#endif /* MEDKERNELS_FIELDS_DECOMP_CONV_H_ */
