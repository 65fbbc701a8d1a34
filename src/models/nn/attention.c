/*
 * attention.c — see attention.h. Per (batch, head) two products through ss_matmul (scores and
 * att v; a decode step's single query row takes its few-row kernels) around a causal softmax
 * (vectorized exp, nn/vmath.h). Inference goes by blocks of SS_ATTN_QBLOCK queries, each
 * against only the keys it can see (no [T, P+T] matrix; a causal prefill skips the masked
 * half); training keeps every probability for the backward. Backward, per (batch, head):
 *   dv_g += att^T dout,  datt = dout v_g^T,  ds = scale * att * (datt - rowsum(att * datt)),
 *   dq = ds k_g,  dk_g += ds^T q      (g: the head's kv group; the first head of a group
 *   overwrites dk_g, dv_g, the others add)
 * With logit soft-capping (Gemma 2) the score is c = cap tanh(scale q.k / cap): ds is also
 * multiplied by 1 - tanh^2, from the scores q k^T recomputed in the backward.
 * Thread: the caller's worker thread; reentrant.
 */
#include "models/nn/attention.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "models/nn/matmul.h"
#include "models/nn/vmath.h"

/* Causal softmax in place of a block of scores s [nq, nk]: row r is the query at absolute
 * position p0 + r, column c the key at absolute position kbeg + c. The query at position i sees
 * keys lo..i (lo = 0, or i-window+1 with a sliding window); the rest of its row is set to 0, so
 * the backward (which walks keys 0..i) needs no window of its own. */
static void block_softmax(float *s, int nq, int nk, int kbeg, int p0, float scale, int window,
                          float softcap) {
  for (int r = 0; r < nq; r++) {
    float *row = s + (size_t)r * (size_t)nk, mx = -INFINITY, sum = 0.0f, inv;
    int i = p0 + r, lo = window > 0 && i + 1 > window ? i + 1 - window : 0;
    int a = lo - kbeg, n = i - lo + 1; /* visible: columns a .. a + n - 1 */
    for (int j = 0; j < a; j++) row[j] = 0.0f;
    for (int j = a + n; j < nk; j++) row[j] = 0.0f;
    row += a;
    if (softcap > 0.0f) /* Gemma 2: cap * tanh(scores / cap) */
      for (int j = 0; j < n; j++) row[j] = softcap * tanhf(row[j] * scale / softcap);
    else
      for (int j = 0; j < n; j++) row[j] *= scale;
    for (int j = 0; j < n; j++)
      if (row[j] > mx) mx = row[j];
    for (int j = 0; j < n; j++) row[j] -= mx;
    ss_vexp(row, row, (size_t)n);
    for (int j = 0; j < n; j++) sum += row[j];
    inv = 1.0f / sum;
    for (int j = 0; j < n; j++) row[j] *= inv;
  }
}

void ss_attention_forward(float *out, int ldo, float *att, int att_all, float *K, float *V,
                          const float *q, int ldq, const float *k, const float *v, int ldkv,
                          const void *past_k, const void *past_v, const ss_attn_dims *d) {
  ss_attention_forward_window(out, ldo, att, att_all, K, V, q, ldq, k, v, ldkv, past_k, past_v, d,
                              0);
}

void ss_attention_forward_window(float *out, int ldo, float *att, int att_all, float *K, float *V,
                                 const float *q, int ldq, const float *k, const float *v, int ldkv,
                                 const void *past_k, const void *past_v, const ss_attn_dims *d,
                                 int window) {
  ss_attention_forward_cap(out, ldo, att, att_all, K, V, q, ldq, k, v, ldkv, past_k, past_v, d,
                           window, 0.0f);
}

