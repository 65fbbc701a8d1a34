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
 * F16/BF16 are converted to f32 once at load.
 *
 * Block (HF GPT2Block, eval mode):  h = x + c_proj(attn(ln_1(x)));  y = h + mlp(ln_2(h))
 *   attn: q,k,v = split(ln_1(x) c_attn); per head softmax(q k^T / sqrt(d) + causal) v
 *   mlp:  c_proj(gelu_new(c_fc(.))),  gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
 * It is written once (block_forward / block_backward) on the op library in nn/, and serves
 * inference with or without a cache, decode steps and training. In inference the residual
 * stream lives in out->data; c_proj results are added to it (linear forward, accumulate).
 *
 * KV cache: past[l].key/value [batch, heads, P, head_dim] (layer a + l). Keys/values of the
 * whole window [0, P + seq) are assembled per layer in one buffer K/V [batch, heads, P+seq, d];
 * when the caller wants the present cache that buffer *is* present[l] (malloc'd here, owned by
 * the caller), else it is scratch. A new token at absolute position P + i attends to keys
 * 0..P+i.
 *
 * Thread: created on the main thread, then shared by all workers; check() and check_kv() on the
 * loop thread; forward()/forward_kv() on workers, reentrant (all scratch comes from the
 * model's backend per call).
 * Training (see "training" below): forward_train/backward under the model's read lock (backward
 * calls serialize only their gradient sums, on the params mutex: models/params.h); step() under the
 * write lock is the only writer of weights, copying mmap views on first write; save() writes the
 * trunk's layers only, under their original names.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
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
  ss_st_file *st;     /* keeps the mmap alive */
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
      for (int k = 0; k < T_PER_LAYER; k++) free(p->blk[l].own[k]);
      for (int k = 0; k < N_LORA; k++) ss_lora_free(&p->blk[l].lo[k]);
    }
  ss_params_free(&p->prm);
  free(p->blk);
  ss_st_close(p->st);
  free(p);
}

/* ------------------------------------------------------------- config.json ---- */


static int load_config(gpt2 *p, const char *path, int *scale_weights, int *scale_by_layer,
                       char *err, size_t errlen) {
  json_error_t je;
  char *text = NULL; /* hardening: a regular file of at most 1 MiB (a FIFO would hang start-up) */
  size_t tlen = 0;
  int frc = ss_file_read(path, 0, SS_CONFIG_MAX_BYTES, &text, &tlen, err, errlen);
  if (frc != 0) return frc;
  json_t *root = json_loadb(text, tlen, 0, &je), *v;
  free(text);
  int found, rc = SS_EINVAL;
  static const char *const required[] = {"n_embd", "n_head", "n_layer"};
  int *req_out[] = {&p->n_embd, &p->n_head, &p->n_layer};

  if (root == NULL) {
    snprintf(err, errlen, "config %.200s: %s (line %d)", path, je.text, je.line);
    return errno == ENOENT ? SS_ENOTFOUND : SS_EINVAL;
  }
  if (!json_is_object(root)) {
    snprintf(err, errlen, "config %.200s: not a JSON object", path);
    goto done;
  }
  for (int i = 0; i < 3; i++) {
    if (ss_trunk_cfg_int(root, required[i], path, req_out[i], &found, err, errlen) != 0) goto done;
    if (!found) {
      snprintf(err, errlen, "config %.200s: missing '%s'", path, required[i]);
      goto done;
    }
  }
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
  json_decref(root);
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
  char name[256], missing[400];
  size_t mpos = 0;
  int n_missing = 0, L = p->b - p->a;
  unsigned dts = 0, copied = 0;
  const ss_st_tensor **found;

  for (size_t i = 0; i < ss_st_count(p->st); i++)
    if (strncmp(ss_st_at(p->st, i)->name, "transformer.h.", 14) == 0) prefix = "transformer.";
  p->prefix = prefix;
  found = calloc((size_t)L * T_PER_LAYER, sizeof *found);
  p->blk = calloc((size_t)L, sizeof *p->blk);
  if (found == NULL || p->blk == NULL) {
    free(found);
    snprintf(err, errlen, "weights %.200s: out of memory", path);
    return SS_ENOMEM;
  }
  missing[0] = '\0';
  for (int l = 0; l < L; l++) {
    for (int k = 0; k < T_PER_LAYER; k++) {
      snprintf(name, sizeof name, "%sh.%d.%s", prefix, p->a + l, tensor_suffix[k]);
      found[l * T_PER_LAYER + k] = ss_st_find(p->st, name);
      if (found[l * T_PER_LAYER + k] == NULL) {
        if (n_missing++ < 6 && mpos < sizeof missing) {
          int w = snprintf(missing + mpos, sizeof missing - mpos, "%s%s", mpos ? ", " : "", name);
          if (w > 0) mpos += (size_t)w;
        }
      }
    }
  }
  if (n_missing > 0) {
    if (n_missing > 6)
      snprintf(err, errlen, "weights %.200s: %d tensors of layers %d:%d missing: %s, ... (%d more)",
               path, n_missing, p->a, p->b, missing, n_missing - 6);
    else
      snprintf(err, errlen, "weights %.200s: %d tensor%s of layers %d:%d missing: %s", path,
               n_missing, n_missing == 1 ? "" : "s", p->a, p->b, missing);
    free(found);
    return SS_EINVAL;
  }
  *n_params = 0;
  for (int l = 0; l < L; l++) {
    for (int k = 0; k < T_PER_LAYER; k++) {
      const ss_st_tensor *t = found[l * T_PER_LAYER + k];
      int64_t shape[2];
      int ndim, ok;
      expected_shape(p, k, shape, &ndim);
      ok = t->ndim == ndim;
      for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
      if (!ok) {
        char got[128], want[128];
        snprintf(err, errlen,
                 "weights %.200s: '%s' has shape %s, expected %s (n_embd %d, n_inner "
                 "%d from the config)",
                 path, t->name, ss_shape_str(t->shape, t->ndim, got, sizeof got),
                 ss_shape_str(shape, ndim, want, sizeof want), p->n_embd, p->n_inner);
        free(found);
        return SS_EINVAL;
      }
      if (ss_st_f32(t, &p->blk[l].t[k], &p->blk[l].own[k]) != 0) {
        snprintf(err, errlen, "weights %.200s: out of memory", path);
        free(found);
        return SS_ENOMEM;
      }
      dts |= 1u << t->dtype;
      if (t->dtype == SS_DTYPE_F32 && p->blk[l].own[k] != NULL) copied = 1;
      *n_params += (int64_t)t->numel;
    }
  }
  free(found);
  if (dts == 1u << SS_DTYPE_F32)
    *kind_out = copied ? "f32 copied" : "f32 mmap";
  else if (dts == 1u << SS_DTYPE_F16)
    *kind_out = "f16->f32";
  else if (dts == 1u << SS_DTYPE_BF16)
    *kind_out = "bf16->f32";
  else
    *kind_out = "mixed->f32";
  return 0;
}

