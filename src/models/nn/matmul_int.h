/*
 * matmul_int.h — the engine's internals for nn/packed.c (packed model weights): bf16 products
 * on oneDNN against a weight already converted into the kernel's layout. Only matmul.c and
 * packed.c include it.
 *
 * Thread: any worker; each call runs on the calling thread's stream, scratchpad and buffers.
 */
#ifndef SS_MODELS_NN_MATMUL_INT_H
#define SS_MODELS_NN_MATMUL_INT_H

#include <oneapi/dnnl/dnnl.h>

/* The layout oneDNN's bf16 kernel wants for a weight read as B [K, N] (the same for every M):
 * 0 with *md set, or -1 (no bf16 kernel here). */
int ss__mm_bf16_layout(int K, int N, dnnl_memory_desc_t *md);
/* Convert W (f32, read as B: tb 0 [K, N] / tb 1 [N, K], row stride ldw) into dst, laid out as md
 * (dnnl_memory_desc_get_size(md) bytes). 0 or -1. */
int ss__mm_pack_bf16(const float *W, int tb, int K, int N, int ldw, const dnnl_memory_desc_t *md,
                     void *dst);
/* C [M, N] (row stride ldc; beta 0: written, 1: added to) = A [M, K] (f32, row stride lda,
 * converted to bf16 per call) x B (packed bf16, layout md), accumulated in f32. 0 or -1. */
int ss__mm_bf16(int M, int N, int K, const float *A, int lda, const dnnl_memory_desc_t *md,
                const void *B, float beta, float *C, int ldc);

#endif
