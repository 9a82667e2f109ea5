/* The same computation as main.cpp, in C through the C ABI (medkernels/c_api.h, medkernels::capi).
 *   app_c IN OUT   (the file formats of main.cpp) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "medkernels/c_api.h"

static float* read_floats(FILE* f, size_t n) {
  float* p = (float*)malloc(n * sizeof(float));
  if (p && fread(p, sizeof(float), n, f) != n) {
    free(p);
    return NULL;
  }
  return p;
}

int main(int argc, char** argv) {
  int64_t h[10];
  FILE* in;
  FILE* out;
  float *x, *wd, *wh, *ww, *b, *y;
  int64_t n_x, n_w, n_y, o[3];
  int i, st;
  if (argc != 3) {
    fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  if (mk_abi_version() != MK_ABI_VERSION) {
    fprintf(stderr, "libmedkernels_capi has ABI %d, this program was built for %d\n", mk_abi_version(), MK_ABI_VERSION);
    return 2;
  }
  in = fopen(argv[1], "rb");
  if (!in || fread(h, sizeof(int64_t), 10, in) != 10) return 2;
  for (i = 0; i < 3; ++i) o[i] = (h[2 + i] - 1) / h[7] + 1;
  n_x = h[0] * h[1] * h[2] * h[3] * h[4];
  n_w = h[5] * (h[1] / h[8]) * h[6];
  n_y = h[0] * h[5] * o[0] * o[1] * o[2];
  x = read_floats(in, (size_t)n_x);
  wd = read_floats(in, (size_t)n_w);
  wh = read_floats(in, (size_t)n_w);
  ww = read_floats(in, (size_t)n_w);
  b = read_floats(in, (size_t)h[5]);
  y = (float*)malloc((size_t)n_y * sizeof(float));
  fclose(in);
  if (!x || !wd || !wh || !ww || !b || !y) return 2;
  /* NULL strides: contiguous NCDHW */
  st = mk_decomp_conv3d_fwd_f32(x, h, NULL, wd, wh, ww, b, h[5], h[6], h[7], h[8], (int)h[9], y, NULL);
  if (st != MK_SUCCESS) {
    fprintf(stderr, "mk_decomp_conv3d_fwd_f32: status %d: %s\n", st, mk_last_error());
    return 1;
  }
  out = fopen(argv[2], "wb");
  if (!out || fwrite(y, sizeof(float), (size_t)n_y, out) != (size_t)n_y) return 2;
  fclose(out);
  printf("medkernels C ABI %d (library %d): y written\n", mk_abi_version(), mk_version());
  return 0;
}
