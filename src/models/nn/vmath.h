/*
 * vmath.h — vectorized element-wise math for model forwards: exp and the tanh-approximated GELU
 * (GPT-2's gelu_new), 8 floats at a time (AVX2/FMA clone picked at run time, portable otherwise),
 * and split across the calling worker's OpenMP threads (its intra-op threads) for large arrays.
 * perf on a GPT-2 prefill: libm's scalar tanhf was 18% of the call, on one thread.
 *
 * Accuracy: exp within 2 ulp on [-87, 88]; gelu_new within 2e-7 absolute of the libm formula
 * for |x| < 10 (relative error of tanh near 0 is bounded by the 1 - 2/(1+e^2u) form).
 * Thread: pure functions, any thread.
 */
#ifndef SS_MODELS_NN_VMATH_H
#define SS_MODELS_NN_VMATH_H

#include <stddef.h>

/* x[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place. */
void ss_gelu_new(float *x, size_t n);
/* dx[i] *= gelu_new'(pre[i]) (backward of ss_gelu_new). */
void ss_gelu_new_backward(float *dx, const float *pre, size_t n);
/* y[i] = exp(x[i]) (y may equal x). */
void ss_vexp(const float *x, float *y, size_t n);

#endif
