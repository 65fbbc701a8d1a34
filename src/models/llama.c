/*
 * llama.c — the "llama" model kind: the trunk of a split Llama-family decoder, i.e. decoder
 * layers [a, b) of a Hugging Face checkpoint whose config.json model_type is llama, qwen2,
 * mistral, gemma, qwen3, gemma2, gemma3_text (or gemma3), qwen2_vl (qwen2_5_vl) or qwen3_vl
 * (the language model of the VL checkpoints), with an attention (KV) cache, training (full
 * fine-tuning or LoRA adapters). Input and output are hidden states [batch, seq, hidden]
 * float32: the client's bottom has run the embedding (Gemma's embedding also multiplies by
 * sqrt(hidden): that belongs to the embedding layer, outside the trunk, and is NOT applied here;
 * so do Gemma 2's final logit soft-capping and Qwen3-VL's deepstack visual features, added to
 * the hidden states of its first layers at image tokens: a client that sends images adds them
 * between trunks).
 *
 * Spec: ID=llama,weights=PATH[,config=config.json][,layers=A:B]
 *            [,lora_rank=R,lora_alpha=A,lora_targets=q_proj,v_proj][,adapter=DIR]
 *            [,lora_dropout=P,lora_seed=N]
 *   PATH: a .safetensors file, a directory holding model.safetensors or a sharded checkpoint
 *   (model.safetensors.index.json + its shards), or the index file itself. config defaults to
 *   config.json next to the file (in the directory); layers to 0:num_hidden_layers.
 *
 * Config: the settings at the top level, or in text_config (qwen2_vl when it has one, qwen3_vl,
 * gemma3), with HF's defaults where a family has them (Gemma 3's heads, head_dim, rope_theta);
 * rope_theta + rope_scaling (transformers 4) or rope_parameters (transformers 5; Gemma 3: one
 * per layer type).
 *
 * Weights: keys <prefix>layers.{i}.input_layernorm.weight, .self_attn.{q,k,v,o}_proj.{weight,
 * bias}, .post_attention_layernorm.weight, .mlp.{gate,up,down}_proj.{weight,bias} (biases as
 * the config says: Qwen2/Qwen2-VL have q/k/v biases, the others attention_bias on all four
 * (Mistral none), llama mlp_bias); .self_attn.{q,k}_norm.weight [head_dim] (Qwen3, Qwen3-VL,
 * Gemma 3); Gemma 2/3 .pre_feedforward_layernorm, .post_feedforward_layernorm (and their
 * post_attention_layernorm normalizes the attention output). <prefix> is "model.", none,
 * "model.language_model." (VL checkpoints of newer transformers) or "language_model.model."
 * (Gemma 3's multimodal ones), whichever the file has. nn.Linear layout (W [out, in],
 * y = x W^T + b); F32 used in place from the mmap when aligned, F16/BF16 converted once (matrices
 * whose products all run packed stay as stored: trunk.h ss_trunk_weight). Only the trunk's tensors
 * are read (sharded: only their shards are opened). Every file stays mapped for the model's life;
 * m->weights is the first one opened.
 *
 * Block (HF LlamaDecoderLayer and its Qwen2/Mistral/Gemma/Qwen3/Gemma2/Gemma3/VL twins, eval
 * mode), one body with the family's flags:
 *   h = x + o_proj(attn(rope(qn(q_proj(n1))), rope(kn(k_proj(n1))), v_proj(n1))), n1 = norm1(x)
 *   y = h + down_proj(act(gate_proj(n2)) * up_proj(n2)),                          n2 = norm2(h)
 *   sandwich (Gemma 2/3): h = x + norm_pa(o_proj(...)), y = h + norm_pf(down_proj(...))
 *   norm: RMSNorm, x / sqrt(mean x^2 + eps) * w   (Gemma family: * (1 + w))
 *   qn, kn: the same RMSNorm over each head's head_dim values (q_norm / k_norm: Qwen3, Qwen3-VL,
 *         Gemma 3), identity for the others
 *   act:  silu (SwiGLU), or gelu tanh (Gemma's GeGLU, gelu_pytorch_tanh), or exact gelu
 *   attn: num_attention_heads query heads over num_key_value_heads kv heads (GQA), head_dim from
 *         the config when given else hidden / heads, scale 1/sqrt(head_dim) (Gemma 2/3:
 *         query_pre_attn_scalar^-1/2), causal; Gemma 2/3 attn_logit_softcapping c: scores
 *         c tanh(s / c) before the softmax. Sliding window W (sliding_window) on the layers
 *         that slide: a query at position i sees keys i-W < j <= i. Which slide: layer_types
 *         when given, else Mistral all, Gemma 2 the even ones, Gemma 3 all but every
 *         sliding_window_pattern-th, Qwen with use_sliding_window those from max_window_layers.
 *   rope: HF rotate_half with rope_theta; rope_scaling "linear" (theta_i / factor) and "llama3"
 *         (Llama 3.1's frequency-banded rescale); others are refused at start-up. Gemma 3's
 *         sliding layers: plain rope at rope_local_base_freq. M-RoPE (qwen2_vl, qwen3_vl,
 *         rope_scaling.mrope_section [t, h, w], mrope_interleaved): frequency pair i turns by
 *         the position of its stream (temporal, height, width; chunked sections or Qwen3-VL's
 *         interleaved layout). Text positions are the same in all three streams, so it is the
 *         plain rope unless the request gives the streams (below).
 * It is written once (block_forward / block_backward) on the ops of nn/backend/backend.h, and
 * the trunk runtime (models/trunk.h) runs it for inference with or without a cache, decode steps
 * and training, from this file's activation table (llama_sizes). Every projection goes through
 * proj_forward / proj_backward, which add the LoRA path when the projection has an adapter.
 *
 * Positions: a call's first token sits at the past length P (0 without a cache), or at the
 * request metadata position_offset when given (the cache index still decides the causal mask).
 * M-RoPE models also take metadata mrope_positions: 3 x seq (every batch row) or 3 x batch x
 * seq comma-separated integers, stream-major like HF's position_ids [3, batch, seq] (image
 * tokens: their grid's t, h, w); training uses text positions.
 *
 * KV cache: past[l].key/value [batch, num_key_value_heads, P, head_dim] (layer a + l), keys
 * after the (q/k norm and) rotary embedding, as HF's cache holds them; present = past + this
 * call's.
 *
 * Training: full fine-tuning (every tensor of the trunk is a parameter, checkpoint under the
 * loaded names) or, with lora_rank, LoRA: the trunk is frozen and the parameters are the
 * adapters A [r, in] (PEFT init: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)))
 * and B [out, r] (zero), y += (alpha / r) x A^T B^T; save=DIR writes the PEFT layout
 * (DIR/adapter_model.safetensors under base_model.model.<prefix>layers..., "model." for a
 * checkpoint without prefix; DIR/adapter_config.json, and the optimizer state in
 * DIR/optimizer.safetensors); adapter=DIR loads one at start (and its optimizer state).
 * lora_dropout=P (default: the adapter's, else 0) drops the adapters' inputs in training
 * forwards, masks from (lora_seed, forward id, layer, element): models/lora.h.
 *
 * Thread: created on the main thread, then shared by all workers; check() and check_kv() on the
 * loop thread; forward()/forward_kv() on workers, reentrant (all scratch comes from the
 * model's backend per call).
 * Training follows model.h: forward_train/backward under the read lock (gradient sums on the
 * params mutex), step under the write lock (the only writer), save under the read lock.
 */
#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "models/ckpt.h"
#include "models/lora.h"
#include "models/model.h"
#include "models/nn/backend/backend.h"
#include "models/nn/rope.h"
#include "models/params.h"
#include "models/safetensors.h"
#include "models/trunk.h"

enum { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, N_PROJ };
static const char *const proj_path[N_PROJ] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const char *const proj_short[N_PROJ] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                               "gate_proj", "up_proj", "down_proj"};

enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU_ERF };

/* One projection: y = x W^T + b (+ s x A^T B^T with an adapter). Param indices < 0: frozen. */
typedef struct proj {
  int in, out;
  const float *w, *b; /* views (b NULL: no bias) */
  float *w_own, *b_own;
  int iw, ib;
  ss_lora lo; /* LoRA adapter (lo.a NULL: none; models/lora.h) */
} proj;

/* The RMSNorm weights of a layer: input_layernorm and the MLP's input norm (every family);
 * Gemma 2/3's norms of the attention and MLP outputs; the per-head q_norm, k_norm [D] (Qwen3,
 * Qwen3-VL, Gemma 3). */
enum { N_LN1, N_LN2, N_PA, N_PF, N_QN, N_KN, N_NORM };

typedef struct lblock {
  const float *nw[N_NORM]; /* views, NULL: the family has none */
  float *nw_own[N_NORM];
  int inw[N_NORM];        /* parameter indices, < 0: frozen */
  int window;             /* this layer's sliding window, 0: none */
  const double *inv_freq; /* this layer's rotary frequencies (Gemma 3: local or global) */
  proj pr[N_PROJ];
} lblock;

/* model_type -> family; the flags below follow from it and the config. */
enum { F_LLAMA, F_QWEN2, F_MISTRAL, F_GEMMA, F_QWEN3, F_GEMMA2, F_GEMMA3, F_QWEN2VL, F_QWEN3VL };

