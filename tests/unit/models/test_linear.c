/*
 * test_linear.c — nn/matmul.h and nn/linear.h's forward against a double-precision reference, on
 * both sides of the small-rows threshold (few-row kernels vs sgemm), odd sizes (tails), with and
 * without bias, overwrite and accumulate, both weight layouts; ss_matmul with every transpose,
 * leading dimensions wider than the rows, alpha and beta. And weights packed from a read-only
 * file mapping whose pages are given back once packed (ss_matmul_weights_source): products stay
 * right, and the weight still reads as the file's values. And the f32 panel kernel of CPUs
 * without brgemm (nn/panel.c) against ss_matmul.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "models/nn/linear.h"
#include "models/nn/matmul.h"
#include "models/nn/matmul_int.h"

static float frand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static int close_all(const float *a, const double *ref, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fabs((double)a[i] - ref[i]) > 1e-4 * (1.0 + fabs(ref[i]))) {
      fprintf(stderr, "  at %zu: %g vs %g\n", i, (double)a[i], ref[i]);
      return 0;
    }
  return 1;
}

static void one(size_t rows, size_t in, size_t out, int bias, int acc, int conv1d) {
  unsigned s = (unsigned)(rows * 131 + in * 7 + out + (size_t)bias * 3 + (size_t)acc);
  float *X = malloc(rows * in * sizeof *X), *W = malloc(in * out * sizeof *W);
  float *b = malloc(out * sizeof *b), *Y = malloc(rows * out * sizeof *Y);
  double *R = malloc(rows * out * sizeof *R);
  for (size_t i = 0; i < rows * in; i++) X[i] = frand(&s);
  for (size_t i = 0; i < in * out; i++) W[i] = frand(&s);
  for (size_t i = 0; i < out; i++) b[i] = frand(&s);
  for (size_t i = 0; i < rows * out; i++) Y[i] = acc ? frand(&s) : 1e30f;
  for (size_t r = 0; r < rows; r++)
    for (size_t o = 0; o < out; o++) {
      double d = acc ? (double)Y[r * out + o] : 0.0;
      if (bias) d += b[o];
      for (size_t i = 0; i < in; i++)
        d += (double)X[r * in + i] * (conv1d ? W[i * out + o] : W[o * in + i]);
      R[r * out + o] = d;
    }
  ss_linear_forward(NULL, Y, X, W, bias ? b : NULL, (int)rows, (int)in, (int)out,
                    conv1d ? SS_W_IN_OUT : SS_W_OUT_IN, acc);
  int ok = close_all(Y, R, rows * out);
  if (!ok)
    fprintf(stderr, "rows %zu in %zu out %zu bias %d acc %d conv1d %d\n", rows, in, out, bias, acc,
            conv1d);
  CHECK(ok);
  free(X), free(W), free(b), free(Y), free(R);
}

/* C (ldc) = alpha op(A) op(B) + beta C with padded leading dimensions. */
static void mm(int ta, int tb, int M, int N, int K, float alpha, float beta) {
  unsigned s = (unsigned)(M * 977 + N * 31 + K * 7 + ta * 2 + tb);
  int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
  size_t na = (size_t)(ta ? K : M) * (size_t)lda, nb = (size_t)(tb ? N : K) * (size_t)ldb;
  float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B);
  float *C = malloc((size_t)M * (size_t)ldc * sizeof *C);
  double *R = malloc((size_t)M * (size_t)N * sizeof *R);
  float *Cpad = malloc((size_t)M * (size_t)ldc * sizeof *Cpad);
  int ok = 1;
  for (size_t i = 0; i < na; i++) A[i] = frand(&s);
  for (size_t i = 0; i < nb; i++) B[i] = frand(&s);
  for (size_t i = 0; i < (size_t)M * (size_t)ldc; i++) Cpad[i] = C[i] = frand(&s);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double d = 0;
      for (int k = 0; k < K; k++) {
        double a = ta ? A[k * lda + i] : A[i * lda + k], b = tb ? B[j * ldb + k] : B[k * ldb + j];
        d += a * b;
      }
      R[i * N + j] = alpha * d + (beta != 0.0f ? beta * (double)C[i * ldc + j] : 0.0);
    }
  ss_matmul(ta ? SS_MM_T : SS_MM_N, tb ? SS_MM_T : SS_MM_N, M, N, K, alpha, A, lda, B, ldb, beta, C,
            ldc);
  for (int i = 0; i < M && ok; i++) {
    for (int j = 0; j < N && ok; j++) {
      double r = R[i * N + j];
      ok = fabs((double)C[i * ldc + j] - r) <= 1e-4 * (1.0 + fabs(r));
    }
    for (int j = N; j < ldc && ok; j++) ok = C[i * ldc + j] == Cpad[i * ldc + j]; /* padding */
  }
  if (!ok)
    fprintf(stderr, "matmul ta %d tb %d M %d N %d K %d alpha %g beta %g\n", ta, tb, M, N, K,
            (double)alpha, (double)beta);
  CHECK(ok);
  free(A), free(B), free(C), free(R), free(Cpad);
}

