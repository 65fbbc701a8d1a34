/*
 * panel_probe.c — the f32 panel kernel of CPUs without brgemm (src/models/nn/panel.c) against
 * ss_matmul reading the weight as stored (gemv at 1 row, the few-row kernels, oneDNN's gemm,
 * OpenBLAS: what products ran before the panels), on GPT-2 ([K,N], Conv1D) and Qwen2 ([N,K],
 * nn.Linear) shapes, M = 1..128 rows, weights cold (a 384 MB set of copies cycled; NCOPY=n to
 * change it), medians of 15 alternating runs. Run it capped at AVX2 on a machine with more:
 *
 *   cmake --build build --target panel_probe
 *   ONEDNN_MAX_CPU_ISA=AVX2 build/bin/panel_probe [THREADS]
 *
 * Thread: main (and its OpenMP team of THREADS).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "models/nn/matmul.h"
#include "models/nn/matmul_int.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

#define REPS 15

int main(int argc, char **argv) {
  int thr = argc > 1 ? atoi(argv[1]) : 1;
  ss_compute_thread_init(thr);
  printf("panel kernel %s; engine: %s; %d thread(s)\n", ss__panel_ok() ? "runs" : "does not run",
         ss_matmul_engine_info(), thr);
  if (!ss__panel_ok()) return 0;
  const struct {
    const char *name;
    int K, N, tb;
  } sh[] = {{"c_attn [K,N]", 768, 2304, 0},
            {"c_fc [K,N]", 768, 3072, 0},
            {"mlp.c_proj [K,N]", 3072, 768, 0},
            {"qwen.up [N,K]", 896, 4864, 1},
            {"qwen.down [N,K]", 4864, 896, 1}};
  const int Ms[] = {1, 2, 4, 5, 8, 12, 16, 32, 128};
  for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
    const int K = sh[s].K, N = sh[s].N, tb = sh[s].tb, ldw = tb ? K : N;
    const size_t kn = (size_t)K * (size_t)N, wb = kn * sizeof(float);
    int ncopy = getenv("NCOPY") ? atoi(getenv("NCOPY")) : (int)(384u * 1000000u / wb) + 1;
    if (ncopy < 1) ncopy = 1;
    float **W = malloc((size_t)ncopy * sizeof *W), **P = malloc((size_t)ncopy * sizeof *P);
    for (int c = 0; c < ncopy; c++) {
      W[c] = aligned_alloc(64, wb);
      for (size_t i = 0; i < kn; i++) W[c][i] = (float)((i * 7 + (size_t)c) % 13) * 0.01f - 0.06f;
      P[c] = aligned_alloc(64, ss__panel_bytes(K, N));
      ss__panel_pack(W[c], tb, K, N, ldw, P[c]);
    }
    float *A = malloc(128 * (size_t)K * sizeof *A), *C1 = malloc(128 * (size_t)N * sizeof *C1),
          *C2 = malloc(128 * (size_t)N * sizeof *C2);
    for (size_t i = 0; i < 128 * (size_t)K; i++) A[i] = (float)(i % 17) * 0.1f - 0.8f;
    for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++) {
      const int M = Ms[m];
      double ta[REPS], tp[REPS];
      int ci = 0;
      for (int rep = 0; rep < REPS; rep++) { /* alternating, each on the next cold copy */
        double t = now();
        ss_matmul(SS_MM_N, tb ? SS_MM_T : SS_MM_N, M, N, K, 1.0f, A, K, W[ci], ldw, 0.0f, C1, N);
        ta[rep] = now() - t;
        ci = (ci + 1) % ncopy;
        t = now();
        ss__panel_matmul(M, N, K, A, K, P[ci], NULL, 0.0f, C2, N);
        tp[rep] = now() - t;
        ci = (ci + 1) % ncopy;
      }
      ss_matmul(SS_MM_N, tb ? SS_MM_T : SS_MM_N, M, N, K, 1.0f, A, K, W[0], ldw, 0.0f, C1, N);
      ss__panel_matmul(M, N, K, A, K, P[0], NULL, 0.0f, C2, N);
      double e = 0.0, big = 0.0;
      for (size_t i = 0; i < (size_t)M * (size_t)N; i++) {
        double d = (double)C1[i] - (double)C2[i], a = (double)C1[i];
        e = d < 0 ? (-d > e ? -d : e) : (d > e ? d : e);
        big = (a < 0 ? -a : a) > big ? (a < 0 ? -a : a) : big;
      }
      qsort(ta, REPS, sizeof ta[0], cmpd);
      qsort(tp, REPS, sizeof tp[0], cmpd);
      printf("%-18s M=%3d  as stored %8.1f us  panels %8.1f us  ratio %.2f  (rel err %.1e)\n",
             sh[s].name, M, ta[REPS / 2] * 1e6, tp[REPS / 2] * 1e6, ta[REPS / 2] / tp[REPS / 2],
             e / (big > 0 ? big : 1.0));
    }
    for (int c = 0; c < ncopy; c++) free(W[c]), free(P[c]);
    free(W), free(P), free(A), free(C1), free(C2);
  }
  return 0;
}
