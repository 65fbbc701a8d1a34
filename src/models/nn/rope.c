/*
 * rope.c — see rope.h. Angles in double (positions up to ~1e5 keep float-accurate sin/cos);
 * each (position, pair) angle is computed once and applied to every batch row and head.
 * Thread: the caller's worker thread; reentrant.
 */
#include "models/nn/rope.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "splitserve.h"

/* sign +1: forward rotation, -1: inverse. theta_i = inv_freq[i], or base^(-2i/HS) when NULL. */
static void rotate(float *x, int ld, int B, int T, int NH, int HS, int pos0, float base,
                   const double *inv_freq, double sign) {
  const int half = HS / 2;
  for (int t = 0; t < T; t++) {
    for (int i = 0; i < half; i++) {
      double th = inv_freq != NULL ? inv_freq[i] : pow((double)base, -2.0 * i / (double)HS);
      double ang = (double)(pos0 + t) * th;
      float c = (float)cos(ang), s = (float)(sign * sin(ang));
      for (int b = 0; b < B; b++) {
        float *row = x + ((size_t)b * (size_t)T + (size_t)t) * (size_t)ld;
        for (int h = 0; h < NH; h++) {
          float *v = row + (size_t)h * (size_t)HS, a0 = v[i], a1 = v[i + half];
          v[i] = a0 * c - a1 * s;
          v[i + half] = a1 * c + a0 * s;
        }
      }
    }
  }
}

void ss_rope_forward(float *x, int ld, int B, int T, int NH, int HS, int pos0, float base) {
  rotate(x, ld, B, T, NH, HS, pos0, base, NULL, 1.0);
}

void ss_rope_backward(float *d, int ld, int B, int T, int NH, int HS, int pos0, float base) {
  rotate(d, ld, B, T, NH, HS, pos0, base, NULL, -1.0);
}

void ss_rope_forward_freq(float *x, int ld, int B, int T, int NH, int HS, int pos0,
                          const double *inv_freq) {
  rotate(x, ld, B, T, NH, HS, pos0, 0.0f, inv_freq, 1.0);
}

void ss_rope_backward_freq(float *d, int ld, int B, int T, int NH, int HS, int pos0,
                           const double *inv_freq) {
  rotate(d, ld, B, T, NH, HS, pos0, 0.0f, inv_freq, -1.0);
}

void ss_rope_forward_pos(float *x, int ld, int B, int T, int NH, int HS, const int *pos,
                         const unsigned char *stream, const double *inv_freq) {
  const int half = HS / 2;
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      float *row = x + ((size_t)b * (size_t)T + (size_t)t) * (size_t)ld;
      for (int i = 0; i < half; i++) {
        size_t s = stream != NULL ? stream[i] : 0;
        double ang = (double)pos[(s * (size_t)B + (size_t)b) * (size_t)T + (size_t)t] * inv_freq[i];
        float c = (float)cos(ang), sn = (float)sin(ang);
        for (int h = 0; h < NH; h++) {
          float *v = row + (size_t)h * (size_t)HS, a0 = v[i], a1 = v[i + half];
          v[i] = a0 * c - a1 * sn;
          v[i + half] = a1 * c + a0 * sn;
        }
      }
    }
  }
}

void ss_rope_inv_freq(double *inv_freq, int HS, double base) {
  for (int i = 0; i < HS / 2; i++) inv_freq[i] = pow(base, -2.0 * i / (double)HS);
}

/*
 * The gradient of a bias added before the rotation (k_proj's: Qwen2, attention_bias), given
 * dk' = dL/d(rotated keys) of one call (positions 0..T-1), added into db [NKV*D]. Mathematically db
 * = sum_t R_t^T dk'_t, and sum_t dk'_t = 0 exactly (per head, a constant added to every key shifts
 * each query's scores by the same amount, which softmax ignores), so db = sum_t (R_t^T - I) dk'_t.
 * Summing that form keeps only the part the rotation makes (small on the slow rotary frequencies)
 * instead of a difference of large terms, whose float32 rounding AdamW, dividing by sqrt(v), would
 * turn into steps of size lr. cos - 1 is computed as -2 sin^2(a/2) (no cancellation). Not with q/k
 * norms (the bias is then before the norm) nor soft-capping (the shift no longer cancels).
 */
int ss_rope_bias_backward(float *db, const float *dk, int B, int T, int NKV, int D,
                          const double *inv_freq) {
  const int half = D / 2, KV = NKV * D;
  double *acc = calloc((size_t)KV, sizeof *acc);
  if (acc == NULL) return SS_ENOMEM;
  for (int t = 0; t < T; t++) {
    for (int i = 0; i < half; i++) {
      double ang = (double)t * inv_freq[i], sh = sin(0.5 * ang);
      double cm1 = -2.0 * sh * sh, sn = sin(ang);
      for (int b = 0; b < B; b++) {
        const float *row = dk + ((size_t)b * (size_t)T + (size_t)t) * (size_t)KV;
        for (int h = 0; h < NKV; h++) {
          double d0 = row[h * D + i], d1 = row[h * D + i + half];
          acc[h * D + i] += cm1 * d0 + sn * d1;
          acc[h * D + i + half] += cm1 * d1 - sn * d0;
        }
      }
    }
  }
  for (int j = 0; j < KV; j++) db[j] += (float)acc[j];
  free(acc);
  return 0;
}
