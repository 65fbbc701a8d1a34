/*
 * gpt2.c — the "gpt2" model kind: the trunk of a split GPT-2, i.e. transformer blocks [a, b) of
 * a Hugging Face GPT-2 checkpoint, with an attention (KV) cache. Input and output are hidden
 * states [batch, seq, n_embd] float32; the client's bottom has already added the positions.
 *
 * Spec: ID=gpt2,weights=model.safetensors[,config=config.json][,layers=A:B]
 *            [,lora_rank=R,lora_alpha=A,lora_targets=c_attn,c_proj,c_fc][,adapter=DIR]
 *   config defaults to config.json next to the weights; layers to 0:n_layer ("A:" and ":B" too).
 *   LoRA (models/lora.h): with lora_rank (or adapter=DIR) the trunk is frozen and the parameters
 *   are adapters on the Conv1D layers named in lora_targets (c_attn, c_proj = attn.c_proj and
 *   mlp.c_proj, c_fc; PEFT's default c_attn); lora_alpha defaults to 2 r. A [r, in], B [out, r]
 *   as PEFT stores them for Conv1D (fan_in_fan_out=true); save=DIR writes the PEFT directory
 *   (adapter_model.safetensors under base_model.model.transformer.h.{i}.<module>.lora_{A,B}
 *   .weight, adapter_config.json, optimizer.safetensors); adapter=DIR loads one.
 *   lora_dropout=P (default: the adapter's, else 0) drops the adapters' inputs in training
 *   forwards with masks from (lora_seed, forward id, layer, element): lora.h.
 *
 * Weights: keys h.{i}.ln_1.{weight,bias}, h.{i}.attn.c_attn.{weight,bias},
 * h.{i}.attn.c_proj.{weight,bias}, h.{i}.ln_2.{weight,bias}, h.{i}.mlp.c_fc.{weight,bias},
 * h.{i}.mlp.c_proj.{weight,bias}, optionally under "transformer."; F32/F16/BF16. Linear layers
 * are HF Conv1D: W is [in, out] and y = x W + b (nn/linear.h, SS_W_IN_OUT).
 * Only the trunk's tensors are touched. F32 tensors are used in place from the mmap (one copy in
 * the page cache, shared by every worker) when 4-byte aligned, else copied once at load;
 * F16/BF16 are converted to f32 once at load, except matrices whose products all run packed
 * (compute bf16/int8, f32 with brgemm): those stay as stored (trunk.h ss_trunk_weight).
 *
 * Block (HF GPT2Block, eval mode):  h = x + c_proj(attn(ln_1(x)));  y = h + mlp(ln_2(h))
 *   attn: q,k,v = split(ln_1(x) c_attn); per head softmax(q k^T / sqrt(d) + causal) v
 *   mlp:  c_proj(gelu_new(c_fc(.))),  gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
 * It is written once (block_forward / block_backward) on the op library (nn/backend/backend.h),
 * and the trunk runtime (models/trunk.h) runs it for inference with or without a cache, decode
 * steps and training, from this file's activation table (gpt2_sizes). In inference the residual
 * stream lives in out->data; c_proj results are added to it (linear forward, accumulate).
 *
 * KV cache: past[l].key/value [batch, heads, P, head_dim] (layer a + l). Keys/values of the
 * whole window [0, P + seq) are assembled per layer in one buffer K/V [batch, heads, P+seq, d];
 * when the caller wants the present cache that buffer *is* present[l] (from the model's backend,
 * owned by the caller: ss_kv_release), else it is scratch. A new token at absolute position P + i
 * attends to keys 0..P+i.
 *
 * Thread: created on the main thread, then shared by all workers; check() and check_kv() on the
 * loop thread; forward()/forward_kv() on workers, reentrant (all scratch comes from the
 * model's backend per call).
 * Training (models/trunk.c): forward_train/backward under the model's read lock (backward
 * calls serialize only their gradient sums, on the params mutex: models/params.h); step() under the
 * write lock is the only writer of weights, copying mmap views on first write; save() writes the
 * trunk's layers only, under their original names.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/file.h"
#include "models/lora.h"
#include "models/model.h"
#include "models/nn/backend/backend.h"
#include "models/params.h"
#include "models/safetensors.h"
#include "models/trunk.h"

enum {
  T_LN1_W,
  T_LN1_B,
  T_ATTN_W,
  T_ATTN_B,
  T_APROJ_W,
  T_APROJ_B,
  T_LN2_W,
  T_LN2_B,
  T_FC_W,
  T_FC_B,
  T_MPROJ_W,
  T_MPROJ_B,
  T_PER_LAYER
};

static const char *const tensor_suffix[T_PER_LAYER] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};

/* LoRA: the four Conv1D layers that can carry an adapter, and the PEFT target names. The
 * target "c_proj" names both attn.c_proj and mlp.c_proj, as PEFT matches module names by their
 * last component. */
