/*
 * layernorm.h — LayerNorm over the last dimension as a forward/backward pair:
 *   out = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)  (biased variance, like torch)
 * Statistics in double, stored as float: backward uses the forward's exact values, and running
 * the forward again on the same x reproduces its output bit for bit.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state; rows of a
 * large forward are split over the calling worker's OpenMP team.
 */
#ifndef SS_MODELS_NN_LAYERNORM_H
#define SS_MODELS_NN_LAYERNORM_H

/* out [BT, C] = LayerNorm(x [BT, C]) with w, b [C]; mean, rstd [BT] written when not NULL (for
 * backward). out must not alias x. */
void ss_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                          const float *b, int BT, int C, float eps);

/* Given dout [BT, C]: dx [BT, C] += dL/dx, dw [C] += sum dout * xhat, db [C] += sum dout.
 * x, w, mean, rstd as in the forward. */
void ss_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                           const float *w, const float *mean, const float *rstd, int BT, int C);

#endif
