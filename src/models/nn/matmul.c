/*
 * matmul.c — see matmul.h. The only file that calls BLAS. Few-row kernels use GCC vector
 * extensions (8 floats); with target_clones the compiler builds an AVX2+FMA version and a
 * baseline one, and the loader picks the right one for the CPU (ifunc). Thread: the calling
 * worker's; large few-row products split their columns over its OpenMP team (intra-op threads).
 */
#include "models/nn/matmul.h"
#include "models/nn/simd.h"

#include <cblas.h>
#include <omp.h>
#include <stddef.h>
#include <string.h>

/* Macros, not functions: a vector-typed parameter or return value would change the ABI of the
 * baseline clone (-Wpsabi). */
#define ld8(p) ({ v8 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define st8(p, v) do { v8 s_ = (v); memcpy((p), &s_, sizeof s_); } while (0)
#define hsum(v) (((v)[0] + (v)[4]) + ((v)[1] + (v)[5])) + (((v)[2] + (v)[6]) + ((v)[3] + (v)[7]))
#define splat(x) ((v8){0} + (x))

/* Dot products of up to 4 X rows with 2 W rows, register-blocked: each W chunk is loaded once
 * and used 4 times. r: rows in this block (1..4); w1 may be NULL (odd out). */
SS_CLONES static void dot_block(const float *const x[4], int r, const float *w0, const float *w1,
                                size_t n, float out0[4], float out1[4]) {
  v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
  const float *x0 = x[0], *x1 = x[r > 1 ? 1 : 0], *x2 = x[r > 2 ? 2 : 0], *x3 = x[r > 3 ? 3 : 0];
  const float *v1 = w1 ? w1 : w0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 p = ld8(w0 + i), q = ld8(v1 + i);
    v8 c0 = ld8(x0 + i), c1 = ld8(x1 + i), c2 = ld8(x2 + i), c3 = ld8(x3 + i);
    a0 += c0 * p, a1 += c1 * p, a2 += c2 * p, a3 += c3 * p;
    b0 += c0 * q, b1 += c1 * q, b2 += c2 * q, b3 += c3 * q;
  }
  float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
  for (; i < n; i++) {
    s[0] += x0[i] * w0[i], s[1] += x1[i] * w0[i], s[2] += x2[i] * w0[i], s[3] += x3[i] * w0[i];
    s[4] += x0[i] * v1[i], s[5] += x1[i] * v1[i], s[6] += x2[i] * v1[i], s[7] += x3[i] * v1[i];
  }
  memcpy(out0, s, 4 * sizeof(float));
  memcpy(out1, s + 4, 4 * sizeof(float));
}

/* Up to 4 rows of Y[:, j0..j1) += X rows . W[:, j0..j1), streaming W row by row: each weight
 * row's slice is read sequentially (prefetch-friendly, one TLB page after another) while the
 * outputs stay in L1/L2. For a decode step this beats column strips, whose row stride touches a
 * new page per weight row. */
SS_CLONES static void stream_rows(const float *const x[4], int r, const float *W, size_t in,
                                  size_t ldw, size_t j0, size_t j1, float *const y[4]) {
  size_t jv = j0 + (j1 - j0) / 8 * 8;
  for (size_t i = 0; i < in; i++) {
    const float *w = W + i * ldw;
    if (r == 1) {
      v8 s = splat(x[0][i]);
      float *y0 = y[0];
      for (size_t j = j0; j < jv; j += 8) st8(y0 + j, ld8(y0 + j) + s * ld8(w + j));
    } else {
      v8 s[4];
      for (int k = 0; k < r; k++) s[k] = splat(x[k][i]);
      for (size_t j = j0; j < jv; j += 8) {
        v8 p = ld8(w + j);
        for (int k = 0; k < r; k++) st8(y[k] + j, ld8(y[k] + j) + s[k] * p);
      }
    }
    for (size_t j = jv; j < j1; j++)
      for (int k = 0; k < r; k++) y[k][j] += x[k][i] * w[j];
  }
}


/* C[rows, out] (=|+=) X[rows, in] W[out, in]^T: two W rows at a time against up to 4 X rows. */
static void few_rows_bt(const float *X, size_t ldx, size_t rows, size_t in, const float *W,
                        size_t ldw, size_t out, float *Y, size_t ldy, int accumulate) {
  for (size_t r0 = 0; r0 < rows; r0 += 4) {
    int r = (int)(rows - r0 < 4 ? rows - r0 : 4);
    const float *x[4];
    for (int k = 0; k < 4; k++) x[k] = X + (r0 + (size_t)(k < r ? k : 0)) * ldx;
    long npairs = (long)((out + 1) / 2);
#pragma omp parallel for schedule(static) if (npairs > 8 && in * out >= (1u << 18))
    for (long pi = 0; pi < npairs; pi++) {
      size_t o = (size_t)pi * 2;
      int two = o + 1 < out;
      float d0[4], d1[4];
      dot_block(x, r, W + o * ldw, two ? W + (o + 1) * ldw : NULL, in, d0, d1);
      for (int k = 0; k < r; k++) {
        float *y = Y + (r0 + (size_t)k) * ldy + o;
        y[0] = accumulate ? y[0] + d0[k] : d0[k];
        if (two) y[1] = accumulate ? y[1] + d1[k] : d1[k];
      }
    }
  }
}

/* C[rows, out] (=|+=) X[rows, in] W[in, out], streaming W row by row. */
static void few_rows_b(const float *X, size_t ldx, size_t rows, size_t in, const float *W,
                       size_t ldw, size_t out, float *Y, size_t ldy, int accumulate) {
  if (!accumulate)
    for (size_t r = 0; r < rows; r++) memset(Y + r * ldy, 0, out * sizeof(float));
  for (size_t r0 = 0; r0 < rows; r0 += 4) {
    int r = (int)(rows - r0 < 4 ? rows - r0 : 4);
    const float *x[4];
    float *y[4];
    for (int k = 0; k < 4; k++) {
      size_t row = r0 + (size_t)(k < r ? k : 0);
      x[k] = X + row * ldx;
      y[k] = Y + row * ldy;
    }
    /* The worker's intra-op threads take contiguous column ranges (multiples of 16 floats). */
#pragma omp parallel if (in * out >= (1u << 18))
    {
      size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
      size_t per = (out / nt + 15) / 16 * 16;
      size_t j0 = t * per, j1 = t + 1 == nt ? out : (t + 1) * per;
      if (j0 < out) stream_rows(x, r, W, in, ldw, j0, j1 < out ? j1 : out, y);
    }
  }
}

void ss_matmul(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (ta == SS_MM_N && M <= SS_SMALL_ROWS && alpha == 1.0f && (beta == 0.0f || beta == 1.0f)) {
    if (tb == SS_MM_T)
      few_rows_bt(A, (size_t)lda, (size_t)M, (size_t)K, B, (size_t)ldb, (size_t)N, C, (size_t)ldc,
                  beta != 0.0f);
    else
      few_rows_b(A, (size_t)lda, (size_t)M, (size_t)K, B, (size_t)ldb, (size_t)N, C, (size_t)ldc,
                 beta != 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta == SS_MM_T ? CblasTrans : CblasNoTrans,
              tb == SS_MM_T ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
              ldc);
}

/* The engine's threads: each worker's OpenMP team (OpenBLAS, OpenMP flavour, follows it). */
void ss_compute_thread_init(int intra_op_threads) {
  int n = intra_op_threads > 0 ? intra_op_threads : 1;
  openblas_set_num_threads(n);
  omp_set_num_threads(n);
}
