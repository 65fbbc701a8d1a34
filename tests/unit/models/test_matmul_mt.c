/*
 * test_matmul_mt.c — ss_matmul called from several threads at once on the same problems (one
 * cached oneDNN primitive shared by every thread) must give each thread exactly the answer a lone
 * call gives, and that answer must match a naive double-precision product.
 *
 * Why: oneDNN's library-managed scratchpad is shared by concurrent executions of one primitive,
 * so AVX-512 brgemm kernels overwrote each other's packed buffers (wrong answers under load on
 * AVX-512 machines, none on AVX2). The shapes below are ones where the blocked kernels engage
 * (hidden >= 512), with every transpose pair the trunks use (forward, both backward products),
 * alpha/beta variants, few-row products (the hand-written kernels), and model weights packed once
 * (f32 brgemm layout) and shared by every thread, their packing raced on first use, plain and
 * with a fused bias + GELU epilogue.
 *
 * Also: the activations' f32 -> bf16 conversion of every bf16 product (avx512_bf16's
 * VCVTNEPS2BF16 where the CPU has it) equals the portable round-to-nearest-even loop on normal
 * numbers, ties, NaN, infinities, overflow and odd row lengths (denormals: zero, as documented).
 *
 * The test prints oneDNN's effective ISA: run it under ONEDNN_MAX_CPU_ISA (make test does, for
 * each level this CPU has: tests/isa_levels.sh) to cover the lower levels' kernels too.
 * Thread: main + NTHREADS test threads, each sized like a worker (ss_compute_thread_init(1)).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/nn/matmul.h"
#include "models/nn/matmul_int.h"

#define NTHREADS 4
#define ROUNDS 6

typedef struct problem {
  ss_mm_trans ta, tb;
  int M, N, K;
  float alpha, beta;
  int w; /* 1: a model weight (ss_matmul_w: packed for brgemm, one B shared by the threads);
          * 2: the same with a bias + GELU epilogue (ss_matmul_w_ep) */
} problem;

static const problem problems[] = {
    {SS_MM_N, SS_MM_N, 128, 768, 768, 1.0f, 0.0f, 0},  /* GPT-2 prefill (Conv1D: B as stored) */
    {SS_MM_N, SS_MM_T, 128, 896, 512, 1.0f, 0.0f, 0},  /* Llama prefill (nn.Linear: B^T) */
    {SS_MM_N, SS_MM_T, 64, 512, 1024, 1.0f, 1.0f, 0},  /* accumulate (beta 1) */
    {SS_MM_T, SS_MM_N, 768, 512, 64, 1.0f, 1.0f, 0},   /* weight gradient dW += X^T dY */
    {SS_MM_N, SS_MM_N, 96, 640, 512, 0.125f, 0.0f, 0}, /* attention-like scaled product */
    {SS_MM_N, SS_MM_T, 4, 1024, 768, 1.0f, 0.0f, 0},   /* a decode batch (few-row kernels) */
    {SS_MM_N, SS_MM_N, 1, 768, 768, 1.0f, 0.0f, 0},    /* one decode token (oneDNN gemv) */
    {SS_MM_N, SS_MM_N, 128, 768, 512, 1.0f, 1.0f, 1},  /* packed weight, residual add */
    {SS_MM_N, SS_MM_N, 6, 1024, 768, 1.0f, 1.0f, 1},   /* packed weight, decode rows */
    {SS_MM_N, SS_MM_N, 64, 1024, 512, 1.0f, 0.0f, 2},  /* packed weight, bias + GELU fused */
};
static int owner; /* of the packed weights */
#define NPROB (sizeof problems / sizeof problems[0])

typedef struct operands {
  float *A, *B, *C0; /* inputs; C0: the initial C (beta != 0) */
  float *lone;       /* the answer of a lone call */
  int lda, ldb, ldc;
} operands;

static operands ops[NPROB][NTHREADS];