enum { LO_ATTN, LO_APROJ, LO_FC, LO_MPROJ, N_LORA };
static const int lora_weight[N_LORA] = {T_ATTN_W, T_APROJ_W, T_FC_W, T_MPROJ_W};
static const char *const lora_targets[] = {"c_attn", "c_proj", "c_fc"};
static const unsigned lora_target_of[N_LORA] = {1u << 0, 1u << 1, 1u << 2, 1u << 1};

typedef struct gpt2_block {
  const float *t[T_PER_LAYER]; /* float32 views: into the mmap or into own[] */
  float *own[T_PER_LAYER];     /* converted / realigned copies (NULL when mmapped) */
  ss_lora lo[N_LORA];          /* LoRA adapters (lo[i].a NULL: none) */
  float attn_scale;            /* 1/sqrt(head_dim) (and / (layer+1) when configured) */
} gpt2_block;

typedef struct gpt2 {
  int n_embd, n_head, head_dim, n_inner, n_layer, n_pos;
  int a, b; /* trunk layers [a, b) */
  float eps;
  gpt2_block *blk;    /* b - a blocks */
  ss_ckpt ck;         /* the weight files, kept mapped */
  const char *prefix; /* static: "" or "transformer." as in the loaded file (save writes it back) */
  /* training: one param per tensor (layer-major, T_PER_LAYER each; see gpt2_params), or with
   * LoRA (lora.r > 0) the adapters only */
  ss_params prm;
  ss_compute cc; /* the dtype of the weight products (model key compute=) */
  ss_lora_cfg lora;
} gpt2;

static void gpt2_free(gpt2 *p) {
  if (p == NULL) return;
  if (p->blk != NULL)
    for (int l = 0; l < p->b - p->a; l++) {
      for (int k = 0; k < T_PER_LAYER; k++) ss_op_release(&p->cc, p->blk[l].own[k]);
      for (int k = 0; k < N_LORA; k++) ss_lora_free(&p->blk[l].lo[k]);
    }
  ss_params_free(&p->prm);
  free(p->blk);
  ss_ckpt_close(&p->ck);
  free(p);
}

/* ------------------------------------------------------------- config.json ---- */

/* config.json (root, read from path) into p and the attention scaling flags. */
static int load_config(gpt2 *p, json_t *root, const char *path, int *scale_weights,
                       int *scale_by_layer, char *err, size_t errlen) {
  json_t *v;
  int found, rc = SS_EINVAL;
  static const char *const required[] = {"n_embd", "n_head", "n_layer"};
  int *req_out[] = {&p->n_embd, &p->n_head, &p->n_layer};

  if (ss_trunk_cfg_required(root, required, req_out, 3, path, err, errlen) != 0) goto done;
  if (p->n_embd % p->n_head != 0) {
    snprintf(err, errlen, "config %.200s: n_embd %d is not a multiple of n_head %d", path,
             p->n_embd, p->n_head);
    goto done;
  }
  p->head_dim = p->n_embd / p->n_head;
  p->n_pos = 1024;
  if (ss_trunk_cfg_int(root, "n_positions", path, &p->n_pos, &found, err, errlen) != 0) goto done;
  if (!found && ss_trunk_cfg_int(root, "n_ctx", path, &p->n_pos, &found, err, errlen) != 0)
    goto done;
  p->n_inner = 4 * p->n_embd;
  if (ss_trunk_cfg_int(root, "n_inner", path, &p->n_inner, &found, err, errlen) != 0) goto done;
  p->eps = 1e-5f;
  v = json_object_get(root, "layer_norm_epsilon");
  if (v != NULL && !json_is_null(v)) {
    if (!json_is_number(v) || !(json_number_value(v) > 0.0) || json_number_value(v) >= 1.0) {
      snprintf(err, errlen, "config %.200s: 'layer_norm_epsilon' must be a number in (0, 1)", path);
      goto done;
    }
    p->eps = (float)json_number_value(v);
  }
  v = json_object_get(root, "activation_function");
  if (v != NULL && !json_is_null(v)) {
    const char *act = json_is_string(v) ? json_string_value(v) : "";
    /* gelu_pytorch_tanh is the same tanh approximation under another name. */
    if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0) {
      snprintf(err, errlen,
               "config %.200s: activation_function '%s' is not supported (the gpt2 "
               "kind implements gelu_new only)",
               path, json_is_string(v) ? act : "(not a string)");
      goto done;
    }
  }
  *scale_weights = 1;
  *scale_by_layer = 0;
  v = json_object_get(root, "scale_attn_weights");
  if (v != NULL && json_is_boolean(v)) *scale_weights = json_is_true(v);
  v = json_object_get(root, "scale_attn_by_inverse_layer_idx");
  if (v != NULL && json_is_boolean(v)) *scale_by_layer = json_is_true(v);
  rc = 0;
