/*
 * reference.c — the reference backend: every op written from its mathematical definition (the
 * contracts in the nn/ headers) as plain C loops that accumulate in double and round once to
 * float at the end: no BLAS, no SIMD, no threads, no call into the cpu kernels. Slow by design:
 * it is the numerical oracle the cpu backend (and any later one) is checked against, per op
 * (tests/unit/models/test_backends.c) and per architecture (tests/interop/
 * test_backend_reference.py). Weight products are f32 only (the registry refuses
 * backend=reference with compute=bf16|int8).
 *
 * Its allocator keeps books, so that the tests that serve every architecture on it prove the
 * seam's memory contract: each block carries a header (a tag and its size) in front of it;
 * releasing a block it did not allocate (malloc'd, or another backend's) aborts with a message,
 * and ss_backend_reference_live_bytes() says how many bytes are held, which must fall back to
 * what it was once a model and everything it handed out are freed.
 *
 * Thread: any (worker threads); the table is immutable, every op reentrant (the live count is
 * atomic); no op allocates (attention recomputes its scores instead of keeping them; its
 * backward keeps one row of score gradients in the caller's scratch, as float).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/nn/backend/backend.h"

/* op(X)[i][j] of a row-major X with row stride ld. */
static double at(const float *X, int ld, ss_mm_trans t, int i, int j) {
  return t == SS_MM_N ? (double)X[(size_t)i * (size_t)ld + (size_t)j]
                      : (double)X[(size_t)j * (size_t)ld + (size_t)i];
}

static void ref_matmul(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0.0;
      float *c = C + (size_t)i * (size_t)ldc + (size_t)j;
      for (int k = 0; k < K; k++) s += at(A, lda, ta, i, k) * at(B, ldb, tb, k, j);
      s *= (double)alpha;
      if (beta != 0.0f) s += (double)beta * (double)*c;
      *c = (float)s;
    }
}

static void ref_matmul_w(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K, const float *A,
                         int lda, const float *W, int ldw, float beta, float *C, int ldc) {
  (void)cc; /* f32 only */
  ref_matmul(SS_MM_N, tb, M, N, K, 1.0f, A, lda, W, ldw, beta, C, ldc);
}

/* W(o, c): the weight from input c to output o. */
static double wt(const float *W, int C, int OC, ss_w_layout layout, int o, int c) {
  return layout == SS_W_OUT_IN ? (double)W[(size_t)o * (size_t)C + (size_t)c]
                               : (double)W[(size_t)c * (size_t)OC + (size_t)o];
}

static void ref_linear_forward(const ss_compute *cc, float *y, const float *x, const float *W,
                               const float *b, int BT, int C, int OC, ss_w_layout layout,
                               int accumulate) {
  (void)cc;
  for (int r = 0; r < BT; r++)
    for (int o = 0; o < OC; o++) {
      float *yo = y + (size_t)r * (size_t)OC + (size_t)o;
      double s = accumulate ? (double)*yo : 0.0;
      if (b != NULL) s += (double)b[o];
      for (int c = 0; c < C; c++)
        s += (double)x[(size_t)r * (size_t)C + (size_t)c] * wt(W, C, OC, layout, o, c);
      *yo = (float)s;
    }
}

static void ref_bias_backward(float *db, const float *dy, int ldy, int BT, int n) {
  for (int j = 0; j < n; j++) {
    double s = (double)db[j];
    for (int r = 0; r < BT; r++) s += (double)dy[(size_t)r * (size_t)ldy + (size_t)j];
    db[j] = (float)s;
  }
}

static void ref_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                                const float *W, int BT, int C, int OC, ss_w_layout layout) {
  if (dW != NULL)
    for (int o = 0; o < OC; o++)
      for (int c = 0; c < C; c++) {
        size_t i = layout == SS_W_OUT_IN ? (size_t)o * (size_t)C + (size_t)c
                                         : (size_t)c * (size_t)OC + (size_t)o;
        double s = (double)dW[i];
        for (int r = 0; r < BT; r++)
          s += (double)dy[(size_t)r * (size_t)OC + (size_t)o] *
               (double)x[(size_t)r * (size_t)C + (size_t)c];
        dW[i] = (float)s;
      }
  if (db != NULL) ref_bias_backward(db, dy, OC, BT, OC);
  if (dx != NULL)
    for (int r = 0; r < BT; r++)
      for (int c = 0; c < C; c++) {
        double s = 0.0;
        for (int o = 0; o < OC; o++)
          s += (double)dy[(size_t)r * (size_t)OC + (size_t)o] * wt(W, C, OC, layout, o, c);
        dx[(size_t)r * (size_t)C + (size_t)c] = (float)s;
      }
}

