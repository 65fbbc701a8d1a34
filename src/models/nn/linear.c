/*
 * linear.c — see linear.h. Every product is one ss_matmul call (the forward's: ss_matmul_w, which
 * runs it in the model's compute dtype); the bias is laid down first so
 * that the product adds onto it (beta = 1). Thread: the caller's worker thread; reentrant.
 */
#include "models/nn/linear.h"

#include <stddef.h>
#include <string.h>

#include "models/nn/matmul.h"

void ss_linear_forward(const ss_compute *cc, float *y, const float *x, const float *W,
                       const float *b, int BT, int C, int OC, ss_w_layout layout, int accumulate) {
  size_t rows = (size_t)BT, n = (size_t)OC;
  if (b != NULL) {
    for (size_t r = 0; r < rows; r++) {
      float *yr = y + r * n;
      if (accumulate)
        for (size_t j = 0; j < n; j++) yr[j] += b[j];
      else
        memcpy(yr, b, n * sizeof(float));
    }
  }
  ss_matmul_w(cc, layout == SS_W_IN_OUT ? SS_MM_N : SS_MM_T, BT, OC, C, x, C, W,
              layout == SS_W_IN_OUT ? OC : C, (b != NULL || accumulate) ? 1.0f : 0.0f, y, OC);
}

void ss_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                        const float *W, int BT, int C, int OC, ss_w_layout layout) {
  if (dW != NULL) {
    if (layout == SS_W_IN_OUT) /* dW [C, OC] += x^T dy */
      ss_matmul(SS_MM_T, SS_MM_N, C, OC, BT, 1.0f, x, C, dy, OC, 1.0f, dW, OC);
    else /* dW [OC, C] += dy^T x */
      ss_matmul(SS_MM_T, SS_MM_N, OC, C, BT, 1.0f, dy, OC, x, C, 1.0f, dW, C);
  }
  if (db != NULL) ss_bias_backward(db, dy, OC, BT, OC);
  if (dx != NULL) {
    if (layout == SS_W_IN_OUT) /* dx = dy W^T, W [C, OC] */
      ss_matmul(SS_MM_N, SS_MM_T, BT, C, OC, 1.0f, dy, OC, W, OC, 0.0f, dx, C);
    else /* dx = dy W, W [OC, C] */
      ss_matmul(SS_MM_N, SS_MM_N, BT, C, OC, 1.0f, dy, OC, W, C, 0.0f, dx, C);
  }
}

void ss_bias_backward(float *db, const float *dy, int ldy, int BT, int n) {
  for (size_t r = 0; r < (size_t)BT; r++) {
    const float *d = dy + r * (size_t)ldy;
    for (size_t j = 0; j < (size_t)n; j++) db[j] += d[j];
  }
}
