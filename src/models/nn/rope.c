/*
 * rope.c — see rope.h. Angles in double (positions up to ~1e5 keep float-accurate sin/cos);
 * each (position, pair) angle is computed once and applied to every batch row and head.
 * Thread: the caller's worker thread; reentrant.
 */
#include "models/nn/rope.h"

#include <math.h>
#include <stddef.h>

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
