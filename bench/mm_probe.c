/*
 * mm_probe.c — the matmul engine's own throughput (src/models/nn/matmul.c) on the shapes the
 * models run, next to OpenBLAS sgemm on the same shapes (loaded with dlopen, if present, so the
 * build needs no OpenBLAS), and the few-row table that sets where the hand-written decode
 * kernels beat oneDNN.
 *
 * Part 1 (GFLOP/s, median of alternating runs): ss_matmul as the models call it, oneDNN alone,
 * OpenBLAS, for mlp 10x768x768 (x W^T, nn.Linear), GPT-2 prefill 128x768x{2304,768,3072} and
 * 128x3072x768 (x W, Conv1D) and decode 1x768x2304, on 1 and 2 threads (the calling thread's
 * OpenMP team, like a worker's intra-op threads). Counts 2 M N K flops.
 * Part 2 (microseconds, medians): M = 1, 4, 10, 128 rows on 768x768 and 768x2304, B as stored
 * ([K,N], "B") and transposed ([N,K], "B^T"), oneDNN vs the few-row kernels vs OpenBLAS.
 *
 * Part 3 (microseconds, medians): decode batches, M = 1..16 rows on 768x2304 and 3072x768 with B
 * cold (a different copy each call, 96 MB in all: a trunk's weights never fit the caches).
 *
 * Part 4 (the compute dtypes, model key compute=): ss_matmul_w, as a model's linear layers call
 * it, with weights in fp32, bf16 (where the CPU has avx512_bf16/AMX) and int8, packed before the
 * timing: GFLOP/s on the GPT-2 prefill shapes, B hot and again B cold (rows marked "~": a
 * trunk's prefill reads each weight once, so this is the engine's rate a trunk can reach), and
 * microseconds on decode rows 1..12 (B cold: a different packed copy each call, COLD_BYTES =
 * 256 MB of them in the product's dtype, so int8 and bf16 stream from DRAM as in a trunk, not
 * from the L3).
 *
 *   cmake --build build --target mm_probe && build/bin/mm_probe [SECONDS_PER_CELL] [decode|dtypes]
 * ("decode": part 3 only; "dtypes": part 4 only)
 * Thread: main only. Runs alternate engine by engine, so a loaded machine hits them alike.
 */
