/*
 * silu.h — SiLU (swish, Llama's MLP gate) as a forward/backward pair, element-wise over n floats:
 *   silu(x) = x sigmoid(x),   silu'(x) = s (1 + x (1 - s)) with s = sigmoid(x)
 * Backward convention as in gelu.h: d holds dL/dout on entry, dL/dx on return.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state.
 */
#ifndef SS_MODELS_NN_SILU_H
#define SS_MODELS_NN_SILU_H

#include <stddef.h>

/* out [n] = silu(x [n]); out may equal x. */
void ss_silu_forward(float *out, const float *x, size_t n);
/* d [n] *= silu'(x [n]). */
void ss_silu_backward(float *d, const float *x, size_t n);

#endif