done:
  return rc;
}

/* ------------------------------------------------------------- weights ---- */

static void expected_shape(const gpt2 *p, int k, int64_t *shape, int *ndim) {
  int64_t E = p->n_embd, NI = p->n_inner;
  *ndim = 1;
  switch (k) {
    case T_ATTN_W:
      *ndim = 2;
      shape[0] = E;
      shape[1] = 3 * E;
      break;
    case T_ATTN_B: shape[0] = 3 * E; break;
    case T_APROJ_W:
      *ndim = 2;
      shape[0] = E;
      shape[1] = E;
      break;
    case T_FC_W:
      *ndim = 2;
      shape[0] = E;
      shape[1] = NI;
      break;
    case T_FC_B: shape[0] = NI; break;
    case T_MPROJ_W:
      *ndim = 2;
      shape[0] = NI;
      shape[1] = E;
      break;
    default: shape[0] = E; break; /* ln_*, c_proj biases */
  }
}

/* Looks up every trunk tensor in the opened p->st, checks names and shapes, makes the f32 views.
 * *kind_out: "f32 mmap", "f32 copied", "f16->f32", "bf16->f32" or "mixed". */
static int load_weights(gpt2 *p, const char *path, const char **kind_out, int64_t *n_params,
                        char *err, size_t errlen) {
  const char *prefix = "";
  char name[256], dims[64];
  int L = p->b - p->a, rc = 0;
  const ss_st_tensor **found;
  ss_trunk_load ld;

  if (ss_ckpt_has_prefix(&p->ck, "transformer.h.")) prefix = "transformer.";
  p->prefix = prefix;
  if ((p->blk = ss_trunk_load_begin(&ld, &p->cc, (size_t)L * T_PER_LAYER, &found, (size_t)L,
                                    sizeof *p->blk, path, err, errlen)) == NULL)
    return SS_ENOMEM;
  for (int l = 0; l < L && rc == 0; l++) {
    for (int k = 0; k < T_PER_LAYER; k++) {
      snprintf(name, sizeof name, "%sh.%d.%s", prefix, p->a + l, tensor_suffix[k]);
      if ((found[l * T_PER_LAYER + k] = ss_ckpt_find(&p->ck, name, &rc, err, errlen)) == NULL) {
        if (rc != 0) break;
        ss_trunk_missing(&ld, name);
      }
    }
  }
  if (rc == 0) rc = ss_trunk_missing_check(&ld, path, p->a, p->b, err, errlen);
  snprintf(dims, sizeof dims, "n_embd %d, n_inner %d", p->n_embd, p->n_inner);
  for (int l = 0; l < L && rc == 0; l++) {
    for (int k = 0; k < T_PER_LAYER && rc == 0; k++) {
      int64_t shape[2];
      int ndim;
      expected_shape(p, k, shape, &ndim);
      rc = ss_trunk_weight(&ld, found[l * T_PER_LAYER + k], shape, ndim, &p->blk[l].t[k],
                           &p->blk[l].own[k], path, dims, err, errlen);
    }
  }
  free(found);
  *n_params = ld.n_params;
  *kind_out = ss_trunk_load_kind(&ld);
  return rc;
}

/* ------------------------------------------------------------- the block ---- */

/*
 * One transformer block, written once (HF GPT2Block, eval mode), on the nn/ ops:
 *   h = x + c_proj(attn(ln_1(x)));  y = h + c_proj(gelu_new(c_fc(ln_2(h))))
 * Where its activations live is the caller's choice (block_acts): inference keeps one residual
 * stream updated in place (x == h == y) and reuses scratch for everything else; training points
 * x, h, qkv, atty, fc, att and the LayerNorm statistics into the layer's saved record (y is the
 * next layer's x) and reuses scratch for ln, fcg, K, V (recomputed in backward).
 */
typedef struct block_acts {
  float *x, *h, *y; /* [BT, E] block input, residual after attention, output (may alias) */
  float *ln;        /* [BT, E] ln_1(x), then ln_2(h) */
  float *mean1, *rstd1, *mean2, *rstd2; /* [BT] LayerNorm statistics, or NULL */
  float *qkv;                           /* [BT, 3E] ln_1(x) c_attn + b */
  float *atty;                          /* [BT, E] attention output, heads side by side */
  float *att; /* probabilities: [B, H, T, P+T] when att_all, else [T, P+T] */
  int att_all;
  float *K, *V;           /* [B, H, P+T, D] past + new keys/values */
  float *fc, *fcg;        /* [BT, I] c_fc output, and gelu_new of it (may alias fc) */
  float *lt;              /* [BT, r] LoRA scratch (NULL without adapters) */
  const ss_lora_mask *mk; /* a training forward's LoRA dropout (NULL: none) */
  float *xd;              /* [BT, I] dropout scratch (with mk) */
} block_acts;

