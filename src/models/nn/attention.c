/*
 * attention.c — see attention.h. Inference (flash_block): per query block and key tile, scores
 * = q K_tile^T and acc += p V_tile, through the few-row kernels for a decode step's rows (one
 * token, or the heads of a kv group at one position: no engine call per tile) and ss_matmul for
 * a prefill's blocks; the online softmax between them (vectorized exp, nn/vmath.h) keeps a
 * running max and sum per row and rescales acc when the max grows. Training, per (batch, head):
 * scores [T, P+T] and att v through ss_matmul around a causal softmax, every probability kept.
 * Backward, per (batch, head):
 *   dv_g += att^T dout,  datt = dout v_g^T,  ds = scale * att * (datt - rowsum(att * datt)),
 *   dq = ds k_g,  dk_g += ds^T q      (g: the head's kv group; the first head of a group
 *   overwrites dk_g, dv_g, the others add)
 * With logit soft-capping (Gemma 2) the score is c = cap tanh(scale q.k / cap): ds is also
 * multiplied by 1 - tanh^2, from the scores q k^T recomputed in the backward.
 * Inference splits its heads (a decode step's kv groups) over the calling worker's OpenMP team:
 * a batch of decode steps spends as much time in each session's attention as in the weights
 * (GPT-2 has a kv head per head), and a single-threaded attention left a 2-thread worker's
 * second thread idle there. Each thread after the first takes its scratch from a per-worker
 * buffer (nn/tbuf.h: (threads - 1) x ss_attn_scratch floats; without it the heads run on the
 * caller alone).
 * Thread: the caller's worker thread and its OpenMP team; reentrant.
 */
#include "models/nn/attention.h"

#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <string.h>

#include "models/nn/matmul.h"
#include "models/nn/simd.h"
#include "models/nn/tbuf.h"
#include "models/nn/vmath.h"

/* Causal softmax in place of a block of scores s [nq, nk]: row r is the query at absolute
 * position p0 + r, column c the key at absolute position kbeg + c. The query at position i sees
 * keys lo..i (lo = 0, or i-window+1 with a sliding window); the rest of its row is set to 0, so
 * the backward (which walks keys 0..i) needs no window of its own. Training forwards only. */
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

/* s [nk] = q [HS] . K_j for the nk keys of K (row stride HS): four keys per pass over q. */
SS_CLONES static void row_scores(const float *q, const float *K, int nk, int HS, float *s) {
  const size_t hs = (size_t)HS, hv = hs / 8 * 8;
  int j = 0;
  for (; j + 4 <= nk; j += 4) {
    const float *k0 = K + (size_t)j * hs, *k1 = k0 + hs, *k2 = k1 + hs, *k3 = k2 + hs;
    v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (size_t c = 0; c < hv; c += 8) {
      v8 x = ld8(q + c);
      a0 += x * ld8(k0 + c), a1 += x * ld8(k1 + c), a2 += x * ld8(k2 + c), a3 += x * ld8(k3 + c);
    }
    float d0 = hsum(a0), d1 = hsum(a1), d2 = hsum(a2), d3 = hsum(a3);
    for (size_t c = hv; c < hs; c++)
      d0 += q[c] * k0[c], d1 += q[c] * k1[c], d2 += q[c] * k2[c], d3 += q[c] * k3[c];
    s[j] = d0, s[j + 1] = d1, s[j + 2] = d2, s[j + 3] = d3;
  }
  for (; j < nk; j++) {
    const float *kj = K + (size_t)j * hs;
    v8 a = {0};
    for (size_t c = 0; c < hv; c += 8) a += ld8(q + c) * ld8(kj + c);
    float d = hsum(a);
    for (size_t c = hv; c < hs; c++) d += q[c] * kj[c];
    s[j] = d;
  }
}

/* acc [HS] += sum_j p[j] V_j over the nk values of V (row stride HS): 64 lanes of acc stay in
 * registers while V streams past. */
