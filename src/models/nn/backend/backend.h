/*
 * backend.h — the seam between model code and the arithmetic (ggml-backend's op table is the
 * model): a backend is a table of ops plus an allocator of tensor memory, and a model reaches
 * both only through its compute context (ss_compute, nn/matmul.h: the backend, the dtype of the
 * weight products and the owner of their packed copies). Model code calls the ss_op_* wrappers
 * below, which dispatch through cc->be; it never names a kernel.
 *
 * Backends (model key backend=, parsed in models/registry.c):
 *   cpu        (cpu.c) oneDNN + the few-row kernels + the vectorized element-wise ops of nn/;
 *              the default, the fast one, every compute dtype
 *   reference  (reference.c) plain C loops accumulating in double, no BLAS, no SIMD, no
 *              threads: the slow numerical oracle every other backend is tested against
 *              (tests/unit/models/test_backends.c per op, tests/interop/test_backend_reference.py
 *              per architecture); f32 only
 *
 * Every op's contract (shapes, strides, aliasing, what is overwritten and what accumulated) is
 * the one written in its nn/ header (linear.h, layernorm.h, rmsnorm.h, gelu.h, relu.h, silu.h,
 * rope.h, attention.h, matmul.h); a backend implements exactly that contract.
 *
 * Thread: any (worker threads); every op is reentrant; tables are immutable.
 */
#ifndef SS_MODELS_NN_BACKEND_BACKEND_H
#define SS_MODELS_NN_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "models/nn/attention.h"
#include "models/nn/linear.h"
#include "models/nn/matmul.h"

typedef struct ss_backend {
  const char *name; /* "cpu", "reference" */

  /* Tensor memory (activations, KV caches, scratch): n bytes (n 0: a valid, unique block),
   * 64-byte aligned, uninitialized; NULL when out of memory. release(NULL) does nothing. Memory
   * of one backend is released by the same backend only. */
  void *(*alloc)(size_t n);
  void (*release)(void *p);

  /* matmul.h */
  void (*matmul)(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
  void (*matmul_w)(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K, const float *A,
                   int lda, const float *W, int ldw, float beta, float *C, int ldc);
  /* linear.h */
  void (*linear_forward)(const ss_compute *cc, float *y, const float *x, const float *W,
                         const float *b, int BT, int C, int OC, ss_w_layout layout, int accumulate);
  void (*linear_forward_ep)(const ss_compute *cc, float *y, const float *x, const float *W,
                            const ss_mm_epilogue *ep, int BT, int C, int OC, ss_w_layout layout,
                            int accumulate);
  void (*linear_backward)(float *dx, float *dW, float *db, const float *dy, const float *x,
                          const float *W, int BT, int C, int OC, ss_w_layout layout);
  void (*bias_backward)(float *db, const float *dy, int ldy, int BT, int n);
  /* layernorm.h, rmsnorm.h */
  void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *x, const float *w,
                            const float *b, int BT, int C, float eps);
  void (*layernorm_backward)(float *dx, float *dw, float *db, const float *dout, const float *x,
                             const float *w, const float *mean, const float *rstd, int BT, int C);
  void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *w, int BT, int C,
                          float eps, int one_plus);
  void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int BT, int C, int one_plus);
  /* gelu.h, relu.h, silu.h: out may equal x; backward: d *= f'(x) */
  void (*gelu_tanh_forward)(float *out, const float *x, size_t n);
  void (*gelu_tanh_backward)(float *d, const float *x, size_t n);
  void (*gelu_erf_forward)(float *out, const float *x, size_t n);
  void (*gelu_erf_backward)(float *d, const float *x, size_t n);
  void (*relu_forward)(float *out, const float *x, size_t n);
  void (*relu_backward)(float *d, const float *x, size_t n);
  void (*silu_forward)(float *out, const float *x, size_t n);
  void (*silu_backward)(float *d, const float *x, size_t n);
  /* element-wise: y [n] += x [n];  out [n] = a [n] * b [n] (out may equal a or b) */
  void (*add)(float *y, const float *x, size_t n);
  void (*mul)(float *out, const float *a, const float *b, size_t n);
  /* inverted dropout: out [n] = x / (1 - p) where ss_dropout_keep(seed, i, p), else 0 (out may
   * equal x) */
  void (*dropout)(float *out, const float *x, size_t n, uint64_t seed, float p);
  /* rope.h */
  void (*rope_forward_freq)(float *x, int ld, int B, int T, int NH, int HS, int pos0,
                            const double *inv_freq);
  void (*rope_backward_freq)(float *d, int ld, int B, int T, int NH, int HS, int pos0,
                             const double *inv_freq);
  void (*rope_forward_pos)(float *x, int ld, int B, int T, int NH, int HS, const int *pos,
                           const unsigned char *stream, const double *inv_freq);
  int (*rope_bias_backward)(float *db, const float *dk, int B, int T, int NKV, int HS,
                            const double *inv_freq);
  /* attention.h (the _cap forms: window 0 and softcap 0 are plain causal attention) */
  void (*attention_forward)(float *out, int ldo, float *att, int att_all, float *K, float *V,
                            const float *q, int ldq, const float *k, const float *v, int ldkv,
                            const void *past_k, const void *past_v, const ss_attn_dims *d,
                            int window, float softcap);
  void (*attention_backward)(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                             int ldo, const float *att, const float *q, int ldq, const float *k,
                             const float *v, int ldkv, const ss_attn_dims *d, float softcap);
} ss_backend;