/* ------------------------------------------------------------- checks ---- */

static int gpt2_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                      int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  (void)meta;
  return ss_trunk_check_hidden(m, in, p->n_embd, p->n_pos, "n_positions", out_shape, out_ndim, err,
                               errlen);
}

static int gpt2_check_kv(const ss_model *m, const ss_tensor *in, const ss_kv_layer *past,
                         int n_past, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  char got[128], want[128];
  int64_t ref[4];
  if (n_past == 0) return 0;
  if (n_past != m->n_kv_layers) {
    snprintf(err, errlen,
             "model '%s' expects %d past_key_values entries (one per trunk layer "
             "%d:%d), got %d",
             m->id, m->n_kv_layers, p->a, p->b, n_past);
    return SS_EINVAL;
  }
  for (int i = 0; i < n_past; i++) {
    for (int f = 0; f < 2; f++) {
      const ss_tensor *t = f ? &past[i].value : &past[i].key;
      const char *fname = f ? "value" : "key";
      if (t->dtype != SS_DTYPE_F32) {
        snprintf(err, errlen, "past_key_values[%d].%s must be float32, got %s", i, fname,
                 ss_dtype_name(t->dtype));
        return SS_EINVAL;
      }
      if (i == 0 && f == 0) {
        int64_t want_shape[4] = {in->ndim == 3 ? in->shape[0] : 1, p->n_head,
                                 t->ndim == 4 ? t->shape[2] : 0, p->head_dim};
        int ok = t->ndim == 4;
        for (int d = 0; ok && d < 4; d++) ok = t->shape[d] == want_shape[d] && t->shape[d] >= 0;
        if (!ok) {
          snprintf(err, errlen,
                   "past_key_values[0].key_shape is %s, expected [%lld,%d,past_len,"
                   "%d] ([batch, n_head, past_len, head_dim])",
                   ss_shape_str(t->shape, t->ndim, got, sizeof got), (long long)want_shape[0],
                   p->n_head, p->head_dim);
          return SS_EINVAL;
        }
        memcpy(ref, t->shape, sizeof ref);
        continue;
      }
      {
        int ok = t->ndim == 4;
        for (int d = 0; ok && d < 4; d++) ok = t->shape[d] == ref[d];
        if (!ok) {
          snprintf(err, errlen,
                   "past_key_values[%d].%s_shape is %s, expected %s like "
                   "past_key_values[0].key_shape",
                   i, fname, ss_shape_str(t->shape, t->ndim, got, sizeof got),
                   ss_shape_str(ref, 4, want, sizeof want));
          return SS_EINVAL;
        }
      }
    }
  }
  if (in->ndim == 3 && ref[2] + in->shape[1] > p->n_pos) {
    snprintf(err, errlen, "model '%s': past_len %lld + seq %lld exceeds n_positions %d", m->id,
             (long long)ref[2], (long long)in->shape[1], p->n_pos);
    return SS_EINVAL;
  }
  return 0;
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
  float *x, *h, *y;       /* [BT, E] block input, residual after attention, output (may alias) */
  float *ln;              /* [BT, E] ln_1(x), then ln_2(h) */
  float *mean1, *rstd1, *mean2, *rstd2; /* [BT] LayerNorm statistics, or NULL */
  float *qkv;             /* [BT, 3E] ln_1(x) c_attn + b */
  float *atty;            /* [BT, E] attention output, heads side by side */
  float *att;             /* probabilities: [B, H, T, P+T] when att_all, else [T, P+T] */
  int att_all;
  float *K, *V;           /* [B, H, P+T, D] past + new keys/values */
  float *fc, *fcg;        /* [BT, I] c_fc output, and gelu_new of it (may alias fc) */
  float *lt;              /* [BT, r] LoRA scratch (NULL without adapters) */
  const ss_lora_mask *mk; /* a training forward's LoRA dropout (NULL: none) */
  float *xd;              /* [BT, I] dropout scratch (with mk) */
} block_acts;