SS_CLONES static void row_acc(const float *p, const float *V, int nk, int HS, float *acc) {
  const size_t hs = (size_t)HS;
  size_t c0 = 0;
  for (; c0 + 64 <= hs; c0 += 64) {
    v8 r[8];
#pragma GCC unroll 8
    for (int u = 0; u < 8; u++) r[u] = ld8(acc + c0 + 8 * (size_t)u);
    for (int j = 0; j < nk; j++) {
      const float *vj = V + (size_t)j * hs + c0;
      v8 pj = splat(p[j]);
#pragma GCC unroll 8
      for (int u = 0; u < 8; u++) r[u] += pj * ld8(vj + 8 * u);
    }
#pragma GCC unroll 8
    for (int u = 0; u < 8; u++) st8(acc + c0 + 8 * (size_t)u, r[u]);
  }
  for (; c0 + 8 <= hs; c0 += 8) {
    v8 r = ld8(acc + c0);
    for (int j = 0; j < nk; j++) r += splat(p[j]) * ld8(V + (size_t)j * hs + c0);
    st8(acc + c0, r);
  }
  for (; c0 < hs; c0++)
    for (int j = 0; j < nk; j++) acc[c0] += p[j] * V[(size_t)j * hs + c0];
}

/* C [M, N] (=|+=, beta 0|1) = A [M, K] op(B): one row (a decode step of a head of its own) by
 * the row kernels above, a few (a kv group's heads) by the few-row kernels, a prefill's blocks
 * by the engine. No engine call, so no primitive per tile shape, in a decode step. */