extern const ss_backend ss_backend_cpu;       /* cpu.c */
extern const ss_backend ss_backend_reference; /* reference.c */
/* The bytes the reference backend's allocator holds now (all models on it together). */
size_t ss_backend_reference_live_bytes(void);

/* The dropout mask's definition, the same in every backend: a splitmix64 finalizer, and element
 * i of the mask of seed is kept when the top 24 bits of mix(seed + (i + 1) golden) / 2^24 >= p. */
static inline uint64_t ss_dropout_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
#define SS_DROPOUT_GOLDEN 0x9E3779B97F4A7C15ull
static inline int ss_dropout_keep(uint64_t seed, size_t i, float p) {
  uint64_t u = ss_dropout_mix(seed + (uint64_t)(i + 1) * SS_DROPOUT_GOLDEN) >> 40;
  return (double)u * 0x1p-24 >= (double)p;
}

/* Host memory as the alloc/release of the table (cpu.c): both host backends use it. */
void *ss_backend_host_alloc(size_t n);
void ss_backend_host_release(void *p);

/* The backend named name ("cpu", "reference"), or NULL. */
const ss_backend *ss_backend_find(const char *name);

/* cc's backend: the cpu one when cc or cc->be is NULL. */
static inline const ss_backend *ss_backend_of(const ss_compute *cc) {
  return cc != NULL && cc->be != NULL ? cc->be : &ss_backend_cpu;
}

