/*
 * test_linear.c — the dense-layer kernels against a double-precision reference, on both sides of
 * the small-rows threshold, odd sizes (tails), with and without bias, overwrite and accumulate.
 */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "models/linear.h"

static float frand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static int close_all(const float *a, const double *ref, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fabs((double)a[i] - ref[i]) > 1e-4 * (1.0 + fabs(ref[i]))) {
      fprintf(stderr, "  at %zu: %g vs %g\n", i, (double)a[i], ref[i]);
      return 0;
    }
  return 1;
}

static void one(size_t rows, size_t in, size_t out, int bias, int acc, int conv1d) {
  unsigned s = (unsigned)(rows * 131 + in * 7 + out + (size_t)bias * 3 + (size_t)acc);
  float *X = malloc(rows * in * sizeof *X), *W = malloc(in * out * sizeof *W);
  float *b = malloc(out * sizeof *b), *Y = malloc(rows * out * sizeof *Y);
  double *R = malloc(rows * out * sizeof *R);
  for (size_t i = 0; i < rows * in; i++) X[i] = frand(&s);
  for (size_t i = 0; i < in * out; i++) W[i] = frand(&s);
  for (size_t i = 0; i < out; i++) b[i] = frand(&s);
  for (size_t i = 0; i < rows * out; i++) Y[i] = acc ? frand(&s) : 1e30f;
  for (size_t r = 0; r < rows; r++)
    for (size_t o = 0; o < out; o++) {
      double d = acc ? (double)Y[r * out + o] : 0.0;
      if (bias) d += b[o];
      for (size_t i = 0; i < in; i++)
        d += (double)X[r * in + i] * (conv1d ? W[i * out + o] : W[o * in + i]);
      R[r * out + o] = d;
    }
  if (conv1d) ss_linear_xw(X, rows, in, W, bias ? b : NULL, out, Y, acc);
  else ss_linear_xwt(X, rows, in, W, bias ? b : NULL, out, Y, acc);
  int ok = close_all(Y, R, rows * out);
  if (!ok)
    fprintf(stderr, "rows %zu in %zu out %zu bias %d acc %d conv1d %d\n", rows, in, out, bias, acc,
            conv1d);
  CHECK(ok);
  free(X), free(W), free(b), free(Y), free(R);
}

int main(void) {
  size_t rows[] = {1, 2, 3, 4, 5, 10, 16, 17, 33};
  size_t dims[][2] = {{768, 768}, {13, 7}, {64, 48}, {9, 33}, {1, 1}, {100, 17}};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
      for (int bias = 0; bias < 2; bias++)
        for (int acc = 0; acc < 2; acc++)
          for (int conv = 0; conv < 2; conv++) one(rows[i], dims[d][0], dims[d][1], bias, acc, conv);
  TEST_MAIN_END();
}