static ss_attn_dims attn_dims(const gpt2 *p, const gpt2_block *bk, int B, int T, int P, int cap) {
  ss_attn_dims d = {B, T, P, p->n_head, p->n_head, p->head_dim, bk->attn_scale, cap};
  return d;
}

/* The sequences whose rows a block call stacks (models/trunk.h). */
typedef ss_trunk_seq seq_attn;

static void block_forward(const void *impl, int l, void *work, int BT, const seq_attn *seqs,
                          int nseq) {
  const gpt2 *p = impl;
  const gpt2_block *bk = &p->blk[l];
  const block_acts *a = work; /* the first member of the work struct */
  const int E = p->n_embd, NI = p->n_inner;
  const size_t cells = (size_t)BT * (size_t)E;
  const float *const *w = bk->t;
  /* attention */
  ss_op_layernorm_forward(&p->cc, a->ln, a->mean1, a->rstd1, a->x, w[T_LN1_W], w[T_LN1_B], BT, E,
                          p->eps);
  ss_op_linear_forward(&p->cc, a->qkv, a->ln, w[T_ATTN_W], w[T_ATTN_B], BT, E, 3 * E, SS_W_IN_OUT,
                       0);
  ss_lora_forward(&p->lora, &bk->lo[LO_ATTN], E, 3 * E, a->qkv, a->ln, BT, a->lt, a->mk, a->xd);
  for (int i = 0; i < nseq; i++) {
    const seq_attn *s = &seqs[i];
    ss_attn_dims d = attn_dims(p, bk, s->B, s->T, s->P, s->cap);
    const float *qkv = a->qkv + (size_t)s->row0 * 3 * (size_t)E;
    ss_op_attention_forward(&p->cc, a->atty + (size_t)s->row0 * (size_t)E, E, a->att, a->att_all,
                            s->K, s->V, qkv, 3 * E, qkv + E, qkv + 2 * E, 3 * E, s->past_k,
                            s->past_v, &d, 0, 0.0f);
  }
  if (a->h != a->x) memcpy(a->h, a->x, cells * sizeof(float));
  ss_op_linear_forward(&p->cc, a->h, a->atty, w[T_APROJ_W], w[T_APROJ_B], BT, E, E, SS_W_IN_OUT, 1);
  ss_lora_forward(&p->lora, &bk->lo[LO_APROJ], E, E, a->h, a->atty, BT, a->lt, a->mk, a->xd);
  /* mlp */
  ss_op_layernorm_forward(&p->cc, a->ln, a->mean2, a->rstd2, a->h, w[T_LN2_W], w[T_LN2_B], BT, E,
                          p->eps);
  if (a->fcg == a->fc && bk->lo[LO_FC].a == NULL) { /* inference: gelu fused, fc not kept */
    ss_mm_epilogue ep = {w[T_FC_B], SS_ACT_GELU_TANH, NULL, 0};
    ss_op_linear_forward_ep(&p->cc, a->fcg, a->ln, w[T_FC_W], &ep, BT, E, NI, SS_W_IN_OUT, 0);
  } else {
    ss_op_linear_forward(&p->cc, a->fc, a->ln, w[T_FC_W], w[T_FC_B], BT, E, NI, SS_W_IN_OUT, 0);
    ss_lora_forward(&p->lora, &bk->lo[LO_FC], E, NI, a->fc, a->ln, BT, a->lt, a->mk, a->xd);
    ss_op_gelu_tanh_forward(&p->cc, a->fcg, a->fc, (size_t)BT * (size_t)NI);
  }
  if (a->y != a->h) memcpy(a->y, a->h, cells * sizeof(float));
  ss_op_linear_forward(&p->cc, a->y, a->fcg, w[T_MPROJ_W], w[T_MPROJ_B], BT, NI, E, SS_W_IN_OUT, 1);
  ss_lora_forward(&p->lora, &bk->lo[LO_MPROJ], NI, E, a->y, a->fcg, BT, a->lt, a->mk, a->xd);
}

/* Backward scratch of one call: ln, dln, datty [BT, E]; dqkv [BT, 3E]; dfc [BT, I]; datt [T, T]
 * (fcg of the saved acts is scratch too). */
