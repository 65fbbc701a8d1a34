/*
 * gpt_neox.c — the "gpt_neox" model kind: the trunk of a split GPT-NeoX-family decoder (Hugging
 * Face model_type gpt_neox: Pythia, GPT-NeoX-20B), i.e. layers [a, b) of a checkpoint, with an
 * attention (KV) cache, training (full fine-tuning or LoRA). Input and output are hidden states
 * [batch, seq, hidden_size] float32 (the client's bottom ran embed_in; final_layer_norm and
 * embed_out are the client's top). The runtime (models/trunk.c) does everything but the block:
 * this file is config parsing, a weight table, the block and its activation table (the recipe of
 * docs/architecture.md, "A trunk family").
 *
 * Spec: ID=gpt_neox,weights=PATH[,config=config.json][,layers=A:B]
 *            [,lora_rank=R,lora_alpha=A,lora_targets=query_key_value,dense,...][,adapter=DIR]
 *            [,lora_dropout=P,lora_seed=N]
 *   PATH: a .safetensors file or a checkpoint's directory holding model.safetensors (sharded
 *   checkpoints are not read yet); config defaults to config.json next to the file; layers to
 *   0:num_hidden_layers. LoRA targets (PEFT's names, matched on the module name's last part):
 *   query_key_value (PEFT's default for gpt_neox), dense (attention.dense), dense_h_to_4h,
 *   dense_4h_to_h; adapters under
 *   base_model.model.gpt_neox.layers.{i}.<module>.lora_{A,B}.weight (nn.Linear layout).
 *
 * Config: hidden_size, num_attention_heads, num_hidden_layers, intermediate_size (default 4 x
 * hidden), max_position_embeddings (2048), layer_norm_eps (1e-5), use_parallel_residual (true),
 * hidden_act (gelu = exact erf; gelu_new, gelu_pytorch_tanh, gelu_fast = tanh form; relu),
 * attention_bias (true), rotary_pct (0.25) or partial_rotary_factor, rotary_emb_base (10000) or
 * rope_theta (transformers 5: both inside rope_parameters); rope_scaling other than default is
 * refused.
 *
 * Weights: <prefix>layers.{i}.input_layernorm.{weight,bias}, .attention.query_key_value.{weight,
 * bias} [3 hidden, hidden], .attention.dense.{weight,bias}, .post_attention_layernorm.{weight,
 * bias}, .mlp.dense_h_to_4h.{weight,bias}, .mlp.dense_4h_to_h.{weight,bias}; <prefix> is
 * "gpt_neox." or none, as the file has it; F32 (in place from the mmap when aligned), F16, BF16.
 * Buffers of older checkpoints (attention.bias, masked_bias, rotary_emb.inv_freq) are ignored.
 *
 * Block (HF GPTNeoXLayer, eval mode):
 *   qkv = ln1(x) Wqkv^T + b, per row [heads, 3, head_size]: head h's q, k, v side by side (not
 *         a q block then a k block); split here into q, k, v [rows, heads x head_size]
 *   q, k: rotate_half rope on the first rotary_ndims = head_size x rotary_pct values of each
 *         head (theta_i = base^(-2i / rotary_ndims)); the rest passes through
 *   a = dense(softmax(q k^T / sqrt(head_size) + causal) v)
 *   parallel (use_parallel_residual): y = x + a + mlp(ln2(x));  else h = x + a, y = h + mlp(ln2(h))
 *   mlp(z) = dense_4h_to_h(act(dense_h_to_4h(z)));  ln: LayerNorm with bias (layer_norm_eps)
 *
 * KV cache: past[l].key/value [batch, heads, P, head_size] (layer a + l), keys after the rotary
 * embedding, as HF's cache holds them.
 *
 * Thread: created on the main thread, then shared by all workers; check()/check_kv() on the loop
 * thread; forward()/forward_kv()/forward_kv_batch() on workers, reentrant (scratch from the
 * model's backend per call). Training as model.h says: forward_train/backward under the read
 * lock (gradient sums on the params mutex), step under the write lock, save under the read lock.
 */
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/lora.h"
#include "models/model.h"
#include "models/nn/backend/backend.h"
#include "models/nn/rope.h"
#include "models/params.h"
#include "models/safetensors.h"
#include "models/trunk.h"

/* A layer's tensors; the four linear layers are the LoRA targets, in this order. */
enum { W_QKV, B_QKV, W_DENSE, B_DENSE, W_H4, B_H4, W_4H, B_4H, LN1_W, LN1_B, LN2_W, LN2_B, N_T };
enum { L_QKV, L_DENSE, L_H4, L_4H, N_LIN };
static const char *const t_name[N_T] = {
    "attention.query_key_value.weight", "attention.query_key_value.bias",
    "attention.dense.weight",           "attention.dense.bias",
    "mlp.dense_h_to_4h.weight",         "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",         "mlp.dense_4h_to_h.bias",
    "input_layernorm.weight",           "input_layernorm.bias",
    "post_attention_layernorm.weight",  "post_attention_layernorm.bias"};