/* A weight in a read-only private file mapping, registered as its owner's source: a packed
 * product (f32 brgemm where the CPU has it, else int8) gives its pages back; the product and
 * the weight's values must not change. Prints how many of the file's pages stayed in the page
 * cache (mincore: a hint, not checked; RSS is what the give-back lowers). */
static void given_back(ss_mm_dtype dt) {
  enum { K = 512, N = 384, M = 32 };
  char path[] = "/tmp/ss_test_linear_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  unlink(path);
  size_t bytes = (size_t)K * N * sizeof(float);
  float *w = malloc(bytes), *x = malloc((size_t)M * K * sizeof *x);
  float *y1 = malloc((size_t)M * N * sizeof *y1), *y2 = malloc((size_t)M * N * sizeof *y2);
  unsigned s = 5;
  for (size_t i = 0; i < (size_t)K * N; i++) w[i] = frand(&s);
  for (size_t i = 0; i < (size_t)M * K; i++) x[i] = frand(&s);
  CHECK(write(fd, w, bytes) == (ssize_t)bytes);
  CHECK(fsync(fd) == 0); /* clean pages: dirty ones cannot be given back without a write */
  float *map = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  CHECK(map != MAP_FAILED);
  if (map == MAP_FAILED) return;
  static int owner;
  ss_compute cc = {dt, &owner, NULL};
  ss_matmul_weights_source(&owner, map, bytes);
  ss_matmul_w(&cc, SS_MM_N, M, N, K, x, K, map, N, 0.0f, y1, N); /* packs, gives pages back */
  long pg = sysconf(_SC_PAGESIZE);
  size_t np = (bytes + (size_t)pg - 1) / (size_t)pg, resident = 0;
  unsigned char *vec = malloc(np);
  if (mincore(map, bytes, vec) == 0)
    for (size_t i = 0; i < np; i++) resident += vec[i] & 1;
  printf("  %s weight from a file mapping: %zu of %zu pages resident after packing\n",
         dt == SS_MM_F32 ? "f32" : "int8", resident, np);
  ss_matmul_w(&cc, SS_MM_N, M, N, K, x, K, map, N, 0.0f, y2, N); /* the packed copy again */
  CHECK(memcmp(y1, y2, (size_t)M * N * sizeof *y1) == 0);
  CHECK(memcmp(map, w, bytes) == 0); /* read back from the file */
  ss_matmul(SS_MM_N, SS_MM_N, M, N, K, 1.0f, x, K, w, N, 0.0f, y2, N);
  double worst = 0.0, big = 0.0; /* against the largest output, as int8's error is stated */
  for (size_t i = 0; i < (size_t)M * N; i++) {
    double e = fabs((double)y1[i] - (double)y2[i]);
    if (e > worst) worst = e;
    if (fabs((double)y2[i]) > big) big = fabs((double)y2[i]);
  }
  printf("  %s packed product: max error %.2e of the largest output\n",
         dt == SS_MM_F32 ? "f32" : "int8", worst / big);
  CHECK(worst <= (dt == SS_MM_F32 ? 1e-5 : 2e-2) * big);
  ss_matmul_weights_drop(&owner);
  munmap(map, bytes);
  free(vec), free(w), free(x), free(y1), free(y2);
}