typedef struct block_grads {
  float *dln, *datty, *dqkv, *dfc, *datt;
  float *dlt;   /* [BT, r] LoRA scratch */
  float *dsink; /* [2E] LayerNorm gain/bias gradients of a frozen trunk (LoRA) */
} block_grads;

/* Everything a block call points at: its activations and, in backward, its gradients. */
typedef struct gpt2_work {
  block_acts a;
  block_grads g;
} gpt2_work;

/* Backward of Conv1D k (weight index; its bias k + 1 unless ib says otherwise, < 0: none) of
 * layer l and of its adapter: dx = dL/dx; weight gradients in full fine-tuning only (LoRA: the
 * adapter's A, B instead). */
static void conv_backward(gpt2 *p, int l, int lo, int ib, float *dx, const float *dy,
                          const float *x, int BT, int C, int OC, const block_acts *a,
                          const block_grads *g) {
  const gpt2_block *bk = &p->blk[l];
  const int k = lora_weight[lo];
  if (p->lora.r == 0) {
    ss_params_linear_backward(&p->prm, l * T_PER_LAYER + k, ib, dx, dy, x, bk->t[k], BT, C, OC,
                              SS_W_IN_OUT);
    return;
  }
  ss_op_linear_backward(&p->cc, dx, NULL, NULL, dy, x, bk->t[k], BT, C, OC, SS_W_IN_OUT);
  ss_lora_backward(&p->prm, &p->lora, &bk->lo[lo], C, OC, dx, dy, x, BT, a->lt, g->dlt, a->mk,
                   a->xd);
}

/*
 * Backward of block_forward (no past), a: the saved acts (x, h, qkv, atty, fc, att, statistics;
 * ln and fcg scratch, refilled here). dres = dL/dy on entry, dL/dx on return (updated in place):
 *   y = h + gelu(fc) Wp + bp      dWp += gelu(fc)^T dres, dbp += sum dres, dg = dres Wp^T
 *                                 dfc = dg * gelu_new'(fc)
 *   fc = ln_2(h) Wf + bf          dWf += ln_2^T dfc, dbf += sum dfc, dln = dfc Wf^T
 *   ln_2                          dres += LN'(dln) (and dgain, dbias): now dres = dL/dh
 *   h = x + atty Wa + ba          dWa += atty^T dres, dba += sum dres, datty = dres Wa^T
 *   attention                     dqkv (nn/attention.h)
 *   qkv = ln_1(x) Wqkv + bqkv     dWqkv += ln_1^T dqkv, dbqkv += sum dqkv, dln = dqkv Wqkv^T
 *   ln_1                          dres += LN'(dln): now dres = dL/dx, the previous block's dL/dy
 * Weight gradients go into the model's buffers under the params mutex (one short critical
 * section per tensor), so concurrent backward calls sum their gradients.
 *
 * The key part of c_attn's bias, bqkv[E, 2E), gets no gradient: adding a constant to every key
 * shifts each query's scores by the same q.b, which softmax ignores, so its gradient is exactly
 * zero (sum over keys of dK = sum_i q_i sum_j dS_ij = 0). Float rounding would leave ~1e-8 there,
 * and AdamW, which divides by sqrt(v), would turn that noise into steps of size lr.
 */