static const char *const lin_target[N_LIN] = {"query_key_value", "dense", "dense_h_to_4h",
                                              "dense_4h_to_h"};

enum { ACT_GELU, ACT_TANH, ACT_RELU };

typedef struct nx_layer {
  const float *t[N_T]; /* float32 views (NULL: absent, attention_bias false) */
  float *own[N_T];     /* converted / realigned copies */
  int ip[N_T];         /* parameter index, < 0: not one (frozen or absent) */
  ss_lora lo[N_LIN];   /* adapters (lo[i].a NULL: none) */
} nx_layer;

typedef struct neox {
  int E, NH, HS, I, n_layer, n_pos, a, b;
  int rot;      /* rotary_ndims: the rotated values at the start of each head (even, <= HS) */
  int parallel; /* use_parallel_residual */
  int act, attn_bias;
  float eps, scale;
  double *inv_freq; /* [rot / 2] */
  nx_layer *blk;
  ss_ckpt ck;         /* the weight files, kept mapped */
  const char *prefix; /* static: "gpt_neox." or "" */
  ss_params prm;
  ss_compute cc;
  ss_lora_cfg lora; /* targets: bit per L_* */
} neox;

static void neox_free(neox *p) {
  if (p == NULL) return;
  for (int l = 0; p->blk != NULL && l < p->b - p->a; l++) {
    for (int k = 0; k < N_T; k++) ss_op_release(&p->cc, p->blk[l].own[k]);
    for (int k = 0; k < N_LIN; k++) ss_lora_free(&p->blk[l].lo[k]);
  }
  ss_params_free(&p->prm);
  free(p->blk);
  free(p->inv_freq);
  ss_ckpt_close(&p->ck);
  free(p);
}

/* ------------------------------------------------------------- config.json ---- */

static int cfg_flag(json_t *root, const char *key, int def) {
  json_t *v = json_object_get(root, key);
  return json_is_boolean(v) ? json_is_true(v) : def;
}

