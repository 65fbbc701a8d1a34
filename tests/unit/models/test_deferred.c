/*
 * test_deferred.c — nn/deferred.h, weights whose f32 values are made only when read: products of
 * every compute dtype (f32, bf16 where the CPU has it, int8) over a deferred BF16 or F16 weight,
 * whole and through a sub-view (a fused weight's slice), equal bit for bit the same products over
 * the widened f32 copy; the f32 path that reads the weight itself (no brgemm: the AVX2 cap)
 * makes it real first; making real gives exactly the widened values, once; reading before that
 * faults (checked in a child process) instead of seeing zeros; a moved or dropped weight is
 * unmapped and no longer counted.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "models/nn/deferred.h"
#include "models/nn/matmul.h"

static float frand(unsigned *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)(*s >> 8) / 16777216.0f - 0.5f;
}

/* A narrow array of n values (dt BF16 or F16) and its exact f32 widening. */
static void narrow(ss_dtype dt, size_t n, unsigned seed, void **src, float **wide) {
  float *f = malloc(n * sizeof *f);
  *src = malloc(n * 2);
  *wide = malloc(n * sizeof **wide);
  for (size_t i = 0; i < n; i++) f[i] = frand(&seed) * 2.0f;
  ss_from_f32(dt, f, *src, n);
  ss_to_f32(dt, *src, *wide, n);
  free(f);
}

/* Products over the deferred W (owner o) and over its widened copy (owner o2) are the same. */
static void products(ss_dtype sdt, ss_mm_dtype dt, int tb) {
  enum { K = 200, N = 136 };
  static int o, o2;
  void *src;
  float *wide;
  narrow(sdt, (size_t)K * N, 3u + (unsigned)dt, &src, &wide);
  float *W = ss_weight_deferred_new(&o, src, sdt, (size_t)K * N);
  CHECK(W != NULL);
  if (W == NULL) return;
  CHECK(ss_weights_deferred_bytes() == (size_t)K * N * sizeof(float));
  ss_compute c1 = {dt, &o, NULL}, c2 = {dt, &o2, NULL};
  int ldw = tb ? K : N, ok = 1;
  unsigned s = 9;
  int rows[] = {1, 3, 8, 17, 64};
  for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
    int M = rows[r];
    float *x = malloc((size_t)M * K * sizeof *x), *y1 = malloc((size_t)M * N * sizeof *y1),
          *y2 = malloc((size_t)M * N * sizeof *y2);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = frand(&s);
    ss_mm_trans t = tb ? SS_MM_T : SS_MM_N;
    ss_matmul_w(&c1, t, M, N, K, x, K, W, ldw, 0.0f, y1, N);
    ss_matmul_w(&c2, t, M, N, K, x, K, wide, ldw, 0.0f, y2, N);
    ok &= memcmp(y1, y2, (size_t)M * N * sizeof *y1) == 0;
    /* a slice: the middle 40 output channels, as a fused weight's q/k/v views read it */
    const float *W1 = tb ? W + (size_t)48 * K : W + 48,
                *W2 = tb ? wide + (size_t)48 * K : wide + 48;
    ss_matmul_w(&c1, t, M, 40, K, x, K, W1, ldw, 0.0f, y1, 40);
    ss_matmul_w(&c2, t, M, 40, K, x, K, W2, ldw, 0.0f, y2, 40);
    ok &= memcmp(y1, y2, (size_t)M * 40 * sizeof *y1) == 0;
    free(x), free(y1), free(y2);
  }
  CHECK(ok);
  int real = ss_weights_deferred_bytes() == 0; /* read in f32 by a product: made real */
  printf("  %s weight, compute %s, %s: products equal the widened copy's bit for bit%s\n",
         sdt == SS_DTYPE_BF16 ? "bf16" : "f16",
         dt == SS_MM_F32    ? "f32"
         : dt == SS_MM_BF16 ? "bf16"
                            : "int8",
         tb ? "[N,K]" : "[K,N]",
         real ? " (made real: products read the f32 weight here)" : " (not made real)");
  if (!ss_matmul_w_always_packed(&c1)) CHECK(real); /* the path that reads W made it real */
  CHECK(ss_weights_deferred_make(&o) == 0);
  CHECK(ss_weights_deferred_bytes() == 0);
  CHECK(memcmp(W, wide, (size_t)K * N * sizeof *W) == 0);
  CHECK(ss_weights_deferred_make(&o) == 0); /* again: nothing to do */
  ss_matmul_weights_drop(&o);
  ss_matmul_weights_drop(&o2);
  free(src), free(wide);
}