static ss_attn_dims attn_dims(const gpt2 *p, const gpt2_block *bk, int B, int T, int P) {
  ss_attn_dims d = {B, T, P, p->n_head, p->n_head, p->head_dim, bk->attn_scale};
  return d;
}

/* The sequences whose rows a block call stacks: usually one ([B, T] rows after P cached ones);
 * a batched decode step stacks several, each with its own past (attention stays per sequence,
 * everything else runs over all rows at once). K, V: that sequence's window [B, H, P+T, D]. */
typedef struct seq_attn {
  int row0, B, T, P;
  const void *past_k, *past_v; /* this layer's past [B, H, P, D] (wire bytes) or NULL when P == 0 */
  float *K, *V;
} seq_attn;

static void block_forward(const gpt2 *p, const gpt2_block *bk, const block_acts *a, int BT,
                          const seq_attn *seqs, int nseq) {
  const int E = p->n_embd, NI = p->n_inner;
  const size_t cells = (size_t)BT * (size_t)E;
  const float *const *w = bk->t;
  /* attention */
  ss_op_layernorm_forward(&p->cc, a->ln, a->mean1, a->rstd1, a->x, w[T_LN1_W], w[T_LN1_B], BT, E,
                          p->eps);
  ss_op_linear_forward(&p->cc, a->qkv, a->ln, w[T_ATTN_W], w[T_ATTN_B], BT, E, 3 * E, SS_W_IN_OUT,
                       0);
  ss_lora_forward(&p->lora, &bk->lo[LO_ATTN], E, 3 * E, a->qkv, a->ln, BT, a->lt, a->mk,
                  a->xd);
  for (int i = 0; i < nseq; i++) {
    const seq_attn *s = &seqs[i];
    ss_attn_dims d = attn_dims(p, bk, s->B, s->T, s->P);
    const float *qkv = a->qkv + (size_t)s->row0 * 3 * (size_t)E;
    ss_op_attention_forward(&p->cc, a->atty + (size_t)s->row0 * (size_t)E, E, a->att, a->att_all,
                            s->K, s->V, qkv, 3 * E, qkv + E, qkv + 2 * E, 3 * E, s->past_k,
                            s->past_v, &d, 0, 0.0f);
  }
  if (a->h != a->x) memcpy(a->h, a->x, cells * sizeof(float));
  ss_op_linear_forward(&p->cc, a->h, a->atty, w[T_APROJ_W], w[T_APROJ_B], BT, E, E, SS_W_IN_OUT, 1);
  ss_lora_forward(&p->lora, &bk->lo[LO_APROJ], E, E, a->h, a->atty, BT, a->lt, a->mk,
                  a->xd);
  /* mlp */
  ss_op_layernorm_forward(&p->cc, a->ln, a->mean2, a->rstd2, a->h, w[T_LN2_W], w[T_LN2_B], BT, E,
                          p->eps);
  ss_op_linear_forward(&p->cc, a->fc, a->ln, w[T_FC_W], w[T_FC_B], BT, E, NI, SS_W_IN_OUT, 0);
  ss_lora_forward(&p->lora, &bk->lo[LO_FC], E, NI, a->fc, a->ln, BT, a->lt, a->mk, a->xd);
  ss_op_gelu_tanh_forward(&p->cc, a->fcg, a->fc, (size_t)BT * (size_t)NI);
  if (a->y != a->h) memcpy(a->y, a->h, cells * sizeof(float));
  ss_op_linear_forward(&p->cc, a->y, a->fcg, w[T_MPROJ_W], w[T_MPROJ_B], BT, NI, E, SS_W_IN_OUT, 1);
  ss_lora_forward(&p->lora, &bk->lo[LO_MPROJ], NI, E, a->y, a->fcg, BT, a->lt, a->mk,
                  a->xd);
}