/* The f32 panel kernel (nn/panel.c: CPUs without brgemm run model weights of up to 32 rows on it;
 * called directly here, so every level from AVX2 up checks it) against ss_matmul: every row count
 * 1..33 (the 6-row tiles and their tails), a last panel of 5 columns, both layouts, beta 0 and 1,
 * with and without a bias. */
static void panels(void) {
  if (!ss__panel_ok()) {
    printf("  f32 panels: skipped (no AVX2+FMA at this level)\n");
    return;
  }
  enum { K = 67, N = 53, MX = 33 };
  unsigned s = 21;
  float *W = malloc((size_t)K * N * sizeof *W), *P = NULL, *b = malloc(N * sizeof *b);
  float *A = malloc((size_t)MX * K * sizeof *A), *C1 = malloc((size_t)MX * N * sizeof *C1),
        *C2 = malloc((size_t)MX * N * sizeof *C2);
  for (size_t i = 0; i < (size_t)K * N; i++) W[i] = frand(&s);
  for (size_t i = 0; i < (size_t)MX * K; i++) A[i] = frand(&s);
  for (size_t i = 0; i < N; i++) b[i] = frand(&s);
  CHECK(posix_memalign((void **)&P, 64, ss__panel_bytes(K, N)) == 0);
  int ok = 1;
  double worst = 0.0;
  for (int tb = 0; tb < 2; tb++) {
    ss__panel_pack(W, tb, K, N, tb ? K : N, P);
    for (int M = 1; M <= MX; M++)
      for (int v = 0; v < 4; v++) { /* beta 0/1 x bias */
        float beta = (float)(v & 1);
        const float *bias = v & 2 ? b : NULL;
        for (size_t i = 0; i < (size_t)M * N; i++) C1[i] = C2[i] = frand(&s);
        ss__panel_matmul(M, N, K, A, K, P, bias, beta, C1, N);
        ss_matmul(SS_MM_N, tb ? SS_MM_T : SS_MM_N, M, N, K, 1.0f, A, K, W, tb ? K : N, beta, C2, N);
        for (int r = 0; r < M && bias; r++)
          for (int j = 0; j < N; j++) C2[(size_t)r * N + j] += b[j];
        for (size_t i = 0; i < (size_t)M * N; i++) {
          double e = fabs((double)C1[i] - (double)C2[i]) / (1.0 + fabs((double)C2[i]));
          if (e > worst) worst = e;
          ok &= e <= 1e-5;
        }
      }
  }
  CHECK(ok);
  printf("  f32 panels: rows 1..%d, both layouts, beta 0/1, bias: max rel error %.1e\n", MX, worst);
  free(W), free(P), free(b), free(A), free(C1), free(C2);
}

/* ss_matmul_w in int8 against the same quantization done here (scale max |w| / 127 per output
 * channel, round to nearest) and a double product: the kernels' groups of 4 output channels
 * with a tail (N % 4), pieces of 16 k with a tail (K % 16), 1..16 rows (17, 20: dequantized),
 * beta 0 and 1, W as [K, N] and [N, K]. The tests run at every ISA level (tests/isa_levels.py),
 * so this covers the AVX-512, AVX2 and plain kernels. */
