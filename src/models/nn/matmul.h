/*
 * matmul.h — THE matrix product of the models: every product in inference, training and the
 * decode kernels goes through ss_matmul (no other file names the engine). Engine-neutral
 * contract (row-major float32, optional transposes, alpha/beta, leading dimensions).
 *
 *   C[M,N] = alpha * op(A) op(B) + beta * C      op(A) [M,K], op(B) [K,N]
 *   op(X) = X (SS_MM_N) or X^T (SS_MM_T); lda/ldb/ldc: row strides in floats of A, B, C as
 *   stored; beta == 0: C is not read (may hold garbage or NaN).
 *
 * Inside: oneDNN's matmul primitive (the OpenMP build: the calling worker's team of intra-op
 * threads), one primitive per problem, made once and cached (matmul.c). For few rows
 * (M <= SS_SMALL_ROWS, op(A) = A, alpha 1, beta 0 or 1: a decode step's tokens, or the steps of
 * several sessions batched) hand-written kernels that stream B once in place run where they
 * measured faster (bench/mm_probe.c part 3: B cold, as in a trunk): on a 2-core AMD EPYC (AVX2,
 * oneDNN picks "gemm:jit") that is B^T at 2..8 rows and B at 2..4 rows (2..3 on two threads);
 * at 1 row oneDNN's gemv wins; on CPUs without brgemm, B at 5..15 rows on one thread goes to
 * OpenBLAS (its packed sgemm beat oneDNN's gemm 1.3-1.4x on those decode batches).
 * Few-row results agree with oneDNN to float rounding (~1e-6 relative), not bit for bit.
 *
 * Thread: any (worker threads); reentrant. The primitive cache is the one process-wide object
 * (thread-safe; made on first use, or at ss_compute_thread_init); a primitive shared by threads
 * runs on each caller's own stream and scratchpad, so concurrent products never share memory.
 */
#ifndef SS_MODELS_NN_MATMUL_H
#define SS_MODELS_NN_MATMUL_H

#include <stddef.h>

#define SS_SMALL_ROWS 8

typedef enum { SS_MM_N = 0, SS_MM_T = 1 } ss_mm_trans;

/* The dtype a model's weight products run in (model key compute=). */
typedef enum { SS_MM_F32 = 0, SS_MM_BF16 = 1, SS_MM_INT8 = 2 } ss_mm_dtype;

/* A model's compute context: its backend (the op table and allocator, nn/backend/backend.h;
 * NULL: cpu), the dtype of its weight products, and the owner of their packed copies (the model;
 * ss_matmul_weights_drop(owner) when it is freed). A NULL context means cpu, f32. */
struct ss_backend;
typedef struct ss_compute {
  ss_mm_dtype dtype;
  const void *owner;
  const struct ss_backend *be;
} ss_compute;

/* C [M,N] (row stride ldc) = alpha op(A) op(B) + beta C. A: [M,K] (ta N) or [K,M] (ta T), row
 * stride lda; B: [K,N] (tb N) or [N,K] (tb T), row stride ldb. All borrowed; C written. */