typedef struct llama {
  char model_type[16];
  int E, NH, NKV, D, I, n_layer, n_pos;
  int a, b;
  float eps;
  int one_plus; /* Gemma's (1 + w) norm */
  int act;
  int family;
  int window;    /* sliding_window W of the layers that slide, 0: none */
  int *sliding;  /* [n_layer] 1: layer i slides (Mistral: all; Gemma 2/3, layer_types: some) */
  int qk_norm;   /* per-head RMSNorm of q and k before rope (Qwen3, Qwen3-VL, Gemma 3) */
  int sandwich;  /* Gemma 2/3: norms of the attention and MLP outputs too (four per layer) */
  float softcap; /* Gemma 2 attn_logit_softcapping, 0: none */
  int attn_bias, o_bias, mlp_bias;
  float scale;
  double *inv_freq;       /* [D/2] rotary frequencies, scaling applied */
  double *inv_freq_local; /* [D/2] Gemma 3's sliding layers (rope_local_base_freq), or NULL */
  unsigned char *mrope;   /* [D/2] M-RoPE stream (0 t, 1 h, 2 w) per frequency, or NULL */
  lblock *blk;
  ss_ckpt ck;         /* the weight files (shards), kept mapped */
  const char *prefix; /* static: "model." or "" as in the file (save writes it back) */
  /* LoRA */
  ss_lora_cfg lora; /* r == 0: no LoRA; targets: bit per P_* */
  ss_params prm;
  ss_compute cc; /* the dtype of the weight products (model key compute=) */
} llama;

static void llama_free(llama *p) {
  if (p == NULL) return;
  if (p->blk != NULL)
    for (int l = 0; l < p->b - p->a; l++) {
      lblock *bk = &p->blk[l];
      for (int j = 0; j < N_NORM; j++) ss_op_release(&p->cc, bk->nw_own[j]);
      for (int k = 0; k < N_PROJ; k++) {
        ss_op_release(&p->cc, bk->pr[k].w_own);
        ss_op_release(&p->cc, bk->pr[k].b_own);
        ss_lora_free(&bk->pr[k].lo);
      }
    }
  ss_params_free(&p->prm);
  free(p->blk);
  free(p->inv_freq);
  free(p->inv_freq_local);
  free(p->mrope);
  free(p->sliding);
  ss_ckpt_close(&p->ck);
  free(p);
}

/* ------------------------------------------------------------- config.json ---- */

static int cfg_bool(json_t *root, const char *key, int def) {
  json_t *v = json_object_get(root, key);
  return v != NULL && json_is_boolean(v) ? json_is_true(v) : def;
}

/* rope_scaling: null, {"rope_type"|"type": "default"|"linear"|"llama3", "factor", ...}.
 * Fills p->inv_freq (D/2 values). HF _compute_llama3_parameters:
 *   wavelen = 2 pi / f;  wavelen > old/low_ff: f / factor;  wavelen < old/high_ff: f;
 *   between: (1 - s) f / factor + s f,  s = (old / wavelen - low_ff) / (high_ff - low_ff) */
/* Qwen2-VL / Qwen3-VL M-RoPE: rope_scaling.mrope_section [t, h, w] (frequency pairs per
 * stream, summing to head_dim / 2) and mrope_interleaved (Qwen3-VL's layout, its default):
 *   chunked (Qwen2-VL apply_multimodal_rotary_pos_emb): pairs [0, t) t, [t, t+h) h, the rest w
 *   interleaved (Qwen3-VL apply_interleaved_mrope): pair i is h when i % 3 == 1 and i < 3h,
 *   w when i % 3 == 2 and i < 3w, else t
 * Fills p->mrope; absent section: no M-RoPE (text positions only). */