static int block_backward(void *impl, int l, void *work, float *dres, int B, int T) {
  gpt2 *p = impl;
  const block_acts *a = &((gpt2_work *)work)->a;
  const block_grads *g = &((gpt2_work *)work)->g;
  const gpt2_block *bk = &p->blk[l];
  const float *const *w = bk->t;
  const int E = p->n_embd, NI = p->n_inner, BT = B * T, i0 = l * T_PER_LAYER;
  const int full = p->lora.r == 0; /* LoRA: the trunk is frozen, its LayerNorms too */
  ss_params *s = &p->prm;
  ss_attn_dims d = attn_dims(p, bk, B, T, 0, 0);
  float *dw2 = full ? ss_params_grad(s, i0 + T_LN2_W) : g->dsink;
  float *db2 = full ? ss_params_grad(s, i0 + T_LN2_B) : g->dsink + E;
  float *dw1 = full ? ss_params_grad(s, i0 + T_LN1_W) : g->dsink;
  float *db1 = full ? ss_params_grad(s, i0 + T_LN1_B) : g->dsink + E;
  /* mlp */
  ss_op_gelu_tanh_forward(&p->cc, a->fcg, a->fc, (size_t)BT * (size_t)NI);
  conv_backward(p, l, LO_MPROJ, i0 + T_MPROJ_B, g->dfc, dres, a->fcg, BT, NI, E, a, g);
  ss_op_gelu_tanh_backward(&p->cc, g->dfc, a->fc, (size_t)BT * (size_t)NI);
  ss_op_layernorm_forward(&p->cc, a->ln, NULL, NULL, a->h, w[T_LN2_W], w[T_LN2_B], BT, E, p->eps);
  conv_backward(p, l, LO_FC, i0 + T_FC_B, g->dln, g->dfc, a->ln, BT, E, NI, a, g);
  ss_params_lock(s);
  ss_op_layernorm_backward(&p->cc, dres, dw2, db2, g->dln, a->h, w[T_LN2_W], a->mean2, a->rstd2, BT,
                           E);
  ss_params_unlock(s);
  /* attention */
  conv_backward(p, l, LO_APROJ, i0 + T_APROJ_B, g->datty, dres, a->atty, BT, E, E, a, g);
  ss_op_attention_backward(&p->cc, g->dqkv, g->dqkv + E, g->dqkv + 2 * E, g->datt, g->datty, E,
                           a->att, a->qkv, 3 * E, a->qkv + E, a->qkv + 2 * E, 3 * E, &d, 0.0f);
  ss_op_layernorm_forward(&p->cc, a->ln, NULL, NULL, a->x, w[T_LN1_W], w[T_LN1_B], BT, E, p->eps);
  conv_backward(p, l, LO_ATTN, -1, g->dln, g->dqkv, a->ln, BT, E, 3 * E, a, g);
  ss_params_lock(s);
  if (full) {
    float *db = ss_params_grad(s, i0 + T_ATTN_B);
    ss_op_bias_backward(&p->cc, db, g->dqkv, 3 * E, BT, E);                 /* query part */
    ss_op_bias_backward(&p->cc, db + 2 * E, g->dqkv + 2 * E, 3 * E, BT, E); /* value part */
  }
  ss_op_layernorm_backward(&p->cc, dres, dw1, db1, g->dln, a->x, w[T_LN1_W], a->mean1, a->rstd1, BT,
                           E);
  ss_params_unlock(s);
  return 0;
}

/* ------------------------------------------------------------- the activation table ---- */

/* Slots of the table (after the runtime's x, h, y, K, V), in the order they are carved. */
/* clang-format off */
enum {
  S_LN = SS_TRUNK_SLOTS0, S_QKV, S_ATTY, S_FC, S_FCG, S_MEAN1, S_RSTD1, S_MEAN2, S_RSTD2, S_ATT,
  S_LT, S_XD, S_DLN, S_DATTY, S_DQKV, S_DFC, S_DATT, S_DLT, S_DSINK, N_SLOTS
};
#define A_(f) offsetof(gpt2_work, a.f)
#define G_(f) offsetof(gpt2_work, g.f)
static const size_t slots[N_SLOTS] = {
    SS_TRUNK_COMMON_SLOTS(gpt2_work), [S_LN] = A_(ln), [S_QKV] = A_(qkv), [S_ATTY] = A_(atty),
    [S_FC] = A_(fc), [S_FCG] = A_(fcg), [S_MEAN1] = A_(mean1), [S_RSTD1] = A_(rstd1),
    [S_MEAN2] = A_(mean2), [S_RSTD2] = A_(rstd2), [S_ATT] = A_(att), [S_LT] = A_(lt),
    [S_XD] = A_(xd), [S_DLN] = G_(dln), [S_DATTY] = G_(datty), [S_DQKV] = G_(dqkv),
    [S_DFC] = G_(dfc), [S_DATT] = G_(datt), [S_DLT] = G_(dlt), [S_DSINK] = G_(dsink)};
/* clang-format on */

/* Floats per slot of each phase (models/trunk.h; K, V scratch: the runtime's):
 *   infer, batch  ln, atty [R, E]; qkv [R, 3E]; fc == fcg [R, I]; lt [R, r];
 *                 att [ss_attn_scratch(HS)] (batch: x [R, E], h == y == x)
 *   train         ln [R, E]; fcg [R, I]; lt [R, r]; xd [R, I] with dropout
 *   saved         x, h, atty [R, E]; qkv [R, 3E]; fc [R, I]; mean1, rstd1, mean2, rstd2 [R];
 *                 att [B, H, S, S]
 *   backward      ln, dln, datty [R, E]; dqkv [R, 3E]; fcg, dfc [R, I]; datt [S, S];
 *                 lt, dlt [R, r]; dsink [2E]; xd [R, I] with dropout */
