/*
 * linear.h — the dense layer as a forward/backward pair, on ss_matmul:
 *   y = x W^T + b   (SS_W_OUT_IN: PyTorch nn.Linear, W [OC, C])
 *   y = x W + b     (SS_W_IN_OUT: Hugging Face GPT-2 Conv1D, W [C, OC])
 * float32, row-major, BT rows (batch x time) of C inputs and OC outputs.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state. Summing
 * weight gradients of concurrent calls is the caller's business (see models/params.h).
 */
#ifndef SS_MODELS_NN_LINEAR_H
#define SS_MODELS_NN_LINEAR_H

#include "models/nn/matmul.h"

typedef enum { SS_W_OUT_IN = 0, SS_W_IN_OUT = 1 } ss_w_layout;

/* y [BT, OC] = x [BT, C] W + b, or y += x W + b when accumulate (a residual add).
 * W: [OC, C] or [C, OC] per layout; b [OC] or NULL. All borrowed; y written. cc: the model's
 * compute (dtype of the product, owner of W's packed copy: ss_matmul_w), NULL for f32. */
void ss_linear_forward(const ss_compute *cc, float *y, const float *x, const float *W,
                       const float *b, int BT, int C, int OC, ss_w_layout layout, int accumulate);

/* y [BT, OC] = mul * act(x W + bias) (ep: matmul.h ss_mm_epilogue, NULL: none; mul [BT, OC]),
 * or y += x W + bias when accumulate (then ep has no act and no mul). The inference form: the
 * epilogue runs fused into the product where the engine can (nn/packed.c), and the
 * pre-activation values are not kept. All borrowed; y written. */
void ss_linear_forward_ep(const ss_compute *cc, float *y, const float *x, const float *W,
                          const ss_mm_epilogue *ep, int BT, int C, int OC, ss_w_layout layout,
                          int accumulate);

/* Backward of ss_linear_forward given dy [BT, OC]:
 *   dx [BT, C] = dy W^T-ish (overwritten), dW [W's shape] += x^T dy-ish, db [OC] += sum dy.
 * Any of dx, dW, db may be NULL (skipped), so a caller can sum dW, db under a lock and compute
 * dx outside it. x [BT, C] is the forward's input. */
void ss_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                        const float *W, int BT, int C, int OC, ss_w_layout layout);

/* db [n] += sum over BT rows of dy [BT, n] (row stride ldy): a bias gradient over a column
 * slice of a wider output. */
void ss_bias_backward(float *db, const float *dy, int ldy, int BT, int n);

#endif
