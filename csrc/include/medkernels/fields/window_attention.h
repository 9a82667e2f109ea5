/* Field lists of WindowAttentionParams and WindowAttentionBwdParams (see medkernels/fields.h for
 * the kinds and medkernels/window_attention.h for the meaning). */
#ifndef MEDKERNELS_FIELDS_WINDOW_ATTENTION_H_
#define MEDKERNELS_FIELDS_WINDOW_ATTENTION_H_

#define MK_WINDOW_ATTENTION_PARAMS_FIELDS(F)                                                         \
  F(ENUM, DType, dtype, DType::kFloat32)                                                             \
  F(VAL, int, directions, 1) /* 1 or 2 */                                                            \
  F(PTR, const void*, q0, 0)                                                                         \
  F(PTR, const void*, k0, 0)                                                                         \
  F(PTR, const void*, v0, 0)                                                                         \
  F(PTR, const void*, q1, 0)                                                                         \
  F(PTR, const void*, k1, 0)                                                                         \
  F(PTR, const void*, v1, 0)                                                                         \
  F(PTR, void*, o0, 0)                                                                               \
  F(PTR, void*, o1, 0)                                                                               \
  F(PTR, const void*, table, 0)  /* (rows, heads) contiguous, or null */                             \
  F(PTR, const void*, pad_kv, 0) /* (2, heads, head_dim) contiguous, or null (zeros) */              \
  F(PTR, void*, lse, 0) /* (directions, B, D, H, W, heads) accumulation type: log-sum-exp */         \
  F(VAL, int64_t, batch, 0)                                                                          \
  F(VAL, int64_t, heads, 0)                                                                          \
  F(VAL, int64_t, head_dim, 0)                                                                       \
  F(ARR, int64_t, size, 3)       /* D, H, W */                                                       \
  F(ARR, int64_t, window, 3)     /* configured window (bias table) */                                \
  F(ARR, int64_t, eff_window, 3) /* after the clamp */                                               \
  F(ARR, int64_t, shift, 3)      /* after the clamp */                                               \
  F(ARR, int64_t, padded, 3)     /* size rounded up to a multiple of eff_window */                   \
  F(VAL, double, scale, 1.0)                                                                         \
  F(VAL, double, mask_value, -100.0)                                                                 \
  F(BOOL, bool, mask_padded, false)                                                                  \
  F(ARR, int64_t, q_strides, 6) /* elements: B D H W heads head_dim */                               \
  F(ARR, int64_t, k_strides, 6)                                                                      \
  F(ARR, int64_t, v_strides, 6)                                                                      \
  F(ARR, int64_t, o_strides, 6)

/* table_grad, cpu:: only: when set (with pair_grad), the bias-table gradient (rows, heads) in the
 * accumulation type, as window_attention_table_grad writes it from pair_grad, in the same call. */
#define MK_WINDOW_ATTENTION_BWD_PARAMS_FIELDS(F)                                                     \
  F(NESTED, WindowAttentionParams, fwd, mk_window_attention_params) /* inputs, o0/o1 and lse */      \
  F(PTR, const void*, g0, 0)                                                                         \
  F(PTR, const void*, g1, 0)                                                                         \
  F(ARR, int64_t, g_strides, 6)                                                                      \
  F(PTR, void*, dq0, 0)                                                                              \
  F(PTR, void*, dq1, 0)                                                                              \
  F(PTR, void*, dk0, 0)                                                                              \
  F(PTR, void*, dk1, 0)                                                                              \
  F(PTR, void*, dv0, 0)                                                                              \
  F(PTR, void*, dv1, 0)                                                                              \
  F(ARR, int64_t, dq_strides, 6)                                                                     \
  F(ARR, int64_t, dk_strides, 6)                                                                     \
  F(ARR, int64_t, dv_strides, 6)                                                                     \
  F(PTR, void*, pair_grad, 0)                                                                        \
  F(PTR, void*, grad_pad_kv, 0)                                                                      \
  F(PTR, void*, workspace, 0) /* window_attention_bwd_workspace_bytes() bytes */                     \
  F(VAL, size_t, workspace_bytes, 0)                                                                 \
  F(PTR, void*, table_grad, 0)

#endif /* MEDKERNELS_FIELDS_WINDOW_ATTENTION_H_ */
