/*
 * gelu.h — GELU activations as forward/backward pairs, element-wise over n floats:
 *   tanh form (GPT-2's gelu_new, torch GELU(approximate='tanh')):
 *     0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (vectorized: nn/vmath.h)
 *   erf form (torch.nn.GELU()): x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
 * Backward convention: d holds dL/dout on entry and dL/dx on return (d *= gelu'(x)), x being the
 * forward's input.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state; large arrays
 * are split over the calling worker's OpenMP team.
 */
#ifndef SS_MODELS_NN_GELU_H
#define SS_MODELS_NN_GELU_H

#include <stddef.h>

/* out [n] = gelu_tanh(x [n]); out may equal x. */
void ss_gelu_tanh_forward(float *out, const float *x, size_t n);
/* d [n] *= gelu_tanh'(x [n]). */
void ss_gelu_tanh_backward(float *d, const float *x, size_t n);
/* out [n] = gelu_erf(x [n]); out may equal x. */
void ss_gelu_erf_forward(float *out, const float *x, size_t n);
/* d [n] *= gelu_erf'(x [n]) = Phi(x) + x phi(x). */
void ss_gelu_erf_backward(float *d, const float *x, size_t n);

#endif