/* hidden_act into p->act; 0 or SS_EINVAL. */
static int load_act(neox *p, json_t *root, const char *path, char *err, size_t errlen) {
  static const char *const names[] = {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu"};
  static const int acts[] = {ACT_GELU, ACT_TANH, ACT_TANH, ACT_TANH, ACT_RELU};
  json_t *v = json_object_get(root, "hidden_act");
  p->act = ACT_GELU;
  if (v == NULL || json_is_null(v)) return 0;
  for (size_t i = 0; json_is_string(v) && i < sizeof names / sizeof *names; i++)
    if (strcmp(json_string_value(v), names[i]) == 0) {
      p->act = acts[i];
      return 0;
    }
  snprintf(err, errlen,
           "config %.200s: hidden_act '%.40s' is not supported (gelu, gelu_new, "
           "gelu_pytorch_tanh, gelu_fast, relu)",
           path, json_is_string(v) ? json_string_value(v) : "(not a string)");
  return SS_EINVAL;
}

/* The rotary settings: rotary_pct / partial_rotary_factor, rotary_emb_base / rope_theta (at the
 * top level or in transformers 5's rope_parameters); p->rot and p->inv_freq. Only the plain
 * rope: rope_scaling null or of type default, rope_parameters of type default (or none). */
static int load_rotary(neox *p, json_t *root, const char *path, char *err, size_t errlen) {
  static const char *const pct_key[] = {"rotary_pct", "partial_rotary_factor"};
  static const char *const base_key[] = {"rotary_emb_base", "rope_theta"};
  static const char *const scaling[] = {"rope_scaling", "rope_parameters"};
  json_t *src[2] = {root, json_object_get(root, "rope_parameters")};
  double pct = 0.25, base = 10000.0, v;
  int found;
  for (int s = 0; s < 2 && json_is_object(src[s]); s++)
    for (int i = 0; i < 2; i++) {
      if (ss_trunk_cfg_num(src[s], pct_key[i], path, &v, &found, err, errlen) != 0)
        return SS_EINVAL;
      if (found) pct = v;
      if (ss_trunk_cfg_num(src[s], base_key[i], path, &v, &found, err, errlen) != 0)
        return SS_EINVAL;
      if (found) base = v;
    }
  for (int s = 0; s < 2; s++) {
    json_t *o = json_object_get(root, scaling[s]), *t;
    if (o == NULL || json_is_null(o)) continue;
    t = json_is_object(o) ? json_object_get(o, "rope_type") : NULL;
    if (t == NULL && json_is_object(o)) t = json_object_get(o, "type");
    if (json_is_object(o) &&
        (t == NULL ? s == 1 : json_is_string(t) && !strcmp(json_string_value(t), "default")))
      continue;
    snprintf(err, errlen, "config %.200s: %s other than the default rope is not supported", path,
             scaling[s]);
    return SS_EINVAL;
  }
  p->rot = (int)(p->HS * pct);
  if (pct > 1.0 || p->rot % 2 != 0) {
    snprintf(err, errlen,
             "config %.200s: rotary_pct %g of head_size %d gives %d rotary dims (must be even, "
             "at most head_size)",
             path, pct, p->HS, p->rot);
    return SS_EINVAL;
  }
  if (p->rot > 0) {
    if ((p->inv_freq = malloc((size_t)(p->rot / 2) * sizeof *p->inv_freq)) == NULL) {
      snprintf(err, errlen, "out of memory");
      return SS_ENOMEM;
    }
    ss_rope_inv_freq(p->inv_freq, p->rot, base);
  }
  return 0;
}

static int load_config(neox *p, json_t *root, const char *path, char *err, size_t errlen) {
  static const char *const req[] = {"hidden_size", "num_attention_heads", "num_hidden_layers"};
  int *out[] = {&p->E, &p->NH, &p->n_layer}, found;
  json_t *mt = json_object_get(root, "model_type");
  double eps = 1e-5;
  if (mt != NULL && !(json_is_string(mt) && strcmp(json_string_value(mt), "gpt_neox") == 0)) {
    snprintf(err, errlen, "config %.200s: model_type '%.40s' is not gpt_neox", path,
             json_is_string(mt) ? json_string_value(mt) : "(not a string)");
    return SS_EINVAL;
  }
  if (ss_trunk_cfg_required(root, req, out, 3, path, err, errlen) != 0) return SS_EINVAL;
  if (p->E % p->NH != 0) {
    snprintf(err, errlen, "config %.200s: hidden_size %d is not a multiple of %d heads", path, p->E,
             p->NH);
    return SS_EINVAL;
  }
  p->HS = p->E / p->NH;
  p->I = 4 * p->E;
  p->n_pos = 2048;
  if (ss_trunk_cfg_int(root, "intermediate_size", path, &p->I, &found, err, errlen) != 0 ||
      ss_trunk_cfg_int(root, "max_position_embeddings", path, &p->n_pos, &found, err, errlen) !=
          0 ||
      ss_trunk_cfg_num(root, "layer_norm_eps", path, &eps, &found, err, errlen) != 0)
    return SS_EINVAL;
  p->eps = (float)eps;
  p->scale = (float)(1.0 / sqrt((double)p->HS));
  p->parallel = cfg_flag(root, "use_parallel_residual", 1);
  p->attn_bias = cfg_flag(root, "attention_bias", 1);
  if (load_act(p, root, path, err, errlen) != 0) return SS_EINVAL;
  return load_rotary(p, root, path, err, errlen);
}

/* ------------------------------------------------------------- weights ---- */

/* Tensor k's shape ([out, in] for the linear layers); 0 when the config has it, else -1. */
static int t_shape(const neox *p, int k, int64_t *shape, int *ndim) {
  static const int mult_out[N_LIN] = {3, 1, 0, 1}; /* out: mult x E, 0: I */
  const int64_t E = p->E, I = p->I;
  if (!p->attn_bias && (k == B_QKV || k == B_DENSE)) return -1;
  *ndim = 1;
  shape[0] = E;
  if (k < LN1_W) {
    int lin = k / 2;
    shape[0] = mult_out[lin] ? mult_out[lin] * E : I;
    if (k % 2 == 0) {
      *ndim = 2;
      shape[1] = lin == L_4H ? I : E;
    }
  }
  return 0;
}

static int load_weights(neox *p, const char *path, const char **kind_out, int64_t *n_params,
                        char *err, size_t errlen) {
  const int L = p->b - p->a;
  const ss_st_tensor **found;
  char name[256], dims[96];
  ss_trunk_load ld;
  int rc = 0;
  p->prefix = ss_ckpt_has_prefix(&p->ck, "gpt_neox.layers.") ? "gpt_neox." : "";
  if ((p->blk = ss_trunk_load_begin(&ld, &p->cc, (size_t)L * N_T, &found, (size_t)L, sizeof *p->blk,
                                    path, err, errlen)) == NULL)
    return SS_ENOMEM;
  for (int i = 0; i < L * N_T && rc == 0; i++) {
    int64_t shape[2];
    int ndim;
    if (t_shape(p, i % N_T, shape, &ndim) != 0) continue;
    snprintf(name, sizeof name, "%slayers.%d.%s", p->prefix, p->a + i / N_T, t_name[i % N_T]);
    if ((found[i] = ss_ckpt_find(&p->ck, name, &rc, err, errlen)) == NULL && rc == 0)
      ss_trunk_missing(&ld, name);
  }
  if (rc == 0) rc = ss_trunk_missing_check(&ld, path, p->a, p->b, err, errlen);
  snprintf(dims, sizeof dims, "hidden_size %d, intermediate_size %d", p->E, p->I);
  for (int i = 0; i < L * N_T && rc == 0; i++) {
    int64_t shape[2];
    int ndim;
    nx_layer *bk = &p->blk[i / N_T];
    bk->ip[i % N_T] = -1;
    if (t_shape(p, i % N_T, shape, &ndim) == 0)
      rc = ss_trunk_weight(&ld, found[i], shape, ndim, &bk->t[i % N_T], &bk->own[i % N_T], path,
                           dims, err, errlen);
  }
  free(found);
  *n_params = ld.n_params;
  *kind_out = ss_trunk_load_kind(&ld);
  return rc;
}

/* ------------------------------------------------------------- the block ---- */

/*
 * Where a block call's activations live is the caller's choice (the activation table below):
 * inference keeps the residual stream in place (x == h == y) and scratch for the rest (fcg ==
 * fc); training points x, h (sequential residual only), q, k, v, atty, fc, att and the LayerNorm
 * statistics into the layer's saved record and uses scratch for ln, qkv, fcg (recomputed).
 */
typedef struct block_acts {
  float *x, *h, *y;                     /* [BT, E] input, x + attention (sequential), output */
  float *ln;                            /* [BT, E] ln1(x), then ln2(x or h) */
  float *mean1, *rstd1, *mean2, *rstd2; /* [BT] LayerNorm statistics, or NULL */
  float *qkv;                           /* [BT, 3E] query_key_value, [NH, 3, HS] per row */
  float *q, *k, *v;                     /* [BT, E] each, heads side by side (q, k rotated) */
  float *atty;                          /* [BT, E] attention output */
  float *att;                           /* [B, NH, T, P+T] when att_all, else query blocks */
  int att_all;
  float *K, *V;           /* [B, NH, P+T, HS] past + new keys/values */
  float *fc, *fcg;        /* [BT, I] dense_h_to_4h output, act of it (may alias fc) */
  float *lt;              /* [BT, r] LoRA scratch */
  const ss_lora_mask *mk; /* a training forward's LoRA dropout (NULL: none) */
  float *xd;              /* [BT, max(E, I)] dropout scratch (with mk) */
} block_acts;

typedef struct block_grads {
  float *dln, *datty, *dq, *dk, *dv; /* [BT, E] */
  float *dqkv;                       /* [BT, 3E] */
  float *dfc;                        /* [BT, I] */
  float *datt;                       /* [T, T] */
  float *dlt;                        /* [BT, r] */
  float *dsink;                      /* [2E] LayerNorm gradients of a frozen trunk (LoRA) */
} block_grads;

typedef struct neox_work {
  block_acts a;
  block_grads g;
} neox_work;

/* Between the fused layout [NH, 3, HS] per row and three [BT, NH HS] tensors: split (qkv -> q,
 * k, v) or merge back (to 0: dq, dk, dv -> dqkv). A copy, no arithmetic. */
static void qkv_shuffle(const neox *p, float *qkv, float *q, float *k, float *v, int BT,
                        int split) {
  float *part[3] = {q, k, v};
  const size_t hs = (size_t)p->HS * sizeof(float);
  for (size_t r = 0; r < (size_t)BT; r++)
    for (size_t h = 0; h < (size_t)p->NH; h++)
      for (size_t j = 0; j < 3; j++) {
        float *fused = qkv + (r * (size_t)p->NH + h) * 3 * (size_t)p->HS + j * (size_t)p->HS;
        float *sep = part[j] + r * (size_t)p->E + h * (size_t)p->HS;
        memcpy(split ? sep : fused, split ? fused : sep, hs);
      }
}

/* The partial rotary embedding of x [B, T, NH HS] (row stride E) at positions pos0..: the first
 * rot values of each head turn, the rest stay (back: the inverse rotation, for gradients). */
static void rotary(const neox *p, float *x, int B, int T, int pos0, int back) {
  const int whole = p->rot == p->HS, heads = whole ? 1 : p->NH, nh = whole ? p->NH : 1;
  for (int h = 0; h < heads && p->rot > 0; h++) {
    float *xh = x + (size_t)h * (size_t)p->HS;
    if (back)
      ss_op_rope_backward_freq(&p->cc, xh, p->E, B, T, nh, p->rot, pos0, p->inv_freq);
    else
      ss_op_rope_forward_freq(&p->cc, xh, p->E, B, T, nh, p->rot, pos0, p->inv_freq);
  }
}

/* out = act(x) (back: out holds dL/d act on entry, dL/dx on return). */
static void act(const neox *p, float *out, const float *x, size_t n, int back) {
  if (p->act == ACT_GELU)
    (back ? ss_op_gelu_erf_backward : ss_op_gelu_erf_forward)(&p->cc, out, x, n);
  else if (p->act == ACT_TANH)
    (back ? ss_op_gelu_tanh_backward : ss_op_gelu_tanh_forward)(&p->cc, out, x, n);
  else
    (back ? ss_op_relu_backward : ss_op_relu_forward)(&p->cc, out, x, n);
}

/* Linear j of layer bk: y [BT, out] (=, or += with acc) x W^T + b, plus its adapter. */
static void lin(const neox *p, const nx_layer *bk, int j, float *y, const float *x, int BT, int acc,
                const block_acts *a) {
  int64_t shape[2];
  int nd;
  t_shape(p, 2 * j, shape, &nd);
  ss_op_linear_forward(&p->cc, y, x, bk->t[2 * j], bk->t[2 * j + 1], BT, (int)shape[1],
                       (int)shape[0], SS_W_OUT_IN, acc);
  ss_lora_forward(&p->lora, &bk->lo[j], (int)shape[1], (int)shape[0], y, x, BT, a->lt, a->mk,
                  a->xd);
}

static void block_forward(const void *impl, int l, void *work, int BT, const ss_trunk_seq *seqs,
                          int nseq) {
  const neox *p = impl;
  const nx_layer *bk = &p->blk[l];
  const block_acts *a = work;
  const size_t cells = (size_t)BT * (size_t)p->E;
  const float *src = a->x; /* ln2's input */
  ss_op_layernorm_forward(&p->cc, a->ln, a->mean1, a->rstd1, a->x, bk->t[LN1_W], bk->t[LN1_B], BT,
                          p->E, p->eps);
  lin(p, bk, L_QKV, a->qkv, a->ln, BT, 0, a);
  qkv_shuffle(p, a->qkv, a->q, a->k, a->v, BT, 1);
  for (int i = 0; i < nseq; i++) {
    const ss_trunk_seq *s = &seqs[i];
    const size_t o = (size_t)s->row0 * (size_t)p->E;
    ss_attn_dims d = {s->B, s->T, s->P, p->NH, p->NH, p->HS, p->scale, s->cap};
    rotary(p, a->q + o, s->B, s->T, s->pos0, 0);
    rotary(p, a->k + o, s->B, s->T, s->pos0, 0);
    ss_op_attention_forward(&p->cc, a->atty + o, p->E, a->att, a->att_all, s->K, s->V, a->q + o,
                            p->E, a->k + o, a->v + o, p->E, s->past_k, s->past_v, &d, 0, 0.0f);
  }
  if (!p->parallel) { /* h = x + a, then the MLP reads h */
    if (a->h != a->x) memcpy(a->h, a->x, cells * sizeof(float));
    lin(p, bk, L_DENSE, a->h, a->atty, BT, 1, a);
    src = a->h;
  }
  ss_op_layernorm_forward(&p->cc, a->ln, a->mean2, a->rstd2, src, bk->t[LN2_W], bk->t[LN2_B], BT,
                          p->E, p->eps);
  lin(p, bk, L_H4, a->fc, a->ln, BT, 0, a);
  act(p, a->fcg, a->fc, (size_t)BT * (size_t)p->I, 0);
  if (a->y != src) memcpy(a->y, src, cells * sizeof(float));
  if (p->parallel) lin(p, bk, L_DENSE, a->y, a->atty, BT, 1, a); /* after ln2 read x */
  lin(p, bk, L_4H, a->y, a->fcg, BT, 1, a);
}

/* Backward of linear j given dy and its input x: dx (=), and the gradients of what trains (W
 * and, unless nob, b in full fine-tuning; the adapter with LoRA). */
static void lin_back(neox *p, const nx_layer *bk, int j, int nob, float *dx, const float *dy,
                     const float *x, int BT, const block_acts *a, const block_grads *g) {
  int64_t shape[2];
  int nd;
  t_shape(p, 2 * j, shape, &nd);
  const int in = (int)shape[1], out = (int)shape[0];
  if (p->lora.r == 0) {
    ss_params_linear_backward(&p->prm, bk->ip[2 * j], nob ? -1 : bk->ip[2 * j + 1], dx, dy, x,
                              bk->t[2 * j], BT, in, out, SS_W_OUT_IN);
    return;
  }
  ss_op_linear_backward(&p->cc, dx, NULL, NULL, dy, x, bk->t[2 * j], BT, in, out, SS_W_OUT_IN);
  ss_lora_backward(&p->prm, &p->lora, &bk->lo[j], in, out, dx, dy, x, BT, a->lt, g->dlt, a->mk,
                   a->xd);
}

/* dres += LayerNorm n's backward (n 0: ln1, 1: ln2) of x given dln; its gain and bias gradients
 * summed (a frozen trunk: into the sink). */
static void ln_back(neox *p, const nx_layer *bk, int n, float *dres, const float *dln,
                    const float *x, const float *mean, const float *rstd, int BT, float *sink) {
  const int w = n ? LN2_W : LN1_W;
  const int full = bk->ip[w] >= 0;
  ss_params_lock(&p->prm);
  ss_op_layernorm_backward(&p->cc, dres, full ? ss_params_grad(&p->prm, bk->ip[w]) : sink,
                           full ? ss_params_grad(&p->prm, bk->ip[w + 1]) : sink + p->E, dln, x,
                           bk->t[w], mean, rstd, BT, p->E);
  ss_params_unlock(&p->prm);
}

/* The fused bias's gradient from dqkv: every q and v value; of k only the rotated ones (a
 * constant added to the keys' pass-through part shifts each query's scores by one number, which
 * softmax ignores: its gradient is exactly 0, and float noise there would become AdamW steps). */
static void qkv_bias_back(neox *p, const nx_layer *bk, const float *dqkv, int BT) {
  float *db;
  if (p->lora.r != 0 || bk->ip[B_QKV] < 0) return;
  db = ss_params_grad(&p->prm, bk->ip[B_QKV]);
  ss_params_lock(&p->prm);
  for (int h = 0; h < p->NH; h++) {
    const size_t o = (size_t)h * 3 * (size_t)p->HS;
    ss_op_bias_backward(&p->cc, db + o, dqkv + o, 3 * p->E, BT, p->HS + p->rot);
    ss_op_bias_backward(&p->cc, db + o + 2 * (size_t)p->HS, dqkv + o + 2 * (size_t)p->HS, 3 * p->E,
                        BT, p->HS);
  }
  ss_params_unlock(&p->prm);
}

/*
 * Backward of block_forward (no past, positions 0..T-1); a: the saved record (ln, qkv, fcg are
 * scratch, refilled). dres = dL/dy on entry, dL/dx on return:
 *   y = src + a' + act(fc) W4h^T + b     dfcg = dres W4h (+ dW4h, db), dfc = dfcg act'(fc)
 *   fc = ln2(src) Wh4^T + b              dln = dfc Wh4 (+ dWh4, db)
 *   parallel: src = x, a' = a            datty = dres Wd (+ dWd, db) before dres changes;
 *                                        dres += LN2'(dln)
 *   sequential: src = h = x + a          dres += LN2'(dln) (= dL/dh), then datty = dres Wd
 *   attention, rotary                    dq, dk, dv (nn/attention.h), turned back (partial)
 *   qkv = ln1(x) Wqkv^T + b              merged into dqkv; dln = dqkv Wqkv; dres += LN1'(dln)
 */
static int block_backward(void *impl, int l, void *work, float *dres, int B, int T) {
  neox *p = impl;
  const block_acts *a = &((neox_work *)work)->a;
  const block_grads *g = &((neox_work *)work)->g;
  const nx_layer *bk = &p->blk[l];
  const int BT = B * T;
  const size_t ni = (size_t)BT * (size_t)p->I;
  const float *src = p->parallel ? a->x : a->h;
  ss_attn_dims d = {B, T, 0, p->NH, p->NH, p->HS, p->scale, 0};
  /* mlp */
  act(p, a->fcg, a->fc, ni, 0);
  lin_back(p, bk, L_4H, 0, g->dfc, dres, a->fcg, BT, a, g);
  act(p, g->dfc, a->fc, ni, 1);
  ss_op_layernorm_forward(&p->cc, a->ln, NULL, NULL, src, bk->t[LN2_W], bk->t[LN2_B], BT, p->E,
                          p->eps);
  lin_back(p, bk, L_H4, 0, g->dln, g->dfc, a->ln, BT, a, g);
  if (p->parallel) lin_back(p, bk, L_DENSE, 0, g->datty, dres, a->atty, BT, a, g);
  ln_back(p, bk, 1, dres, g->dln, src, a->mean2, a->rstd2, BT, g->dsink);
  if (!p->parallel) lin_back(p, bk, L_DENSE, 0, g->datty, dres, a->atty, BT, a, g);
  /* attention */
  ss_op_attention_backward(&p->cc, g->dq, g->dk, g->dv, g->datt, g->datty, p->E, a->att, a->q, p->E,
                           a->k, a->v, p->E, &d, 0.0f);
  rotary(p, g->dq, B, T, 0, 1);
  rotary(p, g->dk, B, T, 0, 1);
  qkv_shuffle(p, g->dqkv, g->dq, g->dk, g->dv, BT, 0);
  ss_op_layernorm_forward(&p->cc, a->ln, NULL, NULL, a->x, bk->t[LN1_W], bk->t[LN1_B], BT, p->E,
                          p->eps);
  lin_back(p, bk, L_QKV, 1, g->dln, g->dqkv, a->ln, BT, a, g);
  qkv_bias_back(p, bk, g->dqkv, BT);
  ln_back(p, bk, 0, dres, g->dln, a->x, a->mean1, a->rstd1, BT, g->dsink);
  return 0;
}

/* ------------------------------------------------------------- the activation table ---- */

/* The table's slots after the runtime's x, h, y, K, V, in carving order: each named once, with
 * the member of neox_work its pointer is (an X-macro: the enum and the offsets from one list). */
/* clang-format off */
#define NEOX_SLOTS(X)                                                                         \
  X(S_LN, a.ln) X(S_QKV, a.qkv) X(S_Q, a.q) X(S_K, a.k) X(S_VV, a.v) X(S_ATTY, a.atty)       \
  X(S_FC, a.fc) X(S_FCG, a.fcg) X(S_M1, a.mean1) X(S_R1, a.rstd1) X(S_M2, a.mean2)           \
  X(S_R2, a.rstd2) X(S_ATT, a.att) X(S_LT, a.lt) X(S_XD, a.xd) X(S_DLN, g.dln)               \
  X(S_DATTY, g.datty) X(S_DQ, g.dq) X(S_DK, g.dk) X(S_DV, g.dv) X(S_DQKV, g.dqkv)            \
  X(S_DFC, g.dfc) X(S_DATT, g.datt) X(S_DLT, g.dlt) X(S_DSINK, g.dsink)
#define SLOT_ENUM(e, m) e,
#define SLOT_OFFSET(e, m) [e] = offsetof(neox_work, m),
enum { S_BEFORE = SS_TRUNK_SLOTS0 - 1, NEOX_SLOTS(SLOT_ENUM) N_SLOTS };
static const size_t slots[N_SLOTS] = {SS_TRUNK_COMMON_SLOTS(neox_work), NEOX_SLOTS(SLOT_OFFSET)};
/* clang-format on */

/* Floats per slot and phase (R rows; models/trunk.h):
 *   infer, batch: ln, q, k, v, atty [R, E]; qkv [R, 3E]; fc == fcg [R, I]; lt [R, r]; att
 *                 [ss_attn_scratch(HS)] (batch: x [R, E], h == y == x)
 *   train:        ln [R, E]; qkv [R, 3E]; fcg [R, I]; lt [R, r]; xd [R, max(E, I)] (dropout)
 *   saved:        x, q, k, v, atty [R, E] (h too when sequential); fc [R, I]; LayerNorm
 *                 statistics [R] x 4; att [B, NH, S, S]
 *   backward:     ln, dln, datty, dq, dk, dv [R, E]; dqkv [R, 3E]; fcg, dfc [R, I]; datt [S, S];
 *                 lt, dlt [R, r]; dsink [2E]; xd (dropout) */
static void neox_sizes(const void *impl, ss_trunk_phase ph, const ss_trunk_dims *d, size_t *n) {
  const neox *p = impl;
  const size_t R = d->rows, E = (size_t)p->E, I = (size_t)p->I, r = (size_t)p->lora.r;
  const size_t xd = d->dropout ? R * (E > I ? E : I) : 0;
  switch (ph) {
    case SS_TRUNK_BATCH:
    case SS_TRUNK_INFER:
      if (ph == SS_TRUNK_BATCH) ss_trunk_batch_stream(n, R * E);
      n[S_LN] = n[S_Q] = n[S_K] = n[S_VV] = n[S_ATTY] = R * E;
      n[S_QKV] = 3 * R * E;
      n[S_FC] = R * I;
      n[S_FCG] = SS_TRUNK_ALIAS(S_FC);
      n[S_LT] = R * r;
      n[S_ATT] = ss_attn_scratch(p->HS);
      break;
    case SS_TRUNK_TRAIN:
      n[S_LN] = R * E;
      n[S_QKV] = 3 * R * E;
      n[S_FCG] = R * I;
      n[S_LT] = R * r;
      n[S_XD] = xd;
      break;
    case SS_TRUNK_SAVED:
      n[SS_TRUNK_X] = n[S_Q] = n[S_K] = n[S_VV] = n[S_ATTY] = R * E;
      n[SS_TRUNK_H] = p->parallel ? 0 : R * E;
      n[S_FC] = R * I;
      n[S_M1] = n[S_R1] = n[S_M2] = n[S_R2] = R;
      n[S_ATT] = (size_t)d->B * (size_t)p->NH * (size_t)d->S * (size_t)d->S;
      break;
    case SS_TRUNK_BACKWARD:
      n[S_LN] = n[S_DLN] = n[S_DATTY] = n[S_DQ] = n[S_DK] = n[S_DV] = R * E;
      n[S_DQKV] = 3 * R * E;
      n[S_FCG] = n[S_DFC] = R * I;
      n[S_DATT] = (size_t)d->S * (size_t)d->S;
      n[S_LT] = n[S_DLT] = R * r;
      n[S_DSINK] = 2 * E;
      n[S_XD] = xd;
      break;
    default: break;
  }
}

static void neox_backward_init(const void *impl, void *work) {
  memset(((neox_work *)work)->g.dsink, 0, 2 * (size_t)((const neox *)impl)->E * sizeof(float));
}

static void neox_destroy(void *impl) { neox_free(impl); }

static const ss_trunk_arch neox_arch = {.kind = "gpt_neox",
                                        .pos_key = "max_position_embeddings",
                                        .kv_heads_key = "num_attention_heads",
                                        .sizes = neox_sizes,
                                        .backward_init = neox_backward_init,
                                        SS_TRUNK_WORK(neox_work, slots),
                                        .block_forward = block_forward,
                                        .block_backward = block_backward,
                                        .lora_targets = lin_target,
                                        .n_lora_targets = N_LIN,
                                        .destroy = neox_destroy};

/* ------------------------------------------------------------- LoRA and parameters ---- */

/* PEFT over GPTNeoXForCausalLM: base_model.model.gpt_neox.layers.{i}.<module> (whatever the
 * checkpoint's own prefix). */
static void lora_key(int layer, int j, char *key, size_t len) {
  const char *w = t_name[2 * j];
  snprintf(key, len, "base_model.model.gpt_neox.layers.%d.%.*s", layer,
           (int)(strlen(w) - strlen(".weight")), w);
}

/* Module i (layer-major, N_LIN a layer) as a LoRA site when the targets name it. */
static int neox_lora_site(void *impl, int i, ss_trunk_lora_site *s) {
  neox *p = impl;
  const int j = i % N_LIN, layer = p->a + i / N_LIN;
  int64_t sh[2];
  int nd;
  if (!(p->lora.targets & (1u << j))) return 0;
  t_shape(p, 2 * j, sh, &nd);
  s->lo = &p->blk[i / N_LIN].lo[j];
  lora_key(layer, j, s->key, sizeof s->key);
  s->in = (int)sh[1];
  s->out = (int)sh[0];
  s->unit = layer * 16 + j;
  return 1;
}

static int neox_lora_setup(void *impl, const char *adapter_dir, char *err, size_t errlen) {
  const neox *p = impl;
  return ss_trunk_lora_all(impl, &p->cc, (p->b - p->a) * N_LIN, p->lora.r, neox_lora_site,
                           adapter_dir, err, errlen);
}

/* Full fine-tuning: every trunk tensor under its loaded name; LoRA: the adapters only. */
static int neox_params(void *impl) {
  neox *p = impl;
  const int L = p->b - p->a;
  char name[256];
  if (ss_params_init(&p->prm, (size_t)L * N_T, &p->cc) != 0) return SS_ENOMEM;
  for (int i = 0; i < L * N_T; i++) {
    nx_layer *bk = &p->blk[i / N_T];
    const int k = i % N_T, layer = p->a + i / N_T;
    int64_t sh[2];
    int nd;
    if (t_shape(p, k, sh, &nd) != 0) continue;
    if (p->lora.r > 0) {
      if (k % 2 != 0 || k >= LN1_W || bk->lo[k / 2].a == NULL) continue;
      lora_key(layer, k / 2, name, sizeof name);
      if (ss_lora_add_params(&p->prm, &bk->lo[k / 2], name, p->lora.r, (int)sh[1], (int)sh[0]) != 0)
        return SS_ENOMEM;
      continue;
    }
    snprintf(name, sizeof name, "%slayers.%d.%s", p->prefix, layer, t_name[k]);
    if ((bk->ip[k] = ss_params_add(&p->prm, name, sh, nd, &bk->t[k], &bk->own[k])) < 0)
      return SS_ENOMEM;
  }
  return 0;
}

/* ------------------------------------------------------------- constructor ---- */

int ss_model_gpt_neox_new(ss_model *m, const char *const *params, size_t n, char *err,
                          size_t errlen) {
  const char *dt = "f32";
  char config[1200], msg[1024];
  int64_t n_params = 0;
  ss_trunk_spec sp;
  json_t *root = NULL;
  neox *p;
  int rc;

  if ((rc = ss_trunk_spec_parse(m, "gpt_neox", "a Hugging Face GPT-NeoX model.safetensors", params,
                                n, &sp, err, errlen)) != 0)
    return rc;
  if ((p = calloc(1, sizeof *p)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  p->cc = ss_model_compute(m); /* every tensor of the model comes from its backend */
  rc = ss_trunk_open(&sp, &p->ck, &root, config, sizeof config, msg, sizeof msg);
  if (rc == 0) rc = load_config(p, root, config, msg, sizeof msg);
  json_decref(root);
  if (rc == 0) rc = ss_trunk_layers(sp.layers, p->n_layer, &p->a, &p->b, msg, sizeof msg);
  if (rc == 0) rc = load_weights(p, sp.weights, &dt, &n_params, msg, sizeof msg);
  /* LoRA (PEFT's default target for gpt_neox: query_key_value), parameters, optimizer state */
  if (rc == 0)
    rc = ss_trunk_training(&neox_arch, p, &sp, 1u << L_QKV, &p->lora, &p->prm,
                           ss_ckpt_first(&p->ck), neox_lora_setup, neox_params, msg, sizeof msg);
  ss_ckpt_done(&p->ck);
  if (rc != 0) {
    snprintf(err, errlen, "model '%s': %s", m->id, msg);
    neox_free(p);
    return rc;
  }
  snprintf(m->describe, sizeof m->describe,
           "gpt_neox layers %d:%d of %d (hidden %d, %d heads, rotary %d of %d, %s residual), "
           "%.1fM params, %s",
           p->a, p->b, p->n_layer, p->E, p->NH, p->rot, p->HS,
           p->parallel ? "parallel" : "sequential", (double)n_params / 1e6, dt);
  const ss_trunk t = {&neox_arch, p,     p->a,    p->b,   p->n_pos, p->E,
                      p->NH,      p->HS, &p->prm, &p->cc, &p->lora};
  return ss_trunk_attach(m, &t, &p->ck, n_params, err, errlen);
}