void ss_matmul(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* C [M,N] (=|+=, beta 0 or 1) = A [M,K] op(W) where W is a model weight (B: [K,N] as stored
 * with tb N, [N,K] with tb T; row stride ldw), in the model's compute dtype (nn/packed.c): W is
 * converted once, on first use, and kept. f32 (cc->owner set, CPUs with oneDNN brgemm: AVX-512
 * and up): W reordered into brgemm's blocked f32 layout, so no product packs it per call (every
 * row count: it beat the few-row kernels and gemv too, bench/results/2026-12-05-prepack-fuse.md);
 * without brgemm (AVX2) products of up to 32 rows read W in 16-column panels made once (nn/panel.c;
 * OpenBLAS and oneDNN's gemm copied W per call), larger ones read it as stored (ss_matmul). bf16:
 * oneDNN brgemm on W in its
 * blocked layout, A converted per call, f32 accumulation (avx512_bf16 or AMX). int8: weight-only,
 * a scale per output channel; few rows read the int8 weight directly, more dequantize it per
 * call. cc NULL or a copy that cannot be made: exactly ss_matmul. W must not change while it is
 * packed: call ss_matmul_weight_changed(W) when it does (the optimizer step does). */
void ss_matmul_w(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K, const float *A, int lda,
                 const float *W, int ldw, float beta, float *C, int ldc);
/* A product's epilogue, fused into it where the engine can (oneDNN bias and post-ops on packed
 * weights), else run as separate passes with the same result to float rounding:
 *   C = beta C + mul * act(A op(W) + bias)      (element-wise; each part optional)
 * act and mul need beta 0 (C is the activation's output, not a residual). */
typedef enum {
  SS_ACT_NONE = 0,
  SS_ACT_GELU_TANH = 1,
  SS_ACT_GELU_ERF = 2,
  SS_ACT_SILU = 3
} ss_mm_act;
typedef struct ss_mm_epilogue {
  const float *bias; /* [N] added to every row, or NULL */
  ss_mm_act act;     /* applied after the bias */
  const float *mul; /* [M, N] (row stride ldm) multiplying act's output, or NULL; may not alias C */
  int ldm;
} ss_mm_epilogue;

/* ss_matmul_w with an epilogue (NULL: none, exactly ss_matmul_w). All borrowed. */
void ss_matmul_w_ep(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K, const float *A,
                    int lda, const float *W, int ldw, const ss_mm_epilogue *ep, float beta,
                    float *C, int ldc);
/* W's values changed or W is freed: its packed copies go (made again on next use). */
void ss_matmul_weight_changed(const float *W);
/* owner's weights that lie in [base, base + len) are views of a read-only file mapping: once a
 * weight's packed copy serves all its products, its pages are given back to the page cache
 * (MADV_PAGEOUT), so RSS counts the packed copy, not both (read again from the file if a
 * backward needs them). Forgotten at ss_matmul_weights_drop(owner). */
void ss_matmul_weights_source(const void *owner, const void *base, size_t len);
/* 1 when every product of cc's weights runs on a packed copy (compute bf16 and int8; f32 where
 * oneDNN has brgemm): then a weight's f32 values are read only by training, saving and a product
 * the engine refuses, and may be deferred (nn/deferred.h). 0 otherwise (cc NULL: 0). */
int ss_matmul_w_always_packed(const ss_compute *cc);
/* Every packed copy of owner goes (a model being freed), and its deferred weights. */
void ss_matmul_weights_drop(const void *owner);
/* Bytes of packed weight copies held (resident; GetServiceInfo). */
size_t ss_matmul_packed_bytes(void);

/* Size the calling thread's intra-op team (declared for the server in models/model.h); also
 * starts the engine (once per process) and logs what it runs on this CPU. */
void ss_compute_thread_init(int intra_op_threads);

/* What the engine runs here, e.g. "onednn 2.6.3 gemm:jit, isa avx2" (static string; starts the
 * engine on first call). For GetServiceInfo and the start-up log. */
const char *ss_matmul_engine_info(void);

/* Bytes held by the worker threads' oneDNN scratchpads (one per thread that ran a product, each
 * as large as the largest primitive it ran needs; resident, so part of RSS). For GetServiceInfo. */
size_t ss_matmul_scratch_bytes(void);

/* 0 if this CPU runs bf16 products natively (avx512_core_bf16 or AMX); else -1 and a message
 * naming what is missing, e.g. "compute=bf16 needs avx512_bf16 or amx_bf16 (this CPU has avx2)". */
int ss_matmul_bf16_check(char *err, size_t errlen);

/* Internals for bench/mm_probe.c and the tests: the oneDNN path alone (0, or -1 if oneDNN
 * refused the problem), and the few-row kernels alone (op(A) = A, alpha 1, beta 0 or 1,
 * M <= SS_SMALL_ROWS not required). */
int ss__matmul_engine(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc);
void ss__matmul_few_rows(ss_mm_trans tb, int M, int N, int K, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc);

#endif