/* Mean and 1/sqrt(var + eps) of one row, in double. */
static void row_stats(const float *xr, int C, float eps, double *mean, double *rstd) {
  double m = 0.0, v = 0.0;
  for (int j = 0; j < C; j++) m += (double)xr[j];
  m /= (double)C;
  for (int j = 0; j < C; j++) v += ((double)xr[j] - m) * ((double)xr[j] - m);
  *mean = m;
  *rstd = 1.0 / sqrt(v / (double)C + (double)eps);
}

static void ref_layernorm_forward(float *out, float *mean, float *rstd, const float *x,
                                  const float *w, const float *b, int BT, int C, float eps) {
  for (int r = 0; r < BT; r++) {
    const float *xr = x + (size_t)r * (size_t)C;
    double m, rs;
    row_stats(xr, C, eps, &m, &rs);
    if (mean != NULL) mean[r] = (float)m;
    if (rstd != NULL) rstd[r] = (float)rs;
    for (int j = 0; j < C; j++)
      out[(size_t)r * (size_t)C + (size_t)j] =
          (float)(((double)xr[j] - m) * rs * (double)w[j] + (double)b[j]);
  }
}

/* d xhat_j = dout_j w_j;  dx_j = rstd (dxhat_j - mean(dxhat) - xhat_j mean(dxhat xhat)). */
static void ref_layernorm_backward(float *dx, float *dw, float *db, const float *dout,
                                   const float *x, const float *w, const float *mean,
                                   const float *rstd, int BT, int C) {
  for (int j = 0; j < C; j++) { /* parameter gradients: sums over rows */
    double sw = (double)dw[j], sb = (double)db[j];
    for (int r = 0; r < BT; r++) {
      size_t i = (size_t)r * (size_t)C + (size_t)j;
      double xhat = ((double)x[i] - (double)mean[r]) * (double)rstd[r];
      sw += (double)dout[i] * xhat;
      sb += (double)dout[i];
    }
    dw[j] = (float)sw;
    db[j] = (float)sb;
  }
  for (int r = 0; r < BT; r++) {
    const size_t o = (size_t)r * (size_t)C;
    const double m = (double)mean[r], rs = (double)rstd[r];
    double a = 0.0, c = 0.0;
    for (int j = 0; j < C; j++) {
      double xhat = ((double)x[o + (size_t)j] - m) * rs, g = (double)dout[o + (size_t)j] * w[j];
      a += g;
      c += g * xhat;
    }
    a /= (double)C;
    c /= (double)C;
    for (int j = 0; j < C; j++) {
      double xhat = ((double)x[o + (size_t)j] - m) * rs, g = (double)dout[o + (size_t)j] * w[j];
      dx[o + (size_t)j] = (float)((double)dx[o + (size_t)j] + rs * (g - a - xhat * c));
    }
  }
}

static void ref_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int BT,
                                int C, float eps, int one_plus) {
  for (int r = 0; r < BT; r++) {
    const float *xr = x + (size_t)r * (size_t)C;
    double ss = 0.0, rs;
    for (int j = 0; j < C; j++) ss += (double)xr[j] * (double)xr[j];
    rs = 1.0 / sqrt(ss / (double)C + (double)eps);
    if (rstd != NULL) rstd[r] = (float)rs;
    for (int j = 0; j < C; j++)
      out[(size_t)r * (size_t)C + (size_t)j] =
          (float)((double)xr[j] * rs * ((one_plus ? 1.0 : 0.0) + (double)w[j]));
  }
}

/* y_j = x_j r g_j, r = (mean x^2 + eps)^-1/2:  dx_j = r g_j dy_j - x_j r^3 / C sum_k dy_k g_k x_k.
 */