/* Before it is made real, the f32 array cannot be read: a child that reads it dies of SIGSEGV. */
static void unread_faults(void) {
  static int o;
  void *src;
  float *wide;
  narrow(SS_DTYPE_BF16, 4096, 1u, &src, &wide);
  volatile float *W = ss_weight_deferred_new(&o, src, SS_DTYPE_BF16, 4096);
  CHECK(W != NULL);
  float v[4] = {0};
  CHECK(ss_weight_deferred_read((const float *)W + 10, 4, v) == 1 &&
        memcmp(v, wide + 10, sizeof v) == 0);
  pid_t pid = fork();
  if (pid == 0) { /* (under ASan its SEGV handler reports and exits 1: quiet, and also fine) */
    int nul = open("/dev/null", O_WRONLY);
    if (nul >= 0) dup2(nul, 2);
    signal(SIGSEGV, SIG_DFL);
    float r = W[100]; /* faults */
    _exit(r == 0.0f ? 2 : 3);
  }
  int st = 0;
  CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
  int got = WIFEXITED(st) && (WEXITSTATUS(st) == 2 || WEXITSTATUS(st) == 3);
  CHECK(!got && !(WIFEXITED(st) && WEXITSTATUS(st) == 0));
  printf("  reading a deferred weight before it is made real: %s\n",
         WIFSIGNALED(st) ? strsignal(WTERMSIG(st))
         : got           ? "read a value (wrong)"
                         : "the sanitizer's fault report");
  const void *lo;
  size_t len;
  CHECK(ss_weight_deferred_source((const float *)W + 8, 16, &lo, &len) == 0);
  CHECK(lo == (const char *)src + 16 && len == 32);
  CHECK(ss_weight_deferred_make_at((const float *)W + 4000) == 0);
  CHECK(W[100] == wide[100] && ss_weight_deferred_read((const float *)W, 4, v) == 0);
  ss_weight_deferred_moved((const float *)W); /* the optimizer copied it: unmapped */
  CHECK(ss_weight_deferred_source((const float *)W, 1, &lo, &len) == -1);
  float *W2 = ss_weight_deferred_new(&o, src, SS_DTYPE_BF16, 4096);
  CHECK(W2 != NULL && ss_weights_deferred_bytes() == 4096 * sizeof(float));
  ss_weight_deferred_moved(W2); /* never made real: uncounted as it goes */
  CHECK(ss_weights_deferred_bytes() == 0);
  CHECK(ss_weight_deferred_new(&o, src, SS_DTYPE_F32, 16) == NULL); /* only narrow dtypes */
  ss_matmul_weights_drop(&o);
  free(src), free(wide);
}

int main(void) {
  char err[200];
  int bf16 = ss_matmul_bf16_check(err, sizeof err) == 0;
  ss_dtype sdts[] = {SS_DTYPE_BF16, SS_DTYPE_F16};
  for (int i = 0; i < 2; i++)
    for (int tb = 0; tb < 2; tb++) {
      products(sdts[i], SS_MM_F32, tb);
      products(sdts[i], SS_MM_INT8, tb);
      if (bf16) products(sdts[i], SS_MM_BF16, tb);
    }
  if (!bf16) printf("  compute bf16 skipped: %s\n", err);
  unread_faults();
  TEST_MAIN_END();
}