/* Backward scratch of one call: ln, dln, datty [BT, E]; dqkv [BT, 3E]; dfc [BT, I]; datt [T, T]
 * (fcg of the saved acts is scratch too). */
typedef struct block_grads {
  float *dln, *datty, *dqkv, *dfc, *datt;
  float *dlt;    /* [BT, r] LoRA scratch */
  float *dsink;  /* [2E] LayerNorm gain/bias gradients of a frozen trunk (LoRA) */
} block_grads;

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
  ss_lora_backward(&p->prm, &p->lora, &bk->lo[lo], C, OC, dx, dy, x, BT, a->lt, g->dlt,
                   a->mk, a->xd);
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
static void block_backward(gpt2 *p, int l, const block_acts *a, const block_grads *g, float *dres,
                           int B, int T) {
  const gpt2_block *bk = &p->blk[l];
  const float *const *w = bk->t;
  const int E = p->n_embd, NI = p->n_inner, BT = B * T, i0 = l * T_PER_LAYER;
  const int full = p->lora.r == 0; /* LoRA: the trunk is frozen, its LayerNorms too */
  ss_params *s = &p->prm;
  ss_attn_dims d = attn_dims(p, bk, B, T, 0);
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
}

/* ------------------------------------------------------------- inference ---- */



static int gpt2_forward_kv(const ss_model *m, const ss_tensor *in, ss_tensor *out, ss_kv_io *kv,
                           const ss_meta *meta, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  const int E = p->n_embd, H = p->n_head, D = p->head_dim, NI = p->n_inner;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = p->b - p->a;
  const int want_present = kv != NULL && kv->want_present;
  const ss_kv_layer *past = kv != NULL && kv->n_layers > 0 ? kv->past : NULL;
  const int P = past != NULL ? (int)past[0].key.shape[2] : 0, T = P + S;
  const size_t rows = (size_t)B * (size_t)S, kvn = (size_t)B * H * (size_t)T * D;
  float *scratch;
  block_acts a;
  size_t need;
  (void)meta;

  if (past != NULL && kv->n_layers != L) {
    snprintf(err, errlen, "model '%s': %d past_key_values entries, expected %d", m->id,
             kv->n_layers, L);
    return SS_EINVAL;
  }
  if (want_present && (kv->present == NULL || kv->n_layers != L)) {
    snprintf(err, errlen, "model '%s': present cache needs %d entries", m->id, L);
    return SS_EINVAL;
  }
  /* ln [rows,E] + qkv [rows,3E] + att [rows,E] + fc [rows,I] + scores [S,T] (+ K,V scratch) */
  need = rows * (5 * (size_t)E + (size_t)NI + (size_t)p->lora.r) + (size_t)S * (size_t)T +
         (want_present ? 0 : 2 * kvn);
  if ((scratch = ss_op_alloc(&p->cc, need * sizeof(float))) == NULL) {
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of activations", m->id,
             need * sizeof(float) >> 20);
    return SS_ENOMEM;
  }
  memset(&a, 0, sizeof a);
  a.x = a.h = a.y = out->data; /* the residual stream, updated in place */
  a.ln = scratch;
  a.qkv = a.ln + rows * (size_t)E;
  a.atty = a.qkv + rows * 3 * (size_t)E;
  a.fc = a.fcg = a.atty + rows * (size_t)E;
  a.lt = a.fc + rows * (size_t)NI; /* [rows, r] */
  a.att = a.lt + rows * (size_t)p->lora.r;
  if (!want_present) {
    a.K = a.att + (size_t)S * (size_t)T;
    a.V = a.K + kvn;
  } else {
    memset(kv->present, 0, (size_t)L * sizeof *kv->present);
  }
  if ((void *)a.x != in->data) memmove(a.x, in->data, rows * (size_t)E * sizeof(float));

  for (int l = 0; l < L; l++) {
    if (ss_meta_cancelled(meta)) { /* nobody waits for the result: stop between layers */
      if (want_present) ss_trunk_free_present(kv, l);
      ss_op_release(&p->cc, scratch);
      return SS_ECANCELLED;
    }
    if (want_present) {
      if (ss_trunk_alloc_present(&p->cc, &kv->present[l], B, H, T, D) != 0) {
        ss_trunk_free_present(kv, l + 1);
        ss_op_release(&p->cc, scratch);
        snprintf(err, errlen, "model '%s': out of memory for the present cache", m->id);
        return SS_ENOMEM;
      }
      a.K = kv->present[l].key.data;
      a.V = kv->present[l].value.data;
    }
    seq_attn s = {0, B, S, P, P > 0 ? past[l].key.data : NULL, P > 0 ? past[l].value.data : NULL,
                  a.K, a.V};
    block_forward(p, &p->blk[l], &a, B * S, &s, 1);
  }
  ss_op_release(&p->cc, scratch);
  return 0;
}

