/*
 * test_hist.c — the log-linear histogram: bucket layout (contiguous, monotonic, bounded
 * relative error), percentiles against exact order statistics, mean/min/max, clamping,
 * merge and reset.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "hist.h"
#include "splitserve.h"

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void test_layout(void) {
  ss_hist h;
  CHECK_EQ_INT(ss_hist_init(&h, 8, 40), 0);
  CHECK_EQ_INT(h.n_buckets, 256 + 32 * 128);
  /* buckets tile [0, 2^40) without gaps or overlaps */
  int ok = 1;
  for (size_t i = 0; i + 1 < h.n_buckets; i++) {
    if (ss_hist_bucket_high(&h, i) + 1 != ss_hist_bucket_low(&h, i + 1)) ok = 0;
    if (ss_hist_index(&h, ss_hist_bucket_low(&h, i)) != i) ok = 0;
    if (ss_hist_index(&h, ss_hist_bucket_high(&h, i)) != i) ok = 0;
  }
  CHECK(ok);
  CHECK_EQ_INT(ss_hist_bucket_high(&h, h.n_buckets - 1), ((uint64_t)1 << 40) - 1);
  /* exact below 2^S; relative width <= 2^-(S-1) above */
  for (uint64_t v = 0; v < 256; v++) CHECK_EQ_INT(ss_hist_index(&h, v), v);
  double worst = 0;
  for (size_t i = 256; i < h.n_buckets; i++) {
    double w = (double)(ss_hist_bucket_high(&h, i) - ss_hist_bucket_low(&h, i) + 1);
    double rel = w / (double)ss_hist_bucket_low(&h, i);
    if (rel > worst) worst = rel;
  }
  CHECK(worst <= 1.0 / 128 + 1e-12);
  CHECK(ss_hist_init(&(ss_hist){0}, 1, 40) == SS_EINVAL);
  CHECK(ss_hist_init(&(ss_hist){0}, 8, 8) == SS_EINVAL);
  ss_hist_free(&h);
}

static void test_stats(void) {
  ss_hist h;
  CHECK_EQ_INT(ss_hist_init(&h, 8, 40), 0);
  CHECK_EQ_INT(ss_hist_percentile(&h, 50), 0);
  CHECK(ss_hist_mean(&h) == 0);
  enum { N = 100000 };
  uint64_t *v = malloc(N * sizeof *v);
  long double sum = 0;
  for (int i = 0; i < N; i++) {
    /* log-uniform-ish latencies from 1 us to ~1 s in ns */
    v[i] = 1000 + (rng() % (1ull << (10 + rng() % 20)));
    sum += v[i];
    ss_hist_record(&h, v[i]);
  }
  qsort(v, N, sizeof *v, cmp_u64);
  CHECK_EQ_INT(h.total, N);
  CHECK_EQ_INT(h.min, v[0]);
  CHECK_EQ_INT(h.max, v[N - 1]);
  CHECK(fabs(ss_hist_mean(&h) - (double)(sum / N)) < 1e-6 * (double)(sum / N));
  double ps[] = {1, 10, 50, 90, 99, 99.9, 99.99};
  for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
    size_t rank = (size_t)ceil(ps[k] / 100 * N);
    double exact = (double)v[rank - 1];
    double got = (double)ss_hist_percentile(&h, ps[k]);
    if (!(got >= exact && got <= exact * (1 + 1.0 / 128) + 1)) {
      fprintf(stderr, "p%g: exact %.0f got %.0f\n", ps[k], exact, got);
      CHECK(0);
    } else {
      CHECK(1);
    }
  }
  CHECK_EQ_INT(ss_hist_percentile(&h, 0), v[0]);
  CHECK_EQ_INT(ss_hist_percentile(&h, 100), v[N - 1]);
  free(v);

  /* single value: every percentile is that value exactly */
  ss_hist_reset(&h);
  CHECK_EQ_INT(h.total, 0);
  ss_hist_record_n(&h, 100000123, 7);
  CHECK_EQ_INT(ss_hist_percentile(&h, 50), 100000123);
  CHECK_EQ_INT(ss_hist_percentile(&h, 99), 100000123);
  CHECK(ss_hist_mean(&h) == 100000123.0);
  ss_hist_free(&h);
}

static void test_clamp_merge(void) {
  ss_hist a, b, c;
  CHECK_EQ_INT(ss_hist_init(&a, 7, 20), 0);
  CHECK_EQ_INT(ss_hist_init(&b, 7, 20), 0);
  CHECK_EQ_INT(ss_hist_init(&c, 8, 20), 0);
  ss_hist_record(&a, 5);
  ss_hist_record(&a, 1u << 25); /* above 2^20: clamped */
  CHECK_EQ_INT(a.clamped, 1);
  CHECK_EQ_INT(a.max, 1u << 25);
  CHECK_EQ_INT(ss_hist_percentile(&a, 100), 1u << 25);
  CHECK_EQ_INT(ss_hist_percentile(&a, 50), 5);
  for (int i = 1; i <= 100; i++) ss_hist_record(&b, (uint64_t)i * 1000);
  CHECK_EQ_INT(ss_hist_merge(&a, &b), 0);
  CHECK_EQ_INT(a.total, 102);
  CHECK_EQ_INT(a.min, 5);
  CHECK_EQ_INT(a.max, 1u << 25);
  CHECK_EQ_INT(a.clamped, 1);
  uint64_t p50 = ss_hist_percentile(&a, 50); /* 51st smallest = 50000 */
  CHECK(p50 >= 50000 && p50 <= 50000 + 50000 / 64);
  CHECK_EQ_INT(ss_hist_merge(&a, &c), SS_EINVAL);
  CHECK_EQ_INT(a.total, 102);
  ss_hist_free(&a);
  ss_hist_free(&b);
  ss_hist_free(&c);
  ss_hist_free(&c); /* twice is fine */
}

int main(void) {
  test_layout();
  test_stats();
  test_clamp_merge();
  TEST_MAIN_END();
}