static uint32_t rng_state = 12345u;
static float frand(void) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return (float)((rng_state >> 8) & 0xffff) / 65536.0f - 0.5f;
}

static float *randv(size_t n) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = frand();
  return v;
}

static void run(const problem *p, const operands *o, float *C) {
  size_t csz = (size_t)p->M * (size_t)o->ldc;
  memcpy(C, o->C0, csz * sizeof *C);
  if (p->w) {
    ss_compute cc = {SS_MM_F32, &owner, NULL};
    ss_mm_epilogue ep = {o->C0, SS_ACT_GELU_TANH, NULL, 0}; /* C0's first row: the bias */
    ss_matmul_w_ep(&cc, p->tb, p->M, p->N, p->K, o->A, o->lda, o->B, o->ldb, p->w == 2 ? &ep : NULL,
                   p->beta, C, o->ldc);
    return;
  }
  ss_matmul(p->ta, p->tb, p->M, p->N, p->K, p->alpha, o->A, o->lda, o->B, o->ldb, p->beta, C,
            o->ldc);
}

/* max |C - naive| relative to the product's magnitude. */
static double naive_err(const problem *p, const operands *o, const float *C) {
  double worst = 0;
  for (int i = 0; i < p->M; i++)
    for (int j = 0; j < p->N; j++) {
      double s = 0, mag = 0;
      for (int k = 0; k < p->K; k++) {
        double a = p->ta ? o->A[(size_t)k * (size_t)o->lda + (size_t)i]
                         : o->A[(size_t)i * (size_t)o->lda + (size_t)k];
        double b = p->tb ? o->B[(size_t)j * (size_t)o->ldb + (size_t)k]
                         : o->B[(size_t)k * (size_t)o->ldb + (size_t)j];
        s += a * b;
        mag += fabs(a * b);
      }
      size_t c = (size_t)i * (size_t)o->ldc + (size_t)j;
      double want = p->alpha * s + p->beta * o->C0[c];
      double e = fabs(C[c] - want) / (fabs(p->alpha) * mag + fabs(p->beta * o->C0[c]) + 1e-6);
      if (e > worst) worst = e;
    }
  return worst;
}

static int mismatches[NTHREADS];

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg;
  ss_compute_thread_init(1);
  for (int r = 0; r < ROUNDS; r++)
    for (size_t q = 0; q < NPROB; q++) {
      /* Threads walk the problems in different orders, so different shapes overlap too. */
      size_t pi = (q + (size_t)t + (size_t)r) % NPROB;
      const problem *p = &problems[pi];
      const operands *o = &ops[pi][t];
      size_t csz = (size_t)p->M * (size_t)o->ldc;
      float *C = malloc(csz * sizeof *C);
      run(p, o, C);
      if (memcmp(C, o->lone, csz * sizeof *C) != 0) mismatches[t]++;
      free(C);
    }
  return NULL;
}