/* n one-token decode steps of different sequences (each [1, 1, E] with its own past, of any
 * length), one batch through the dense layers: each layer's GEMMs see n rows instead of 1, while
 * attention runs per sequence over its own window. Each step's result equals forward_kv alone. */
static int gpt2_forward_kv_batch(const ss_model *m, int n, const ss_tensor *in, ss_tensor *out,
                                 ss_kv_io *kv, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  const int E = p->n_embd, H = p->n_head, D = p->head_dim, NI = p->n_inner, L = p->b - p->a;
  size_t maxT = 1, kvscratch = 0;
  for (int i = 0; i < n; i++) {
    if (in[i].ndim != 3 || in[i].shape[0] != 1 || in[i].shape[1] != 1) {
      snprintf(err, errlen, "model '%s': a batched decode step is one token [1,1,%d]", m->id, E);
      return SS_EINVAL;
    }
    size_t T = 1 + (kv[i].past ? (size_t)kv[i].past[0].key.shape[2] : 0);
    if (T > maxT) maxT = T;
    if (!kv[i].want_present) kvscratch += 2 * (size_t)H * T * (size_t)D;
  }
  const size_t rows = (size_t)n;
  /* ln, qkv (3), atty [rows, E]; fc [rows, I]; scores [1, maxT]; x [rows, E]; K/V scratch */
  size_t need = rows * (6 * (size_t)E + (size_t)NI + (size_t)p->lora.r) + maxT + kvscratch;
  float *scratch = ss_op_alloc(&p->cc, need * sizeof(float));
  seq_attn *seqs = calloc((size_t)n, sizeof *seqs);
  if (!scratch || !seqs) {
    ss_op_release(&p->cc, scratch);
    free(seqs);
    snprintf(err, errlen, "model '%s': out of memory for a batched decode step", m->id);
    return SS_ENOMEM;
  }
  block_acts a;
  memset(&a, 0, sizeof a);
  a.ln = scratch;
  a.qkv = a.ln + rows * (size_t)E;
  a.atty = a.qkv + rows * 3 * (size_t)E;
  a.fc = a.fcg = a.atty + rows * (size_t)E;
  a.lt = a.fc + rows * (size_t)NI; /* [rows, r] */
  a.att = a.lt + rows * (size_t)p->lora.r;
  a.x = a.h = a.y = a.att + maxT;
  float *kvs = a.x + rows * (size_t)E;
  for (int i = 0; i < n; i++) {
    memcpy(a.x + (size_t)i * (size_t)E, in[i].data, (size_t)E * sizeof(float));
    if (kv[i].want_present) memset(kv[i].present, 0, (size_t)L * sizeof *kv[i].present);
  }
  int rc = 0;
  float **win = calloc(2 * (size_t)n, sizeof *win);
  if (!win) rc = SS_ENOMEM;
  for (int l = 0; l < L && rc == 0; l++) {
    if ((rc = ss_trunk_batch_windows(&p->cc, kv, n, l, H, D, kvs, win, win + n)) != 0) break;
    for (int i = 0; i < n; i++) {
      int P = ss_trunk_past_len(&kv[i]);
      seqs[i] = (seq_attn){i, 1, 1, P, P ? kv[i].past[l].key.data : NULL,
                           P ? kv[i].past[l].value.data : NULL, win[i], win[n + i]};
    }
    block_forward(p, &p->blk[l], &a, n, seqs, n);
  }
  free(win);
  rc = ss_trunk_batch_finish(m, rc, n, L, E, a.x, out, kv, err, errlen);
  free(seqs);
  ss_op_release(&p->cc, scratch);
  return rc;
}

static int gpt2_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out, const ss_meta *meta,
                        char *err, size_t errlen) {
  return gpt2_forward_kv(m, in, out, NULL, meta, err, errlen);
}

/* ------------------------------------------------------------- training ---- */

/*
 * Training (no KV cache: a training forward always starts at position 0). Per block l,
 * forward_train keeps what backward needs, in one allocation (see saved_layer):
 *   x      [BT, E]     the block's input (the residual stream)
 *   h      [BT, E]     the residual after attention (ln_2's input)
 *   qkv    [BT, 3E]    ln_1(x) c_attn + b
 *   atty   [BT, E]     attention output before c_proj (heads side by side)
 *   fc     [BT, I]     c_fc output before gelu_new
 *   att    [B, H, S, S] softmax probabilities (zero above the diagonal)
 *   mean1, rstd1, mean2, rstd2 [BT]  LayerNorm statistics
 * ln_1(x), ln_2(h) and gelu_new(fc) are recomputed in backward from these (cheap, O(BT x E)).
 */