static void ref_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                                 const float *w, const float *rstd, int BT, int C, int one_plus) {
  const double add = one_plus ? 1.0 : 0.0;
  for (int j = 0; j < C; j++) {
    double s = (double)dw[j];
    for (int r = 0; r < BT; r++) {
      size_t i = (size_t)r * (size_t)C + (size_t)j;
      s += (double)dout[i] * (double)x[i] * (double)rstd[r];
    }
    dw[j] = (float)s;
  }
  for (int r = 0; r < BT; r++) {
    const size_t o = (size_t)r * (size_t)C;
    const double rs = (double)rstd[r];
    double dot = 0.0;
    for (int j = 0; j < C; j++)
      dot += (double)dout[o + (size_t)j] * (add + (double)w[j]) * (double)x[o + (size_t)j];
    for (int j = 0; j < C; j++) {
      size_t i = o + (size_t)j;
      dx[i] = (float)((double)dx[i] + rs * (add + (double)w[j]) * (double)dout[i] -
                      (double)x[i] * rs * rs * rs * dot / (double)C);
    }
  }
}

#define SQRT_2_OVER_PI 0.79788456080286535588
#define INV_SQRT2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794

static void ref_gelu_tanh_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    double v = (double)x[k];
    out[k] = (float)(0.5 * v * (1.0 + tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))));
  }
}

static void ref_gelu_tanh_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    double v = (double)x[k], u = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v), t = tanh(u);
    double du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
    d[k] = (float)((double)d[k] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du));
  }
}

static void ref_gelu_erf_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    double v = (double)x[k];
    out[k] = (float)(0.5 * v * (1.0 + erf(v * INV_SQRT2)));
  }
}

static void ref_gelu_erf_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    double v = (double)x[k];
    double g = 0.5 * (1.0 + erf(v * INV_SQRT2)) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
    d[k] = (float)((double)d[k] * g);
  }
}

/* The epilogue in double: y = (accumulate ? y : 0) + mul * act(x W + bias). */
static void ref_linear_forward_ep(const ss_compute *cc, float *y, const float *x, const float *W,
                                  const ss_mm_epilogue *ep, int BT, int C, int OC,
                                  ss_w_layout layout, int accumulate) {
  (void)cc;
  for (int r = 0; r < BT; r++)
    for (int o = 0; o < OC; o++) {
      float *yo = y + (size_t)r * (size_t)OC + (size_t)o;
      double s = ep && ep->bias ? (double)ep->bias[o] : 0.0;
      for (int c = 0; c < C; c++)
        s += (double)x[(size_t)r * (size_t)C + (size_t)c] * wt(W, C, OC, layout, o, c);
      ss_mm_act act = ep ? ep->act : SS_ACT_NONE;
      if (act == SS_ACT_GELU_TANH)
        s = 0.5 * s * (1.0 + tanh(SQRT_2_OVER_PI * (s + 0.044715 * s * s * s)));
      else if (act == SS_ACT_GELU_ERF)
        s = 0.5 * s * (1.0 + erf(s * INV_SQRT2));
      else if (act == SS_ACT_SILU)
        s = s / (1.0 + exp(-s));
      if (ep && ep->mul) s *= (double)ep->mul[(size_t)r * (size_t)ep->ldm + (size_t)o];
      *yo = (float)(accumulate ? (double)*yo + s : s);
    }
}

static void ref_relu_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = x[k] > 0.0f ? x[k] : 0.0f;
}

static void ref_relu_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (!(x[k] > 0.0f)) d[k] = 0.0f;
}

static void ref_silu_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    double v = (double)x[k];
    out[k] = (float)(v / (1.0 + exp(-v)));
  }
}

static void ref_silu_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    double v = (double)x[k], s = 1.0 / (1.0 + exp(-v));
    d[k] = (float)((double)d[k] * (s + v * s * (1.0 - s)));
  }
}

static void ref_add(float *y, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) y[k] = (float)((double)y[k] + (double)x[k]);
}

static void ref_mul(float *out, const float *a, const float *b, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = (float)((double)a[k] * (double)b[k]);
}

static void ref_dropout(float *out, const float *x, size_t n, uint64_t seed, float p) {
  for (size_t k = 0; k < n; k++)
    out[k] = ss_dropout_keep(seed, k, p) ? (float)((double)x[k] / (1.0 - (double)p)) : 0.0f;
}

/* Rotate pair (i, i + HS/2) of one head vector by angle a. */
static void rot(float *v, int half, int i, double a) {
  double x0 = (double)v[i], x1 = (double)v[i + half], c = cos(a), s = sin(a);
  v[i] = (float)(x0 * c - x1 * s);
  v[i + half] = (float)(x1 * c + x0 * s);
}