/* The ops of model code: each dispatches to cc's backend (same arguments as the table). */
static inline void *ss_op_alloc(const ss_compute *cc, size_t n) {
  return ss_backend_of(cc)->alloc(n);
}
static inline void ss_op_release(const ss_compute *cc, void *p) { ss_backend_of(cc)->release(p); }
static inline void ss_op_matmul(const ss_compute *cc, ss_mm_trans ta, ss_mm_trans tb, int M, int N,
                                int K, float alpha, const float *A, int lda, const float *B,
                                int ldb, float beta, float *C, int ldc) {
  ss_backend_of(cc)->matmul(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static inline void ss_op_matmul_w(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K,
                                  const float *A, int lda, const float *W, int ldw, float beta,
                                  float *C, int ldc) {
  ss_backend_of(cc)->matmul_w(cc, tb, M, N, K, A, lda, W, ldw, beta, C, ldc);
}
static inline void ss_op_linear_forward(const ss_compute *cc, float *y, const float *x,
                                        const float *W, const float *b, int BT, int C, int OC,
                                        ss_w_layout layout, int accumulate) {
  ss_backend_of(cc)->linear_forward(cc, y, x, W, b, BT, C, OC, layout, accumulate);
}
static inline void ss_op_linear_forward_ep(const ss_compute *cc, float *y, const float *x,
                                           const float *W, const ss_mm_epilogue *ep, int BT, int C,
                                           int OC, ss_w_layout layout, int accumulate) {
  ss_backend_of(cc)->linear_forward_ep(cc, y, x, W, ep, BT, C, OC, layout, accumulate);
}
static inline void ss_op_linear_backward(const ss_compute *cc, float *dx, float *dW, float *db,
                                         const float *dy, const float *x, const float *W, int BT,
                                         int C, int OC, ss_w_layout layout) {
  ss_backend_of(cc)->linear_backward(dx, dW, db, dy, x, W, BT, C, OC, layout);
}
static inline void ss_op_bias_backward(const ss_compute *cc, float *db, const float *dy, int ldy,
                                       int BT, int n) {
  ss_backend_of(cc)->bias_backward(db, dy, ldy, BT, n);
}
static inline void ss_op_layernorm_forward(const ss_compute *cc, float *out, float *mean,
                                           float *rstd, const float *x, const float *w,
                                           const float *b, int BT, int C, float eps) {
  ss_backend_of(cc)->layernorm_forward(out, mean, rstd, x, w, b, BT, C, eps);
}
static inline void ss_op_layernorm_backward(const ss_compute *cc, float *dx, float *dw, float *db,
                                            const float *dout, const float *x, const float *w,
                                            const float *mean, const float *rstd, int BT, int C) {
  ss_backend_of(cc)->layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, BT, C);
}
static inline void ss_op_rmsnorm_forward(const ss_compute *cc, float *out, float *rstd,
                                         const float *x, const float *w, int BT, int C, float eps,
                                         int one_plus) {
  ss_backend_of(cc)->rmsnorm_forward(out, rstd, x, w, BT, C, eps, one_plus);
}
static inline void ss_op_rmsnorm_backward(const ss_compute *cc, float *dx, float *dw,
                                          const float *dout, const float *x, const float *w,
                                          const float *rstd, int BT, int C, int one_plus) {
  ss_backend_of(cc)->rmsnorm_backward(dx, dw, dout, x, w, rstd, BT, C, one_plus);
}
static inline void ss_op_gelu_tanh_forward(const ss_compute *cc, float *out, const float *x,
                                           size_t n) {
  ss_backend_of(cc)->gelu_tanh_forward(out, x, n);
}
static inline void ss_op_gelu_tanh_backward(const ss_compute *cc, float *d, const float *x,
                                            size_t n) {
  ss_backend_of(cc)->gelu_tanh_backward(d, x, n);
}
static inline void ss_op_gelu_erf_forward(const ss_compute *cc, float *out, const float *x,
                                          size_t n) {
  ss_backend_of(cc)->gelu_erf_forward(out, x, n);
}
static inline void ss_op_gelu_erf_backward(const ss_compute *cc, float *d, const float *x,
                                           size_t n) {
  ss_backend_of(cc)->gelu_erf_backward(d, x, n);
}
static inline void ss_op_relu_forward(const ss_compute *cc, float *out, const float *x, size_t n) {
  ss_backend_of(cc)->relu_forward(out, x, n);
}
static inline void ss_op_relu_backward(const ss_compute *cc, float *d, const float *x, size_t n) {
  ss_backend_of(cc)->relu_backward(d, x, n);
}
static inline void ss_op_silu_forward(const ss_compute *cc, float *out, const float *x, size_t n) {
  ss_backend_of(cc)->silu_forward(out, x, n);
}
static inline void ss_op_silu_backward(const ss_compute *cc, float *d, const float *x, size_t n) {
  ss_backend_of(cc)->silu_backward(d, x, n);
}
static inline void ss_op_add(const ss_compute *cc, float *y, const float *x, size_t n) {
  ss_backend_of(cc)->add(y, x, n);
}
static inline void ss_op_mul(const ss_compute *cc, float *out, const float *a, const float *b,
                             size_t n) {
  ss_backend_of(cc)->mul(out, a, b, n);
}
static inline void ss_op_dropout(const ss_compute *cc, float *out, const float *x, size_t n,
                                 uint64_t seed, float p) {
  ss_backend_of(cc)->dropout(out, x, n, seed, p);
}
static inline int ss_op_rope_bias_backward(const ss_compute *cc, float *db, const float *dk, int B,
                                           int T, int NKV, int HS, const double *inv_freq) {
  return ss_backend_of(cc)->rope_bias_backward(db, dk, B, T, NKV, HS, inv_freq);
}
static inline void ss_op_rope_forward_freq(const ss_compute *cc, float *x, int ld, int B, int T,
                                           int NH, int HS, int pos0, const double *inv_freq) {
  ss_backend_of(cc)->rope_forward_freq(x, ld, B, T, NH, HS, pos0, inv_freq);
}
static inline void ss_op_rope_backward_freq(const ss_compute *cc, float *d, int ld, int B, int T,
                                            int NH, int HS, int pos0, const double *inv_freq) {
  ss_backend_of(cc)->rope_backward_freq(d, ld, B, T, NH, HS, pos0, inv_freq);
}
static inline void ss_op_rope_forward_pos(const ss_compute *cc, float *x, int ld, int B, int T,
                                          int NH, int HS, const int *pos,
                                          const unsigned char *stream, const double *inv_freq) {
  ss_backend_of(cc)->rope_forward_pos(x, ld, B, T, NH, HS, pos, stream, inv_freq);
}
static inline void ss_op_attention_forward(const ss_compute *cc, float *out, int ldo, float *att,
                                           int att_all, float *K, float *V, const float *q, int ldq,
                                           const float *k, const float *v, int ldkv,
                                           const void *past_k, const void *past_v,
                                           const ss_attn_dims *d, int window, float softcap) {
  ss_backend_of(cc)->attention_forward(out, ldo, att, att_all, K, V, q, ldq, k, v, ldkv, past_k,
                                       past_v, d, window, softcap);
}
static inline void ss_op_attention_backward(const ss_compute *cc, float *dq, float *dk, float *dv,
                                            float *scratch, const float *dout, int ldo,
                                            const float *att, const float *q, int ldq,
                                            const float *k, const float *v, int ldkv,
                                            const ss_attn_dims *d, float softcap) {
  ss_backend_of(cc)->attention_backward(dq, dk, dv, scratch, dout, ldo, att, q, ldq, k, v, ldkv, d,
                                        softcap);
}

#endif