typedef struct gpt2_saved {
  int B, S;
  ss_lora_mask mk;  /* LoRA dropout of this forward (p 0: none) */
  size_t per_layer; /* floats per layer */
  float *buf;       /* L x per_layer */
} gpt2_saved;

static size_t saved_per_layer(const gpt2 *p, int B, int S) {
  size_t rows = (size_t)B * (size_t)S;
  return rows * (6 * (size_t)p->n_embd + (size_t)p->n_inner + 4) +
         (size_t)B * (size_t)p->n_head * (size_t)S * (size_t)S;
}

/* Point a's saved fields at layer l's record (y: the next layer's x, or out for the last). */
static void saved_layer(const gpt2 *p, const gpt2_saved *sv, int l, float *out, block_acts *a) {
  size_t rows = (size_t)sv->B * (size_t)sv->S, E = (size_t)p->n_embd;
  float *q = sv->buf + (size_t)l * sv->per_layer;
  a->x = q;
  a->h = a->x + rows * E;
  a->qkv = a->h + rows * E;
  a->atty = a->qkv + rows * 3 * E;
  a->fc = a->atty + rows * E;
  a->mean1 = a->fc + rows * (size_t)p->n_inner;
  a->rstd1 = a->mean1 + rows;
  a->mean2 = a->rstd1 + rows;
  a->rstd2 = a->mean2 + rows;
  a->att = a->rstd2 + rows;
  a->att_all = 1;
  a->y = l + 1 < p->b - p->a ? q + sv->per_layer : out;
}

static int gpt2_forward_train(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                              const char *forward_id, void **saved, size_t *saved_bytes, char *err,
                              size_t errlen) {
  const gpt2 *p = m->impl;
  const int E = p->n_embd, NI = p->n_inner;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = p->b - p->a;
  const size_t rows = (size_t)B * (size_t)S;
  size_t per = saved_per_layer(p, B, S), total;
  gpt2_saved *sv = NULL;
  float *scratch = NULL;
  block_acts a;

  *saved = NULL;
  *saved_bytes = 0;
  /* scratch: ln [BT, E], fcg [BT, I], K and V [B, H, S, D], lt [BT, r], xd [BT, I] (dropout) */
  if (__builtin_mul_overflow(per, (size_t)L * sizeof(float), &total) ||
      (sv = malloc(sizeof *sv)) == NULL || (sv->buf = ss_op_alloc(&p->cc, total)) == NULL ||
      (scratch = ss_op_alloc(&p->cc, rows *
                                         (3 * (size_t)E + (size_t)NI + (size_t)p->lora.r +
                                          (p->lora.dropout > 0.0f ? (size_t)NI : 0)) *
                                         sizeof(float))) == NULL) {
    if (sv != NULL) ss_op_release(&p->cc, sv->buf);
    free(sv);
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of saved activations", m->id,
             total >> 20);
    return SS_ENOMEM;
  }
  sv->B = B;
  sv->S = S;
  sv->per_layer = per;
  a.ln = scratch;
  a.fcg = a.ln + rows * (size_t)E;
  a.K = a.fcg + rows * (size_t)NI;
  a.V = a.K + rows * (size_t)E;
  a.lt = a.V + rows * (size_t)E; /* [BT, r] */
  a.xd = a.lt + rows * (size_t)p->lora.r; /* [BT, I] with dropout */
  sv->mk.p = p->lora.dropout;
  sv->mk.key = p->lora.dropout > 0.0f ? ss_lora_mask_key(p->lora.seed, forward_id) : 0;
  a.mk = sv->mk.p > 0.0f ? &sv->mk : NULL;
  memcpy(sv->buf, in->data, rows * (size_t)E * sizeof(float)); /* layer 0's x */
  for (int l = 0; l < L; l++) {
    saved_layer(p, sv, l, out->data, &a);
    seq_attn s = {0, B, S, 0, NULL, NULL, a.K, a.V};
    block_forward(p, &p->blk[l], &a, B * S, &s, 1);
  }
  ss_op_release(&p->cc, scratch);
  *saved = sv;
  *saved_bytes = sizeof *sv + total;
  return 0;
}

