/*
 * attention_ab.c — the attention op alone, A/B against an older attention.c in the same process
 * (bench/attention_ab.sh compiles the base commit's file with its symbols renamed old_*):
 *   decode   one token after P cached ones, as a session step did it (A: allocate a dense window
 *            of P+1 keys per call, copy the past in, attend, free) and does now (B: the past in
 *            place in a buffer of capacity > P, only the new key and value written);
 *   prefill  T tokens, no past (A and B: the same call).
 * Shapes: Qwen2-0.5B (14 heads, 2 kv heads, head size 64) and GPT-2 (12/12/64). One OpenMP thread;
 * the calling thread's CPU time (steadier on a loaded machine); median of REPS.
 * Usage: attention_ab [REPS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "models/nn/attention.h"

void ss_compute_thread_init(int intra_op_threads);
void old_attention_forward_cap(float *out, int ldo, float *att, int att_all, float *K, float *V,
                               const float *q, int ldq, const float *k, const float *v, int ldkv,
                               const void *past_k, const void *past_v, const ss_attn_dims *d,
                               int window, float softcap);

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static float *fill(size_t n, unsigned seed) {
  float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
  for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u + seed) % 1000u) / 1000.0f - 0.5f;
  return p;
}

/* Median ms of reps calls of op b (1: new, 0: old) for T tokens after P. */
static double run(int b, int NH, int NKV, int T, int P, int reps) {
  const int HS = 64, cap = P + T + 64;
  const size_t nq = (size_t)T * NH * HS, nkv = (size_t)T * NKV * HS;
  const size_t np = (size_t)NKV * P * HS, nw = (size_t)NKV * cap * HS;
  float *q = fill(nq, 1), *k = fill(nkv, 2), *v = fill(nkv, 3), *o = fill(nq, 4);
  float *pk = fill(np + 1, 5), *pv = fill(np + 1, 6), *att = fill(ss_attn_scratch(HS), 7);
  float *K = fill(nw, 8), *V = fill(nw, 9);
  double *ms = malloc((size_t)reps * sizeof *ms), med;
  for (int r = 0; r < reps; r++) {
    ss_attn_dims d = {1, T, P, NH, NKV, HS, 0.125f, 0};
    double t0 = now_ms();
    if (b && P > 0) { /* in place: the past is already in K, V (capacity cap) */
      d.cap = cap;
      ss_attention_forward_cap(o, NH * HS, att, 0, K, V, q, NH * HS, k, v, NKV * HS, NULL, NULL, &d,
                               0, 0.0f);
    } else if (b) {
      ss_attention_forward_cap(o, NH * HS, att, 0, K, V, q, NH * HS, k, v, NKV * HS, NULL, NULL, &d,
                               0, 0.0f);
    } else { /* the old session step: a fresh window, the past copied in */
      size_t win = (size_t)NKV * (size_t)(P + T) * HS * sizeof(float);
      float *Kw = aligned_alloc(64, (win + 63) / 64 * 64),
            *Vw = aligned_alloc(64, (win + 63) / 64 * 64);
      float *a = malloc(((size_t)(T < 32 ? T : 32) * (size_t)(P + T) + 1) * sizeof(float));
      old_attention_forward_cap(o, NH * HS, a, 0, Kw, Vw, q, NH * HS, k, v, NKV * HS, P ? pk : NULL,
                                P ? pv : NULL, &d, 0, 0.0f);
      free(Kw), free(Vw), free(a);
    }
    ms[r] = now_ms() - t0;
  }
  qsort(ms, (size_t)reps, sizeof *ms, cmpd);
  med = ms[reps / 2];
  free(q), free(k), free(v), free(o), free(pk), free(pv), free(att), free(K), free(V), free(ms);
  return med;
}

int main(int argc, char **argv) {
  static const struct {
    const char *name;
    int NH, NKV;
  } ms[] = {{"qwen2-0.5b", 14, 2}, {"gpt2", 12, 12}};
  static const int cases[][2] = {{1, 128}, {1, 1024}, {1024, 0}}; /* T, P */
  int reps = argc > 1 ? atoi(argv[1]) : 200;
  ss_compute_thread_init(1);
  printf("%-11s %-16s %10s %10s %7s\n", "shape", "case", "A ms", "B ms", "A/B");
  for (size_t m = 0; m < 2; m++)
    for (size_t c = 0; c < 3; c++) {
      int T = cases[c][0], P = cases[c][1], n = T > 1 ? 5 : reps;
      double a, b;
      run(0, ms[m].NH, ms[m].NKV, T, P, 2); /* warm both */
      run(1, ms[m].NH, ms[m].NKV, T, P, 2);
      a = run(0, ms[m].NH, ms[m].NKV, T, P, n);
      b = run(1, ms[m].NH, ms[m].NKV, T, P, n);
      char cs[32];
      snprintf(cs, sizeof cs, T > 1 ? "prefill T=%d" : "decode P=%d", T > 1 ? T : P);
      printf("%-11s %-16s %10.4f %10.4f %7.2f\n", ms[m].name, cs, a, b, a / b);
    }
  return 0;
}