static void rope_freq(float *x, int ld, int B, int T, int NH, int HS, int pos0,
                      const double *inv_freq, double sign) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < NH; h++) {
        float *v = x + ((size_t)b * (size_t)T + (size_t)t) * (size_t)ld + (size_t)h * (size_t)HS;
        for (int i = 0; i < HS / 2; i++) rot(v, HS / 2, i, sign * (double)(pos0 + t) * inv_freq[i]);
      }
}

static void ref_rope_forward_freq(float *x, int ld, int B, int T, int NH, int HS, int pos0,
                                  const double *inv_freq) {
  rope_freq(x, ld, B, T, NH, HS, pos0, inv_freq, 1.0);
}

static void ref_rope_backward_freq(float *d, int ld, int B, int T, int NH, int HS, int pos0,
                                   const double *inv_freq) {
  rope_freq(d, ld, B, T, NH, HS, pos0, inv_freq, -1.0);
}

static void ref_rope_forward_pos(float *x, int ld, int B, int T, int NH, int HS, const int *pos,
                                 const unsigned char *stream, const double *inv_freq) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < NH; h++) {
        float *v = x + ((size_t)b * (size_t)T + (size_t)t) * (size_t)ld + (size_t)h * (size_t)HS;
        for (int i = 0; i < HS / 2; i++) {
          size_t s = stream != NULL ? stream[i] : 0;
          int p = pos[(s * (size_t)B + (size_t)b) * (size_t)T + (size_t)t];
          rot(v, HS / 2, i, (double)p * inv_freq[i]);
        }
      }
}

/* db += sum over b, t of R_t^T dk_t - dk_t (the rotation's transpose: angle -t theta_i; the
 * dk_t sum to 0, see nn/rope.c), in double per bias element. */
static int ref_rope_bias_backward(float *db, const float *dk, int B, int T, int NKV, int HS,
                                  const double *inv_freq) {
  const int half = HS / 2;
  for (int h = 0; h < NKV; h++)
    for (int i = 0; i < half; i++) {
      double s0 = 0.0, s1 = 0.0;
      for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
          const float *v = dk + ((size_t)b * (size_t)T + (size_t)t) * (size_t)(NKV * HS) +
                           (size_t)h * (size_t)HS;
          double a = (double)t * inv_freq[i], c = cos(a), sn = sin(a);
          double d0 = (double)v[i], d1 = (double)v[i + half];
          s0 += d0 * c + d1 * sn - d0;
          s1 += d1 * c - d0 * sn - d1;
        }
      db[h * HS + i] = (float)((double)db[h * HS + i] + s0);
      db[h * HS + i + half] = (float)((double)db[h * HS + i + half] + s1);
    }
  return 0;
}

/* Key j of the cache of (b, kv head g): [B, NKV, cap, HS] (attention.h). */
static float *win(float *K, const ss_attn_dims *d, int b, int g, int j) {
  size_t Tk = (size_t)ss_attn_cap(d);
  return K + (((size_t)b * (size_t)d->NKV + (size_t)g) * Tk + (size_t)j) * (size_t)d->HS;
}

/* The (masked, capped) score of query row qv against key kv. */
static double score(const float *qv, const float *kv, const ss_attn_dims *d, float softcap) {
  double dot = 0.0;
  for (int c = 0; c < d->HS; c++) dot += (double)qv[c] * (double)kv[c];
  dot *= (double)d->scale;
  return softcap > 0.0f ? (double)softcap * tanh(dot / (double)softcap) : dot;
}

