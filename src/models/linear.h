/*
 * linear.h — the dense layers every model uses: Y = X W^T + b (PyTorch Linear, W [out, in]) and
 * Y = X W + b (GPT-2 Conv1D, W [in, out]), float32, row-major.
 *
 * Few rows (batch x seq <= SS_SMALL_ROWS: a decode step's single token): BLAS sgemm first packs
 * (copies) the whole weight matrix for a product that reads each weight once; these kernels
 * stream the weights once, in place, with register-blocked AVX2/FMA loops (chosen at run time by
 * target_clones; a portable version otherwise). Measured on this 2-core EPYC (tests' sizes,
 * one thread): 1 row x 768x768 (Linear): 108 us vs sgemm 219 us; 1 x 768x2304 (Conv1D, weights
 * streamed row by row): 150 vs 520 us; at 10 rows they are even and past 10 sgemm wins, hence the
 * threshold. More rows: OpenBLAS sgemm. A GPT-2 trunk decode step (8 blocks) went 29 -> 15 ms.
 *
 * Thread: pure functions; any thread (reentrant, no allocation).
 */
#ifndef SS_MODELS_LINEAR_H
#define SS_MODELS_LINEAR_H

#include <stddef.h>

#define SS_SMALL_ROWS 4

/* Y[rows,out] (=|+=) X[rows,in] W[out,in]^T (+ b[out] when b != NULL). accumulate: add to Y. */
void ss_linear_xwt(const float *X, size_t rows, size_t in, const float *W, const float *b,
                   size_t out, float *Y, int accumulate);
/* Y[rows,out] (=|+=) X[rows,in] W[in,out] (+ b[out] when b != NULL). accumulate: add to Y. */
void ss_linear_xw(const float *X, size_t rows, size_t in, const float *W, const float *b,
                  size_t out, float *Y, int accumulate);

#endif
