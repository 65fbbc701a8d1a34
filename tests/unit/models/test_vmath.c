/*
 * test_vmath.c — vectorized exp and gelu_new against libm over a dense sweep of inputs,
 * including the clamped extremes and lengths that leave a scalar tail.
 */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "models/nn/vmath.h"

int main(void) {
  size_t n = 200003; /* not a multiple of 8, and large enough to take the threaded path */
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
  double worst_exp = 0, worst_gelu = 0;
  for (size_t i = 0; i < n; i++) x[i] = -87.0f + 175.0f * (float)i / (float)n;
  ss_vexp(x, y, n);
  for (size_t i = 0; i < n; i++) {
    double ref = exp((double)x[i]);
    double rel = fabs((double)y[i] - ref) / ref;
    if (rel > worst_exp) worst_exp = rel;
  }
  for (size_t i = 0; i < n; i++) x[i] = -12.0f + 24.0f * (float)i / (float)n;
  for (size_t i = 0; i < n; i++) y[i] = x[i];
  ss_gelu_new(y, n);
  for (size_t i = 0; i < n; i++) {
    double v = x[i];
    double ref = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    double err = fabs((double)y[i] - ref) / (1.0 + fabs(ref));
    if (err > worst_gelu) worst_gelu = err;
  }
  printf("worst exp relative error %.3g, worst gelu_new error %.3g\n", worst_exp, worst_gelu);
  CHECK(worst_exp < 4e-7);
  CHECK(worst_gelu < 1e-6);
  /* backward: dx *= d gelu_new / dx, against the derivative in double */
  double worst_back = 0;
  for (size_t i = 0; i < n; i++) y[i] = 1.0f;
  ss_gelu_new_backward(y, x, n);
  for (size_t i = 0; i < n; i++) {
    double v = x[i], c = 0.7978845608028654, k = 0.044715;
    double th = tanh(c * (v + k * v * v * v));
    double ref = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * c * (1 + 3 * k * v * v);
    double err = fabs((double)y[i] - ref) / (1.0 + fabs(ref));
    if (err > worst_back) worst_back = err;
  }
  printf("worst gelu_new backward error %.3g\n", worst_back);
  CHECK(worst_back < 5e-6);
  float small[5] = {-1.0f, 0.0f, 1.0f, 2.0f, 3.0f}; /* all scalar tail */
  ss_gelu_new(small, 5);
  CHECK(fabsf(small[1]) == 0.0f);
  CHECK(fabsf(small[2] - 0.8411920f) < 1e-6f);
  free(x);
  free(y);
  TEST_MAIN_END();
}