static void ref_attention_forward(float *out, int ldo, float *att, int att_all, float *K, float *V,
                                  const float *q, int ldq, const float *k, const float *v, int ldkv,
                                  const void *past_k, const void *past_v, const ss_attn_dims *d,
                                  int window, float softcap) {
  const int T = d->T, P = d->P, Tk = P + T, HS = d->HS, grp = d->NH / d->NKV;
  const size_t hb = (size_t)HS * sizeof(float);
  for (int b = 0; b < d->B; b++)
    for (int g = 0; g < d->NKV; g++) {
      for (int j = 0; past_k != NULL && j < P; j++) { /* [B, NKV, P, HS] bytes, maybe unaligned;
                                                       * NULL: already in K, V */
        size_t off = (((size_t)b * (size_t)d->NKV + (size_t)g) * (size_t)P + (size_t)j) * hb;
        memcpy(win(K, d, b, g, j), (const char *)past_k + off, hb);
        memcpy(win(V, d, b, g, j), (const char *)past_v + off, hb);
      }
      for (int t = 0; t < T; t++) {
        size_t src = ((size_t)b * (size_t)T + (size_t)t) * (size_t)ldkv + (size_t)g * (size_t)HS;
        memcpy(win(K, d, b, g, P + t), k + src, hb);
        memcpy(win(V, d, b, g, P + t), v + src, hb);
      }
    }
  for (int b = 0; b < d->B; b++)
    for (int h = 0; h < d->NH; h++) {
      const int g = h / grp;
      float *A =
          att_all ? att + ((size_t)b * (size_t)d->NH + (size_t)h) * (size_t)T * (size_t)Tk : att;
      for (int t = 0; t < T; t++) {
        const int i = P + t, lo = window > 0 && i + 1 > window ? i + 1 - window : 0;
        const float *qv =
            q + ((size_t)b * (size_t)T + (size_t)t) * (size_t)ldq + (size_t)h * (size_t)HS;
        float *arow = att_all ? A + (size_t)t * (size_t)Tk : NULL; /* kept for training */
        float *o = out + ((size_t)b * (size_t)T + (size_t)t) * (size_t)ldo + (size_t)h * (size_t)HS;
        double mx = -INFINITY, sum = 0.0;
        /* Scores are recomputed in each pass rather than kept: the oracle allocates nothing. */
        for (int j = lo; j <= i; j++) mx = fmax(mx, score(qv, win(K, d, b, g, j), d, softcap));
        for (int j = lo; j <= i; j++) sum += exp(score(qv, win(K, d, b, g, j), d, softcap) - mx);
        for (int j = 0; arow && j < Tk; j++) arow[j] = 0.0f;
        for (int c0 = 0; c0 < HS; c0 += 64) { /* 64 output lanes at a time, in double */
          double acc[64] = {0};
          int nc = HS - c0 < 64 ? HS - c0 : 64;
          for (int j = lo; j <= i; j++) {
            double p = exp(score(qv, win(K, d, b, g, j), d, softcap) - mx) / sum;
            const float *vj = win(V, d, b, g, j) + c0;
            if (c0 == 0 && arow) arow[j] = (float)p;
            for (int c = 0; c < nc; c++) acc[c] += p * (double)vj[c];
          }
          for (int c = 0; c < nc; c++) o[c0 + c] = (float)acc[c];
        }
      }
    }
}

/* P == 0. Per (b, h): dv_g += att^T dout, datt = dout v_g^T, ds = att (datt - rowsum(att datt)),
 * times the cap's 1 - tanh^2, times scale; dq = ds k_g, dk_g += ds^T q. */
static void ref_attention_backward(float *dq, float *dk, float *dv, float *scratch,
                                   const float *dout, int ldo, const float *att, const float *q,
                                   int ldq, const float *k, const float *v, int ldkv,
                                   const ss_attn_dims *d, float softcap) {
  const int T = d->T, HS = d->HS, grp = d->NH / d->NKV;
  float *ds = scratch; /* one row of [T, T]: the score gradients of query i (sums in double) */
#define ROW(p, ld, b, t, col) \
  ((p) + ((size_t)(b) * (size_t)T + (size_t)(t)) * (size_t)(ld) + (size_t)(col))
  for (int b = 0; b < d->B; b++) /* dk, dv are sums over the group's heads */
    for (int t = 0; t < T; t++)
      for (int g = 0; g < d->NKV; g++) {
        memset(ROW(dk, ldkv, b, t, g * HS), 0, (size_t)HS * sizeof(float));
        memset(ROW(dv, ldkv, b, t, g * HS), 0, (size_t)HS * sizeof(float));
      }
  for (int b = 0; b < d->B; b++)
    for (int h = 0; h < d->NH; h++) {
      const int g = h / grp;
      const float *A = att + ((size_t)b * (size_t)d->NH + (size_t)h) * (size_t)T * (size_t)T;
      for (int i = 0; i < T; i++) {
        const float *qi = ROW(q, ldq, b, i, h * HS), *doi = ROW(dout, ldo, b, i, h * HS);
        double dot = 0.0;
        for (int pass = 0; pass < 2; pass++)
          for (int j = 0; j <= i; j++) { /* datt_ij = dout_i . v_j */
            const float *vj = ROW(v, ldkv, b, j, g * HS);
            double a = (double)A[(size_t)i * (size_t)T + (size_t)j], s = 0.0, e;
            for (int c = 0; c < HS; c++) s += (double)doi[c] * (double)vj[c];
            if (pass == 0) { /* rowsum(att datt) */
              dot += a * s;
              continue;
            }
            e = a * (s - dot);
            if (softcap > 0.0f) { /* c = cap tanh(u / cap), u = scale q.k: dc/du = 1 - tanh^2 */
              const float *kj = ROW(k, ldkv, b, j, g * HS);
              double u = 0.0, th;
              for (int c = 0; c < HS; c++) u += (double)qi[c] * (double)kj[c];
              th = tanh(u * (double)d->scale / (double)softcap);
              e *= 1.0 - th * th;
            }
            ds[j] = (float)(e * (double)d->scale);
          }
        float *dqi = ROW(dq, ldq, b, i, h * HS);
        for (int c = 0; c < HS; c++) {
          double s = 0.0;
          for (int j = 0; j <= i; j++) s += (double)ds[j] * (double)ROW(k, ldkv, b, j, g * HS)[c];
          dqi[c] = (float)s;
        }
        for (int j = 0; j <= i; j++) {
          float *dkj = ROW(dk, ldkv, b, j, g * HS), *dvj = ROW(dv, ldkv, b, j, g * HS);
          double a = (double)A[(size_t)i * (size_t)T + (size_t)j];
          for (int c = 0; c < HS; c++) {
            dkj[c] = (float)((double)dkj[c] + (double)ds[j] * (double)qi[c]);
            dvj[c] = (float)((double)dvj[c] + a * (double)doi[c]);
          }
        }
      }
    }
#undef ROW
}

