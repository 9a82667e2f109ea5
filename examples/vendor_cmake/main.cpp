// Runs medkernels' CPU decomposed 3D convolution from plain C++ (no Python, no torch).
//
//   app IN OUT      IN: a little-endian binary file
//                       int64 N C_in D H W C_out k stride groups activation, then float32 x (N, C_in,
//                       D, H, W), w_d, w_h, w_w (C_out, C_in/groups, k) and bias (C_out,), all contiguous
//                   OUT: float32 y (N, C_out, Do, Ho, Wo) contiguous
// Exit status 0 on success; errors print medkernels::last_error().
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <vector>

#include "medkernels/decomp_conv.h"

template <typename T>
static bool read_n(std::ifstream& in, T* out, size_t n) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(n * sizeof(T))));
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  int64_t h[10];
  if (!read_n(in, h, 10)) {
    std::fprintf(stderr, "cannot read the header of %s\n", argv[1]);
    return 2;
  }
  const int64_t N = h[0], Ci = h[1], D = h[2], H = h[3], W = h[4], Co = h[5], k = h[6], s = h[7], g = h[8];
  std::vector<float> x(N * Ci * D * H * W), wd(Co * (Ci / g) * k), wh(wd.size()), ww(wd.size()), b(Co);
  if (!read_n(in, x.data(), x.size()) || !read_n(in, wd.data(), wd.size()) || !read_n(in, wh.data(), wh.size()) ||
      !read_n(in, ww.data(), ww.size()) || !read_n(in, b.data(), b.size())) {
    std::fprintf(stderr, "%s is too short\n", argv[1]);
    return 2;
  }

  medkernels::DecompConvParams p;
  p.dtype = medkernels::DType::kFloat32;
  p.x = x.data();
  p.w_d = wd.data();
  p.w_h = wh.data();
  p.w_w = ww.data();
  p.bias = b.data();
  p.batch = N;
  p.in_channels = Ci;
  p.out_channels = Co;
  const int64_t sizes[3] = {D, H, W};
  for (int a = 0; a < 3; ++a) {
    p.in_size[a] = sizes[a];
    p.out_size[a] = (sizes[a] - 1) / s + 1;
  }
  p.kernel_size = static_cast<int>(k);
  p.stride = static_cast<int>(s);
  p.groups = g;
  p.activation = static_cast<medkernels::Activation>(h[9]);
  // contiguous NCDHW strides, in elements
  const int64_t xs[5] = {Ci * D * H * W, D * H * W, H * W, W, 1};
  const int64_t Do = p.out_size[0], Ho = p.out_size[1], Wo = p.out_size[2];
  const int64_t ys[5] = {Co * Do * Ho * Wo, Do * Ho * Wo, Ho * Wo, Wo, 1};
  for (int i = 0; i < 5; ++i) {
    p.x_strides[i] = xs[i];
    p.y_strides[i] = ys[i];
  }
  std::vector<float> y(N * Co * Do * Ho * Wo);
  p.y = y.data();

  if (medkernels::cpu::decomp_conv_fwd(p) != medkernels::Status::kSuccess) {
    std::fprintf(stderr, "decomp_conv_fwd failed: %s\n", medkernels::last_error());
    return 1;
  }
  std::ofstream out(argv[2], std::ios::binary);
  out.write(reinterpret_cast<const char*>(y.data()), static_cast<std::streamsize>(y.size() * sizeof(float)));
  std::printf("medkernels %d.%d.%d: y (%lld, %lld, %lld, %lld, %lld) written\n", medkernels::kVersionMajor,
              medkernels::kVersionMinor, medkernels::kVersionPatch, (long long)N, (long long)Co, (long long)Do,
              (long long)Ho, (long long)Wo);
  return 0;
}