#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "models/nn/matmul.h"

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);
typedef void (*setthr_fn)(int);
static sgemm_fn oblas_sgemm;
static setthr_fn oblas_threads;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static float *randv(size_t n) {
  float *p = malloc(n * sizeof(float));
  unsigned x = 12345u;
  if (!p) exit(1);
  for (size_t i = 0; i < n; i++) {
    x = x * 1664525u + 1013904223u;
    p[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
  }
  return p;
}

enum { E_SS, E_DNNL, E_HAND, E_OBLAS, NE };
static const char *const ename[NE] = {"ss_matmul", "onednn", "few-rows", "openblas"};

static void run1(int e, int tb, int M, int N, int K, const float *A, const float *B, float *C) {
  int ldb = tb ? K : N;
  switch (e) {
    case E_SS:
      ss_matmul(SS_MM_N, tb ? SS_MM_T : SS_MM_N, M, N, K, 1.0f, A, K, B, ldb, 0.0f, C, N);
      break;
    case E_DNNL:
      if (ss__matmul_engine(SS_MM_N, tb ? SS_MM_T : SS_MM_N, M, N, K, 1.0f, A, K, B, ldb, 0.0f, C,
                            N))
        fprintf(stderr, "oneDNN refused %dx%dx%d\n", M, K, N);
      break;
    case E_HAND:
      ss__matmul_few_rows(tb ? SS_MM_T : SS_MM_N, M, N, K, A, K, B, ldb, 0.0f, C, N);
      break;
    case E_OBLAS:
      oblas_sgemm(101, 111, tb ? 112 : 111, M, N, K, 1.0f, A, K, B, ldb, 0.0f, C, N);
      break;
  }
}

/* Median seconds per call of each engine in mask, alternating, ~secs per engine. cold: B is one
 * of copies spanning 96 MB, a different one each call (a decode step streams a whole trunk's
 * weights, far more than the last-level cache); otherwise the same B every call. */
static void measure_b(unsigned mask, int tb, int M, int N, int K, double secs, double med[NE],
                      int cold) {
  enum { MAXR = 2001, MAXB = 64 };
  static double t[NE][MAXR];
  size_t bn = (size_t)K * N;
  int nb = cold ? (int)((96u << 20) / (bn * sizeof(float))) + 1 : 1;
  if (nb > MAXB) nb = MAXB;
  float *A = randv((size_t)M * K), *Bs[MAXB], *C = randv((size_t)M * N);
  for (int i = 0; i < nb; i++) Bs[i] = randv(bn);
  const float *B = Bs[0];
  int r = 0, bi = 0;
  for (int e = 0; e < NE; e++)
    if (mask >> e & 1) run1(e, tb, M, N, K, A, B, C), run1(e, tb, M, N, K, A, B, C);
  double t_end = now_s() + secs * __builtin_popcount(mask);
  while (r < MAXR && (r < 7 || now_s() < t_end)) {
    for (int e = 0; e < NE; e++) {
      if (!(mask >> e & 1)) continue;
      B = Bs[bi++ % nb];
      double t0 = now_s();
      run1(e, tb, M, N, K, A, B, C);
      t[e][r] = now_s() - t0;
    }
    r++;
  }
  for (int i = 1; i < nb; i++) free(Bs[i]);
  for (int e = 0; e < NE; e++) {
    med[e] = 0.0;
    if (!(mask >> e & 1)) continue;
    qsort(t[e], (size_t)r, sizeof(double), cmp_d);
    med[e] = t[e][r / 2];
  }
  free(A), free(Bs[0]), free(C);
}

static void measure(unsigned mask, int tb, int M, int N, int K, double secs, double med[NE]) {
  measure_b(mask, tb, M, N, K, secs, med, 0);
}

static void set_threads(int n) {
  omp_set_num_threads(n);
  if (oblas_threads) oblas_threads(n);
}

/* oneDNN, the few-row kernels and OpenBLAS on rows[nr] x kn[2] shapes, B and B^T, 1..maxthr
 * threads: one line per cell with the fastest named. */
static void few_rows_table(unsigned all, const int *rows, size_t nr, const int (*kn)[2], int maxthr,
                           double secs, int cold) {
  printf("%-5s %4s %5s %5s %3s %9s %9s %9s  %s\n", "B", "M", "K", "N", "thr", ename[E_DNNL],
         ename[E_HAND], ename[E_OBLAS], "fastest");
  for (int thr = 1; thr <= maxthr; thr++) {
    set_threads(thr);
    for (int tb = 0; tb < 2; tb++)
      for (size_t s = 0; s < 2; s++)
        for (size_t r = 0; r < nr; r++) {
          double med[NE];
          int M = rows[r], K = kn[s][0], N = kn[s][1];
          measure_b((all & ~(1u << E_SS)) | 1u << E_HAND, tb, M, N, K, secs / 2, med, cold);
          int best = E_DNNL;
          for (int e = E_HAND; e < NE; e++)
            if (med[e] > 0 && med[e] < med[best]) best = e;
          printf("%-5s %4d %5d %5d %3d %9.1f %9.1f %9.1f  %s\n", tb ? "B^T" : "B", M, K, N, thr,
                 med[E_DNNL] * 1e6, med[E_HAND] * 1e6, med[E_OBLAS] * 1e6, ename[best]);
          fflush(stdout);
        }
  }
}

/* Part 4's cold set: a decode step streams a whole trunk's packed weights (a Qwen2-0.5B trunk's
 * int8 copy is 209 MB), so the copies a cold cell cycles through hold at least this many bytes in
 * the product's dtype. The L3 sysconf reports here (480 MiB on a 2-core VM) is not what the cache
 * holds: a one-thread read runs at 29 GB/s up to 32 MB and at DRAM's 14 GB/s from 64 MB on. */
#define COLD_BYTES ((size_t)256 << 20)

/* Median seconds of ss_matmul_w in dtype dt (weights packed first; cold: one of the packed copies
 * spanning COLD_BYTES per call). A packing dtype's copies are made from views of one f32 buffer,
 * 64 bytes apart (each a weight of its own to the packed table); an unpacked f32 product reads
 * the weight as stored, so it gets real copies. */
static double measure_dt(ss_mm_dtype dt, int tb, int M, int N, int K, double secs, int cold) {
  enum { MAXR = 2001, MAXB = 1024 };
  static double t[MAXR];
  static const float *Bs[MAXB];
  static float *own[MAXB];
  size_t bn = (size_t)K * N, esz = dt == SS_MM_INT8 ? 1 : dt == SS_MM_BF16 ? 2 : 4;
  int nb = cold ? (int)(COLD_BYTES / (bn * esz)) + 1 : 1, no = 1;
  if (nb > MAXB) nb = MAXB;
  float *A = randv((size_t)M * K), *C = randv((size_t)M * N);
  static int owner;
  ss_compute cc = {dt, &owner, NULL};
  int ldb = tb ? K : N, r = 0, bi = 0;
  size_t before = ss_matmul_packed_bytes();
  own[0] = randv(bn + (size_t)nb * 16);
  Bs[0] = own[0];
  ss_matmul_w(&cc, tb ? SS_MM_T : SS_MM_N, M, N, K, A, K, Bs[0], ldb, 0.0f, C, N); /* packs */
  int packs = ss_matmul_packed_bytes() > before;
  for (int i = 1; i < nb; i++) {
    Bs[i] = packs ? own[0] + (size_t)i * 16 : (own[no++] = randv(bn));
    ss_matmul_w(&cc, tb ? SS_MM_T : SS_MM_N, M, N, K, A, K, Bs[i], ldb, 0.0f, C, N);
  }
  double t_end = now_s() + secs;
  while (r < MAXR && (r < 7 || now_s() < t_end)) {
    const float *B = Bs[bi++ % nb];
    double t0 = now_s();
    ss_matmul_w(&cc, tb ? SS_MM_T : SS_MM_N, M, N, K, A, K, B, ldb, 0.0f, C, N);
    t[r++] = now_s() - t0;
  }
  ss_matmul_weights_drop(&owner);
  for (int i = 0; i < no; i++) free(own[i]);
  free(A), free(C);
  qsort(t, (size_t)r, sizeof(double), cmp_d);
  return t[r / 2];
}

static void dtypes_table(double secs) {
  char why[160];
  int bf16 = ss_matmul_bf16_check(why, sizeof why) == 0;
  static const struct {
    const char *name;
    int M, K, N, tb, cold; /* cold: 0 B hot, GFLOP/s; 1 B cold, us; 2 B cold, GFLOP/s ("~") */
  } sh[] = {{"gpt2.c_attn", 128, 768, 2304, 0, 0},      {"gpt2.attn.c_proj", 128, 768, 768, 0, 0},
            {"gpt2.mlp.c_fc", 128, 768, 3072, 0, 0},    {"gpt2.mlp.c_proj", 128, 3072, 768, 0, 0},
            {"qwen.gate_proj", 128, 896, 4864, 1, 0},   {"decode.c_attn", 1, 768, 2304, 0, 1},
            {"decode2.c_attn", 2, 768, 2304, 0, 1},     {"decode4.c_attn", 4, 768, 2304, 0, 1},
            {"decode12.c_attn", 12, 768, 2304, 0, 1},   {"decode2.qwen.up", 2, 896, 4864, 1, 1},
            {"decode12.qwen.up", 12, 896, 4864, 1, 1},  {"decode8.c_attn", 8, 768, 2304, 0, 1},
            {"decode.qwen.up", 1, 896, 4864, 1, 1},     {"decode4.qwen.up", 4, 896, 4864, 1, 1},
            {"decode8.qwen.up", 8, 896, 4864, 1, 1},    {"gpt2.c_attn~", 128, 768, 2304, 0, 2},
            {"gpt2.attn.c_proj~", 128, 768, 768, 0, 2}, {"gpt2.mlp.c_fc~", 128, 768, 3072, 0, 2},
            {"gpt2.mlp.c_proj~", 128, 3072, 768, 0, 2}, {"qwen.gate_proj~", 128, 896, 4864, 1, 2}};
  printf(
      "\n== compute dtypes (ss_matmul_w, weights packed once): GFLOP/s, and us per product "
      "(B cold rows)%s\n%-18s %4s %5s %5s %3s %10s %10s %10s\n",
      bf16 ? "" : " [bf16 skipped: no avx512_bf16/AMX here]", "shape", "M", "K", "N", "thr", "fp32",
      "bf16", "int8");
  for (int thr = 1; thr <= 2; thr++) {
    set_threads(thr);
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
      double f = 2.0 * sh[s].M * sh[s].K * sh[s].N / 1e9, v[3] = {0, 0, 0};
      for (int d = 0; d < 3; d++) {
        if (d == 1 && !bf16) continue;
        double med =
            measure_dt((ss_mm_dtype)d, sh[s].tb, sh[s].M, sh[s].N, sh[s].K, secs, sh[s].cold != 0);
        v[d] = sh[s].cold == 1 ? med * 1e6 : f / med;
      }
      printf("%-18s %4d %5d %5d %3d %10.1f %10.1f %10.1f %s\n", sh[s].name, sh[s].M, sh[s].K,
             sh[s].N, thr, v[0], v[1], v[2], sh[s].cold == 1 ? "us" : "GFLOP/s");
      fflush(stdout);
    }
  }
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 0.15;
  void *h = dlopen("/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0", RTLD_NOW);
  if (h) {
    oblas_sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    oblas_threads = (setthr_fn)dlsym(h, "openblas_set_num_threads");
  }
  unsigned all = 1u << E_SS | 1u << E_DNNL | (oblas_sgemm ? 1u << E_OBLAS : 0);
  printf("engine: %s\nopenblas (openmp): %s\n", ss_matmul_engine_info(),
         oblas_sgemm ? "loaded" : "not found, left out");

  int decode_only = argc > 2 && strcmp(argv[2], "decode") == 0;
  if (argc > 2 && strcmp(argv[2], "dtypes") == 0) {
    dtypes_table(secs);
    return 0;
  }
  static const struct {
    const char *name;
    int M, K, N, tb;
  } shapes[] = {{"mlp", 10, 768, 768, 1},
                {"gpt2.c_attn", 128, 768, 2304, 0},
                {"gpt2.attn.c_proj", 128, 768, 768, 0},
                {"gpt2.mlp.c_fc", 128, 768, 3072, 0},
                {"gpt2.mlp.c_proj", 128, 3072, 768, 0},
                {"decode.c_attn", 1, 768, 2304, 0}};
  printf(
      "\n== GFLOP/s (median; x: ss_matmul / openblas)\n%-18s %4s %5s %5s %3s %10s %10s %10s %7s\n",
      "shape", "M", "K", "N", "thr", ename[E_SS], ename[E_DNNL], ename[E_OBLAS], "x");
  for (int thr = 1; thr <= 2 && !decode_only; thr++) {
    set_threads(thr);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      double med[NE], f = 2.0 * shapes[s].M * shapes[s].K * shapes[s].N / 1e9;
      measure(all, shapes[s].tb, shapes[s].M, shapes[s].N, shapes[s].K, secs, med);
      printf("%-18s %4d %5d %5d %3d %10.1f %10.1f %10.1f %7.2f\n", shapes[s].name, shapes[s].M,
             shapes[s].K, shapes[s].N, thr, f / med[E_SS], f / med[E_DNNL],
             med[E_OBLAS] > 0 ? f / med[E_OBLAS] : 0.0,
             med[E_OBLAS] > 0 ? med[E_OBLAS] / med[E_SS] : 0.0);
      fflush(stdout);
    }
  }

  static const int rows[] = {1, 4, 10, 128}, kn[][2] = {{768, 768}, {768, 2304}};
  printf("\n== few rows: microseconds per product (median)\n");
  few_rows_table(all, rows, 4, kn, decode_only ? 0 : 2, secs, 0);

  /* Part 3: decode batches (the steps of several sessions stacked) with B cold, as in a real
   * trunk: which engine streams the weights best at each row count. */
  static const int drows[] = {1, 2, 4, 6, 8, 12, 16};
  static const int dkn[][2] = {{768, 2304}, {3072, 768}};
  printf("\n== decode batches, B cold (96 MB of copies): microseconds per product (median)\n");
  few_rows_table(all, drows, sizeof drows / sizeof drows[0], dkn, 2, secs, 1);
  return 0;
}
