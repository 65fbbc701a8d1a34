/*
 * relu.h — ReLU as a forward/backward pair, element-wise over n floats: max(x, 0); the
 * derivative is 1 where x > 0 and 0 elsewhere (0 at 0, like torch). Backward convention as in
 * gelu.h: d holds dL/dout on entry, dL/dx on return.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state.
 */
#ifndef SS_MODELS_NN_RELU_H
#define SS_MODELS_NN_RELU_H

#include <stddef.h>

/* out [n] = relu(x [n]); out may equal x. */
void ss_relu_forward(float *out, const float *x, size_t n);
/* d [n] *= relu'(x [n]). */
void ss_relu_backward(float *d, const float *x, size_t n);

#endif