static void gpt2_sizes(const void *impl, ss_trunk_phase ph, const ss_trunk_dims *d, size_t *n) {
  const gpt2 *p = impl;
  const size_t R = d->rows, E = (size_t)p->n_embd, I = (size_t)p->n_inner, r = (size_t)p->lora.r;
  switch (ph) {
    case SS_TRUNK_BATCH:
      n[SS_TRUNK_X] = R * E;
      n[SS_TRUNK_H] = n[SS_TRUNK_Y] = SS_TRUNK_ALIAS(SS_TRUNK_X);
      /* fall through */
    case SS_TRUNK_INFER:
      n[S_LN] = n[S_ATTY] = R * E;
      n[S_QKV] = 3 * R * E;
      n[S_FC] = R * I;
      n[S_FCG] = SS_TRUNK_ALIAS(S_FC);
      n[S_LT] = R * r;
      n[S_ATT] = ss_attn_scratch(p->head_dim);
      break;
    case SS_TRUNK_TRAIN:
      n[S_LN] = R * E;
      n[S_FCG] = R * I;
      n[S_LT] = R * r;
      n[S_XD] = d->dropout ? R * I : 0;
      break;
    case SS_TRUNK_SAVED:
      n[SS_TRUNK_X] = n[SS_TRUNK_H] = n[S_ATTY] = R * E;
      n[S_QKV] = 3 * R * E;
      n[S_FC] = R * I;
      n[S_MEAN1] = n[S_RSTD1] = n[S_MEAN2] = n[S_RSTD2] = R;
      n[S_ATT] = (size_t)d->B * (size_t)p->n_head * (size_t)d->S * (size_t)d->S;
      break;
    case SS_TRUNK_BACKWARD:
      n[S_LN] = n[S_DLN] = n[S_DATTY] = R * E;
      n[S_DQKV] = 3 * R * E;
      n[S_FCG] = n[S_DFC] = R * I;
      n[S_DATT] = (size_t)d->S * (size_t)d->S;
      n[S_LT] = n[S_DLT] = R * r;
      n[S_DSINK] = 2 * E;
      n[S_XD] = d->dropout ? R * I : 0;
      break;
    default: break;
  }
}

static void gpt2_destroy(void *impl) { gpt2_free(impl); }

static const ss_trunk_arch gpt2_arch = {.kind = "gpt2",
                                        .pos_key = "n_positions",
                                        .kv_heads_key = "n_head",
                                        SS_TRUNK_WORK(gpt2_work, slots),
                                        .sizes = gpt2_sizes,
                                        .block_forward = block_forward,
                                        .block_backward = block_backward,
                                        .lora_targets = lora_targets,
                                        .n_lora_targets = 3,
                                        .fan_in_fan_out = 1,
                                        .destroy = gpt2_destroy};

/* ------------------------------------------------------------- LoRA and parameters ---- */

/* The PEFT key of layer's adapted module lo (PEFT over GPT2LMHeadModel:
 * base_model.model.transformer.h.{i}.attn.c_attn; a file written over a bare GPT2Model,
 * without "transformer.", loads too). */
static void lora_key(int layer, int lo, int bare, char *key, size_t len) {
  const char *suf = tensor_suffix[lora_weight[lo]];
  snprintf(key, len, "base_model.model.%sh.%d.%.*s", bare ? "" : "transformer.", layer,
           (int)(strlen(suf) - strlen(".weight")), suf);
}

/* Adapters of every target module of every layer: fresh (PEFT init, seeded) or from
 * adapter_dir/adapter_model.safetensors. */
static int lora_setup(gpt2 *p, const char *adapter_dir, char *err, size_t errlen) {
  char key[256], path[1200], probe[300];
  uint64_t st = 0x5EEDull;
  ss_st_file *ad = NULL;
  int rc = 0, bare = 0;
  if (adapter_dir != NULL) {
    if ((rc = ss_lora_open(adapter_dir, &ad, path, sizeof path, err, errlen)) != 0) return rc;
    for (int lo = 0; lo < N_LORA && !bare; lo++) {
      lora_key(p->a, lo, 1, key, sizeof key);
      snprintf(probe, sizeof probe, "%s.lora_A.weight", key);
      bare = ss_st_find(ad, probe) != NULL;
    }
  }
  for (int l = 0; l < p->b - p->a && rc == 0; l++) {
    for (int lo = 0; lo < N_LORA && rc == 0; lo++) {
      int64_t shape[2];
      int ndim;
      ss_lora *a = &p->blk[l].lo[lo];
      if (!(p->lora.targets & lora_target_of[lo])) continue;
      expected_shape(p, lora_weight[lo], shape, &ndim); /* Conv1D: [in, out] */
      lora_key(p->a + l, lo, bare, key, sizeof key);
      a->unit = (p->a + l) * 16 + lo; /* dropout masks: lora.h */
      if (ad != NULL)
        rc = ss_lora_load(a, &p->cc, ad, path, key, p->lora.r, (int)shape[0], (int)shape[1], err,
                          errlen);
      else if ((rc = ss_lora_init(a, &p->cc, p->lora.r, (int)shape[0], (int)shape[1], &st)) != 0)
        snprintf(err, errlen, "out of memory");
    }
  }
  ss_st_close(ad); /* the adapters are copies */
  return rc;
}