static int load_mrope(llama *p, json_t *rs, const char *path, char *err, size_t errlen) {
  json_t *sec = json_object_get(rs, "mrope_section");
  int n = p->D / 2, sz[3], sum = 0, inter;
  if (sec == NULL || json_is_null(sec)) return 0;
  if (!json_is_array(sec) || json_array_size(sec) != 3) {
    snprintf(err, errlen, "config %.200s: rope_scaling.mrope_section must be 3 integers", path);
    return SS_EINVAL;
  }
  for (int i = 0; i < 3; i++) {
    json_t *e = json_array_get(sec, (size_t)i);
    if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > n) {
      snprintf(err, errlen, "config %.200s: rope_scaling.mrope_section must be 3 integers", path);
      return SS_EINVAL;
    }
    sz[i] = (int)json_integer_value(e);
    sum += sz[i];
  }
  if (sum != n) {
    snprintf(err, errlen,
             "config %.200s: rope_scaling.mrope_section sums to %d, expected head_dim / 2 = %d",
             path, sum, n);
    return SS_EINVAL;
  }
  inter = cfg_bool(rs, "mrope_interleaved", p->family == F_QWEN3VL);
  if ((p->mrope = malloc((size_t)n)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  for (int i = 0; i < n; i++) {
    if (inter)
      p->mrope[i] = (unsigned char)(i % 3 == 1 && i < 3 * sz[1]   ? 1
                                    : i % 3 == 2 && i < 3 * sz[2] ? 2
                                                                  : 0);
    else
      p->mrope[i] = (unsigned char)(i < sz[0] ? 0 : i < sz[0] + sz[1] ? 1 : 2);
  }
  return 0;
}

static int load_rope(llama *p, double **out, json_t *theta_obj, json_t *rs, double theta_def,
                     const char *path, char *err, size_t errlen) {
  double theta = theta_def, factor = 1.0, lff = 1.0, hff = 4.0, old = 8192.0;
  int found, n = p->D / 2;
  json_t *t;
  const char *type = "default";

  if (ss_trunk_cfg_num(theta_obj, "rope_theta", path, &theta, &found, err, errlen) != 0)
    return SS_EINVAL;
  if (((*out) = malloc((size_t)(n > 0 ? n : 1) * sizeof(double))) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  ss_rope_inv_freq((*out), p->D, theta);
  if (rs == NULL || json_is_null(rs)) return 0;
  if (!json_is_object(rs)) {
    snprintf(err, errlen, "config %.200s: 'rope_scaling' must be an object or null", path);
    return SS_EINVAL;
  }
  t = json_object_get(rs, "rope_type");
  if (t == NULL) t = json_object_get(rs, "type");
  if (t != NULL && !json_is_string(t)) {
    snprintf(err, errlen, "config %.200s: rope_scaling.rope_type must be a string", path);
    return SS_EINVAL;
  }
  if (t != NULL) type = json_string_value(t);
  if ((p->family == F_QWEN2VL || p->family == F_QWEN3VL) &&
      load_mrope(p, rs, path, err, errlen) != 0)
    return SS_EINVAL;
  if (strcmp(type, "default") == 0 || (p->mrope != NULL && strcmp(type, "mrope") == 0)) return 0;
  if (strcmp(type, "linear") != 0 && strcmp(type, "llama3") != 0) {
    snprintf(err, errlen,
             "config %.200s: rope_scaling type '%.40s' is not supported (supported: llama3, "
             "linear, default)",
             path, type);
    return SS_EINVAL;
  }
  if (ss_trunk_cfg_num(rs, "factor", path, &factor, &found, err, errlen) != 0) return SS_EINVAL;
  if (!found) {
    snprintf(err, errlen, "config %.200s: rope_scaling '%s' needs 'factor'", path, type);
    return SS_EINVAL;
  }
  if (strcmp(type, "linear") == 0) {
    for (int i = 0; i < n; i++) (*out)[i] /= factor;
    return 0;
  }
  {
    int f1, f2, f3;
    if (ss_trunk_cfg_num(rs, "low_freq_factor", path, &lff, &f1, err, errlen) != 0 ||
        ss_trunk_cfg_num(rs, "high_freq_factor", path, &hff, &f2, err, errlen) != 0 ||
        ss_trunk_cfg_num(rs, "original_max_position_embeddings", path, &old, &f3, err, errlen) != 0)
      return SS_EINVAL;
    if (!f1 || !f2 || !f3 || !(hff > lff)) {
      snprintf(err, errlen,
               "config %.200s: rope_scaling 'llama3' needs low_freq_factor < high_freq_factor "
               "and original_max_position_embeddings",
               path);
      return SS_EINVAL;
    }
  }
  for (int i = 0; i < n; i++) {
    double f = (*out)[i], wl = 2.0 * M_PI / f, lo_wl = old / lff, hi_wl = old / hff;
    if (wl > lo_wl) {
      f /= factor;
    } else if (!(wl < hi_wl)) {
      double s = (old / wl - lff) / (hff - lff);
      f = (1.0 - s) * f / factor + s * f;
    }
    (*out)[i] = f;
  }
  return 0;
}

/* The rotary frequencies: rope_theta and rope_scaling (transformers 4 configs), or
 * rope_parameters (transformers 5: one object with rope_theta inside, or one per layer type,
 * full_attention / sliding_attention, for Gemma 3). Gemma 3's sliding layers: plain rope at
 * rope_local_base_freq (default 10000). */
static int load_ropes(llama *p, json_t *root, const char *path, char *err, size_t errlen) {
  json_t *rp = json_object_get(root, "rope_parameters"), *full = NULL, *slide = NULL;
  double def = p->family == F_GEMMA3 ? 1000000.0 : 10000.0, local = 10000.0;
  int rc, found;
  if (rp != NULL && json_is_object(rp)) {
    full = json_object_get(rp, "full_attention");
    slide = json_object_get(rp, "sliding_attention");
    if (full == NULL || !json_is_object(full)) full = rp;
    if (slide != NULL && !json_is_object(slide)) slide = NULL;
    rc = load_rope(p, &p->inv_freq, full, full, def, path, err, errlen);
  } else {
    rc = load_rope(p, &p->inv_freq, root, json_object_get(root, "rope_scaling"), def, path, err,
                   errlen);
  }
  if (rc != 0 || p->family != F_GEMMA3) return rc;
  if (slide != NULL)
    return load_rope(p, &p->inv_freq_local, slide, slide, local, path, err, errlen);
  if (ss_trunk_cfg_num(root, "rope_local_base_freq", path, &local, &found, err, errlen) != 0)
    return SS_EINVAL;
  return load_rope(p, &p->inv_freq_local, NULL, NULL, local, path, err, errlen);
}

static const struct {
  const char *name;
  int family;
} families[] = {{"llama", F_LLAMA},          {"qwen2", F_QWEN2},           {"mistral", F_MISTRAL},
                {"gemma", F_GEMMA},          {"qwen3", F_QWEN3},           {"gemma2", F_GEMMA2},
                {"gemma3_text", F_GEMMA3},   {"gemma3", F_GEMMA3},         {"qwen2_vl", F_QWEN2VL},
                {"qwen2_5_vl", F_QWEN2VL},   {"qwen2_vl_text", F_QWEN2VL}, {"qwen3_vl", F_QWEN3VL},
                {"qwen3_vl_text", F_QWEN3VL}};
#define FAMILY_NAMES                                                                         \
  "llama, qwen2, mistral, gemma, qwen3, gemma2, gemma3_text, gemma3, qwen2_vl, qwen2_5_vl, " \
  "qwen3_vl (and the _text configs of the VL ones)"

/* Which layers slide (p->sliding, all n_layer) and by how much (p->window, sliding_window):
 * layer_types ["sliding_attention" | "full_attention", ...] when the config has it; else
 * Mistral all layers; Gemma 2 the even ones; Gemma 3 all but every sliding_window_pattern-th
 * (default 6); Qwen2/Qwen3 with use_sliding_window those from max_window_layers on. */
static int load_windows(llama *p, json_t *root, const char *path, char *err, size_t errlen) {
  json_t *lt = json_object_get(root, "layer_types");
  int found, pattern = 6, mwl = 28, f = p->family, any = 0; /* HF defaults */
  int qwen = f == F_QWEN2 || f == F_QWEN3 || f == F_QWEN2VL || f == F_QWEN3VL;
  if ((p->sliding = calloc((size_t)p->n_layer, sizeof *p->sliding)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  if (f == F_LLAMA || f == F_GEMMA) return 0;
  if (qwen && !cfg_bool(root, "use_sliding_window", 0)) return 0;
  p->window = f == F_GEMMA2 || f == F_GEMMA3 ? 4096 : 0;
  if (json_object_get(root, "sliding_window") != NULL &&
      json_is_null(json_object_get(root, "sliding_window")))
    p->window = 0;
  if (ss_trunk_cfg_int(root, "sliding_window", path, &p->window, &found, err, errlen) != 0)
    return SS_EINVAL;
  if (lt != NULL && !json_is_null(lt)) {
    if (!json_is_array(lt) || json_array_size(lt) != (size_t)p->n_layer) {
      snprintf(err, errlen, "config %.200s: 'layer_types' must list num_hidden_layers (%d) types",
               path, p->n_layer);
      return SS_EINVAL;
    }
    for (int i = 0; i < p->n_layer; i++) {
      const char *t = json_string_value(json_array_get(lt, (size_t)i));
      if (t == NULL || (strcmp(t, "sliding_attention") != 0 && strcmp(t, "full_attention") != 0)) {
        snprintf(err, errlen,
                 "config %.200s: layer_types[%d] must be \"sliding_attention\" or "
                 "\"full_attention\"",
                 path, i);
        return SS_EINVAL;
      }
      p->sliding[i] = strcmp(t, "sliding_attention") == 0;
    }
  } else {
    if (f == F_GEMMA3 &&
        ss_trunk_cfg_int(root, "sliding_window_pattern", path, &pattern, &found, err, errlen) != 0)
      return SS_EINVAL;
    if (qwen && ss_trunk_cfg_int(root, "max_window_layers", path, &mwl, &found, err, errlen) != 0)
      return SS_EINVAL;
    for (int i = 0; i < p->n_layer; i++)
      p->sliding[i] = f == F_MISTRAL  ? 1
                      : f == F_GEMMA2 ? i % 2 == 0
                      : f == F_GEMMA3 ? (i + 1) % pattern != 0
                                      : i >= mwl;
  }
  for (int i = 0; i < p->n_layer; i++) any |= p->sliding[i];
  if (!any) p->window = 0;
  return 0;
}

/* config.json (top, parsed from path): the family from model_type, then its settings: at the
 * top level, or (the VL checkpoints, gemma3) in text_config when there is one. */
static int load_config(llama *p, json_t *top, const char *path, char *err, size_t errlen) {
  int found, rc = SS_EINVAL, gemma, f = -1;
  json_t *root, *v;
  double eps = 1e-6, qpas = 256.0, cap = 0.0;
  static const char *const required[] = {"hidden_size", "num_attention_heads", "num_hidden_layers",
                                         "intermediate_size"};
  int *req_out[] = {&p->E, &p->NH, &p->n_layer, &p->I};
  const char *mt, *act;

  root = top;
  v = json_object_get(top, "model_type");
  mt = v != NULL && json_is_string(v) ? json_string_value(v) : NULL;
  for (size_t i = 0; mt != NULL && i < sizeof families / sizeof families[0]; i++)
    if (strcmp(mt, families[i].name) == 0) f = families[i].family;
  if (f < 0) {
    snprintf(err, errlen,
             "config %.200s: model_type '%.40s' is not supported by kind 'llama' "
             "(supported: " FAMILY_NAMES ")",
             path, mt ? mt : "(missing)");
    goto done;
  }
  p->family = f;
  snprintf(p->model_type, sizeof p->model_type, "%s", mt);
  v = json_object_get(top, "text_config");
  if ((f == F_GEMMA3 || f == F_QWEN2VL || f == F_QWEN3VL) && v != NULL && json_is_object(v))
    root = v;
  gemma = f == F_GEMMA || f == F_GEMMA2 || f == F_GEMMA3;
  /* Gemma 3's text_config in the multimodal checkpoints leaves out what Gemma3TextConfig
   * defaults: 8 heads over 4 kv heads of 256, 131072 positions, rope_theta 1e6 (load_rope) */
  if (f == F_GEMMA3) {
    p->NH = 8;
    p->NKV = 4;
    p->D = 256;
    p->n_pos = 131072;
  }
  for (int i = 0; i < 4; i++) {
    if (f == F_GEMMA3 && req_out[i] == &p->NH) {
      if (ss_trunk_cfg_int(root, required[i], path, req_out[i], &found, err, errlen) != 0)
        goto done;
      continue;
    }
    if (ss_trunk_cfg_int(root, required[i], path, req_out[i], &found, err, errlen) != 0) goto done;
    if (!found) {
      snprintf(err, errlen, "config %.200s: missing '%s'", path, required[i]);
      goto done;
    }
  }
  if (f != F_GEMMA3) p->NKV = p->NH;
  if (ss_trunk_cfg_int(root, "num_key_value_heads", path, &p->NKV, &found, err, errlen) != 0)
    goto done;
  if (p->NH % p->NKV != 0) {
    snprintf(err, errlen,
             "config %.200s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
             path, p->NH, p->NKV);
    goto done;
  }
  if (ss_trunk_cfg_int(root, "head_dim", path, &p->D, &found, err, errlen) != 0) goto done;
  if (!found && f != F_GEMMA3) {
    if (p->E % p->NH != 0) {
      snprintf(err, errlen,
               "config %.200s: hidden_size %d is not a multiple of num_attention_heads %d (and "
               "no head_dim)",
               path, p->E, p->NH);
      goto done;
    }
    p->D = p->E / p->NH;
  }
  if (p->D % 2 != 0) {
    snprintf(err, errlen, "config %.200s: head_dim %d must be even (rotary embedding)", path, p->D);
    goto done;
  }
  if (f != F_GEMMA3) p->n_pos = 2048;
  if (ss_trunk_cfg_int(root, "max_position_embeddings", path, &p->n_pos, &found, err, errlen) != 0)
    goto done;
  if (ss_trunk_cfg_num(root, "rms_norm_eps", path, &eps, &found, err, errlen) != 0) goto done;
  if (eps >= 1.0) {
    snprintf(err, errlen, "config %.200s: 'rms_norm_eps' must be a number in (0, 1)", path);
    goto done;
  }
  p->eps = (float)eps;
  p->one_plus = gemma;
  /* activation: Gemma reads hidden_activation (HF defaults it to gelu_pytorch_tanh, whatever
   * the older hidden_act says); the others hidden_act (default silu). */
  v = json_object_get(root, gemma ? "hidden_activation" : "hidden_act");
  act = v != NULL && json_is_string(v) ? json_string_value(v)
        : gemma                        ? "gelu_pytorch_tanh"
                                       : "silu";
  if (v != NULL && !json_is_null(v) && !json_is_string(v)) act = "(not a string)";
  if (strcmp(act, "silu") == 0 || strcmp(act, "swish") == 0)
    p->act = ACT_SILU;
  else if (strcmp(act, "gelu_pytorch_tanh") == 0 || strcmp(act, "gelu_new") == 0)
    p->act = ACT_GELU_TANH;
  else if (strcmp(act, "gelu") == 0)
    p->act = ACT_GELU_ERF;
  else {
    snprintf(err, errlen,
             "config %.200s: %s '%.40s' is not supported (supported: silu, gelu_pytorch_tanh, "
             "gelu_new, gelu)",
             path, gemma ? "hidden_activation" : "hidden_act", act);
    goto done;
  }
  /* biases: Qwen2 (and Qwen2-VL) q/k/v always, o never; Mistral none; the others
   * attention_bias on all four; llama mlp_bias. */
  if (f == F_QWEN2 || f == F_QWEN2VL) {
    p->attn_bias = 1;
    p->o_bias = 0;
  } else if (f == F_MISTRAL) {
    p->attn_bias = p->o_bias = 0;
  } else {
    p->attn_bias = p->o_bias = cfg_bool(root, "attention_bias", 0);
  }
  p->mlp_bias = f == F_LLAMA ? cfg_bool(root, "mlp_bias", 0) : 0;
  p->qk_norm = f == F_QWEN3 || f == F_QWEN3VL || f == F_GEMMA3;
  p->sandwich = f == F_GEMMA2 || f == F_GEMMA3;
  if (load_windows(p, root, path, err, errlen) != 0) goto done;
  /* Gemma 2/3: scores scaled by query_pre_attn_scalar^-1/2 (HF default 256), soft-capped by
   * attn_logit_softcapping (null: none) */
  if (f == F_GEMMA2 || f == F_GEMMA3) {
    if (ss_trunk_cfg_num(root, "query_pre_attn_scalar", path, &qpas, &found, err, errlen) != 0 ||
        ss_trunk_cfg_num(root, "attn_logit_softcapping", path, &cap, &found, err, errlen) != 0)
      goto done;
    if (f == F_GEMMA2 && json_object_get(root, "attn_logit_softcapping") == NULL) cap = 50.0;
  }
  p->softcap = (float)cap;
  p->scale = (float)(gemma && f != F_GEMMA ? 1.0 / sqrt(qpas) : 1.0 / sqrt((double)p->D));
  rc = load_ropes(p, root, path, err, errlen);
done:
  return rc;
}

/* ------------------------------------------------------------- weights ---- */

/* The tensors of one layer in a fixed order: the norms (N_*), then per projection weight, bias. */
enum { W_PROJ0 = N_NORM, W_PER_LAYER = W_PROJ0 + 2 * N_PROJ };

static int has_norm(const llama *p, int j) {
  if (j == N_PA || j == N_PF) return p->sandwich;
  if (j == N_QN || j == N_KN) return p->qk_norm;
  return 1;
}

/* Norm j's name in layer i: Gemma 2/3 call the MLP's input norm pre_feedforward_layernorm and
 * the norm of the attention's output post_attention_layernorm (the others' MLP input norm). */
static const char *norm_name(const llama *p, int j) {
  switch (j) {
    case N_LN1: return "input_layernorm";
    case N_LN2: return p->sandwich ? "pre_feedforward_layernorm" : "post_attention_layernorm";
    case N_PA: return "post_attention_layernorm";
    case N_PF: return "post_feedforward_layernorm";
    case N_QN: return "self_attn.q_norm";
    default: return "self_attn.k_norm";
  }
}

static int has_bias(const llama *p, int k) {
  if (k <= P_V) return p->attn_bias;
  if (k == P_O) return p->o_bias;
  return p->mlp_bias;
}

static void proj_dims(const llama *p, int k, int *in, int *out) {
  int Q = p->NH * p->D, KV = p->NKV * p->D;
  switch (k) {
    case P_Q: *in = p->E, *out = Q; break;
    case P_K:
    case P_V: *in = p->E, *out = KV; break;
    case P_O: *in = Q, *out = p->E; break;
    case P_GATE:
    case P_UP: *in = p->E, *out = p->I; break;
    default: *in = p->I, *out = p->E; break;
  }
}

/* Name (without the file's prefix) and shape of tensor j of layer i; 0, or -1 when absent
 * (a bias the config does not have). */
static int tensor_desc(const llama *p, int i, int j, char *name, size_t len, int64_t *shape,
                       int *ndim) {
  if (j < N_NORM) {
    if (!has_norm(p, j)) return -1;
    snprintf(name, len, "layers.%d.%s.weight", i, norm_name(p, j));
    shape[0] = j == N_QN || j == N_KN ? p->D : p->E;
    *ndim = 1;
    return 0;
  }
  {
    int k = (j - W_PROJ0) / 2, bias = (j - W_PROJ0) % 2, in, out;
    if (bias && !has_bias(p, k)) return -1;
    proj_dims(p, k, &in, &out);
    snprintf(name, len, "layers.%d.%s.%s", i, proj_path[k], bias ? "bias" : "weight");
    shape[0] = out;
    shape[1] = in;
    *ndim = bias ? 1 : 2;
  }
  return 0;
}

/* The view/own pointers of tensor j of block bk. */
static void tensor_slot(lblock *bk, int j, const float ***view, float ***own) {
  if (j < N_NORM) {
    *view = &bk->nw[j], *own = &bk->nw_own[j];
  } else {
    proj *pr = &bk->pr[(j - W_PROJ0) / 2];
    if ((j - W_PROJ0) % 2)
      *view = &pr->b, *own = &pr->b_own;
    else
      *view = &pr->w, *own = &pr->w_own;
  }
}

static int load_weights(llama *p, ss_ckpt *w, const char *path, const char **kind_out,
                        int64_t *n_params, char *err, size_t errlen) {
  char name[256], full[300], dims[160];
  int L = p->b - p->a, rc;
  const ss_st_tensor **found;
  ss_trunk_load ld;

  /* the prefix: "model." (HF), none, or the language model's inside a VL checkpoint (newer
   * transformers: model.language_model., older gemma3: language_model.model.) */
  {
    static const char *const prefixes[] = {"model.", "model.language_model.",
                                           "language_model.model.", ""};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
      p->prefix = prefixes[i];
      snprintf(full, sizeof full, "%slayers.%d.input_layernorm.weight", p->prefix, p->a);
      if (ss_ckpt_find(w, full, &rc, err, errlen) != NULL) break;
      if (rc != 0) return rc;
    }
  }
  if ((p->blk = ss_trunk_load_begin(&ld, &p->cc, (size_t)L * W_PER_LAYER, &found, (size_t)L,
                                    sizeof *p->blk, path, err, errlen)) == NULL)
    return SS_ENOMEM;
  for (int l = 0; l < L; l++) {
    for (int j = 0; j < W_PER_LAYER; j++) {
      int64_t shape[2];
      int ndim;
      if (tensor_desc(p, p->a + l, j, name, sizeof name, shape, &ndim) != 0) continue;
      snprintf(full, sizeof full, "%s%s", p->prefix, name);
      found[l * W_PER_LAYER + j] = ss_ckpt_find(w, full, &rc, err, errlen);
      if (rc != 0) {
        free(found);
        return rc;
      }
      if (found[l * W_PER_LAYER + j] == NULL) ss_trunk_missing(&ld, full);
    }
  }
  if ((rc = ss_trunk_missing_check(&ld, path, p->a, p->b, err, errlen)) != 0) {
    free(found);
    return rc;
  }
  snprintf(dims, sizeof dims,
           "hidden_size %d, %d heads, %d kv heads, head_dim %d, intermediate_size %d", p->E, p->NH,
           p->NKV, p->D, p->I);
  for (int l = 0; l < L; l++) {
    for (int k = 0; k < N_PROJ; k++) {
      proj_dims(p, k, &p->blk[l].pr[k].in, &p->blk[l].pr[k].out);
      p->blk[l].pr[k].iw = p->blk[l].pr[k].ib = p->blk[l].pr[k].lo.ia = p->blk[l].pr[k].lo.ib = -1;
    }
    for (int j = 0; j < N_NORM; j++) p->blk[l].inw[j] = -1;
    p->blk[l].window = p->sliding[p->a + l] ? p->window : 0;
    p->blk[l].inv_freq =
        p->inv_freq_local != NULL && p->sliding[p->a + l] ? p->inv_freq_local : p->inv_freq;
    for (int j = 0; j < W_PER_LAYER; j++) {
      const ss_st_tensor *t = found[l * W_PER_LAYER + j];
      int64_t shape[2];
      int ndim;
      const float **view;
      float **own;
      if (tensor_desc(p, p->a + l, j, name, sizeof name, shape, &ndim) != 0) continue;
      tensor_slot(&p->blk[l], j, &view, &own);
      if ((rc = ss_trunk_weight(&ld, t, shape, ndim, view, own, path, dims, err, errlen)) != 0) {
        free(found);
        return rc;
      }
    }
  }
  free(found);
  *n_params = ld.n_params;
  *kind_out = ss_trunk_load_kind(&ld);
  return 0;
}

/* ------------------------------------------------------------- checks ---- */

/* metadata position_offset: absent -> *pos = -1; else an integer in [0, n_pos]. */
static int position_offset(const ss_model *m, const ss_meta *meta, int *pos, char *err,
                           size_t errlen) {
  const llama *p = ((const ss_trunk *)m->impl)->impl;
  double d;
  *pos = -1;
  if (meta == NULL || ss_meta_get(meta, "position_offset") == NULL) return 0;
  if (ss_meta_double(meta, "position_offset", 0, 0, p->n_pos, &d, err, errlen) != 0)
    return SS_EINVAL;
  if (d != floor(d)) {
    snprintf(err, errlen, "metadata 'position_offset' must be an integer, got '%s'",
             ss_meta_get(meta, "position_offset"));
    return SS_EINVAL;
  }
  *pos = (int)d;
  return 0;
}

static int mrope_positions(const ss_model *m, const ss_meta *meta, int B, int S, int **pos,
                           char *err, size_t errlen);

/* The runtime has checked the hidden states: the metadata that places the tokens. */
static int llama_check_meta(const ss_model *m, const ss_tensor *in, const ss_meta *meta, char *err,
                            size_t errlen) {
  const llama *p = ((const ss_trunk *)m->impl)->impl;
  int pos;
  if (position_offset(m, meta, &pos, err, errlen) != 0) return SS_EINVAL;
  if (meta != NULL && ss_meta_get(meta, "mrope_positions") != NULL) {
    int *mp = NULL;
    int rc = mrope_positions(m, meta, (int)in->shape[0], (int)in->shape[1], &mp, err, errlen);
    free(mp);
    if (rc != 0) return rc;
  }
  if (pos >= 0 && pos + in->shape[1] > p->n_pos) {
    snprintf(err, errlen,
             "model '%s': position_offset %d + seq %lld exceeds max_position_embeddings %d", m->id,
             pos, (long long)in->shape[1], p->n_pos);
    return SS_EINVAL;
  }
  return 0;
}

/* ------------------------------------------------------------- projections ---- */

/* y [BT, out] (=, or += when accumulate) x [BT, in] W^T + b, + s (x A^T) B^T with an adapter.
 * lt: scratch [BT, r]; mk: a training forward's LoRA dropout (NULL: none), xd its scratch
 * [BT, in] (models/lora.h). */
static void proj_forward(const llama *p, const proj *pr, float *y, const float *x, int BT,
                         int accumulate, float *lt, const ss_lora_mask *mk, float *xd) {
  ss_op_linear_forward(&p->cc, y, x, pr->w, pr->b, BT, pr->in, pr->out, SS_W_OUT_IN, accumulate);
  ss_lora_forward(&p->lora, &pr->lo, pr->in, pr->out, y, x, BT, lt, mk, xd);
}

/* Backward of proj_forward given dy [BT, out] and its input x: dx [BT, in] (=, or += when
 * accumulate), gradients of the trainable parts (W, b in full fine-tuning; A, B with an
 * adapter) summed under the params mutex. lt, dlt: scratch [BT, r]; mk, xd: LoRA dropout. */
static void proj_backward(llama *p, const proj *pr, float *dx, int accumulate, const float *dy,
                          const float *x, int BT, float *lt, float *dlt, const ss_lora_mask *mk,
                          float *xd) {
  ss_params *s = &p->prm;
  if (pr->iw >= 0)
    ss_params_linear_backward(s, pr->iw, pr->ib, NULL, dy, x, pr->w, BT, pr->in, pr->out,
                              SS_W_OUT_IN);
  ss_op_matmul(&p->cc, SS_MM_N, SS_MM_N, BT, pr->in, pr->out, 1.0f, dy, pr->out, pr->w, pr->in,
               accumulate ? 1.0f : 0.0f, dx, pr->in);
  ss_lora_backward(s, &p->lora, &pr->lo, pr->in, pr->out, dx, dy, x, BT, lt, dlt, mk, xd);
}

static void act_forward(const llama *p, float *out, const float *x, size_t n) {
  if (p->act == ACT_SILU)
    ss_op_silu_forward(&p->cc, out, x, n);
  else if (p->act == ACT_GELU_TANH)
    ss_op_gelu_tanh_forward(&p->cc, out, x, n);
  else
    ss_op_gelu_erf_forward(&p->cc, out, x, n);
}

static ss_mm_act act_kind(const llama *p) {
  return p->act == ACT_SILU        ? SS_ACT_SILU
         : p->act == ACT_GELU_TANH ? SS_ACT_GELU_TANH
                                   : SS_ACT_GELU_ERF;
}

static void act_backward(const llama *p, float *d, const float *x, size_t n) {
  if (p->act == ACT_SILU)
    ss_op_silu_backward(&p->cc, d, x, n);
  else if (p->act == ACT_GELU_TANH)
    ss_op_gelu_tanh_backward(&p->cc, d, x, n);
  else
    ss_op_gelu_erf_backward(&p->cc, d, x, n);
}

/* ------------------------------------------------------------- the block ---- */

/*
 * One decoder layer, written once (HF LlamaDecoderLayer and its family, eval mode) on the nn/
 * ops. Where its activations live is the caller's choice: inference keeps one residual stream
 * in place (x == h == y) and reuses scratch for the rest (g == mm, ao == mo); training points
 * x, h, q, k, v, atty, g, u, att, the pre-norm q/k, the outputs of o_proj and down_proj and the
 * RMSNorm statistics into the layer's saved record (y is the next layer's x) and uses scratch
 * for ln, mm, K, V (recomputed in backward).
 */
typedef struct block_acts {
  float *x, *h, *y;       /* [BT, E] input, residual after attention, output (may alias) */
  float *ln;              /* [BT, E] norm1(x), then the norms after it */
  float *rstd1, *rstd2;   /* [BT] RMSNorm statistics, or NULL */
  float *q, *k, *v;       /* [BT, Q], [BT, KV], [BT, KV] projections (q, k after norm and rope) */
  float *qr, *kr;         /* qk_norm: [BT, Q], [BT, KV] q_proj, k_proj outputs (before q/k norm) */
  float *rstdq, *rstdk;   /* qk_norm: [BT NH], [BT NKV] their RMSNorm statistics, or NULL */
  float *ao, *mo;         /* sandwich: [BT, E] o_proj, down_proj outputs (may alias) */
  float *rstdpa, *rstdpf; /* sandwich: [BT] statistics of their norms, or NULL */
  float *atty;            /* [BT, Q] attention output, heads side by side */
  float *att;             /* [B, NH, T, P+T] when att_all, else [T, P+T] */
  int att_all;
  float *K, *V;           /* [B, NKV, P+T, D] past + new keys/values */
  float *g, *u, *mm;      /* [BT, I] gate, up, act(gate) * up (mm may alias g) */
  float *lt;              /* [BT, r] LoRA scratch (NULL without adapters) */
  const ss_lora_mask *mk; /* a training forward's LoRA dropout (NULL: none) */
  float *xd;              /* [BT, max(E, Q, I)] dropout scratch (with mk) */
} block_acts;

static ss_attn_dims attn_dims(const llama *p, int B, int T, int P, int cap) {
  ss_attn_dims d = {B, T, P, p->NH, p->NKV, p->D, p->scale, cap};
  return d;
}

/* The sequences whose rows a block call stacks (models/trunk.h). */
typedef ss_trunk_seq seq_attn;

/* out [BT, C] = in + norm(r): the sandwich norms' residual add (r is rmsnorm'd into ln). */
static void add_normed(const llama *p, float *out, const float *in, float *ln, float *rstd,
                       const float *r, const float *w, int BT) {
  const size_t n = (size_t)BT * (size_t)p->E;
  ss_op_rmsnorm_forward(&p->cc, ln, rstd, r, w, BT, p->E, p->eps, p->one_plus);
  if (out != in) memcpy(out, in, n * sizeof(float));
  ss_op_add(&p->cc, out, ln, n);
}

/*
 *   n1 = norm1(x);  q, k, v = proj(n1);  q, k = qk_norm(q, k) (per head, when the family has it)
 *   a = o_proj(attn(rope(q), rope(k), v));  h = x + a          (sandwich: x + norm_pa(a))
 *   n2 = norm2(h);  m = down(act(gate(n2)) * up(n2));  y = h + m  (sandwich: h + norm_pf(m))
 */
static void block_forward(const void *impl, int l, void *work, int BT, const seq_attn *seqs,
                          int nseq) {
  const llama *p = impl;
  const lblock *bk = &p->blk[l];
  const block_acts *a = work; /* the first member of the work struct */
  const int E = p->E, Q = p->NH * p->D, KV = p->NKV * p->D;
  const size_t cells = (size_t)BT * (size_t)E, ni = (size_t)BT * (size_t)p->I;
  /* attention */
  ss_op_rmsnorm_forward(&p->cc, a->ln, a->rstd1, a->x, bk->nw[N_LN1], BT, E, p->eps, p->one_plus);
  proj_forward(p, &bk->pr[P_Q], p->qk_norm ? a->qr : a->q, a->ln, BT, 0, a->lt, a->mk, a->xd);
  proj_forward(p, &bk->pr[P_K], p->qk_norm ? a->kr : a->k, a->ln, BT, 0, a->lt, a->mk, a->xd);
  proj_forward(p, &bk->pr[P_V], a->v, a->ln, BT, 0, a->lt, a->mk, a->xd);
  if (p->qk_norm) {
    ss_op_rmsnorm_forward(&p->cc, a->q, a->rstdq, a->qr, bk->nw[N_QN], BT * p->NH, p->D, p->eps,
                          p->one_plus);
    ss_op_rmsnorm_forward(&p->cc, a->k, a->rstdk, a->kr, bk->nw[N_KN], BT * p->NKV, p->D, p->eps,
                          p->one_plus);
  }
  for (int i = 0; i < nseq; i++) {
    const seq_attn *s = &seqs[i];
    float *q = a->q + (size_t)s->row0 * (size_t)Q, *k = a->k + (size_t)s->row0 * (size_t)KV;
    float *v = a->v + (size_t)s->row0 * (size_t)KV;
    ss_attn_dims d = attn_dims(p, s->B, s->T, s->P, s->cap);
    if (s->pos != NULL) {
      ss_op_rope_forward_pos(&p->cc, q, Q, s->B, s->T, p->NH, p->D, s->pos, p->mrope, bk->inv_freq);
      ss_op_rope_forward_pos(&p->cc, k, KV, s->B, s->T, p->NKV, p->D, s->pos, p->mrope,
                             bk->inv_freq);
    } else {
      ss_op_rope_forward_freq(&p->cc, q, Q, s->B, s->T, p->NH, p->D, s->pos0, bk->inv_freq);
      ss_op_rope_forward_freq(&p->cc, k, KV, s->B, s->T, p->NKV, p->D, s->pos0, bk->inv_freq);
    }
    ss_op_attention_forward(&p->cc, a->atty + (size_t)s->row0 * (size_t)Q, Q, a->att, a->att_all,
                            s->K, s->V, q, Q, k, v, KV, s->past_k, s->past_v, &d, bk->window,
                            p->softcap);
  }
  if (p->sandwich) {
    proj_forward(p, &bk->pr[P_O], a->ao, a->atty, BT, 0, a->lt, a->mk, a->xd);
    add_normed(p, a->h, a->x, a->ln, a->rstdpa, a->ao, bk->nw[N_PA], BT);
  } else {
    if (a->h != a->x) memcpy(a->h, a->x, cells * sizeof(float));
    proj_forward(p, &bk->pr[P_O], a->h, a->atty, BT, 1, a->lt, a->mk, a->xd);
  }
  /* mlp */
  ss_op_rmsnorm_forward(&p->cc, a->ln, a->rstd2, a->h, bk->nw[N_LN2], BT, E, p->eps, p->one_plus);
  if (a->mm == a->g && bk->pr[P_GATE].lo.a == NULL) { /* inference: act(g) * u fused, g not kept */
    const proj *pg = &bk->pr[P_GATE];
    proj_forward(p, &bk->pr[P_UP], a->u, a->ln, BT, 0, a->lt, a->mk, a->xd);
    ss_mm_epilogue ep = {pg->b, act_kind(p), a->u, pg->out};
    ss_op_linear_forward_ep(&p->cc, a->mm, a->ln, pg->w, &ep, BT, pg->in, pg->out, SS_W_OUT_IN, 0);
  } else {
    proj_forward(p, &bk->pr[P_GATE], a->g, a->ln, BT, 0, a->lt, a->mk, a->xd);
    proj_forward(p, &bk->pr[P_UP], a->u, a->ln, BT, 0, a->lt, a->mk, a->xd);
    act_forward(p, a->mm, a->g, ni);
    ss_op_mul(&p->cc, a->mm, a->mm, a->u, ni);
  }
  if (p->sandwich) {
    proj_forward(p, &bk->pr[P_DOWN], a->mo, a->mm, BT, 0, a->lt, a->mk, a->xd);
    add_normed(p, a->y, a->h, a->ln, a->rstdpf, a->mo, bk->nw[N_PF], BT);
  } else {
    if (a->y != a->h) memcpy(a->y, a->h, cells * sizeof(float));
    proj_forward(p, &bk->pr[P_DOWN], a->y, a->mm, BT, 1, a->lt, a->mk, a->xd);
  }
}

/* Backward scratch of one call. */
typedef struct block_grads {
  float *dln, *datty, *dq, *dk, *dv; /* [BT, E], [BT, Q], [BT, Q], [BT, KV], [BT, KV] */
  float *dkr;                        /* qk_norm: [BT, KV] */
  float *fa, *dmm;                   /* [BT, I] act(g), d(mm) */
  float *datt;                       /* [2, T, T] */
  float *dlt;                        /* [BT, r] */
  float *dw_sink;                    /* [max(E, D)]: norm weight gradients of a frozen trunk */
} block_grads;

/* Everything a block call points at: its activations and, in backward, its gradients. */
typedef struct llama_work {
  block_acts a;
  block_grads g;
} llama_work;

/* dx (=) the gradient through RMSNorm j of layer l given dy; its weight's gradient summed. */
static void norm_backward(llama *p, const lblock *bk, int j, const block_grads *g, float *dx,
                          const float *dy, const float *x, const float *rstd, int rows, int C) {
  ss_params *s = &p->prm;
  memset(dx, 0, (size_t)rows * (size_t)C * sizeof(float));
  ss_params_lock(s);
  ss_op_rmsnorm_backward(&p->cc, dx, bk->inw[j] >= 0 ? ss_params_grad(s, bk->inw[j]) : g->dw_sink,
                         dy, x, bk->nw[j], rstd, rows, C, p->one_plus);
  ss_params_unlock(s);
}

/*
 * Backward of block_forward (no past, positions from 0), a: the saved acts (x, h, q, k, v, atty,
 * g, u, att, rstd1, rstd2, and qr, kr, rstdq, rstdk, ao, mo, rstdpa, rstdpf when the family has
 * them; ln, mm and lt scratch, refilled here). dres = dL/dy on entry, dL/dx on return (updated
 * in place):
 *   y = h + m  (sandwich: h + norm_pf(m))   dm = dres (through norm_pf's backward)
 *   m = mm Wd^T                dmm = dm Wd (+ LoRA), dWd += dm^T mm
 *   mm = act(g) * u            du = dmm * act(g),  dg = dmm * u * act'(g)
 *   g, u = n2 Wg^T, n2 Wu^T    dn2 = dg Wg + du Wu;  RMSNorm': dres += d(h)
 *   h = x + a  (or norm_pa(a)) da = dres (through norm_pa);  a = atty Wo^T: datty = da Wo
 *   attention (soft-capped), rope   dq, dk, dv (nn/attention.h), rotated back (nn/rope.h); k_proj's
 *                              bias from the rotated dk (kbias_backward) without q/k norms
 *   q, k = qk_norm(qr, kr)     dqr, dkr through the per-head RMSNorm
 *   q, k, v = n1 W^T + b       dn1 = dq Wq + dk Wk + dv Wv;  RMSNorm': dres += d(x)
 */
static int block_backward(void *impl, int l, void *work, float *dres, int B, int T) {
  llama *p = impl;
  const block_acts *a = &((llama_work *)work)->a;
  const block_grads *g = &((llama_work *)work)->g;
  const lblock *bk = &p->blk[l];
  proj pk = bk->pr[P_K];
  int rc = 0;
  const int E = p->E, Q = p->NH * p->D, KV = p->NKV * p->D, BT = B * T;
  const size_t ni = (size_t)BT * (size_t)p->I;
  ss_params *s = &p->prm;
  ss_attn_dims d = attn_dims(p, B, T, 0, 0);
  const float *dy = dres, *dq = g->dq, *dk = g->dk;
  /* mlp */
  if (p->sandwich) { /* dln = d(down_proj's output) */
    norm_backward(p, bk, N_PF, g, g->dln, dres, a->mo, a->rstdpf, BT, E);
    dy = g->dln;
  }
  act_forward(p, g->fa, a->g, ni);
  ss_op_mul(&p->cc, a->mm, g->fa, a->u, ni);
  proj_backward(p, &bk->pr[P_DOWN], g->dmm, 0, dy, a->mm, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_op_mul(&p->cc, a->mm, g->dmm, g->fa, ni); /* mm (scratch) becomes du */
  ss_op_mul(&p->cc, g->dmm, g->dmm, a->u, ni); /* dmm becomes d(act(g)) */
  act_backward(p, g->dmm, a->g, ni);
  ss_op_rmsnorm_forward(&p->cc, a->ln, NULL, a->h, bk->nw[N_LN2], BT, E, p->eps, p->one_plus);
  proj_backward(p, &bk->pr[P_UP], g->dln, 0, a->mm, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  proj_backward(p, &bk->pr[P_GATE], g->dln, 1, g->dmm, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_params_lock(s);
  ss_op_rmsnorm_backward(&p->cc, dres,
                         bk->inw[N_LN2] >= 0 ? ss_params_grad(s, bk->inw[N_LN2]) : g->dw_sink,
                         g->dln, a->h, bk->nw[N_LN2], a->rstd2, BT, E, p->one_plus);
  ss_params_unlock(s);
  /* attention */
  dy = dres;
  if (p->sandwich) { /* dln = d(o_proj's output) */
    norm_backward(p, bk, N_PA, g, g->dln, dres, a->ao, a->rstdpa, BT, E);
    dy = g->dln;
  }
  proj_backward(p, &bk->pr[P_O], g->datty, 0, dy, a->atty, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_op_attention_backward(&p->cc, g->dq, g->dk, g->dv, g->datt, g->datty, Q, a->att, a->q, Q, a->k,
                           a->v, KV, &d, p->softcap);
  if (pk.ib >= 0 && !p->qk_norm && p->softcap == 0.0f) { /* kbias_backward */
    ss_params_lock(s);
    rc = ss_op_rope_bias_backward(&p->cc, ss_params_grad(s, pk.ib), g->dk, B, T, p->NKV, p->D,
                                  bk->inv_freq);
    ss_params_unlock(s);
    pk.ib = -1;
  }
  ss_op_rope_backward_freq(&p->cc, g->dq, Q, B, T, p->NH, p->D, 0, bk->inv_freq);
  ss_op_rope_backward_freq(&p->cc, g->dk, KV, B, T, p->NKV, p->D, 0, bk->inv_freq);
  if (p->qk_norm) { /* datty (free now) becomes d(qr), dkr d(kr) */
    norm_backward(p, bk, N_QN, g, g->datty, g->dq, a->qr, a->rstdq, BT * p->NH, p->D);
    norm_backward(p, bk, N_KN, g, g->dkr, g->dk, a->kr, a->rstdk, BT * p->NKV, p->D);
    dq = g->datty;
    dk = g->dkr;
  }
  ss_op_rmsnorm_forward(&p->cc, a->ln, NULL, a->x, bk->nw[N_LN1], BT, E, p->eps, p->one_plus);
  proj_backward(p, &bk->pr[P_Q], g->dln, 0, dq, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  proj_backward(p, &pk, g->dln, 1, dk, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  proj_backward(p, &bk->pr[P_V], g->dln, 1, g->dv, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_params_lock(s);
  ss_op_rmsnorm_backward(&p->cc, dres,
                         bk->inw[N_LN1] >= 0 ? ss_params_grad(s, bk->inw[N_LN1]) : g->dw_sink,
                         g->dln, a->x, bk->nw[N_LN1], a->rstd1, BT, E, p->one_plus);
  ss_params_unlock(s);
  return rc;
}

/* ------------------------------------------------------------- positions ---- */

/* metadata mrope_positions (M-RoPE models): 3 S or 3 B S integers, stream-major ([3, S] shared
 * by the batch rows, or [3, B, S] as HF's position_ids), each in [0, max_position_embeddings);
 * *pos = NULL when absent, else a malloc'd [3, B, S] (the caller frees). */
static int mrope_positions(const ss_model *m, const ss_meta *meta, int B, int S, int **pos,
                           char *err, size_t errlen) {
  const llama *p = ((const ss_trunk *)m->impl)->impl;
  const char *v = meta != NULL ? ss_meta_get(meta, "mrope_positions") : NULL, *c;
  size_t n = 0, want1 = 3 * (size_t)S, wantB = want1 * (size_t)B;
  int *out;
  *pos = NULL;
  if (v == NULL) return 0;
  if (p->mrope == NULL) {
    snprintf(err, errlen,
             "model '%s': metadata 'mrope_positions' needs an M-RoPE model (qwen2_vl, qwen3_vl "
             "with rope_scaling.mrope_section)",
             m->id);
    return SS_EINVAL;
  }
  if (ss_meta_get(meta, "position_offset") != NULL) {
    snprintf(err, errlen,
             "model '%s': metadata 'mrope_positions' and 'position_offset' exclude "
             "each other",
             m->id);
    return SS_EINVAL;
  }
  if ((out = malloc(wantB * sizeof *out)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  for (c = v; *c != '\0';) {
    char *end;
    long x;
    while (*c == ' ' || *c == ',') c++;
    if (*c == '\0') break;
    errno = 0;
    x = strtol(c, &end, 10);
    if (end == c || errno != 0 || x < 0 || x >= p->n_pos || n >= wantB) {
      snprintf(err, errlen,
               "model '%s': metadata 'mrope_positions' must be %zu (3 x seq) or %zu (3 x batch x "
               "seq) comma-separated integers in [0, %d)",
               m->id, want1, wantB, p->n_pos);
      free(out);
      return SS_EINVAL;
    }
    out[n++] = (int)x;
    c = end;
  }
  if (n != want1 && n != wantB) {
    snprintf(err, errlen,
             "model '%s': metadata 'mrope_positions' has %zu values, expected %zu (3 x seq) or "
             "%zu (3 x batch x seq)",
             m->id, n, want1, wantB);
    free(out);
    return SS_EINVAL;
  }
  if (n == want1 && B > 1) /* [3, S] -> [3, B, S] */
    for (int st = 2; st >= 0; st--)
      for (int b = B - 1; b >= 0; b--)
        memmove(out + ((size_t)st * (size_t)B + (size_t)b) * (size_t)S,
                out + (size_t)st * (size_t)S, (size_t)S * sizeof *out);
  *pos = out;
  return 0;
}

/* Where the request places its tokens: position_offset (*pos0, -1: after the past) or M-RoPE
 * positions (*pos). */
static int llama_positions(const ss_model *m, const ss_meta *meta, int B, int S, int *pos0,
                           int **pos, char *err, size_t errlen) {
  if (position_offset(m, meta, pos0, err, errlen) != 0) return SS_EINVAL;
  return mrope_positions(m, meta, B, S, pos, err, errlen);
}

/* ------------------------------------------------------------- the activation table ---- */

/* The widest projection input (the LoRA dropout scratch's row): hidden, heads x head_dim or
 * intermediate. */
static size_t lora_max_in(const llama *p) {
  size_t m = (size_t)p->E, q = (size_t)p->NH * (size_t)p->D;
  if (q > m) m = q;
  if ((size_t)p->I > m) m = (size_t)p->I;
  return m;
}

/* Slots of the table (after the runtime's x, h, y, K, V), in the order they are carved. */
/* clang-format off */
enum {
  S_LN = SS_TRUNK_SLOTS0, S_Q, S_ATTY, S_K, S_V, S_G, S_MM, S_U, S_RSTD1, S_RSTD2, S_ATT, S_QR,
  S_KR, S_RSTDQ, S_RSTDK, S_AO, S_MO, S_RSTDPA, S_RSTDPF, S_LT, S_XD, S_DLN, S_DATTY, S_DQ,
  S_DK, S_DV, S_FA, S_DMM, S_DLT, S_DATT, S_DSINK, S_DKR, N_SLOTS
};
#define A_(f) offsetof(llama_work, a.f)
#define G_(f) offsetof(llama_work, g.f)
static const size_t slots[N_SLOTS] = {
    SS_TRUNK_COMMON_SLOTS(llama_work), [S_LN] = A_(ln), [S_Q] = A_(q), [S_ATTY] = A_(atty),
    [S_K] = A_(k), [S_V] = A_(v), [S_G] = A_(g), [S_MM] = A_(mm), [S_U] = A_(u),
    [S_RSTD1] = A_(rstd1), [S_RSTD2] = A_(rstd2), [S_ATT] = A_(att), [S_QR] = A_(qr),
    [S_KR] = A_(kr), [S_RSTDQ] = A_(rstdq), [S_RSTDK] = A_(rstdk), [S_AO] = A_(ao),
    [S_MO] = A_(mo), [S_RSTDPA] = A_(rstdpa), [S_RSTDPF] = A_(rstdpf), [S_LT] = A_(lt),
    [S_XD] = A_(xd), [S_DLN] = G_(dln), [S_DATTY] = G_(datty), [S_DQ] = G_(dq), [S_DK] = G_(dk),
    [S_DV] = G_(dv), [S_FA] = G_(fa), [S_DMM] = G_(dmm), [S_DLT] = G_(dlt), [S_DATT] = G_(datt),
    [S_DSINK] = G_(dw_sink), [S_DKR] = G_(dkr)};
/* clang-format on */

/* Floats per slot of each phase (models/trunk.h; K, V scratch: the runtime's; Q = NH D,
 * KV = NKV D):
 *   infer, batch  ln [R, E]; q, atty [R, Q]; k, v [R, KV]; g == mm, u [R, I]; lt [R, r];
 *                 att [ss_attn_scratch(D)]; q/k norms: qr [R, Q], kr [R, KV];
 *                 sandwich: ao == mo [R, E] (batch: x [R, E], h == y == x)
 *   train         ln [R, E]; mm [R, I]; lt [R, r]; xd [R, max in] with dropout
 *   saved         x, h [R, E]; q, atty [R, Q]; k, v [R, KV]; g, u [R, I]; rstd1, rstd2 [R];
 *                 att [B, NH, S, S]; q/k norms: qr [R, Q], kr [R, KV], rstdq [R NH],
 *                 rstdk [R NKV]; sandwich: ao, mo [R, E], rstdpa, rstdpf [R]
 *   backward      ln, dln [R, E]; datty, dq [R, Q]; dk, dv, dkr [R, KV]; mm, fa, dmm [R, I];
 *                 lt, dlt [R, r]; datt [2, S, S]; dw_sink [max(E, D)]; xd [R, max in] with
 *                 dropout */
static void llama_sizes(const void *impl, ss_trunk_phase ph, const ss_trunk_dims *d, size_t *n) {
  const llama *p = impl;
  const size_t R = d->rows, E = (size_t)p->E, I = (size_t)p->I, r = (size_t)p->lora.r;
  const size_t Q = (size_t)p->NH * (size_t)p->D, KV = (size_t)p->NKV * (size_t)p->D;
  switch (ph) {
    case SS_TRUNK_BATCH:
      n[SS_TRUNK_X] = R * E;
      n[SS_TRUNK_H] = n[SS_TRUNK_Y] = SS_TRUNK_ALIAS(SS_TRUNK_X);
      /* fall through */
    case SS_TRUNK_INFER:
      n[S_LN] = R * E;
      n[S_Q] = n[S_ATTY] = R * Q;
      n[S_K] = n[S_V] = R * KV;
      n[S_G] = n[S_U] = R * I;
      n[S_MM] = SS_TRUNK_ALIAS(S_G);
      n[S_LT] = R * r;
      n[S_ATT] = ss_attn_scratch(p->D);
      if (p->qk_norm) n[S_QR] = R * Q, n[S_KR] = R * KV;
      if (p->sandwich) n[S_AO] = R * E, n[S_MO] = SS_TRUNK_ALIAS(S_AO);
      break;
    case SS_TRUNK_TRAIN:
      n[S_LN] = R * E;
      n[S_MM] = R * I;
      n[S_LT] = R * r;
      n[S_XD] = d->dropout ? R * lora_max_in(p) : 0;
      break;
    case SS_TRUNK_SAVED:
      n[SS_TRUNK_X] = n[SS_TRUNK_H] = R * E;
      n[S_Q] = n[S_ATTY] = R * Q;
      n[S_K] = n[S_V] = R * KV;
      n[S_G] = n[S_U] = R * I;
      n[S_RSTD1] = n[S_RSTD2] = R;
      n[S_ATT] = (size_t)d->B * (size_t)p->NH * (size_t)d->S * (size_t)d->S;
      if (p->qk_norm) {
        n[S_QR] = R * Q, n[S_KR] = R * KV;
        n[S_RSTDQ] = R * (size_t)p->NH, n[S_RSTDK] = R * (size_t)p->NKV;
      }
      if (p->sandwich) n[S_AO] = n[S_MO] = R * E, n[S_RSTDPA] = n[S_RSTDPF] = R;
      break;
    case SS_TRUNK_BACKWARD:
      n[S_LN] = n[S_DLN] = R * E;
      n[S_DATTY] = n[S_DQ] = R * Q;
      n[S_DK] = n[S_DV] = n[S_DKR] = R * KV;
      n[S_MM] = n[S_FA] = n[S_DMM] = R * I;
      n[S_LT] = n[S_DLT] = R * r;
      n[S_DATT] = 2 * (size_t)d->S * (size_t)d->S;
      n[S_DSINK] = E > (size_t)p->D ? E : (size_t)p->D;
      n[S_XD] = d->dropout ? R * lora_max_in(p) : 0;
      break;
    default: break;
  }
}

/* The norm weight gradients of a frozen trunk sum into dw_sink: start it at 0. */
static void llama_backward_init(const void *impl, void *work) {
  const llama *p = impl;
  memset(((llama_work *)work)->g.dw_sink, 0, (size_t)(p->E > p->D ? p->E : p->D) * sizeof(float));
}

static void llama_destroy(void *impl) { llama_free(impl); }

static const ss_trunk_arch llama_arch = {.kind = "llama",
                                         .pos_key = "max_position_embeddings",
                                         .kv_heads_key = "num_key_value_heads",
                                         .kv_msg_layer = 1,
                                         SS_TRUNK_WORK(llama_work, slots),
                                         .sizes = llama_sizes,
                                         .backward_init = llama_backward_init,
                                         .block_forward = block_forward,
                                         .block_backward = block_backward,
                                         .positions = llama_positions,
                                         .check_meta = llama_check_meta,
                                         .lora_targets = proj_short,
                                         .n_lora_targets = N_PROJ,
                                         .destroy = llama_destroy};

/* ------------------------------------------------------------- LoRA ---- */

/* The PEFT key of layer's projection k: PEFT wraps the module tree, base_model.model.<the
 * checkpoint's prefix>layers... (a checkpoint without prefix: "model.", as PEFT on a
 * *ForCausalLM names it). */
static void lora_key(const llama *p, int layer, int k, char *name, size_t len) {
  snprintf(name, len, "base_model.model.%slayers.%d.%s",
           p->prefix[0] != '\0' ? p->prefix : "model.", layer, proj_path[k]);
}

/* Projection i (layer-major, N_PROJ a layer) as a LoRA site when the targets name it. */
static int llama_lora_site(void *impl, int i, ss_trunk_lora_site *s) {
  llama *p = impl;
  const int k = i % N_PROJ, layer = p->a + i / N_PROJ;
  proj *pr = &p->blk[i / N_PROJ].pr[k];
  if (!(p->lora.targets & (1u << k))) return 0;
  lora_key(p, layer, k, s->key, sizeof s->key);
  s->lo = &pr->lo;
  s->in = pr->in;
  s->out = pr->out;
  s->unit = layer * 16 + k;
  return 1;
}

/* Adapters: A (PEFT init, seeded) and B (zero) for every target of every layer, or read from
 * adapter_dir/adapter_model.safetensors. */
static int lora_setup(llama *p, const char *adapter_dir, char *err, size_t errlen) {
  return ss_trunk_lora_all(p, &p->cc, (p->b - p->a) * N_PROJ, p->lora.r, llama_lora_site,
                           adapter_dir, err, errlen);
}

/* ------------------------------------------------------------- parameters ---- */

/* Full fine-tuning: every trunk tensor under its loaded name. LoRA: the adapters only. */
static int llama_params(llama *p) {
  int L = p->b - p->a;
  char name[256], full[300];
  ss_params *s = &p->prm;
  if (ss_params_init(s, (size_t)L * W_PER_LAYER, &p->cc) != 0) return SS_ENOMEM;
  for (int l = 0; l < L; l++) {
    lblock *bk = &p->blk[l];
    if (p->lora.r > 0) {
      for (int k = 0; k < N_PROJ; k++) {
        proj *pr = &bk->pr[k];
        if (pr->lo.a == NULL) continue;
        lora_key(p, p->a + l, k, name, sizeof name);
        if (ss_lora_add_params(s, &pr->lo, name, p->lora.r, pr->in, pr->out) != 0) return SS_ENOMEM;
      }
      continue;
    }
    for (int j = 0; j < W_PER_LAYER; j++) {
      int64_t shape[2];
      int ndim, idx;
      const float **view;
      float **own;
      if (tensor_desc(p, p->a + l, j, name, sizeof name, shape, &ndim) != 0) continue;
      snprintf(full, sizeof full, "%s%s", p->prefix, name);
      tensor_slot(bk, j, &view, &own);
      if ((idx = ss_params_add(s, full, shape, ndim, view, own)) < 0) return SS_ENOMEM;
      if (j < N_NORM)
        bk->inw[j] = idx;
      else if ((j - W_PROJ0) % 2)
        bk->pr[(j - W_PROJ0) / 2].ib = idx;
      else
        bk->pr[(j - W_PROJ0) / 2].iw = idx;
    }
  }
  return 0;
}

/* ------------------------------------------------------------- constructor ---- */

/* The adapter and parameter set-up as the runtime calls them (ss_trunk_training). */
static int llama_lora_setup(void *impl, const char *adapter, char *msg, size_t len) {
  return lora_setup(impl, adapter, msg, len);
}

static int llama_params_of(void *impl) { return llama_params(impl); }

int ss_model_llama_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  const char *dt = "f32";
  char config[1200], msg[1024];
  json_t *top = NULL;
  int rc;
  int64_t n_params = 0;
  ss_trunk_spec sp;
  llama *p;

  if ((rc = ss_trunk_spec_parse(m, "llama",
                                "a Hugging Face model.safetensors, its directory or a sharded "
                                "checkpoint's index",
                                params, n, &sp, err, errlen)) != 0)
    return rc;
  if ((p = calloc(1, sizeof *p)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  p->cc = ss_model_compute(m); /* every tensor of the model comes from its backend */
  msg[0] = '\0';
  rc = ss_trunk_open(&sp, &p->ck, &top, config, sizeof config, msg, sizeof msg);
  if (rc == 0) rc = load_config(p, top, config, msg, sizeof msg);
  json_decref(top);
  if (rc == 0) rc = ss_trunk_layers(sp.layers, p->n_layer, &p->a, &p->b, msg, sizeof msg);
  if (rc == 0) rc = load_weights(p, &p->ck, sp.weights, &dt, &n_params, msg, sizeof msg);
  /* LoRA (PEFT's llama default targets: q_proj, v_proj), parameters, optimizer state (in the
   * weights file: full fine-tuning checkpoints; or the adapter's directory) */
  if (rc == 0)
    rc = ss_trunk_training(&llama_arch, p, &sp, (1u << P_Q) | (1u << P_V), &p->lora, &p->prm,
                           ss_ckpt_first(&p->ck), llama_lora_setup, llama_params_of, msg,
                           sizeof msg);
  ss_ckpt_done(&p->ck);
  if (rc != 0) {
    snprintf(err, errlen, "model '%s': %s", m->id, msg);
    llama_free(p);
    return rc;
  }
  snprintf(m->describe, sizeof m->describe,
           "llama (%s) layers %d:%d of %d (hidden %d, %d/%d heads), %.1fM params, %s",
           p->model_type, p->a, p->b, p->n_layer, p->E, p->NH, p->NKV, (double)n_params / 1e6, dt);
  const ss_trunk t = {&llama_arch, p,    p->a,    p->b,   p->n_pos, p->E,
                      p->NKV,      p->D, &p->prm, &p->cc, &p->lora};
  return ss_trunk_attach(m, &t, &p->ck, n_params, err, errlen);
}
