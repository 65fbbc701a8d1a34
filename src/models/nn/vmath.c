/*
 * vmath.c — see vmath.h. exp(x) = 2^k e^r with k = round(x / ln 2), r = x - k ln 2 (ln 2 split
 * in two parts for exactness), e^r by a degree-6 polynomial, 2^k built in the exponent bits.
 */
#include "models/nn/vmath.h"
#include "models/nn/simd.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define PAR_MIN 32768 /* below this, one thread: fork/join would cost more than it saves */

/* Lane select: m ? a : b for a comparison mask m (C has no vector ?:). */
#define VSEL(m, a, b)                        \
  ({                                         \
    v8 a__ = (a), b__ = (b);                 \
    v8i ai__, bi__;                          \
    memcpy(&ai__, &a__, sizeof ai__);        \
    memcpy(&bi__, &b__, sizeof bi__);        \
    v8i ri__ = (ai__ & (m)) | (bi__ & ~(m)); \
    v8 r__;                                  \
    memcpy(&r__, &ri__, sizeof r__);         \
    r__;                                     \
  })

/* exp of 8 lanes; inputs clamped to [-87.3, 88.7] (no inf/denormal handling needed here). */
#define VEXP(xin)                                                                 \
  ({                                                                              \
    v8 x_ = (xin);                                                                \
    v8 hi_ = (v8){0} + 88.7f, lo_ = (v8){0} - 87.3f;                              \
    x_ = VSEL(x_ < hi_, x_, hi_);                                                 \
    x_ = VSEL(x_ > lo_, x_, lo_);                                                 \
    v8 k_ = x_ * 1.44269504088896341f;                                            \
    k_ = k_ + (v8){0} + 12582912.0f - 12582912.0f; /* round to nearest integer */ \
    v8 r_ = x_ - k_ * 0.693359375f;                                               \
    r_ = r_ + k_ * 2.12194440e-4f;                                                \
    v8 p_ = (v8){0} + 1.9875691500e-4f;                                           \
    p_ = p_ * r_ + 1.3981999507e-3f;                                              \
    p_ = p_ * r_ + 8.3334519073e-3f;                                              \
    p_ = p_ * r_ + 4.1665795894e-2f;                                              \
    p_ = p_ * r_ + 1.6666665459e-1f;                                              \
    p_ = p_ * r_ + 5.0000001201e-1f;                                              \
    p_ = p_ * r_ * r_ + r_ + 1.0f;                                                \
    v8i e_ = (__builtin_convertvector(k_, v8i) + 127) << 23;                      \
    v8 s_;                                                                        \
    memcpy(&s_, &e_, sizeof s_);                                                  \
    p_ *s_;                                                                       \
  })

SS_CLONES static void gelu_span(float *x, size_t n) {
  const float c = 0.7978845608028654f; /* sqrt(2/pi) */
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 v;
    memcpy(&v, x + i, sizeof v);
    v8 u = c * (v + 0.044715f * v * v * v);
    v8 e = VEXP(u + u); /* tanh(u) = 1 - 2 / (1 + e^{2u}) */
    v8 t = 1.0f - 2.0f / (1.0f + e);
    v8 y = 0.5f * v * (1.0f + t);
    memcpy(x + i, &y, sizeof y);
  }
  for (; i < n; i++) {
    float v = x[i];
    x[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
  }
}

SS_CLONES static void exp_span(const float *x, float *y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 v;
    memcpy(&v, x + i, sizeof v);
    v8 r = VEXP(v);
    memcpy(y + i, &r, sizeof r);
  }
  for (; i < n; i++) y[i] = expf(x[i]);
}

void ss_gelu_new(float *x, size_t n) {
  if (n < PAR_MIN) {
    gelu_span(x, n);
    return;
  }
  size_t chunk = 8192;
  long nchunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; k++) {
    size_t a = (size_t)k * chunk, len = n - a < chunk ? n - a : chunk;
    gelu_span(x + a, len);
  }
}

void ss_vexp(const float *x, float *y, size_t n) { exp_span(x, y, n); }

SS_CLONES static void gelu_back_span(float *dx, const float *pre, size_t n) {
  const float c = 0.7978845608028654f, k = 0.044715f;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 v, d;
    memcpy(&v, pre + i, sizeof v);
    memcpy(&d, dx + i, sizeof d);
    v8 u = c * (v + k * v * v * v);
    v8 e = VEXP(u + u);
    v8 t = 1.0f - 2.0f / (1.0f + e);
    d *= 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * c * (1.0f + 3.0f * k * v * v);
    memcpy(dx + i, &d, sizeof d);
  }
  for (; i < n; i++) {
    float v = pre[i], t = tanhf(c * (v + k * v * v * v));
    dx[i] *= 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * c * (1.0f + 3.0f * k * v * v);
  }
}

void ss_gelu_new_backward(float *dx, const float *pre, size_t n) {
  size_t chunk = 8192;
  long nchunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
  for (long k = 0; k < nchunks; k++) {
    size_t a = (size_t)k * chunk, len = n - a < chunk ? n - a : chunk;
    gelu_back_span(dx + a, pre + a, len);
  }
}