static float f_of(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* The avx512_bf16 conversion against the portable one (skipped, saying so, without it). */
static void check_bf16_conversion(void) {
  enum { M = 3, K = 77, LDA = 80 }; /* K: 4 vectors + a masked tail */
  static const uint32_t special[] = {
      0x3F808000u, /* 1 + 2^-8: a tie, stays 1.0 (even) */
      0x3F818000u, /* a tie that rounds up to the even neighbour */
      0x3F80FFFFu, /* just under a tie */
      0x7F7FFFFFu, /* FLT_MAX: rounds to +inf */
      0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, /* inf, -inf, qNaN, sNaN */
      0x00000000u, 0x80000000u, 0x3F800000u, 0xBF7FFFFFu};
  float *A = malloc((size_t)M * LDA * sizeof *A);
  uint16_t fast[M * K], slow[M * K];
  unsigned st = 7;
  for (size_t i = 0; i < (size_t)M * LDA; i++) {
    st = st * 1103515245u + 12345u;
    A[i] = ((float)((st >> 8) & 0xffff) / 32768.0f - 1.0f) * 1e3f;
  }
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) A[LDA + i] = f_of(special[i]);
  A[2 * LDA + K - 1] = f_of(0x3F808000u); /* a tie in the masked tail */
  int ran = ss__mm_to_bf16(A, LDA, M, K, fast, 0);
  CHECK_EQ_INT(ss__mm_to_bf16(A, LDA, M, K, slow, 1), 0);
  if (!ran) {
    printf("bf16 conversion: skipped (this CPU has no avx512_bf16; the portable loop ran)\n");
  } else {
    int diff = 0;
    for (size_t i = 0; i < (size_t)M * K; i++) {
      int nan_f = (fast[i] & 0x7fffu) > 0x7f80u, nan_s = (slow[i] & 0x7fffu) > 0x7f80u;
      if (nan_f != nan_s || (!nan_f && fast[i] != slow[i])) diff++;
    }
    printf("bf16 conversion: avx512_bf16 vs portable, %d of %d differ\n", diff, M * K);
    CHECK_EQ_INT(diff, 0);
    CHECK_EQ_INT(slow[K], 0x3F80); /* the tie stayed even */
    CHECK_EQ_INT(fast[K + 1], 0x3F82);
    CHECK_EQ_INT(fast[K + 3], 0x7F80);
  }
  free(A);
}

int main(void) {
  ss_compute_thread_init(1);
  check_bf16_conversion();
  const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
  printf("matmul engine: %s (ONEDNN_MAX_CPU_ISA=%s)\n", ss_matmul_engine_info(),
         cap ? cap : "unset");
  for (size_t pi = 0; pi < NPROB; pi++) {
    const problem *p = &problems[pi];
    for (int t = 0; t < NTHREADS; t++) {
      operands *o = &ops[pi][t];
      int arows = p->ta ? p->K : p->M, acols = p->ta ? p->M : p->K;
      int brows = p->tb ? p->N : p->K, bcols = p->tb ? p->K : p->N;
      o->lda = acols, o->ldb = bcols, o->ldc = p->N;
      o->A = randv((size_t)arows * (size_t)acols);
      o->B = p->w && t > 0 ? ops[pi][0].B : randv((size_t)brows * (size_t)bcols);
      o->C0 = randv((size_t)p->M * (size_t)p->N);
      o->lone = malloc((size_t)p->M * (size_t)p->N * sizeof(float));
      run(p, o, o->lone); /* alone: no other thread computes now */
      double e = p->w == 2 ? 0.0 : naive_err(p, o, o->lone);
      if (e > 1e-5)
        fprintf(stderr, "problem %zu thread %d: lone answer off the naive product by %.3g\n", pi, t,
                e);
      CHECK(e <= 1e-5);
    }
  }
  ss_matmul_weights_drop(&owner); /* the threads race to pack the shared weights again */
  pthread_t th[NTHREADS];
  for (int t = 0; t < NTHREADS; t++)
    CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) == 0);
  for (int t = 0; t < NTHREADS; t++) pthread_join(th[t], NULL);
  int wrong = 0;
  for (int t = 0; t < NTHREADS; t++) wrong += mismatches[t];
  printf("concurrent products differing from the lone answer: %d of %d\n", wrong,
         (int)(NTHREADS * ROUNDS * NPROB));
  CHECK_EQ_INT(wrong, 0);
  printf("packed weight bytes: %zu\n", ss_matmul_packed_bytes());
  ss_matmul_weights_drop(&owner);
  for (size_t pi = 0; pi < NPROB; pi++)
    for (int t = 0; t < NTHREADS; t++) {
      free(ops[pi][t].A), free(ops[pi][t].C0), free(ops[pi][t].lone);
      if (!problems[pi].w || t == 0) free(ops[pi][t].B);
    }
  TEST_MAIN_END();
}
