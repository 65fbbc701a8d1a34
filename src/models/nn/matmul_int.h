/*
 * matmul_int.h — the engine's internals for nn/packed.c (packed model weights): f32 and bf16
 * products on oneDNN against a weight already reordered into the kernel's layout, with fused
 * epilogues. Only matmul.c and packed.c include it.
 *
 * Thread: any worker; each call runs on the calling thread's stream, scratchpad and buffers.
 */
#ifndef SS_MODELS_NN_MATMUL_INT_H
#define SS_MODELS_NN_MATMUL_INT_H

#include <oneapi/dnnl/dnnl.h>
#include <stddef.h>
#include <stdint.h>

#include "models/nn/matmul.h"

/* Rows of A [M, K] (row stride lda) as bf16, round to nearest even, NaN kept, into out [M, K]:
 * with avx512_bf16's VCVTNEPS2BF16 where the CPU has it (denormal inputs become zero), else
 * (or with portable set) a plain loop. Returns 1 when the avx512_bf16 path ran. (The activations
 * of every bf16 product; exported for tests/unit/models/test_matmul_mt.c.) */
int ss__mm_to_bf16(const float *A, size_t lda, size_t M, size_t K, uint16_t *out, int portable);
/* 1 if oneDNN runs brgemm kernels here (AVX-512 and up): f32 weights are worth packing. */
int ss__mm_has_brgemm(void);
/* The layout oneDNN's kernel for dt (SS_MM_F32 or SS_MM_BF16) wants for a weight read as B
 * [K, N] (format_tag any; the same for every M): 0 with *md set, or -1 (no kernel here). */
int ss__mm_packed_layout(ss_mm_dtype dt, int K, int N, dnnl_memory_desc_t *md);
/* Reorder W (f32, read as B: tb 0 [K, N] / tb 1 [N, K], row stride ldw) into dst, laid out as md
 * (dnnl_memory_desc_get_size(md) bytes; md's data type: f32 or bf16). 0 or -1. */
int ss__mm_pack(const float *W, int tb, int K, int N, int ldw, const dnnl_memory_desc_t *md,
                void *dst);
/* C [M, N] (row stride ldc; beta 0: written, 1: added to) = epilogue(A [M, K] x B) where A is
 * f32 (row stride lda; converted to bf16 per call when dt is SS_MM_BF16) and B is packed as md,
 * accumulated in f32. ep (NULL: none): bias, activation, multiplier as oneDNN post-ops, applied
 * before beta C is added. 0 or -1 (oneDNN refused: nothing written). */
int ss__mm_packed(ss_mm_dtype dt, int M, int N, int K, const float *A, int lda,
                  const dnnl_memory_desc_t *md, const void *B, float beta, float *C, int ldc,
                  const ss_mm_epilogue *ep);

/* Which hand-written kernels run here: 2 AVX-512 (F, BW), 1 AVX2+FMA, 0 plain C; from the CPU,
 * capped by oneDNN's effective ISA (ONEDNN_MAX_CPU_ISA), so the tests that run capped at each
 * level (tests/isa_levels.py) exercise the kernels of that level. Chosen once. */
int ss__simd_level(void);

/* f32 weights in 16-column panels (panel.c), for CPUs without brgemm: 1 when the panel kernel
 * runs here (AVX2+FMA, and oneDNN's effective ISA, capped by ONEDNN_MAX_CPU_ISA, at least AVX2),
 * else 0 (products read the weight as stored). */
int ss__panel_ok(void);
/* Bytes of W's panels for a product reading it as B [K, N]. */
size_t ss__panel_bytes(int K, int N);
/* W (read as B: tb 0 [K, N] / tb 1 [N, K], row stride ldw) into its panels P (64-byte aligned,
 * ss__panel_bytes). */
void ss__panel_pack(const float *W, int tb, int K, int N, int ldw, float *P);
/* C [M, N] (row stride ldc; beta 0: written, 1: added to) = A [M, K] (row stride lda) x P + bias
 * (bias [N] or NULL). Needs ss__panel_ok(). */
void ss__panel_matmul(int M, int N, int K, const float *A, int lda, const float *P,
                      const float *bias, float beta, float *C, int ldc);

#endif
