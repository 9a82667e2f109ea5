// XLA FFI handler: medkernels' CPU decomposed 3D convolution as a JAX custom call.
//
// Inputs x (N, C_in, D, H, W), w_d, w_h, w_w (C_out, C_in/groups, k), bias (C_out,) in one dtype
// (f32, f64, f16 or bf16; XLA's default row-major layouts), attributes stride, groups, activation
// (0 none, 1 gelu, 2 relu, 3 silu) and has_bias; result y (N, C_out, Do, Ho, Wo).
// decomp_conv_jax.py registers it with jax.ffi.register_ffi_target and calls it with jax.ffi.ffi_call.
// When medkernels::core holds the CUDA kernels (MEDKERNELS_WITH_CUDA, set by the package), the
// library also exports MedkernelsDecompConv3dCuda: the same call on XLA's CUDA stream.
#include <cstdint>
#include <string>

#ifdef MEDKERNELS_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "medkernels/decomp_conv.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

bool to_medkernels(ffi::DataType t, medkernels::DType* out) {
  switch (t) {
    case ffi::DataType::F32: *out = medkernels::DType::kFloat32; return true;
    case ffi::DataType::F64: *out = medkernels::DType::kFloat64; return true;
    case ffi::DataType::F16: *out = medkernels::DType::kFloat16; return true;
    case ffi::DataType::BF16: *out = medkernels::DType::kBFloat16; return true;
    default: return false;
  }
}

void row_major_strides(ffi::AnyBuffer::Dimensions d, int64_t* st) {
  st[4] = 1;
  for (int i = 3; i >= 0; --i) st[i] = st[i + 1] * d[i + 1];
}

// The params from the XLA buffers (shared by the CPU and CUDA handlers); an error, or success.
ffi::Error make_params(ffi::AnyBuffer x, ffi::AnyBuffer w_d, ffi::AnyBuffer w_h, ffi::AnyBuffer w_w,
                       ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer>& y, int64_t stride, int64_t groups,
                       int64_t activation, bool has_bias, medkernels::DecompConvParams& p) {
  if (!to_medkernels(x.element_type(), &p.dtype))
    return ffi::Error::InvalidArgument("medkernels_decomp_conv3d: x must be f32, f64, f16 or bf16");
  for (const ffi::AnyBuffer* b : {&w_d, &w_h, &w_w, &bias})
    if (b->element_type() != x.element_type())
      return ffi::Error::InvalidArgument("medkernels_decomp_conv3d: weights and bias must have x's dtype");
  const auto xd = x.dimensions(), wd = w_d.dimensions(), yd = y->dimensions();
  if (xd.size() != 5 || wd.size() != 3 || yd.size() != 5)
    return ffi::Error::InvalidArgument("medkernels_decomp_conv3d: x and y must be 5-D, the weights 3-D");
  p.x = x.untyped_data();
  p.w_d = w_d.untyped_data();
  p.w_h = w_h.untyped_data();
  p.w_w = w_w.untyped_data();
  p.bias = has_bias ? bias.untyped_data() : nullptr;
  p.y = y->untyped_data();
  p.batch = xd[0];
  p.in_channels = xd[1];
  p.out_channels = wd[0];
  for (int a = 0; a < 3; ++a) {
    p.in_size[a] = xd[2 + a];
    p.out_size[a] = yd[2 + a];
  }
  p.kernel_size = static_cast<int>(wd[2]);
  p.stride = static_cast<int>(stride);
  p.groups = groups;
  p.activation = static_cast<medkernels::Activation>(activation);
  row_major_strides(xd, p.x_strides);
  row_major_strides(yd, p.y_strides);
  return ffi::Error::Success();
}

ffi::Error DecompConv3dCpu(ffi::AnyBuffer x, ffi::AnyBuffer w_d, ffi::AnyBuffer w_h, ffi::AnyBuffer w_w,
                           ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t groups,
                           int64_t activation, bool has_bias) {
  medkernels::DecompConvParams p;
  ffi::Error err = make_params(x, w_d, w_h, w_w, bias, y, stride, groups, activation, has_bias, p);
  if (err.failure()) return err;
  if (medkernels::cpu::decomp_conv_fwd(p) != medkernels::Status::kSuccess)
    return ffi::Error::InvalidArgument(std::string("medkernels_decomp_conv3d: ") + medkernels::last_error());
  return ffi::Error::Success();
}

#ifdef MEDKERNELS_WITH_CUDA
// The same call on the GPU: XLA's device buffers, launched on XLA's stream.
ffi::Error DecompConv3dCuda(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w_d, ffi::AnyBuffer w_h,
                            ffi::AnyBuffer w_w, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y, int64_t stride,
                            int64_t groups, int64_t activation, bool has_bias) {
  medkernels::DecompConvParams p;
  ffi::Error err = make_params(x, w_d, w_h, w_w, bias, y, stride, groups, activation, has_bias, p);
  if (err.failure()) return err;
  if (medkernels::cuda::decomp_conv_fwd(p, stream) != medkernels::Status::kSuccess)
    return ffi::Error::Internal(std::string("medkernels_decomp_conv3d: ") + medkernels::last_error());
  return ffi::Error::Success();
}
#endif

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedkernelsDecompConv3d, DecompConv3dCpu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w_d
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // w_w
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("groups")
                                  .Attr<int64_t>("activation")
                                  .Attr<bool>("has_bias"));

#ifdef MEDKERNELS_WITH_CUDA
XLA_FFI_DEFINE_HANDLER_SYMBOL(MedkernelsDecompConv3dCuda, DecompConv3dCuda,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w_d
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // w_w
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("groups")
                                  .Attr<int64_t>("activation")
                                  .Attr<bool>("has_bias"));
#endif
