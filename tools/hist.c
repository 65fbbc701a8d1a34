/*
 * hist.c — the log-linear histogram of hist.h. See the header for the bucket layout.
 * Thread: caller's; no locks. Allocation: once, in ss_hist_init.
 */
#include "hist.h"

#include <stdlib.h>
#include <string.h>

#include "splitserve.h"

static int top_bit(uint64_t v) { return 63 - __builtin_clzll(v); } /* v != 0 */

int ss_hist_init(ss_hist *h, int sub_bits, int max_bits) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
  if (sub_bits < 2 || sub_bits > 16 || max_bits <= sub_bits || max_bits > 63) return SS_EINVAL;
  h->sub_bits = sub_bits;
  h->max_bits = max_bits;
  /* groups g = 1 .. max_bits - sub_bits, each 2^(S-1) buckets, after the 2^S exact ones */
  h->n_buckets =
      ((size_t)1 << sub_bits) + (size_t)(max_bits - sub_bits) * ((size_t)1 << (sub_bits - 1));
  h->counts = calloc(h->n_buckets, sizeof *h->counts);
  return h->counts ? 0 : SS_ENOMEM;
}

void ss_hist_free(ss_hist *h) {
  if (!h) return;
  free(h->counts);
  h->counts = NULL;
  h->n_buckets = 0;
}

void ss_hist_reset(ss_hist *h) {
  if (h->counts) memset(h->counts, 0, h->n_buckets * sizeof *h->counts);
  h->total = h->clamped = 0;
  h->min = UINT64_MAX;
  h->max = 0;
  h->sum = 0;
}

size_t ss_hist_index(const ss_hist *h, uint64_t v) {
  int s = h->sub_bits;
  if (v < ((uint64_t)1 << s)) return (size_t)v;
  if (v >> h->max_bits) return h->n_buckets - 1;
  int g = top_bit(v) - s + 1;
  size_t half = (size_t)1 << (s - 1);
  return ((size_t)1 << s) + (size_t)(g - 1) * half + (size_t)(v >> g) - half;
}

uint64_t ss_hist_bucket_low(const ss_hist *h, size_t i) {
  int s = h->sub_bits;
  size_t full = (size_t)1 << s, half = full >> 1;
  if (i < full) return (uint64_t)i;
  size_t j = i - full;
  int g = (int)(j / half) + 1;
  uint64_t m = (uint64_t)(j % half + half);
  return m << g;
}

uint64_t ss_hist_bucket_high(const ss_hist *h, size_t i) {
  int s = h->sub_bits;
  size_t full = (size_t)1 << s, half = full >> 1;
  if (i < full) return (uint64_t)i;
  int g = (int)((i - full) / half) + 1;
  return ss_hist_bucket_low(h, i) + ((uint64_t)1 << g) - 1;
}

void ss_hist_record_n(ss_hist *h, uint64_t v, uint64_t count) {
  if (count == 0) return;
  if (v >> h->max_bits) h->clamped += count;
  h->counts[ss_hist_index(h, v)] += count;
  h->total += count;
  h->sum += (long double)v * (long double)count;
  if (v < h->min) h->min = v;
  if (v > h->max) h->max = v;
}

void ss_hist_record(ss_hist *h, uint64_t v) { ss_hist_record_n(h, v, 1); }

int ss_hist_merge(ss_hist *dst, const ss_hist *src) {
  if (dst->sub_bits != src->sub_bits || dst->max_bits != src->max_bits) return SS_EINVAL;
  if (src->total == 0) return 0;
  for (size_t i = 0; i < dst->n_buckets; i++) dst->counts[i] += src->counts[i];
  dst->total += src->total;
  dst->clamped += src->clamped;
  dst->sum += src->sum;
  if (src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
  return 0;
}

double ss_hist_mean(const ss_hist *h) {
  return h->total ? (double)(h->sum / (long double)h->total) : 0.0;
}

uint64_t ss_hist_percentile(const ss_hist *h, double p) {
  if (h->total == 0) return 0;
  if (p <= 0) return h->min;
  if (p >= 100) return h->max;
  double r = p / 100.0 * (double)h->total;
  uint64_t rank = (uint64_t)r;
  if ((double)rank < r) rank++;
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < h->n_buckets; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = ss_hist_bucket_high(h, i);
      if (v > h->max) v = h->max;
      if (v < h->min) v = h->min;
      return v;
    }
  }
  return h->max;
}
