/*
 * cpu.c — the cpu backend: the op table over the kernels of nn/ (oneDNN through the one matmul
 * engine entry point, the few-row kernels, the packed bf16/int8 weight products, the vectorized
 * element-wise ops) and 64-byte aligned host memory (also the reference backend's).
 *
 * Thread: any (worker threads); the table is immutable, every op reentrant.
 */
#include <stdlib.h>
#include <string.h>

#include "models/nn/attention.h"
#include "models/nn/backend/backend.h"
#include "models/nn/gelu.h"
#include "models/nn/layernorm.h"
#include "models/nn/linear.h"
#include "models/nn/matmul.h"
#include "models/nn/relu.h"
#include "models/nn/rmsnorm.h"
#include "models/nn/rope.h"
#include "models/nn/silu.h"

/* The two element-wise products a block needs beside its ops (residual adds of normalized
 * outputs, SwiGLU's act(g) * u and its backward); the compiler vectorizes them. */
static void cpu_add(float *y, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static void cpu_mul(float *out, const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

static void cpu_dropout(float *out, const float *x, size_t n, uint64_t seed, float p) {
  const float scale = 1.0f / (1.0f - p);
  for (size_t i = 0; i < n; i++) out[i] = ss_dropout_keep(seed, i, p) ? x[i] * scale : 0.0f;
}

void *ss_backend_host_alloc(size_t n) {
  size_t sz = (n + 63) / 64 * 64; /* aligned_alloc wants a multiple of the alignment */
  return aligned_alloc(64, sz > 0 ? sz : 64);
}

void ss_backend_host_release(void *p) { free(p); }

const ss_backend ss_backend_cpu = {
    .name = "cpu",
    .alloc = ss_backend_host_alloc,
    .release = ss_backend_host_release,
    .matmul = ss_matmul,
    .matmul_w = ss_matmul_w,
    .linear_forward = ss_linear_forward,
    .linear_forward_ep = ss_linear_forward_ep,
    .linear_backward = ss_linear_backward,
    .bias_backward = ss_bias_backward,
    .layernorm_forward = ss_layernorm_forward,
    .layernorm_backward = ss_layernorm_backward,
    .rmsnorm_forward = ss_rmsnorm_forward,
    .rmsnorm_backward = ss_rmsnorm_backward,
    .gelu_tanh_forward = ss_gelu_tanh_forward,
    .gelu_tanh_backward = ss_gelu_tanh_backward,
    .gelu_erf_forward = ss_gelu_erf_forward,
    .gelu_erf_backward = ss_gelu_erf_backward,
    .relu_forward = ss_relu_forward,
    .relu_backward = ss_relu_backward,
    .silu_forward = ss_silu_forward,
    .silu_backward = ss_silu_backward,
    .add = cpu_add,
    .mul = cpu_mul,
    .dropout = cpu_dropout,
    .rope_forward_freq = ss_rope_forward_freq,
    .rope_backward_freq = ss_rope_backward_freq,
    .rope_forward_pos = ss_rope_forward_pos,
    .rope_bias_backward = ss_rope_bias_backward,
    .attention_forward = ss_attention_forward_cap,
    .attention_backward = ss_attention_backward_cap,
};

const ss_backend *ss_backend_find(const char *name) {
  if (strcmp(name, ss_backend_cpu.name) == 0) return &ss_backend_cpu;
  if (strcmp(name, ss_backend_reference.name) == 0) return &ss_backend_reference;
  return NULL;
}
