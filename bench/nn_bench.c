/*
 * nn_bench.c — in-process timings of the model kinds through the model API (no server, no
 * network): a random GPT-2-small-shaped trunk of 8 blocks (n_embd 768, 12 heads, written once to
 * bench/.cache/nn-bench/), prefill [1,128,768], a decode step [1,1,768] with 128 tokens of past,
 * a training forward + backward [1,64,768], and the default mlp forward [1,10,768]. Prints the
 * median and the minimum of REPS runs of each, in ms. The calling thread's OpenMP team has
 * THREADS threads (argv[1], default 1), like a worker with --intra-op-threads THREADS.
 *
 * Build (after building the library in build/):
 *   gcc -O2 -fopenmp -Isrc -Iinclude -I/usr/include/x86_64-linux-gnu/openblas-openmp \
 *     bench/nn_bench.c build/libsplitserve.a -o build/nn_bench \
 *     -L/usr/lib/x86_64-linux-gnu/openblas-openmp
 * -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp \ -lopenblas $(pkg-config --libs libuv
 * libnghttp2 libprotobuf-c jansson yaml-0.1) -lm -lpthread build/nn_bench [THREADS] [REPS] (env
 * NN_BENCH_CPU=1: thread CPU time, see now_ms)
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "models/model.h"
#include "models/safetensors.h"

#define E 768
#define NL 8
#define NI (4 * E)

/* NN_BENCH_CPU=1: the calling thread's CPU time instead of wall time (steadier on a loaded
 * machine; meaningful with THREADS 1 only, where BLAS runs on the calling thread). */
static clockid_t clk = CLOCK_MONOTONIC;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t rs = 2024;
static float frand(void) {
  rs = rs * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rs >> 40) * 0x1p-24 * 2.0 - 1.0);
}

