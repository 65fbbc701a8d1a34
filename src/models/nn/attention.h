/*
 * attention.h — causal multi-head self-attention with a KV cache and grouped heads, as a
 * forward/backward pair. NH query heads share NKV key/value heads (NKV divides NH; query head h
 * reads kv head h / (NH / NKV)); GPT-2 has NKV == NH. Head size HS. Queries of this call sit at
 * absolute positions P .. P+T-1 after P cached ones; query t sees keys 0 .. P+t:
 *   att = softmax(scale * q k^T + causal mask),  out = att v   (per batch, per head)
 * With a sliding window W (ss_attention_forward_window, W > 0) the query at absolute position i
 * also loses the keys j <= i - W (sees W keys at most: HF Mistral's mask).
 *
 * Layouts (row-major float32; a "row" is one token; strides in floats):
 *   q    [B, T, NH*HS]   row stride ldq      k, v [B, T, NKV*HS]  row stride ldkv
 *   out  [B, T, NH*HS]   row stride ldo      (heads side by side, as the projections want)
 *   K, V [B, NKV, cap, HS]  the cache: keys 0 .. P-1 the past, P .. P+T-1 this call's (written
 *                           here), the rest unused; cap = d->cap, or P+T when d->cap is 0 (a
 *                           dense window: the model's present cache, or scratch). A session's
 *                           cache lives in place with cap >= P+T: its past is already in K, V
 *                           (past_k NULL), so a decode step copies only its own key and value.
 * so a fused qkv buffer [B, T, (NH + 2 NKV) HS] is q = qkv, k = qkv + NH*HS, v = k + NKV*HS.
 *
 * Inference (att_all 0) never forms a score row longer than a tile: queries go by blocks of
 * SS_ATTN_QBLOCK (a decode step's block is the NH/NKV heads of one kv group at its one
 * position), keys by tiles of SS_ATTN_KTILE from the block's first visible key to its last, with
 * an online softmax (a running max and sum per row; the accumulator rescaled when the max
 * grows: FlashAttention's recurrence). Memory: ss_attn_scratch(HS) floats whatever P+T, and
 * tiles no row of a block can see (causal future, outside the window) are never read.
 * Training (att_all 1) keeps every probability for the backward.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state.
 */
#ifndef SS_MODELS_NN_ATTENTION_H
#define SS_MODELS_NN_ATTENTION_H

#include <stddef.h>

/* Inference forwards (att_all 0): query rows per block and keys per tile (see above). */
#define SS_ATTN_QBLOCK 32
#define SS_ATTN_KTILE 512

typedef struct ss_attn_dims {
  int B, T, P;     /* batch, new tokens, cached (past) tokens */
  int NH, NKV, HS; /* query heads, key/value heads, head size */
  float scale;     /* multiplies q.k (1/sqrt(HS) usually) */
  int cap;         /* keys each kv head of K, V holds (head stride cap*HS); 0: P + T */
} ss_attn_dims;

/* The keys per kv head of d's K, V. */
static inline int ss_attn_cap(const ss_attn_dims *d) { return d->cap > 0 ? d->cap : d->P + d->T; }

/* Floats of an inference forward's att scratch (any T, P): a score tile, the accumulator, the
 * running max and sum of a query block. */
static inline size_t ss_attn_scratch(int HS) {
  return (size_t)SS_ATTN_QBLOCK * ((size_t)SS_ATTN_KTILE + (size_t)HS + 2);
}

/* Forward. past_k, past_v: [B, NKV, P, HS] float32 bytes (borrowed; may be unaligned, e.g. wire
 * bytes) copied into K, V; or NULL: the past is already in K, V (or P == 0). k, v are copied
 * into K, V at P .. P+T-1 (see above); nothing else of K, V is written.
 * att: the probabilities; att_all: att is [B, NH, T, P+T] and keeps them all (for backward),
 * else att is scratch of ss_attn_scratch(HS) floats (reused per block). out written. */
void ss_attention_forward(float *out, int ldo, float *att, int att_all, float *K, float *V,
                          const float *q, int ldq, const float *k, const float *v, int ldkv,
                          const void *past_k, const void *past_v, const ss_attn_dims *d);

/* The same with a sliding window of `window` keys (0: none, as ss_attention_forward). The
 * backward needs nothing extra: masked probabilities are exactly 0 in att. */
void ss_attention_forward_window(float *out, int ldo, float *att, int att_all, float *K, float *V,
                                 const float *q, int ldq, const float *k, const float *v, int ldkv,
                                 const void *past_k, const void *past_v, const ss_attn_dims *d,
                                 int window);

/* The same with attention logit soft-capping (Gemma 2's attn_logit_softcapping): the masked
 * scores are softcap * tanh(scale q.k / softcap) before the softmax (softcap 0: none). */
void ss_attention_forward_cap(float *out, int ldo, float *att, int att_all, float *K, float *V,
                              const float *q, int ldq, const float *k, const float *v, int ldkv,
                              const void *past_k, const void *past_v, const ss_attn_dims *d,
                              int window, float softcap);

/* Backward, no past (P == 0), given dout [B, T, NH*HS] (row stride ldo), the forward's att
 * [B, NH, T, T] (att_all) and its q, k, v: dq (stride ldq), dk, dv (stride ldkv) overwritten
 * with dL/dq, dL/dk, dL/dv (layouts as q, k, v; they may share one fused buffer like q, k, v).
 * scratch: [T, T]. */
void ss_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                           int ldo, const float *att, const float *q, int ldq, const float *k,
                           const float *v, int ldkv, const ss_attn_dims *d);
/* The backward of ss_attention_forward_cap: as ss_attention_backward; scratch is [2, T, T] when
 * softcap > 0 (the scores are recomputed from q, k). */
void ss_attention_backward_cap(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               int ldo, const float *att, const float *q, int ldq, const float *k,
                               const float *v, int ldkv, const ss_attn_dims *d, float softcap);

#endif
