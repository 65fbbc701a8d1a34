/*
 * sgemm_peak.c — OpenBLAS sgemm's own throughput on this machine, the ceiling for the GPT-2
 * trunk's prefill (bench/gpt2_bench.sh compiles and runs it with OMP_NUM_THREADS=1 and 2).
 *
 * For each shape M x K x N (C[M,N] = A[M,K] B[K,N], row-major, no transposes, beta 0: the
 * trunk's Conv1D layout) it runs sgemm until ~0.4 s have passed (after 2 warm-up calls) and
 * prints the best and the median GFLOP/s over those runs, counting 2 * M * N * K flops.
 * Shapes: square 1024, and the trunk's prefill shapes at seq 128 (c_attn 128x768x2304, attn
 * c_proj 128x768x768, mlp c_fc 128x768x3072, mlp c_proj 128x3072x768) and at seq 1 (decode).
 *
 *   gcc -O2 -o sgemm_peak sgemm_peak.c -I/usr/include/x86_64-linux-gnu/openblas-openmp \
 *       -L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,... -lopenblas
 * Output: one line per shape, "name M K N best_gflops median_gflops".
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void fill(float *p, size_t n) {
  unsigned x = 12345u;
  for (size_t i = 0; i < n; i++) {
    x = x * 1664525u + 1013904223u;
    p[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
  }
}

static void run(const char *name, int m, int k, int n) {
  float *a = malloc(sizeof(float) * (size_t)m * (size_t)k);
  float *b = malloc(sizeof(float) * (size_t)k * (size_t)n);
  float *c = malloc(sizeof(float) * (size_t)m * (size_t)n);
  if (!a || !b || !c) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  fill(a, (size_t)m * (size_t)k);
  fill(b, (size_t)k * (size_t)n);
  memset(c, 0, sizeof(float) * (size_t)m * (size_t)n);
  for (int i = 0; i < 2; i++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
  enum { MAXR = 4096 };
  static double g[MAXR];
  int r = 0;
  double flops = 2.0 * (double)m * (double)n * (double)k;
  double t_end = now_s() + 0.4;
  while (r < MAXR && (r < 3 || now_s() < t_end)) {
    double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    double dt = now_s() - t0;
    g[r++] = flops / dt / 1e9;
  }
  qsort(g, (size_t)r, sizeof g[0], cmp_d);
  printf("%-14s %5d %5d %5d %8.1f %8.1f\n", name, m, k, n, g[r - 1], g[r / 2]);
  fflush(stdout);
  free(a);
  free(b);
  free(c);
}

int main(void) {
  printf("%-14s %5s %5s %5s %8s %8s\n", "shape", "M", "K", "N", "best", "median");
  run("square1024", 1024, 1024, 1024);
  run("c_attn", 128, 768, 2304);
  run("attn.c_proj", 128, 768, 768);
  run("mlp.c_fc", 128, 768, 3072);
  run("mlp.c_proj", 128, 3072, 768);
  run("decode.c_fc", 1, 768, 3072);
  return 0;
}