void ss_attention_forward_cap(float *out, int ldo, float *att, int att_all, float *K, float *V,
                              const float *q, int ldq, const float *k, const float *v, int ldkv,
                              const void *past_k, const void *past_v, const ss_attn_dims *d,
                              int window, float softcap) {
  const int T = d->T, P = d->P, Tk = P + T, HS = d->HS, grp = d->NH / d->NKV;
  const size_t hs = (size_t)HS, pbytes = (size_t)P * hs * sizeof(float);
  for (int b = 0; b < d->B; b++) {
    const size_t row0 = (size_t)b * (size_t)T;
    for (int g = 0; g < d->NKV; g++) { /* assemble the window of kv head g */
      size_t bg = (size_t)b * (size_t)d->NKV + (size_t)g;
      float *Kg = K + bg * (size_t)Tk * hs, *Vg = V + bg * (size_t)Tk * hs;
      if (P > 0) { /* past data may be unaligned (wire bytes): memcpy only */
        memcpy(Kg, (const char *)past_k + bg * pbytes, pbytes);
        memcpy(Vg, (const char *)past_v + bg * pbytes, pbytes);
      }
      for (int i = 0; i < T; i++) {
        size_t src = (row0 + (size_t)i) * (size_t)ldkv + (size_t)g * hs;
        memcpy(Kg + (size_t)(P + i) * hs, k + src, hs * sizeof(float));
        memcpy(Vg + (size_t)(P + i) * hs, v + src, hs * sizeof(float));
      }
    }
    for (int h = 0; h < d->NH; h++) {
      size_t bh = (size_t)b * (size_t)d->NH + (size_t)h;
      size_t bg = (size_t)b * (size_t)d->NKV + (size_t)(h / grp);
      const float *Kg = K + bg * (size_t)Tk * hs, *Vg = V + bg * (size_t)Tk * hs;
      const float *qh = q + row0 * (size_t)ldq + (size_t)h * hs;
      float *oh = out + row0 * (size_t)ldo + (size_t)h * hs;
      if (att_all) { /* training: every probability kept for the backward */
        float *A = att + bh * (size_t)T * (size_t)Tk;
        /* scores [T, Tk] = q_h [T, HS] K_g^T;  out_h [T, HS] = att [T, Tk] V_g [Tk, HS] */
        ss_matmul(SS_MM_N, SS_MM_T, T, Tk, HS, 1.0f, qh, ldq, Kg, HS, 0.0f, A, Tk);
        block_softmax(A, T, Tk, 0, P, d->scale, window, softcap);
        ss_matmul(SS_MM_N, SS_MM_N, T, HS, Tk, 1.0f, A, Tk, Vg, HS, 0.0f, oh, ldo);
        continue;
      }
      /* Inference: query blocks of SS_ATTN_QBLOCK rows, each against only the keys its rows
       * can see (up to its last row; from the first row's window start): no [T, Tk] score
       * matrix, and a causal prefill computes about half the products. */
      for (int i0 = 0; i0 < T; i0 += SS_ATTN_QBLOCK) {
        int nq = T - i0 < SS_ATTN_QBLOCK ? T - i0 : SS_ATTN_QBLOCK, p0 = P + i0;
        int kbeg = window > 0 && p0 + 1 > window ? p0 + 1 - window : 0, nk = p0 + nq - kbeg;
        ss_matmul(SS_MM_N, SS_MM_T, nq, nk, HS, 1.0f, qh + (size_t)i0 * (size_t)ldq, ldq,
                  Kg + (size_t)kbeg * hs, HS, 0.0f, att, nk);
        block_softmax(att, nq, nk, kbeg, p0, d->scale, window, softcap);
        ss_matmul(SS_MM_N, SS_MM_N, nq, HS, nk, 1.0f, att, nk, Vg + (size_t)kbeg * hs, HS, 0.0f,
                  oh + (size_t)i0 * (size_t)ldo, ldo);
      }
    }
  }
}

void ss_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                           int ldo, const float *att, const float *q, int ldq, const float *k,
                           const float *v, int ldkv, const ss_attn_dims *d) {
  ss_attention_backward_cap(dq, dk, dv, scratch, dout, ldo, att, q, ldq, k, v, ldkv, d, 0.0f);
}

void ss_attention_backward_cap(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               int ldo, const float *att, const float *q, int ldq, const float *k,
                               const float *v, int ldkv, const ss_attn_dims *d, float softcap) {
  const int T = d->T, HS = d->HS, grp = d->NH / d->NKV;
  const size_t hs = (size_t)HS, t = (size_t)T;
  float *dS = scratch, *Sc = scratch + t * t;
  for (int b = 0; b < d->B; b++) {
    const size_t row0 = (size_t)b * t;
    for (int h = 0; h < d->NH; h++) {
      const size_t bh = (size_t)b * (size_t)d->NH + (size_t)h, g = (size_t)(h / grp);
      const float *A = att + bh * t * t, *dA = dout + row0 * (size_t)ldo + (size_t)h * hs;
      const float *Q = q + row0 * (size_t)ldq + (size_t)h * hs;
      const float *Kg = k + row0 * (size_t)ldkv + g * hs, *Vg = v + row0 * (size_t)ldkv + g * hs;
      float *dQ = dq + row0 * (size_t)ldq + (size_t)h * hs;
      float *dK = dk + row0 * (size_t)ldkv + g * hs, *dV = dv + row0 * (size_t)ldkv + g * hs;
      const float beta = h % grp == 0 ? 0.0f : 1.0f;
      ss_matmul(SS_MM_T, SS_MM_N, T, HS, T, 1.0f, A, T, dA, ldo, beta, dV, ldkv);
      ss_matmul(SS_MM_N, SS_MM_T, T, T, HS, 1.0f, dA, ldo, Vg, ldkv, 0.0f, dS, T);
      if (softcap > 0.0f) /* the scores again, for the tanh's derivative */
        ss_matmul(SS_MM_N, SS_MM_T, T, T, HS, 1.0f, Q, ldq, Kg, ldkv, 0.0f, Sc, T);
      for (size_t i = 0; i < t; i++) { /* softmax backward, row i sees keys 0..i */
        const float *pr = A + i * t;
        float *dr = dS + i * t, dot = 0.0f;
        for (size_t j = 0; j <= i; j++) dot += pr[j] * dr[j];
        for (size_t j = 0; j <= i; j++) dr[j] = d->scale * pr[j] * (dr[j] - dot);
        if (softcap > 0.0f) /* d/ds cap tanh(s / cap) = 1 - tanh^2 */
          for (size_t j = 0; j <= i; j++) {
            float th = tanhf(Sc[i * t + j] * d->scale / softcap);
            dr[j] *= 1.0f - th * th;
          }
        for (size_t j = i + 1; j < t; j++) dr[j] = 0.0f;
      }
      ss_matmul(SS_MM_N, SS_MM_N, T, HS, T, 1.0f, dS, T, Kg, ldkv, 0.0f, dQ, ldq);
      ss_matmul(SS_MM_T, SS_MM_N, T, HS, T, 1.0f, dS, T, Q, ldq, beta, dK, ldkv);
    }
  }
}