/* ------------------------------------------------------------- the allocator ---- */

/* The header in front of every block: 64 bytes keep the block 64-byte aligned. */
typedef struct ref_hdr {
  uint64_t tag; /* REF_TAG while allocated */
  size_t n;     /* the bytes asked for */
  unsigned char pad[48];
} ref_hdr;
#define REF_TAG 0x7265666572656e63ull /* "referenc" */

static atomic_size_t ref_live;

static void *ref_alloc(size_t n) {
  ref_hdr *h;
  if (n > SIZE_MAX - sizeof *h || (h = ss_backend_host_alloc(sizeof *h + n)) == NULL) return NULL;
  h->tag = REF_TAG;
  h->n = n;
  atomic_fetch_add(&ref_live, n);
  return h + 1;
}

static void ref_release(void *p) {
  ref_hdr *h;
  if (p == NULL) return;
  h = (ref_hdr *)p - 1;
  if (h->tag != REF_TAG) {
    fprintf(stderr,
            "reference backend: release of %p, a block it did not allocate (the model's "
            "memory must come from its backend and go back to it)\n",
            p);
    abort();
  }
  h->tag = 0;
  atomic_fetch_sub(&ref_live, h->n);
  ss_backend_host_release(h);
}

size_t ss_backend_reference_live_bytes(void) { return atomic_load(&ref_live); }

const ss_backend ss_backend_reference = {
    .name = "reference",
    .alloc = ref_alloc, /* host memory with a header that keeps books (see the top) */
    .release = ref_release,
    .matmul = ref_matmul,
    .matmul_w = ref_matmul_w,
    .linear_forward = ref_linear_forward,
    .linear_forward_ep = ref_linear_forward_ep,
    .linear_backward = ref_linear_backward,
    .bias_backward = ref_bias_backward,
    .layernorm_forward = ref_layernorm_forward,
    .layernorm_backward = ref_layernorm_backward,
    .rmsnorm_forward = ref_rmsnorm_forward,
    .rmsnorm_backward = ref_rmsnorm_backward,
    .gelu_tanh_forward = ref_gelu_tanh_forward,
    .gelu_tanh_backward = ref_gelu_tanh_backward,
    .gelu_erf_forward = ref_gelu_erf_forward,
    .gelu_erf_backward = ref_gelu_erf_backward,
    .relu_forward = ref_relu_forward,
    .relu_backward = ref_relu_backward,
    .silu_forward = ref_silu_forward,
    .silu_backward = ref_silu_backward,
    .add = ref_add,
    .mul = ref_mul,
    .dropout = ref_dropout,
    .rope_forward_freq = ref_rope_forward_freq,
    .rope_backward_freq = ref_rope_backward_freq,
    .rope_forward_pos = ref_rope_forward_pos,
    .rope_bias_backward = ref_rope_bias_backward,
    .attention_forward = ref_attention_forward,
    .attention_backward = ref_attention_backward,
};