static int gpt2_backward(ss_model *m, const void *saved, const ss_tensor *grad_out,
                         ss_tensor *grad_in, char *err, size_t errlen) {
  gpt2 *p = m->impl;
  const gpt2_saved *sv = saved;
  const int E = p->n_embd, NI = p->n_inner;
  const int B = sv->B, S = sv->S, L = p->b - p->a;
  const size_t rows = (size_t)B * (size_t)S;
  float *dres = grad_in->data, *scratch = NULL;
  block_acts a;
  block_grads g;
  size_t need;

  if (grad_out->numel != rows * (size_t)E || grad_in->numel != rows * (size_t)E) {
    snprintf(err, errlen,
             "model '%s': backward got grad_output of %zu values and grad_input of "
             "%zu, expected %zu for [%d, %d, %d]",
             m->id, grad_out->numel, grad_in->numel, rows * (size_t)E, B, S, E);
    return SS_EINVAL;
  }
  /* ln, dln, datty [R,E]; dqkv [R,3E]; fcg, dfc [R,I]; datt [S,S]; lt, dlt [R,r]; dsink [2E];
   * xd [R,I] with dropout */
  need = rows * (6 * (size_t)E + 2 * (size_t)NI + 2 * (size_t)p->lora.r +
                 (sv->mk.p > 0.0f ? (size_t)NI : 0)) +
         (size_t)S * (size_t)S + 2 * (size_t)E;
  if (ss_params_grads(&p->prm) != 0 ||
      (scratch = ss_op_alloc(&p->cc, need * sizeof(float))) == NULL) {
    snprintf(err, errlen, "model '%s': out of memory for backward", m->id);
    return SS_ENOMEM;
  }
  a.ln = scratch;
  g.dln = a.ln + rows * (size_t)E;
  g.datty = g.dln + rows * (size_t)E;
  g.dqkv = g.datty + rows * (size_t)E;
  a.fcg = g.dqkv + rows * 3 * (size_t)E;
  g.dfc = a.fcg + rows * (size_t)NI;
  g.datt = g.dfc + rows * (size_t)NI;
  a.lt = g.datt + (size_t)S * (size_t)S; /* [BT, r] each */
  g.dlt = a.lt + rows * (size_t)p->lora.r;
  g.dsink = g.dlt + rows * (size_t)p->lora.r; /* [2E] */
  a.xd = g.dsink + 2 * (size_t)E;              /* [BT, I] */
  a.mk = sv->mk.p > 0.0f ? &sv->mk : NULL;     /* the forward's masks */
  memmove(dres, grad_out->data, rows * (size_t)E * sizeof(float));
  for (int l = L - 1; l >= 0; l--) {
    saved_layer(p, sv, l, NULL, &a);
    block_backward(p, l, &a, &g, dres, B, S);
  }
  ss_op_release(&p->cc, scratch);
  return 0;
}

static int gpt2_step(ss_model *m, const ss_optim *opt, char *err, size_t errlen) {
  gpt2 *p = m->impl;
  return ss_params_step(&p->prm, opt, m->id, err, errlen); /* all or nothing (nn/optim.c) */
}

static void gpt2_free_saved(const ss_model *m, void *saved) {
  const gpt2 *p = m->impl;
  gpt2_saved *sv = saved;
  ss_op_release(&p->cc, sv->buf);
  free(sv);
}

/* The trunk's tensors under their original names ("[transformer.]h.{i}.<suffix>"), F32; with
 * LoRA the PEFT directory (fan_in_fan_out: Conv1D weights). */
static int gpt2_save(const ss_model *m, const char *path, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  if (p->lora.r > 0)
    return ss_lora_save(&p->prm, &p->lora, lora_targets, 3, p->a, p->b, 1, path, err, errlen);
  return ss_params_save(&p->prm, path, err, errlen);
}

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
        rc = ss_lora_load(a, ad, path, key, p->lora.r, (int)shape[0], (int)shape[1], err, errlen);
      else if ((rc = ss_lora_init(a, p->lora.r, (int)shape[0], (int)shape[1], &st)) != 0)
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
  if (ss_params_init(&p->prm, (size_t)L * T_PER_LAYER) != 0) return SS_ENOMEM;
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

static void gpt2_destroy(ss_model *m) {
  gpt2_free(m->impl);
  m->impl = NULL;
}

static size_t gpt2_train_bytes(const ss_model *m, const ss_tensor *in) {
  const gpt2 *p = m->impl;
  size_t total;
  if (in->ndim != 3 || in->shape[0] > INT_MAX || in->shape[1] > INT_MAX) return SIZE_MAX;
  if (__builtin_mul_overflow(saved_per_layer(p, (int)in->shape[0], (int)in->shape[1]),
                             (size_t)(p->b - p->a) * sizeof(float), &total))
    return SIZE_MAX;
  return sizeof(gpt2_saved) + total;
}

static const ss_model_ops gpt2_ops = {.check = gpt2_check,
                                      .train_bytes = gpt2_train_bytes,
                                      .forward = gpt2_forward,
                                      .destroy = gpt2_destroy,
                                      .check_kv = gpt2_check_kv,
                                      .forward_kv_batch = gpt2_forward_kv_batch,
                                      .forward_kv = gpt2_forward_kv,
                                      .forward_train = gpt2_forward_train,
                                      .backward = gpt2_backward,
                                      .step = gpt2_step,
                                      .free_saved = gpt2_free_saved,
                                      .save = gpt2_save};

