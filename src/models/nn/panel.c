/*
 * panel.c — f32 model weights in 16-column panels and the product over them, for CPUs where
 * oneDNN has no brgemm (AVX2): there the engine's products read a weight as stored, and the
 * batched ones (OpenBLAS's and oneDNN's gemm) copy it into their own panels on every call (18%
 * of a batched decode step in the profile). Here the weight is laid out once:
 *
 *   P [ceil(N / 16)][K][16]   P[p][k][c] = B[k][16 p + c] (0 past N), 64-byte aligned
 *
 * so one panel is one sequential stream of K cache lines, read from memory once per product
 * whatever the row count: the kernel keeps up to 6 rows x 16 columns of C in registers (12 of
 * AVX2's 16 vector registers), walks k broadcasting A's 6 values and loading the panel's line,
 * and goes over every group of 6 rows while the panel is in L1/L2 (panel-outer, rows-inner).
 * Panels split over the calling worker's OpenMP team.
 *
 * Thread: any worker; no state (reentrant).
 */
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "models/nn/matmul_int.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SS_PANEL_X86 1
#define AVX2 __attribute__((target("avx2,fma")))

/* R rows of A [., K] (row stride lda) times G panels [K][16] at once (panel u at P + u ps; np of
 * them present, the others repeat the first, their sums unused): out [u][r][16]. G panels are G
 * sequential streams, which keep more cache lines in flight than one (one row against a single
 * panel ran 10-25% under gemv with the weight cold); G x R x 2 <= 12 sums stay in registers, each
 * an independent chain of FMAs. */
#define PANEL_TILE(R, G)                                                                         \
  AVX2 static void tile_##R##_##G(const float *A, size_t lda, const float *P, size_t ps, int np, \
                                  size_t K, float out[4][6][16]) {                               \
    const float *p[G];                                                                           \
    __m256 c[G][R][2];                                                                           \
    _Pragma("GCC unroll 4") for (int u = 0; u < (G); u++) {                                      \
      p[u] = P + (size_t)(u < np ? u : 0) * ps;                                                  \
      _Pragma("GCC unroll 6") for (int r = 0; r < (R); r++) c[u][r][0] = c[u][r][1] =            \
          _mm256_setzero_ps();                                                                   \
    }                                                                                            \
    for (size_t k = 0; k < K; k++) {                                                             \
      _Pragma("GCC unroll 4") for (int u = 0; u < (G); u++) {                                    \
        const float *q = p[u] + k * 16;                                                          \
        _mm_prefetch((const char *)(q + 16 * 16), _MM_HINT_T0); /* 16 lines ahead */             \
        __m256 b0 = _mm256_load_ps(q), b1 = _mm256_load_ps(q + 8);                               \
        _Pragma("GCC unroll 6") for (int r = 0; r < (R); r++) {                                  \
          __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);                               \
          c[u][r][0] = _mm256_fmadd_ps(a, b0, c[u][r][0]);                                       \
          c[u][r][1] = _mm256_fmadd_ps(a, b1, c[u][r][1]);                                       \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
    _Pragma("GCC unroll 4") for (int u = 0; u < (G); u++)                                        \
        _Pragma("GCC unroll 6") for (int r = 0; r < (R); r++) {                                  \
      _mm256_storeu_ps(out[u][r], c[u][r][0]);                                                   \
      _mm256_storeu_ps(out[u][r] + 8, c[u][r][1]);                                               \
    }                                                                                            \
  }
PANEL_TILE(1, 1)
PANEL_TILE(2, 1)
PANEL_TILE(3, 1)
PANEL_TILE(4, 1)
PANEL_TILE(5, 1)
PANEL_TILE(6, 1)
PANEL_TILE(1, 2)
PANEL_TILE(2, 2)
PANEL_TILE(3, 2)
PANEL_TILE(1, 4)

typedef void (*tile_fn)(const float *, size_t, const float *, size_t, int, size_t, float[4][6][16]);
/* tiles[g][R]: G = 1, 2, 4 panels (g 0, 1, 2) of R rows (up to 6, 3, 1) */
static const tile_fn tiles[3][7] = {
    {NULL, tile_1_1, tile_2_1, tile_3_1, tile_4_1, tile_5_1, tile_6_1},
    {NULL, tile_1_2, tile_2_2, tile_3_2, NULL, NULL, NULL},
    {NULL, tile_1_4, NULL, NULL, NULL, NULL, NULL}};
#endif

int ss__panel_ok(void) {
#ifdef SS_PANEL_X86
  return ss__simd_level() >= 1;
#else
  return 0;
#endif
}

size_t ss__panel_bytes(int K, int N) {
  return (size_t)(N + 15) / 16 * (size_t)K * 16 * sizeof(float);
}

void ss__panel_pack(const float *W, int tb, int K, int N, int ldw, float *P) {
  size_t np = (size_t)(N + 15) / 16;
  for (size_t p = 0; p < np; p++)
    for (size_t k = 0; k < (size_t)K; k++) {
      float *d = P + (p * (size_t)K + k) * 16;
      for (size_t c = 0; c < 16; c++) {
        size_t j = p * 16 + c;
        d[c] = j >= (size_t)N ? 0.0f : tb ? W[j * (size_t)ldw + k] : W[k * (size_t)ldw + j];
      }
    }
}

/* C's columns of panels [p0, p0 + np) (np 1..G, G = 1 << g) of every row (=|+= per beta) =
 * A x the panels (+ bias): R rows at a time while the panels stay in L1/L2. */
#ifdef SS_PANEL_X86
static void panel_block(int g, int M, const float *A, size_t lda, const float *P, size_t K, int N,
                        long p0, int np, const float *bias, float beta, float *C, size_t ldc) {
  static const int rmax[3] = {6, 3, 1};
  for (int r0 = 0; r0 < M; r0 += rmax[g]) {
    int R = M - r0 < rmax[g] ? M - r0 : rmax[g];
    float out[4][6][16];
    tiles[g][R](A + (size_t)r0 * lda, lda, P + (size_t)p0 * K * 16, K * 16, np, K, out);
    for (int u = 0; u < np; u++) {
      size_t j0 = (size_t)(p0 + u) * 16, nc = (size_t)N - j0 < 16 ? (size_t)N - j0 : 16;
      for (int r = 0; r < R; r++) {
        float *c = C + (size_t)(r0 + r) * ldc + j0;
        for (size_t j = 0; j < nc; j++) {
          float v = out[u][r][j] + (bias ? bias[j0 + j] : 0.0f);
          c[j] = beta != 0.0f ? c[j] + v : v;
        }
      }
    }
  }
}
#endif

void ss__panel_matmul(int M, int N, int K, const float *A, int lda, const float *P,
                      const float *bias, float beta, float *C, int ldc) {
#ifdef SS_PANEL_X86
  long np = (N + 15) / 16;
  int g = M == 1 ? 2 : M <= 12 ? 1 : 0, G = 1 << g; /* more streams where reuse is low */
  long ng = (np + G - 1) / G;
  int par = ng > 1 && (size_t)N * (size_t)K >= (1u << 16);
#pragma omp parallel for schedule(static) if (par)
  for (long q = 0; q < ng; q++)
    panel_block(g, M, A, (size_t)lda, P, (size_t)K, N, q * G,
                np - q * G < G ? (int)(np - q * G) : G, bias, beta, C, (size_t)ldc);
#else
  (void)M, (void)N, (void)K, (void)A, (void)lda, (void)P, (void)bias, (void)beta, (void)C,
      (void)ldc;
#endif
}
