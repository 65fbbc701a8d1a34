/*
 * linear.c — see linear.h. Every product is one ss_matmul call (the forward's: ss_matmul_w_ep,
 * which runs it in the model's compute dtype, with the bias and any activation as its epilogue:
 * fused into the product on packed weights, laid down first or applied after elsewhere). Thread:
 * the caller's worker thread; reentrant.
 */
#include "models/nn/linear.h"

#include <stddef.h>

#include "models/nn/matmul.h"

void ss_linear_forward_ep(const ss_compute *cc, float *y, const float *x, const float *W,
                          const ss_mm_epilogue *ep, int BT, int C, int OC, ss_w_layout layout,
                          int accumulate) {
  ss_matmul_w_ep(cc, layout == SS_W_IN_OUT ? SS_MM_N : SS_MM_T, BT, OC, C, x, C, W,
                 layout == SS_W_IN_OUT ? OC : C, ep, accumulate ? 1.0f : 0.0f, y, OC);
}

void ss_linear_forward(const ss_compute *cc, float *y, const float *x, const float *W,
                       const float *b, int BT, int C, int OC, ss_w_layout layout, int accumulate) {
  ss_mm_epilogue ep = {b, SS_ACT_NONE, NULL, 0};
  ss_linear_forward_ep(cc, y, x, W, &ep, BT, C, OC, layout, accumulate);
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
