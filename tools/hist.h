/*
 * hist.h — a log-linear latency histogram in the spirit of HdrHistogram: values (unsigned
 * integers, e.g. nanoseconds or microseconds) fall into buckets that are exact below 2^S and,
 * above, split every power of two into 2^(S-1) equal sub-buckets, so any recorded value is
 * reported within a relative error of 2^-(S-1) (S = 8: 0.8 %). Mean, min and max are exact.
 *
 * Layout: counts[0 .. 2^S) hold the values 0 .. 2^S-1 one each; for v >= 2^S with top bit
 * position b (2^b <= v < 2^(b+1)) the shift is g = b - S + 1 and v falls into
 * counts[2^S + (g-1) * 2^(S-1) + (v >> g) - 2^(S-1)], a bucket of width 2^g.
 * Values above the configured maximum are clamped into the last bucket (and counted in
 * `clamped`); max still records the real value.
 *
 * Thread: none of its own; a histogram is used by one thread at a time. Memory: one
 * allocation in ss_hist_init (a few tens of KiB), none afterwards; record is O(1).
 */
#ifndef SS_CORE_HIST_H
#define SS_CORE_HIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct ss_hist {
  int sub_bits; /* S: 2^(S-1) sub-buckets per power of two */
  int max_bits; /* values up to 2^max_bits - 1 are bucketed without clamping */
  size_t n_buckets;
  uint64_t *counts;  /* owned; n_buckets entries */
  uint64_t total;    /* values recorded */
  uint64_t clamped;  /* values above the maximum (put in the last bucket) */
  uint64_t min, max; /* exact; min is UINT64_MAX while empty */
  long double sum;   /* exact enough for the mean of any realistic run */
} ss_hist;

/* Initialise h (caller-owned struct) with sub_bits S in 2..16 and max_bits in S+1..63,
 * e.g. (8, 40): 0.8 % precision for nanoseconds up to 18 minutes, 4.6k buckets (37 KiB).
 * Returns 0, SS_EINVAL or SS_ENOMEM. Free with ss_hist_free. */
int ss_hist_init(ss_hist *h, int sub_bits, int max_bits);
/* Release the counts (h may be re-initialised). NULL or a zeroed struct is fine. */
void ss_hist_free(ss_hist *h);
/* Forget every value; keep the configuration and the allocation. */
void ss_hist_reset(ss_hist *h);

/* Record one value (count times). O(1), no allocation. */
void ss_hist_record(ss_hist *h, uint64_t v);
void ss_hist_record_n(ss_hist *h, uint64_t v, uint64_t count);

/* Add every value of src into dst. Both must have the same sub_bits and max_bits:
 * returns 0, or SS_EINVAL (dst unchanged) when they differ. */
int ss_hist_merge(ss_hist *dst, const ss_hist *src);

/* Exact mean (0 when empty). */
double ss_hist_mean(const ss_hist *h);
/* The value at percentile p in [0, 100]: the highest value equivalent to the bucket that
 * holds the ceil(p/100 * total)-th smallest value, capped to [min, max] so that p=0 gives
 * the exact min and p=100 the exact max. 0 when empty. */
uint64_t ss_hist_percentile(const ss_hist *h, double p);

/* Bucket helpers (exposed for tests): index of v, and the lowest / highest value that maps
 * to bucket i. */
size_t ss_hist_index(const ss_hist *h, uint64_t v);
uint64_t ss_hist_bucket_low(const ss_hist *h, size_t i);
uint64_t ss_hist_bucket_high(const ss_hist *h, size_t i);

#endif