/* The trainable parameters, layer-major (index l * T_PER_LAYER + k), pointing at the blocks'
 * tensor pointers, under their original names. */
static int gpt2_params(gpt2 *p) {
  int L = p->b - p->a;
  char name[256];
  if (ss_params_init(&p->prm, (size_t)L * T_PER_LAYER, &p->cc) != 0) return SS_ENOMEM;
  if (p->lora.r > 0) { /* LoRA: the adapters only, under their PEFT names */
    for (int l = 0; l < L; l++) {
      for (int lo = 0; lo < N_LORA; lo++) {
        int64_t shape[2];
        int ndim;
        ss_lora *a = &p->blk[l].lo[lo];
        if (a->a == NULL) continue;
        expected_shape(p, lora_weight[lo], shape, &ndim);
        lora_key(p->a + l, lo, 0, name, sizeof name);
        if (ss_lora_add_params(&p->prm, a, name, p->lora.r, (int)shape[0], (int)shape[1]) != 0)
          return SS_ENOMEM;
      }
    }
    return 0;
  }
  for (int l = 0; l < L; l++) {
    for (int k = 0; k < T_PER_LAYER; k++) {
      int64_t shape[2];
      int ndim;
      expected_shape(p, k, shape, &ndim);
      snprintf(name, sizeof name, "%sh.%d.%s", p->prefix, p->a + l, tensor_suffix[k]);
      if (ss_params_add(&p->prm, name, shape, ndim, &p->blk[l].t[k], &p->blk[l].own[k]) < 0)
        return SS_ENOMEM;
    }
  }
  return 0;
}

/* ------------------------------------------------------------- constructor ---- */

/* The adapter and parameter set-up as the runtime calls them (ss_trunk_training). */
static int gpt2_lora_setup(void *impl, const char *adapter, char *msg, size_t len) {
  return lora_setup(impl, adapter, msg, len);
}

static int gpt2_params_of(void *impl) { return gpt2_params(impl); }

int ss_model_gpt2_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  const char *dt = "f32";
  char config[1200], msg[1024];
  int scale_weights = 1, scale_by_layer = 0, rc; /* set by load_config */
  int64_t n_params = 0;
  ss_trunk_spec sp;
  json_t *root = NULL;
  gpt2 *p;

  if ((rc = ss_trunk_spec_parse(m, "gpt2", "a Hugging Face GPT-2 model.safetensors", params, n, &sp,
                                err, errlen)) != 0)
    return rc;
  if ((p = calloc(1, sizeof *p)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  p->cc = ss_model_compute(m); /* every tensor of the model comes from its backend */
  rc = ss_trunk_open(&sp, &p->ck, &root, config, sizeof config, msg, sizeof msg);
  if (rc == 0) rc = load_config(p, root, config, &scale_weights, &scale_by_layer, msg, sizeof msg);
  json_decref(root);
  if (rc == 0) rc = ss_trunk_layers(sp.layers, p->n_layer, &p->a, &p->b, msg, sizeof msg);
  if (rc == 0) rc = load_weights(p, sp.weights, &dt, &n_params, msg, sizeof msg);
  /* LoRA (PEFT's default target for GPT-2: c_attn), parameters, optimizer state */
  if (rc == 0)
    rc = ss_trunk_training(&gpt2_arch, p, &sp, 1u << 0, &p->lora, &p->prm, ss_ckpt_first(&p->ck),
                           gpt2_lora_setup, gpt2_params_of, msg, sizeof msg);
  ss_ckpt_done(&p->ck);
  if (rc != 0) {
    snprintf(err, errlen, "model '%s': %s", m->id, msg);
    gpt2_free(p);
    return rc;
  }
  for (int l = 0; l < p->b - p->a; l++) {
    double s = scale_weights ? 1.0 / sqrt((double)p->head_dim) : 1.0;
    if (scale_by_layer) s /= (double)(p->a + l + 1);
    p->blk[l].attn_scale = (float)s;
  }
  snprintf(m->describe, sizeof m->describe,
           "gpt2 layers %d:%d of %d (n_embd %d, %d heads), %.1fM params, %s", p->a, p->b,
           p->n_layer, p->n_embd, p->n_head, (double)n_params / 1e6, dt);
  const ss_trunk t = {&gpt2_arch, p,           p->a,    p->b,   p->n_pos, p->n_embd,
                      p->n_head,  p->head_dim, &p->prm, &p->cc, &p->lora};
  return ss_trunk_attach(m, &t, &p->ck, n_params, err, errlen);
}
