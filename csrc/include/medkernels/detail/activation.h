// Activations and their derivatives, shared by the CPU and CUDA kernels (MK_HD).
#pragma once

#include <cmath>

#include "medkernels/common.h"

namespace medkernels {
namespace detail {

template <typename A>
MK_HD A act_fwd(Activation act, A z) {
  switch (act) {
    case Activation::kGelu:  // exact (erf) GELU, as torch.nn.GELU()
      return A(0.5) * z * (A(1) + erf(z * A(0.70710678118654752440)));
    case Activation::kRelu:
      return z < A(0) ? A(0) : z;  // NaN stays NaN, as torch.relu
    case Activation::kSilu:
      return z / (A(1) + exp(-z));
    case Activation::kNone:
    default:
      return z;
  }
}

// d act(z) / dz
template <typename A>
MK_HD A act_grad(Activation act, A z) {
  switch (act) {
    case Activation::kGelu: {
      const A cdf = A(0.5) * (A(1) + erf(z * A(0.70710678118654752440)));
      const A pdf = exp(A(-0.5) * z * z) * A(0.39894228040143267794);
      return cdf + z * pdf;
    }
    case Activation::kRelu:
      return z <= A(0) ? A(0) : A(1);  // torch's threshold_backward: NaN z passes the gradient
    case Activation::kSilu: {
      const A sig = A(1) / (A(1) + exp(-z));
      return sig * (A(1) + z * (A(1) - sig));
    }
    case Activation::kNone:
    default:
      return A(1);
  }
}

// Output length of a branch: odd kernel k, padding k/2, stride s.
MK_HD int64_t conv_out_size(int64_t in, int stride) { return (in - 1) / stride + 1; }

}  // namespace detail
}  // namespace medkernels
