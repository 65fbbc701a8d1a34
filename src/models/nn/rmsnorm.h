/*
 * rmsnorm.h — RMSNorm over the last dimension (Llama family) as a forward/backward pair:
 *   out = x * rstd * g,  rstd = 1 / sqrt(mean(x^2) + eps),  g = w, or 1 + w (Gemma's form)
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state.
 */
#ifndef SS_MODELS_NN_RMSNORM_H
#define SS_MODELS_NN_RMSNORM_H

/* out [BT, C] = RMSNorm(x [BT, C]) with w [C]; rstd [BT] written when not NULL (for backward).
 * one_plus: scale by (1 + w) instead of w. out must not alias x. */
void ss_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int BT, int C,
                        float eps, int one_plus);

/* Given dout [BT, C]: dx [BT, C] += dL/dx, dw [C] += sum dout * x * rstd. x, w, rstd, one_plus
 * as in the forward. */
void ss_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int BT, int C, int one_plus);

#endif