static void tile_mm(ss_mm_trans tb, int M, int N, int K, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc) {
  if (M == 1 && tb == SS_MM_T && ldb == K)
    row_scores(A, B, N, K, C);
  else if (M == 1 && tb == SS_MM_N && ldb == N && beta == 1.0f)
    row_acc(A, B, K, N, C);
  else if (M <= SS_SMALL_ROWS)
    ss__matmul_few_rows(tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  else
    ss_matmul(SS_MM_N, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* A block of query rows of one kv group: row r is q0 + r qs (output o0 + r os), at absolute
 * position pos0 + r pstep (pstep 1: a prefill's consecutive tokens; 0: a decode step's heads of
 * one group, all at one position). */
typedef struct qblock {
  const float *q0;
  float *o0;
  size_t qs, os;
  int nq, pos0, pstep;
} qblock;

/* Flash-style attention of one query block against the keys Kg, Vg [.., HS] (row stride HS):
 * key tiles of SS_ATTN_KTILE from the first row's window start to the last row's position (the
 * tiles no row sees are never touched), with an online softmax per row: a running max mx and
 * sum l; a tile whose max exceeds mx rescales the accumulator by exp(mx_old - mx_new).
 * scratch: ss_attn_scratch floats. */
static void flash_block(const qblock *qb, const float *Kg, const float *Vg, int HS, float scale,
                        int window, float softcap, float *scratch) {
  const int nq = qb->nq, KT = SS_ATTN_KTILE, plast = qb->pos0 + (nq - 1) * qb->pstep;
  const int kbeg = window > 0 && qb->pos0 + 1 > window ? qb->pos0 + 1 - window : 0;
  const size_t hs = (size_t)HS;
  float *S = scratch, *acc = S + (size_t)SS_ATTN_QBLOCK * KT, *mx = acc + SS_ATTN_QBLOCK * hs;
  float *l = mx + SS_ATTN_QBLOCK;
  for (int r = 0; r < nq; r++) mx[r] = -INFINITY, l[r] = 0.0f;
  memset(acc, 0, (size_t)nq * hs * sizeof(float));
  for (int j0 = kbeg; j0 <= plast; j0 += KT) {
    const int nk = plast + 1 - j0 < KT ? plast + 1 - j0 : KT;
    tile_mm(SS_MM_T, nq, nk, HS, qb->q0, (int)qb->qs, Kg + (size_t)j0 * hs, HS, 0.0f, S, KT);
    for (int r = 0; r < nq; r++) {
      float *row = S + (size_t)r * KT, m = -INFINITY, sum = 0.0f, alpha;
      const int i = qb->pos0 + r * qb->pstep,
                lo = window > 0 && i + 1 > window ? i + 1 - window : 0;
      const int a = lo > j0 ? lo - j0 : 0, e = i + 1 - j0 < nk ? i + 1 - j0 : nk; /* [a, e) */
      if (a >= e) { /* this row sees nothing of the tile */
        memset(row, 0, (size_t)nk * sizeof(float));
        continue;
      }
      for (int j = 0; j < a; j++) row[j] = 0.0f;
      for (int j = e; j < nk; j++) row[j] = 0.0f;
      if (softcap > 0.0f) /* Gemma 2: cap * tanh(scores / cap) */
        for (int j = a; j < e; j++) row[j] = softcap * tanhf(row[j] * scale / softcap);
      else
        for (int j = a; j < e; j++) row[j] *= scale;
      for (int j = a; j < e; j++) m = row[j] > m ? row[j] : m;
      if (m < mx[r]) m = mx[r];
      for (int j = a; j < e; j++) row[j] -= m;
      ss_vexp(row + a, row + a, (size_t)(e - a));
      for (int j = a; j < e; j++) sum += row[j];
      alpha = mx[r] == -INFINITY ? 0.0f : expf(mx[r] - m);
      if (alpha != 1.0f) {
        float *ar = acc + (size_t)r * hs;
        for (size_t c = 0; c < hs; c++) ar[c] *= alpha;
      }
      l[r] = l[r] * alpha + sum;
      mx[r] = m;
    }
    tile_mm(SS_MM_N, nq, HS, nk, S, KT, Vg + (size_t)j0 * hs, HS, 1.0f, acc, HS);
  }
  for (int r = 0; r < nq; r++) {
    const float inv = 1.0f / l[r], *ar = acc + (size_t)r * hs;
    float *o = qb->o0 + (size_t)r * qb->os;
    for (size_t c = 0; c < hs; c++) o[c] = ar[c] * inv;
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

/* Inference attention of batch row b's unit u: with dec (a decode step with kv groups) the
 * heads of kv group u as one query block at position P; else head u, query blocks x key tiles
 * with an online softmax (flash_block: no score row longer than a tile, and a causal prefill
 * skips the masked tiles). scratch: ss_attn_scratch(HS) floats of this thread's own. */
static void attend(const ss_attn_dims *d, int u, int dec, int b, const float *q, int ldq,
                   float *out, int ldo, const float *K, const float *V, size_t hstride, int window,
                   float softcap, float *scratch) {
  const int T = d->T, P = d->P, HS = d->HS, grp = d->NH / d->NKV;
  const size_t hs = (size_t)HS, row0 = (size_t)b * (size_t)T;
  if (dec) {
    size_t bg = (size_t)b * (size_t)d->NKV + (size_t)u;
    for (int h0 = 0; h0 < grp; h0 += SS_ATTN_QBLOCK) {
      size_t h = (size_t)u * (size_t)grp + (size_t)h0;
      qblock qb = {q + row0 * (size_t)ldq + h * hs,
                   out + row0 * (size_t)ldo + h * hs,
                   hs,
                   hs,
                   grp - h0 < SS_ATTN_QBLOCK ? grp - h0 : SS_ATTN_QBLOCK,
                   P,
                   0};
      flash_block(&qb, K + bg * hstride, V + bg * hstride, HS, d->scale, window, softcap, scratch);
    }
    return;
  }
  size_t bg = (size_t)b * (size_t)d->NKV + (size_t)(u / grp);
  const float *qh = q + row0 * (size_t)ldq + (size_t)u * hs;
  float *oh = out + row0 * (size_t)ldo + (size_t)u * hs;
  for (int i0 = 0; i0 < T; i0 += SS_ATTN_QBLOCK) {
    qblock qb = {qh + (size_t)i0 * (size_t)ldq,
                 oh + (size_t)i0 * (size_t)ldo,
                 (size_t)ldq,
                 (size_t)ldo,
                 T - i0 < SS_ATTN_QBLOCK ? T - i0 : SS_ATTN_QBLOCK,
                 P + i0,
                 1};
    flash_block(&qb, K + bg * hstride, V + bg * hstride, HS, d->scale, window, softcap, scratch);
  }
}

static ss_tbuf team_buf; /* the calling worker's scratch for its team's other threads */

void ss_attention_forward_cap(float *out, int ldo, float *att, int att_all, float *K, float *V,
                              const float *q, int ldq, const float *k, const float *v, int ldkv,
                              const void *past_k, const void *past_v, const ss_attn_dims *d,
                              int window, float softcap) {
  const int T = d->T, P = d->P, Tk = P + T, HS = d->HS, grp = d->NH / d->NKV;
  const size_t hs = (size_t)HS, pbytes = (size_t)P * hs * sizeof(float);
  const size_t hstride = (size_t)ss_attn_cap(d) * hs; /* floats between kv heads of K, V */
  for (int b = 0; b < d->B; b++) {
    const size_t row0 = (size_t)b * (size_t)T;
    for (int g = 0; g < d->NKV; g++) { /* this call's keys/values (and a copied past) in place */
      size_t bg = (size_t)b * (size_t)d->NKV + (size_t)g;
      float *Kg = K + bg * hstride, *Vg = V + bg * hstride;
      if (P > 0 && past_k != NULL) { /* past data may be unaligned (wire bytes): memcpy only */
        memcpy(Kg, (const char *)past_k + bg * pbytes, pbytes);
        memcpy(Vg, (const char *)past_v + bg * pbytes, pbytes);
      }
      for (int i = 0; i < T; i++) {
        size_t src = (row0 + (size_t)i) * (size_t)ldkv + (size_t)g * hs;
        memcpy(Kg + (size_t)(P + i) * hs, k + src, hs * sizeof(float));
        memcpy(Vg + (size_t)(P + i) * hs, v + src, hs * sizeof(float));
      }
    }
    if (!att_all) { /* inference: heads (a decode step's kv groups) over the team */
      const int dec = T == 1 && grp > 1, n = dec ? d->NKV : d->NH; /* decode: a group's heads */
      const size_t per = ss_attn_scratch(HS);
      int nthr = omp_get_max_threads();
      if (nthr > n) nthr = n;
      float *more = nthr > 1 ? ss_tbuf_floats(&team_buf, (size_t)(nthr - 1) * per) : NULL;
      if (!more) nthr = 1;
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
      for (int u = 0; u < n; u++) {
        int tid = omp_get_thread_num();
        float *scr = tid == 0 ? att : more + (size_t)(tid - 1) * per;
        attend(d, u, dec, b, q, ldq, out, ldo, K, V, hstride, window, softcap, scr);
      }
      continue;
    }
    for (int h = 0; h < d->NH; h++) {
      size_t bh = (size_t)b * (size_t)d->NH + (size_t)h;
      size_t bg = (size_t)b * (size_t)d->NKV + (size_t)(h / grp);
      const float *Kg = K + bg * hstride, *Vg = V + bg * hstride;
      const float *qh = q + row0 * (size_t)ldq + (size_t)h * hs;
      float *oh = out + row0 * (size_t)ldo + (size_t)h * hs;
      /* training: every probability kept for the backward */
      float *A = att + bh * (size_t)T * (size_t)Tk;
      /* scores [T, Tk] = q_h [T, HS] K_g^T;  out_h [T, HS] = att [T, Tk] V_g [Tk, HS] */
      ss_matmul(SS_MM_N, SS_MM_T, T, Tk, HS, 1.0f, qh, ldq, Kg, HS, 0.0f, A, Tk);
      block_softmax(A, T, Tk, 0, P, d->scale, window, softcap);
      ss_matmul(SS_MM_N, SS_MM_N, T, HS, Tk, 1.0f, A, Tk, Vg, HS, 0.0f, oh, ldo);
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