/* ------------------------------------------------------------- constructor ---- */

int ss_model_gpt2_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  const char *weights = NULL, *config = NULL, *layers = ":", *dt = "f32";
  const char *lrank = NULL, *lalpha = NULL, *ltargets = NULL, *adapter = NULL;
  const char *ldrop = NULL, *lseed = NULL;
  char cfg_buf[4096], msg[1024];
  int scale_weights = 1, scale_by_layer = 0, rc; /* set by load_config */
  int64_t n_params = 0;
  gpt2 *p;

  for (size_t i = 0; i < n; i++) {
    const char *k = params[2 * i], *v = params[2 * i + 1];
    if (strcmp(k, "weights") == 0)
      weights = v;
    else if (strcmp(k, "config") == 0)
      config = v;
    else if (strcmp(k, "layers") == 0)
      layers = v;
    else if (strcmp(k, "lora_rank") == 0)
      lrank = v;
    else if (strcmp(k, "lora_alpha") == 0)
      lalpha = v;
    else if (strcmp(k, "lora_targets") == 0)
      ltargets = v;
    else if (strcmp(k, "adapter") == 0)
      adapter = v;
    else if (strcmp(k, "lora_dropout") == 0)
      ldrop = v;
    else if (strcmp(k, "lora_seed") == 0)
      lseed = v;
    else {
      snprintf(err, errlen,
               "model '%s': unknown parameter '%s' for kind 'gpt2' (known: weights, "
               "config, layers, lora_rank, lora_alpha, lora_targets, adapter, lora_dropout, "
               "lora_seed)",
               m->id, k);
      return SS_EINVAL;
    }
  }
  if (weights == NULL || weights[0] == '\0') {
    snprintf(err, errlen,
             "model '%s': kind 'gpt2' needs weights=PATH (a Hugging Face GPT-2 "
             "model.safetensors)",
             m->id);
    return SS_EINVAL;
  }
  if (config == NULL || config[0] == '\0') {
    const char *slash = strrchr(weights, '/');
    int dl = slash ? (int)(slash - weights) + 1 : 0;
    snprintf(cfg_buf, sizeof cfg_buf, "%.*sconfig.json", dl, weights);
    config = cfg_buf;
  }
  if ((p = calloc(1, sizeof *p)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  rc = ss_st_open(weights, &p->st, msg, sizeof msg);
  if (rc == 0) rc = load_config(p, config, &scale_weights, &scale_by_layer, msg, sizeof msg);
  if (rc == 0) rc = ss_trunk_layers(layers, p->n_layer, &p->a, &p->b, msg, sizeof msg);
  if (rc == 0) rc = load_weights(p, weights, &dt, &n_params, msg, sizeof msg);
  /* LoRA (PEFT's default target for GPT-2: c_attn) */
  if (rc == 0)
    rc = ss_lora_settings(lrank, lalpha, ltargets, adapter, ldrop, lseed, lora_targets, 3, 1u << 0,
                          &p->lora, msg, sizeof msg);
  if (rc == 0 && p->lora.r > 0) rc = lora_setup(p, adapter, msg, sizeof msg);
  if (rc == 0 && gpt2_params(p) != 0) {
    snprintf(msg, sizeof msg, "out of memory");
    rc = SS_ENOMEM;
  }
  if (rc == 0 && p->lora.r == 0) /* a checkpoint's optimizer state */
    rc = ss_params_restore(&p->prm, p->st, msg, sizeof msg);
  else if (rc == 0 && adapter != NULL) /* the adapter's */
    rc = ss_lora_restore(&p->prm, adapter, msg, sizeof msg);
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
  m->kind = "gpt2";
  m->ops = &gpt2_ops;
  p->cc = (ss_compute){(ss_mm_dtype)m->compute, m, m->backend};
  p->prm.cc = &p->cc;
  p->lora.cc = &p->cc;
  m->impl = p;
  m->weights = p->st;
  m->exec = SS_EXEC_WORKER;
  m->echo = 0;
  m->n_kv_layers = p->b - p->a;
  m->n_params = n_params;
  m->weight_bytes = (size_t)n_params * sizeof(float);
  {
    char lora[64] = "";
    if (p->lora.r > 0) snprintf(lora, sizeof lora, ", LoRA r %d", p->lora.r);
    snprintf(m->describe, sizeof m->describe,
             "gpt2 layers %d:%d of %d (n_embd %d, %d heads), %.1fM params, %s%s", p->a, p->b,
             p->n_layer, p->n_embd, p->n_head, (double)n_params / 1e6, dt, lora);
  }
  return 0;
}