static void int8_exact(int tb, int M, int N, int K, float beta) {
  unsigned s = (unsigned)(M * 131 + N * 17 + K * 3 + tb);
  int ldw = (tb ? K : N) + 3, lda = K + 1, ldc = N + 2;
  size_t nw = (size_t)(tb ? N : K) * (size_t)ldw;
  float *W = malloc(nw * sizeof *W), *A = malloc((size_t)M * (size_t)lda * sizeof *A);
  float *C = malloc((size_t)M * (size_t)ldc * sizeof *C);
  double *R = malloc((size_t)M * (size_t)N * sizeof *R), big = 1e-30;
  float *q = malloc((size_t)K * (size_t)N * sizeof *q);
  for (size_t i = 0; i < nw; i++) W[i] = frand(&s);
  for (size_t i = 0; i < (size_t)M * (size_t)lda; i++) A[i] = frand(&s);
  for (size_t i = 0; i < (size_t)M * (size_t)ldc; i++) C[i] = frand(&s);
  for (int j = 0; j < N; j++) {
    float mx = 0.0f;
    for (int k = 0; k < K; k++) mx = fmaxf(mx, fabsf(tb ? W[j * ldw + k] : W[k * ldw + j]));
    float sc = mx / 127.0f, inv = sc > 0.0f ? 1.0f / sc : 0.0f;
    for (int k = 0; k < K; k++)
      q[(size_t)j * (size_t)K + (size_t)k] =
          nearbyintf((tb ? W[j * ldw + k] : W[k * ldw + j]) * inv) * sc;
  }
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double d = beta != 0.0f ? (double)C[i * ldc + j] : 0.0;
      for (int k = 0; k < K; k++)
        d += (double)A[i * lda + k] * q[(size_t)j * (size_t)K + (size_t)k];
      R[i * N + j] = d;
      if (fabs(d) > big) big = fabs(d);
    }
  static int owner;
  ss_compute cc = {SS_MM_INT8, &owner, NULL};
  ss_matmul_w(&cc, tb ? SS_MM_T : SS_MM_N, M, N, K, A, lda, W, ldw, beta, C, ldc);
  int ok = 1;
  for (int i = 0; i < M && ok; i++)
    for (int j = 0; j < N && ok; j++)
      ok = fabs((double)C[i * ldc + j] - R[i * N + j]) <= 2e-6 * big;
  if (!ok) fprintf(stderr, "int8 tb %d M %d N %d K %d beta %g\n", tb, M, N, K, (double)beta);
  CHECK(ok);
  ss_matmul_weights_drop(&owner);
  free(W), free(A), free(C), free(R), free(q);
}

int main(void) {
  int ms[] = {1, 3, 4, 5, 17}, nk[][2] = {{13, 7}, {64, 48}, {9, 33}, {1, 1}};
  float ab[][2] = {{1, 0}, {1, 1}, {0.5f, 0}, {2, -0.25f}};
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
    for (size_t d = 0; d < sizeof nk / sizeof nk[0]; d++)
      for (size_t a = 0; a < sizeof ab / sizeof ab[0]; a++)
        for (int t = 0; t < 4; t++)
          mm(t >> 1, t & 1, ms[i], nk[d][0], nk[d][1], ab[a][0], ab[a][1]);
  size_t rows[] = {1, 2, 3, 4, 5, 10, 16, 17, 33};
  size_t dims[][2] = {{768, 768}, {13, 7}, {64, 48}, {9, 33}, {1, 1}, {100, 17}};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
      for (int bias = 0; bias < 2; bias++)
        for (int acc = 0; acc < 2; acc++)
          for (int conv = 0; conv < 2; conv++)
            one(rows[i], dims[d][0], dims[d][1], bias, acc, conv);
  int nks[][2] = {{1, 1}, {3, 16}, {4, 15}, {5, 17}, {8, 32}, {13, 100}, {67, 257}, {36, 896}};
  for (int M = 1; M <= 20; M += M < 16 ? 1 : 4)
    for (size_t d = 0; d < sizeof nks / sizeof nks[0]; d++)
      for (int t = 0; t < 4; t++) int8_exact(t & 1, M, nks[d][0], nks[d][1], (float)(t >> 1));
  given_back(SS_MM_F32);
  given_back(SS_MM_INT8);
  panels();
  TEST_MAIN_END();
}
