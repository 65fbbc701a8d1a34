/*
 * matmul.h — THE matrix product of the models: every product in inference, training and the
 * decode kernels goes through ss_matmul (no other file calls BLAS). Engine-neutral contract
 * (row-major float32, optional transposes, alpha/beta, leading dimensions), so that an engine
 * (oneDNN) can be swapped in here alone.
 *
 *   C[M,N] = alpha * op(A) op(B) + beta * C      op(A) [M,K], op(B) [K,N]
 *   op(X) = X (SS_MM_N) or X^T (SS_MM_T); lda/ldb/ldc: row strides in floats of A, B, C as
 *   stored; beta == 0: C is not read (may hold garbage or NaN).
 *
 * Inside: OpenBLAS sgemm (OpenMP flavour: the calling worker's team of intra-op threads), or, for
 * few rows (M <= SS_SMALL_ROWS, op(A) = A, alpha 1, beta 0 or 1: a decode step's token), hand-
 * written kernels that stream B once in place. sgemm first packs (copies) the whole B for a
 * product that reads each weight once; the kernels use register-blocked AVX2/FMA loops (chosen at
 * run time by target_clones; a portable version otherwise). Measured on this 2-core EPYC (one
 * thread): 1 row x 768x768 (B^T): 108 us vs sgemm 219 us; 1 x 768x2304 (B, streamed row by row):
 * 150 vs 520 us; at 10 rows they are even and past 10 sgemm wins, hence the threshold. A GPT-2
 * trunk decode step (8 blocks) went 29 -> 15 ms. Few-row results agree with sgemm to float
 * rounding (~1e-6 relative), not bit for bit.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state.
 */
#ifndef SS_MODELS_NN_MATMUL_H
#define SS_MODELS_NN_MATMUL_H

#define SS_SMALL_ROWS 4

typedef enum { SS_MM_N = 0, SS_MM_T = 1 } ss_mm_trans;

/* C [M,N] (row stride ldc) = alpha op(A) op(B) + beta C. A: [M,K] (ta N) or [K,M] (ta T), row
 * stride lda; B: [K,N] (tb N) or [N,K] (tb T), row stride ldb. All borrowed; C written. */
void ss_matmul(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Size the calling thread's intra-op team (declared for the server in models/model.h). */
void ss_compute_thread_init(int intra_op_threads);

#endif
