// The C ABI of GroupNorm + add / FiLM + activation (medkernels/c_api.h): the params form only,
// generated from the field lists of GroupNormParams and GroupNormBwdParams.
#include "common.h"
#include "medkernels/detail/group_norm_kernels.h"
#include "medkernels/group_norm.h"

MK_CAPI_PARAMS(mk_group_norm_params, medkernels::GroupNormParams, MK_GROUP_NORM_PARAMS_FIELDS)
MK_CAPI_PARAMS(mk_group_norm_bwd_params, medkernels::GroupNormBwdParams, MK_GROUP_NORM_BWD_PARAMS_FIELDS)
MK_CAPI_PARAMS_CALL(mk_group_norm_fwd, mk_group_norm_params, medkernels::GroupNormParams,
                    medkernels::cpu::group_norm_fwd(q))
MK_CAPI_PARAMS_CALL(mk_group_norm_bwd, mk_group_norm_bwd_params, medkernels::GroupNormBwdParams,
                    medkernels::cpu::group_norm_bwd(q))
// the CUDA sizes come from the header-only plan: the same numbers in a library built without CUDA
MK_CAPI_PARAMS_SIZE(mk_group_norm_fwd_workspace_bytes_cuda, mk_group_norm_params, medkernels::GroupNormParams,
                    medkernels::detail::gn_workspace_bytes(q, false))
MK_CAPI_PARAMS_SIZE(mk_group_norm_bwd_workspace_bytes_cuda, mk_group_norm_bwd_params, medkernels::GroupNormBwdParams,
                    medkernels::detail::gn_workspace_bytes(q.fwd, true))
MK_CAPI_PARAMS_CALL_CUDA(mk_group_norm_fwd_cuda, mk_group_norm_params, medkernels::GroupNormParams,
                         medkernels::cuda::group_norm_fwd)
MK_CAPI_PARAMS_CALL_CUDA(mk_group_norm_bwd_cuda, mk_group_norm_bwd_params, medkernels::GroupNormBwdParams,
                         medkernels::cuda::group_norm_bwd)