static int write_checkpoint(const char *dir) {
  static const char *const suffix[12] = {
      "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
      "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
      "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
  static const int64_t shp[12][2] = {{E, 0}, {E, 0}, {E, 3 * E}, {3 * E, 0}, {E, E},  {E, 0},
                                     {E, 0}, {E, 0}, {E, NI},    {NI, 0},    {NI, E}, {E, 0}};
  char path[512], names[NL * 12][64], err[256];
  const char *np[NL * 12];
  const int64_t *sp[NL * 12];
  int nd[NL * 12];
  const float *data[NL * 12];
  FILE *f;
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < 12; k++) {
      int i = l * 12 + k;
      size_t n = (size_t)shp[k][0] * (size_t)(shp[k][1] ? shp[k][1] : 1);
      float *w = malloc(n * sizeof *w);
      for (size_t j = 0; j < n; j++)
        w[j] = k == 0 || k == 6 ? 1.0f + 0.1f * frand() : 0.035f * frand();
      snprintf(names[i], sizeof names[i], "h.%d.%s", l, suffix[k]);
      np[i] = names[i];
      sp[i] = shp[k];
      nd[i] = shp[k][1] ? 2 : 1;
      data[i] = w;
    }
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (ss_st_write_f32(path, NL * 12, np, sp, nd, data, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  for (int i = 0; i < NL * 12; i++) free((void *)data[i]);
  snprintf(path, sizeof path, "%s/config.json", dir);
  if ((f = fopen(path, "w")) == NULL) return -1;
  fprintf(f, "{\"n_embd\": %d, \"n_head\": 12, \"n_layer\": %d, \"n_positions\": 1024}\n", E, NL);
  fclose(f);
  return 0;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *name, double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_d);
  printf("%-34s median %8.2f ms   min %8.2f ms\n", name, t[n / 2], t[0]);
}

static void fill(ss_tensor *t, int ndim, const int64_t *shape) {
  memset(t, 0, sizeof *t);
  t->dtype = SS_DTYPE_F32;
  t->ndim = ndim;
  t->numel = 1;
  for (int d = 0; d < ndim; d++) t->shape[d] = shape[d], t->numel *= (size_t)shape[d];
  t->nbytes = t->numel * 4;
  t->data = malloc(t->nbytes);
  for (size_t i = 0; i < t->numel; i++) ((float *)t->data)[i] = frand();
}

int main(int argc, char **argv) {
  const char *dir = "bench/.cache/nn-bench";
  int threads = argc > 1 ? atoi(argv[1]) : 1, reps = argc > 2 ? atoi(argv[2]) : 15;
  char spec[600], err[512], path[512];
  ss_model *g, *mlp;
  struct stat st;
  double *t = malloc((size_t)reps * sizeof *t);

  if (getenv("NN_BENCH_CPU") != NULL && atoi(getenv("NN_BENCH_CPU")) == 1)
    clk = CLOCK_THREAD_CPUTIME_ID;
  omp_set_num_threads(threads);
  mkdir("bench/.cache", 0755);
  mkdir(dir, 0755);
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (stat(path, &st) != 0 && write_checkpoint(dir) != 0) return 1;
  snprintf(spec, sizeof spec, "trunk=gpt2,weights=%s/model.safetensors", dir);
  if (ss_model_create(spec, &g, err, sizeof err) != 0 ||
      ss_model_create("mlp=mlp", &mlp, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  printf("%s; threads %d, %d reps\n", g->describe, threads, reps);
  {
    int64_t s128[3] = {1, 128, E}, s1[3] = {1, 1, E}, s64[3] = {1, 64, E}, s10[3] = {1, 10, E};
    ss_tensor in, out, d1, o1, in64, out64, gin, mi, mo;
    ss_kv_layer past[NL], present[NL];
    ss_kv_io kv = {NL, NULL, 1, present, NULL};
    fill(&in, 3, s128);
    fill(&out, 3, s128);
    fill(&d1, 3, s1);
    fill(&o1, 3, s1);
    fill(&in64, 3, s64);
    fill(&out64, 3, s64);
    fill(&gin, 3, s64);
    fill(&mi, 3, s10);
    fill(&mo, 3, s10);
    for (int r = -1; r < reps; r++) {
      double t0 = now_ms();
      if (g->ops->forward(g, &in, &out, NULL, err, sizeof err) != 0) return 1;
      if (r >= 0) t[r] = now_ms() - t0;
    }
    report("gpt2 prefill [1,128,768]", t, reps);
    /* the past: the present of a 128-token prefill */
    if (g->ops->forward_kv(g, &in, &out, &kv, NULL, err, sizeof err) != 0) return 1;
    memcpy(past, present, sizeof past);
    for (int r = -1; r < reps; r++) {
      ss_kv_io kv2 = {NL, past, 1, present};
      double t0 = now_ms();
      if (g->ops->forward_kv(g, &d1, &o1, &kv2, NULL, err, sizeof err) != 0) return 1;
      if (r >= 0) t[r] = now_ms() - t0;
      for (int l = 0; l < NL; l++) free(present[l].key.data), free(present[l].value.data);
    }
    report("gpt2 decode [1,1,768] past 128", t, reps);
    for (int r = -1; r < reps; r++) {
      void *saved;
      size_t sb;
      double t0 = now_ms();
      if (g->ops->forward_train(g, &in64, &out64, NULL, &saved, &sb, err, sizeof err) != 0 ||
          g->ops->backward(g, saved, &out64, &gin, err, sizeof err) != 0)
        return 1;
      if (r >= 0) t[r] = now_ms() - t0;
      g->ops->free_saved(g, saved);
    }
    report("gpt2 train fwd+bwd [1,64,768]", t, reps);
    for (int r = -1; r < reps * 10; r++) {
      double t0 = now_ms();
      if (mlp->ops->forward(mlp, &mi, &mo, NULL, err, sizeof err) != 0) return 1;
      if (r >= 0 && r < reps) t[r] = now_ms() - t0;
    }
    report("mlp forward [1,10,768]", t, reps);
  }
  ss_model_free(g);
  ss_model_free(mlp);
  free(t);
  return 0;
}
