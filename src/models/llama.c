/*
 * llama.c — the "llama" model kind: the trunk of a split Llama-family decoder, i.e. decoder
 * layers [a, b) of a Hugging Face checkpoint whose config.json model_type is llama, qwen2,
 * mistral or gemma, with an attention (KV) cache, training (full fine-tuning or LoRA adapters).
 * Input and output are hidden states [batch, seq, hidden] float32: the client's bottom has run
 * the embedding (Gemma's embedding also multiplies by sqrt(hidden): that belongs to the
 * embedding layer, outside the trunk, and is NOT applied here).
 *
 * Spec: ID=llama,weights=PATH[,config=config.json][,layers=A:B]
 *            [,lora_rank=R,lora_alpha=A,lora_targets=q_proj,v_proj][,adapter=DIR]
 *            [,lora_dropout=P,lora_seed=N]
 *   PATH: a .safetensors file, a directory holding model.safetensors or a sharded checkpoint
 *   (model.safetensors.index.json + its shards), or the index file itself. config defaults to
 *   config.json next to the file (in the directory); layers to 0:num_hidden_layers.
 *
 * Weights: keys [model.]layers.{i}.input_layernorm.weight, .self_attn.{q,k,v,o}_proj.{weight,
 * bias}, .post_attention_layernorm.weight, .mlp.{gate,up,down}_proj.{weight,bias} (biases as
 * the config says: Qwen2 has q/k/v biases, llama/gemma attention_bias, llama mlp_bias);
 * nn.Linear layout (W [out, in], y = x W^T + b); F32 used in place from the mmap when aligned,
 * F16/BF16 converted once. Only the trunk's tensors are read (sharded: only their shards are
 * opened). Every file stays mapped for the model's life; m->weights is the first one opened.
 *
 * Block (HF LlamaDecoderLayer and its Qwen2/Mistral/Gemma twins, eval mode):
 *   h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = norm1(x)
 *   y = h + down_proj(act(gate_proj(n2)) * up_proj(n2)),                    n2 = norm2(h)
 *   norm: RMSNorm, x / sqrt(mean x^2 + eps) * w   (Gemma: * (1 + w))
 *   act:  silu (SwiGLU), or gelu tanh (Gemma's GeGLU, gelu_pytorch_tanh), or exact gelu
 *   attn: num_attention_heads query heads over num_key_value_heads kv heads (GQA), head_dim from
 *         the config when given (Gemma) else hidden / heads, scale 1/sqrt(head_dim), causal;
 *         Mistral's sliding_window W: a query at position i sees keys i-W < j <= i.
 *   rope: HF rotate_half with rope_theta; rope_scaling "linear" (theta_i / factor) and "llama3"
 *         (Llama 3.1's frequency-banded rescale); others are refused at start-up.
 * It is written once (block_forward / block_backward) on the nn/ ops and serves inference with
 * or without a cache, decode steps and training. Every projection goes through proj_forward /
 * proj_backward, which add the LoRA path when the projection has an adapter.
 *
 * Positions: a call's first token sits at the past length P (0 without a cache), or at the
 * request metadata position_offset when given (the cache index still decides the causal mask).
 *
 * KV cache: past[l].key/value [batch, num_key_value_heads, P, head_dim] (layer a + l), keys
 * after the rotary embedding, as HF's cache holds them; present = past + this call's.
 *
 * Training: full fine-tuning (every tensor of the trunk is a parameter, checkpoint under the
 * loaded names) or, with lora_rank, LoRA: the trunk is frozen and the parameters are the
 * adapters A [r, in] (PEFT init: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)))
 * and B [out, r] (zero), y += (alpha / r) x A^T B^T; save=DIR writes the PEFT layout
 * (DIR/adapter_model.safetensors, DIR/adapter_config.json, and the optimizer state in
 * DIR/optimizer.safetensors); adapter=DIR loads one at start (and its optimizer state).
 * lora_dropout=P (default: the adapter's, else 0) drops the adapters' inputs in training
 * forwards, masks from (lora_seed, forward id, layer, element): models/lora.h.
 *
 * Thread: created on the main thread, then shared by all workers; check() and check_kv() on the
 * loop thread; forward()/forward_kv() on workers, reentrant (all scratch is malloc'd per call).
 * Training follows model.h: forward_train/backward under the read lock (gradient sums on the
 * params mutex), step under the write lock (the only writer), save under the read lock.
 */
#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/file.h"
#include "models/model.h"
#include "models/nn/attention.h"
#include "models/nn/gelu.h"
#include "models/nn/linear.h"
#include "models/nn/matmul.h"
#include "models/nn/rmsnorm.h"
#include "models/nn/rope.h"
#include "models/nn/silu.h"
#include "models/lora.h"
#include "models/params.h"
#include "models/safetensors.h"
#include "models/trunk.h"

enum { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, N_PROJ };
static const char *const proj_path[N_PROJ] = {"self_attn.q_proj", "self_attn.k_proj",
                                              "self_attn.v_proj", "self_attn.o_proj",
                                              "mlp.gate_proj",    "mlp.up_proj",
                                              "mlp.down_proj"};
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

typedef struct lblock {
  const float *ln1, *ln2; /* [E] RMSNorm weights */
  float *ln1_own, *ln2_own;
  int iln1, iln2;
  proj pr[N_PROJ];
} lblock;

typedef struct llama {
  char model_type[16];
  int E, NH, NKV, D, I, n_layer, n_pos;
  int a, b;
  float eps;
  int one_plus; /* Gemma's (1 + w) norm */
  int act;
  int window;   /* sliding window (Mistral), 0: none */
  int attn_bias, o_bias, mlp_bias;
  float scale;
  double *inv_freq; /* [D/2] rotary frequencies, scaling applied */
  lblock *blk;
  ss_st_file **files; /* opened weight files (shards), kept mapped */
  int n_files;
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
      free(bk->ln1_own);
      free(bk->ln2_own);
      for (int k = 0; k < N_PROJ; k++) {
        free(bk->pr[k].w_own);
        free(bk->pr[k].b_own);
        ss_lora_free(&bk->pr[k].lo);
      }
    }
  ss_params_free(&p->prm);
  free(p->blk);
  free(p->inv_freq);
  for (int i = 0; i < p->n_files; i++) ss_st_close(p->files[i]);
  free(p->files);
  free(p);
}

/* ------------------------------------------------------------- config.json ---- */


/* A positive number field; *found = 0 when absent (or null). */
static int cfg_num(json_t *root, const char *key, const char *path, double *out, int *found,
                   char *err, size_t errlen) {
  json_t *v = json_object_get(root, key);
  *found = 0;
  if (v == NULL || json_is_null(v)) return 0;
  if (!json_is_number(v) || !(json_number_value(v) > 0.0) || !isfinite(json_number_value(v))) {
    snprintf(err, errlen, "config %.200s: '%s' must be a positive number", path, key);
    return SS_EINVAL;
  }
  *out = json_number_value(v);
  *found = 1;
  return 0;
}

static int cfg_bool(json_t *root, const char *key, int def) {
  json_t *v = json_object_get(root, key);
  return v != NULL && json_is_boolean(v) ? json_is_true(v) : def;
}

/* rope_scaling: null, {"rope_type"|"type": "default"|"linear"|"llama3", "factor", ...}.
 * Fills p->inv_freq (D/2 values). HF _compute_llama3_parameters:
 *   wavelen = 2 pi / f;  wavelen > old/low_ff: f / factor;  wavelen < old/high_ff: f;
 *   between: (1 - s) f / factor + s f,  s = (old / wavelen - low_ff) / (high_ff - low_ff) */
static int load_rope(llama *p, json_t *root, const char *path, char *err, size_t errlen) {
  double theta = 10000.0, factor = 1.0, lff = 1.0, hff = 4.0, old = 8192.0;
  int found, n = p->D / 2;
  json_t *rs = json_object_get(root, "rope_scaling"), *t;
  const char *type = "default";

  if (cfg_num(root, "rope_theta", path, &theta, &found, err, errlen) != 0) return SS_EINVAL;
  if ((p->inv_freq = malloc((size_t)(n > 0 ? n : 1) * sizeof(double))) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  ss_rope_inv_freq(p->inv_freq, p->D, theta);
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
  if (strcmp(type, "default") == 0) return 0;
  if (strcmp(type, "linear") != 0 && strcmp(type, "llama3") != 0) {
    snprintf(err, errlen,
             "config %.200s: rope_scaling type '%.40s' is not supported (supported: llama3, "
             "linear, default)",
             path, type);
    return SS_EINVAL;
  }
  if (cfg_num(rs, "factor", path, &factor, &found, err, errlen) != 0) return SS_EINVAL;
  if (!found) {
    snprintf(err, errlen, "config %.200s: rope_scaling '%s' needs 'factor'", path, type);
    return SS_EINVAL;
  }
  if (strcmp(type, "linear") == 0) {
    for (int i = 0; i < n; i++) p->inv_freq[i] /= factor;
    return 0;
  }
  {
    int f1, f2, f3;
    if (cfg_num(rs, "low_freq_factor", path, &lff, &f1, err, errlen) != 0 ||
        cfg_num(rs, "high_freq_factor", path, &hff, &f2, err, errlen) != 0 ||
        cfg_num(rs, "original_max_position_embeddings", path, &old, &f3, err, errlen) != 0)
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
    double f = p->inv_freq[i], wl = 2.0 * M_PI / f, lo_wl = old / lff, hi_wl = old / hff;
    if (wl > lo_wl) {
      f /= factor;
    } else if (!(wl < hi_wl)) {
      double s = (old / wl - lff) / (hff - lff);
      f = (1.0 - s) * f / factor + s * f;
    }
    p->inv_freq[i] = f;
  }
  return 0;
}

#define SS_INDEX_MAX_BYTES (64u << 20) /* model.safetensors.index.json (real ones: < 1 MiB) */

/* Parse a JSON file of at most max_bytes read through core/file.h (a FIFO, a directory or an
 * oversized file is refused, never blocks). what: "config", "weights index", ... for messages.
 * NULL with err set (*rc: SS_ENOTFOUND, SS_EINVAL, ...). */
static json_t *load_json(const char *what, const char *path, size_t max_bytes, int *rc, char *err,
                         size_t errlen) {
  char *text = NULL, msg[400];
  size_t len = 0;
  json_error_t je;
  *rc = ss_file_read(path, 0, max_bytes, &text, &len, msg, sizeof msg);
  if (*rc != 0) {
    snprintf(err, errlen, "%s %s", what, msg);
    return NULL;
  }
  json_t *root = json_loadb(text, len, 0, &je);
  free(text);
  if (root == NULL) {
    snprintf(err, errlen, "%s %.200s: %s (line %d)", what, path, je.text, je.line);
    *rc = SS_EINVAL;
  }
  return root;
}

static int load_config(llama *p, const char *path, char *err, size_t errlen) {
  int found, rc = SS_EINVAL, gemma;
  json_t *root = load_json("config", path, SS_CONFIG_MAX_BYTES, &rc, err, errlen), *v;
  double eps = 1e-6;
  static const char *const required[] = {"hidden_size", "num_attention_heads",
                                         "num_hidden_layers", "intermediate_size"};
  int *req_out[] = {&p->E, &p->NH, &p->n_layer, &p->I};
  const char *mt, *act;

  if (root == NULL) return rc;
  rc = SS_EINVAL;
  if (!json_is_object(root)) {
    snprintf(err, errlen, "config %.200s: not a JSON object", path);
    goto done;
  }
  v = json_object_get(root, "model_type");
  mt = v != NULL && json_is_string(v) ? json_string_value(v) : NULL;
  if (mt == NULL || (strcmp(mt, "llama") != 0 && strcmp(mt, "qwen2") != 0 &&
                     strcmp(mt, "mistral") != 0 && strcmp(mt, "gemma") != 0)) {
    snprintf(err, errlen,
             "config %.200s: model_type '%.40s' is not supported by kind 'llama' (supported: "
             "llama, qwen2, mistral, gemma)",
             path, mt ? mt : "(missing)");
    goto done;
  }
  snprintf(p->model_type, sizeof p->model_type, "%s", mt);
  gemma = strcmp(mt, "gemma") == 0;
  for (int i = 0; i < 4; i++) {
    if (ss_trunk_cfg_int(root, required[i], path, req_out[i], &found, err, errlen) != 0) goto done;
    if (!found) {
      snprintf(err, errlen, "config %.200s: missing '%s'", path, required[i]);
      goto done;
    }
  }
  p->NKV = p->NH;
  if (ss_trunk_cfg_int(root, "num_key_value_heads", path, &p->NKV, &found, err, errlen) != 0)
    goto done;
  if (p->NH % p->NKV != 0) {
    snprintf(err, errlen,
             "config %.200s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
             path, p->NH, p->NKV);
    goto done;
  }
  if (ss_trunk_cfg_int(root, "head_dim", path, &p->D, &found, err, errlen) != 0) goto done;
  if (!found) {
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
    snprintf(err, errlen, "config %.200s: head_dim %d must be even (rotary embedding)", path,
             p->D);
    goto done;
  }
  p->n_pos = 2048;
  if (ss_trunk_cfg_int(root, "max_position_embeddings", path, &p->n_pos, &found, err, errlen) != 0)
    goto done;
  if (cfg_num(root, "rms_norm_eps", path, &eps, &found, err, errlen) != 0) goto done;
  if (eps >= 1.0) {
    snprintf(err, errlen, "config %.200s: 'rms_norm_eps' must be a number in (0, 1)", path);
    goto done;
  }
  p->eps = (float)eps;
  p->one_plus = gemma;
  /* activation: Gemma reads hidden_activation (HF defaults it to gelu_pytorch_tanh, whatever
   * the older hidden_act says); the others hidden_act (default silu). */
  v = json_object_get(root, gemma ? "hidden_activation" : "hidden_act");
  act = v != NULL && json_is_string(v) ? json_string_value(v) : gemma ? "gelu_pytorch_tanh"
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
  /* biases: Qwen2 q/k/v always, o never; llama/gemma attention_bias on all four; llama
   * mlp_bias; Mistral none. */
  if (strcmp(mt, "qwen2") == 0) {
    p->attn_bias = 1;
    p->o_bias = 0;
    if (cfg_bool(root, "use_sliding_window", 0)) {
      snprintf(err, errlen,
               "config %.200s: qwen2 use_sliding_window=true is not supported (per-layer "
               "windows); set it false",
               path);
      goto done;
    }
  } else if (strcmp(mt, "mistral") == 0) {
    p->attn_bias = p->o_bias = 0;
  } else {
    p->attn_bias = p->o_bias = cfg_bool(root, "attention_bias", 0);
  }
  p->mlp_bias = strcmp(mt, "llama") == 0 ? cfg_bool(root, "mlp_bias", 0) : 0;
  p->window = 0;
  if (strcmp(mt, "mistral") == 0 &&
      ss_trunk_cfg_int(root, "sliding_window", path, &p->window, &found, err, errlen) != 0)
    goto done;
  p->scale = (float)(1.0 / sqrt((double)p->D));
  rc = load_rope(p, root, path, err, errlen);
done:
  json_decref(root);
  return rc;
}

/* ------------------------------------------------------------- weight files ---- */

/* Where the tensors come from: one file, or the shards of an index (opened on first use). */
typedef struct wsrc {
  llama *p;
  json_t *wmap;    /* sharded: the index's weight_map (owned by idx), else NULL */
  json_t *idx;     /* owned */
  char dir[1024];  /* the shards' directory */
  char **names;    /* shard file names, parallel to p->files (sharded only) */
} wsrc;

static int is_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

static int add_file(llama *p, ss_st_file *f) {
  ss_st_file **nf = realloc(p->files, (size_t)(p->n_files + 1) * sizeof *nf);
  if (nf == NULL) return SS_ENOMEM;
  p->files = nf;
  p->files[p->n_files++] = f;
  return 0;
}

/* Resolve PATH: a file, a directory with model.safetensors, or a sharded checkpoint (directory
 * with model.safetensors.index.json, or that index). cfg_dir: the directory for config.json. */
static int wsrc_open(wsrc *w, const char *path, char *cfg_dir, size_t cfg_len, char *err,
                     size_t errlen) {
  char buf[1200], index[1200];
  const char *file = NULL;
  ss_st_file *f;
  int rc;

  index[0] = '\0';
  if (is_dir(path)) {
    snprintf(cfg_dir, cfg_len, "%s/", path);
    snprintf(buf, sizeof buf, "%s/model.safetensors", path);
    if (access(buf, F_OK) == 0) {
      file = buf;
    } else {
      snprintf(index, sizeof index, "%s/model.safetensors.index.json", path);
      if (access(index, F_OK) != 0) {
        snprintf(err, errlen,
                 "weights %.200s: a directory without model.safetensors or "
                 "model.safetensors.index.json",
                 path);
        return SS_ENOTFOUND;
      }
    }
  } else {
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) + 1 : 0;
    snprintf(cfg_dir, cfg_len, "%.*s", dl, path);
    if (ends_with(path, ".index.json"))
      snprintf(index, sizeof index, "%s", path);
    else
      file = path;
  }
  if (file != NULL) {
    if ((rc = ss_st_open(file, &f, err, errlen)) != 0) return rc;
    if (add_file(w->p, f) != 0) {
      ss_st_close(f);
      snprintf(err, errlen, "out of memory");
      return SS_ENOMEM;
    }
    return 0;
  }
  {
    const char *slash = strrchr(index, '/');
    w->idx = load_json("weights index", index, SS_INDEX_MAX_BYTES, &rc, err, errlen);
    if (w->idx == NULL) return rc;
    w->wmap = json_is_object(w->idx) ? json_object_get(w->idx, "weight_map") : NULL;
    if (w->wmap == NULL || !json_is_object(w->wmap)) {
      snprintf(err, errlen, "weights index %.200s: no 'weight_map' object", index);
      return SS_EINVAL;
    }
    snprintf(w->dir, sizeof w->dir, "%.*s", slash ? (int)(slash - index) + 1 : 0, index);
  }
  return 0;
}

/* The tensor called name, or NULL when the checkpoint has none (*rc = 0), or NULL with *rc < 0
 * and a message when its shard cannot be opened. */
static const ss_st_tensor *wsrc_find(wsrc *w, const char *name, int *rc, char *err,
                                     size_t errlen) {
  json_t *fn;
  const char *shard;
  char path[1400];
  ss_st_file *f;
  char **nn;
  *rc = 0;
  if (w->wmap == NULL) return ss_st_find(w->p->files[0], name);
  fn = json_object_get(w->wmap, name);
  if (fn == NULL || !json_is_string(fn)) return NULL;
  shard = json_string_value(fn);
  for (int i = 0; i < w->p->n_files; i++)
    if (strcmp(w->names[i], shard) == 0) return ss_st_find(w->p->files[i], name);
  if (strchr(shard, '/') != NULL || strcmp(shard, "..") == 0) {
    snprintf(err, errlen, "weights index: shard name '%.100s' must be a plain file name", shard);
    *rc = SS_EINVAL;
    return NULL;
  }
  snprintf(path, sizeof path, "%s%s", w->dir, shard);
  if ((*rc = ss_st_open(path, &f, err, errlen)) != 0) return NULL;
  nn = realloc(w->names, (size_t)(w->p->n_files + 1) * sizeof *nn);
  if (nn != NULL) w->names = nn;
  if (nn == NULL || (nn[w->p->n_files] = strdup(shard)) == NULL || add_file(w->p, f) != 0) {
    ss_st_close(f);
    snprintf(err, errlen, "out of memory");
    *rc = SS_ENOMEM;
    return NULL;
  }
  return ss_st_find(f, name);
}

static void wsrc_close(wsrc *w) {
  if (w->names != NULL)
    for (int i = 0; i < w->p->n_files; i++) free(w->names[i]);
  free(w->names);
  json_decref(w->idx);
}

/* ------------------------------------------------------------- weights ---- */

/* The tensors of one layer in a fixed order: ln1, ln2, then per projection weight, bias. */
enum { W_LN1, W_LN2, W_PROJ0, W_PER_LAYER = W_PROJ0 + 2 * N_PROJ };

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
  if (j == W_LN1 || j == W_LN2) {
    snprintf(name, len, "layers.%d.%s.weight", i,
             j == W_LN1 ? "input_layernorm" : "post_attention_layernorm");
    shape[0] = p->E;
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
  if (j == W_LN1) {
    *view = &bk->ln1, *own = &bk->ln1_own;
  } else if (j == W_LN2) {
    *view = &bk->ln2, *own = &bk->ln2_own;
  } else {
    proj *pr = &bk->pr[(j - W_PROJ0) / 2];
    if ((j - W_PROJ0) % 2)
      *view = &pr->b, *own = &pr->b_own;
    else
      *view = &pr->w, *own = &pr->w_own;
  }
}

static int load_weights(llama *p, wsrc *w, const char *path, const char **kind_out,
                        int64_t *n_params, char *err, size_t errlen) {
  char name[256], full[300], missing[400];
  size_t mpos = 0;
  int n_missing = 0, L = p->b - p->a, rc;
  unsigned dts = 0, copied = 0;
  const ss_st_tensor **found;

  snprintf(full, sizeof full, "model.layers.%d.input_layernorm.weight", p->a);
  p->prefix = wsrc_find(w, full, &rc, err, errlen) != NULL ? "model." : "";
  if (rc != 0) return rc;
  found = calloc((size_t)L * W_PER_LAYER, sizeof *found);
  p->blk = calloc((size_t)L, sizeof *p->blk);
  if (found == NULL || p->blk == NULL) {
    free(found);
    snprintf(err, errlen, "weights %.200s: out of memory", path);
    return SS_ENOMEM;
  }
  missing[0] = '\0';
  for (int l = 0; l < L; l++) {
    for (int j = 0; j < W_PER_LAYER; j++) {
      int64_t shape[2];
      int ndim;
      if (tensor_desc(p, p->a + l, j, name, sizeof name, shape, &ndim) != 0) continue;
      snprintf(full, sizeof full, "%s%s", p->prefix, name);
      found[l * W_PER_LAYER + j] = wsrc_find(w, full, &rc, err, errlen);
      if (rc != 0) {
        free(found);
        return rc;
      }
      if (found[l * W_PER_LAYER + j] == NULL && n_missing++ < 6 && mpos < sizeof missing) {
        int wr = snprintf(missing + mpos, sizeof missing - mpos, "%s%s", mpos ? ", " : "", full);
        if (wr > 0) mpos += (size_t)wr;
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
    for (int k = 0; k < N_PROJ; k++) {
      proj_dims(p, k, &p->blk[l].pr[k].in, &p->blk[l].pr[k].out);
      p->blk[l].pr[k].iw = p->blk[l].pr[k].ib = p->blk[l].pr[k].lo.ia = p->blk[l].pr[k].lo.ib = -1;
    }
    p->blk[l].iln1 = p->blk[l].iln2 = -1;
    for (int j = 0; j < W_PER_LAYER; j++) {
      const ss_st_tensor *t = found[l * W_PER_LAYER + j];
      int64_t shape[2];
      int ndim, ok;
      const float **view;
      float **own;
      if (tensor_desc(p, p->a + l, j, name, sizeof name, shape, &ndim) != 0) continue;
      ok = t->ndim == ndim;
      for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
      if (!ok) {
        char got[128], want[128];
        snprintf(err, errlen,
                 "weights %.200s: '%s' has shape %s, expected %s (hidden_size %d, %d heads, %d kv "
                 "heads, head_dim %d, intermediate_size %d from the config)",
                 path, t->name, ss_shape_str(t->shape, t->ndim, got, sizeof got),
                 ss_shape_str(shape, ndim, want, sizeof want), p->E, p->NH, p->NKV, p->D, p->I);
        free(found);
        return SS_EINVAL;
      }
      tensor_slot(&p->blk[l], j, &view, &own);
      if (ss_st_f32(t, view, own) != 0) {
        snprintf(err, errlen, "weights %.200s: out of memory", path);
        free(found);
        return SS_ENOMEM;
      }
      dts |= 1u << t->dtype;
      if (t->dtype == SS_DTYPE_F32 && *own != NULL) copied = 1;
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

/* metadata position_offset: absent -> *pos = -1; else an integer in [0, n_pos]. */
static int position_offset(const ss_model *m, const ss_meta *meta, int *pos, char *err,
                           size_t errlen) {
  const llama *p = m->impl;
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

static int llama_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                       int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  const llama *p = m->impl;
  int pos;
  if (ss_trunk_check_hidden(m, in, p->E, p->n_pos, "max_position_embeddings", out_shape, out_ndim,
                            err, errlen) != 0)
    return SS_EINVAL;
  if (position_offset(m, meta, &pos, err, errlen) != 0) return SS_EINVAL;
  if (pos >= 0 && pos + in->shape[1] > p->n_pos) {
    snprintf(err, errlen,
             "model '%s': position_offset %d + seq %lld exceeds max_position_embeddings %d",
             m->id, pos, (long long)in->shape[1], p->n_pos);
    return SS_EINVAL;
  }
  return 0;
}

static int llama_check_kv(const ss_model *m, const ss_tensor *in, const ss_kv_layer *past,
                          int n_past, char *err, size_t errlen) {
  const llama *p = m->impl;
  char got[128], want[128];
  int64_t ref[4] = {0, 0, 0, 0};
  if (n_past == 0) return 0;
  if (n_past != m->n_kv_layers) {
    snprintf(err, errlen,
             "model '%s' expects %d past_key_values entries (one per trunk layer %d:%d), got %d",
             m->id, m->n_kv_layers, p->a, p->b, n_past);
    return SS_EINVAL;
  }
  for (int i = 0; i < n_past; i++) {
    for (int f = 0; f < 2; f++) {
      const ss_tensor *t = f ? &past[i].value : &past[i].key;
      const char *fname = f ? "value" : "key";
      int ok = t->ndim == 4;
      if (t->dtype != SS_DTYPE_F32) {
        snprintf(err, errlen, "past_key_values[%d].%s must be float32, got %s", i, fname,
                 ss_dtype_name(t->dtype));
        return SS_EINVAL;
      }
      if (i == 0 && f == 0) {
        int64_t ws[4] = {in->ndim == 3 ? in->shape[0] : 1, p->NKV, t->ndim == 4 ? t->shape[2] : 0,
                         p->D};
        for (int d = 0; ok && d < 4; d++) ok = t->shape[d] == ws[d] && t->shape[d] >= 0;
        if (!ok) {
          snprintf(err, errlen,
                   "past_key_values[0].key_shape (layer %d) is %s, expected [%lld,%d,past_len,%d] "
                   "([batch, num_key_value_heads, past_len, head_dim])",
                   p->a, ss_shape_str(t->shape, t->ndim, got, sizeof got), (long long)ws[0],
                   p->NKV, p->D);
          return SS_EINVAL;
        }
        memcpy(ref, t->shape, sizeof ref);
        continue;
      }
      for (int d = 0; ok && d < 4; d++) ok = t->shape[d] == ref[d];
      if (!ok) {
        snprintf(err, errlen,
                 "past_key_values[%d].%s_shape (layer %d) is %s, expected %s like "
                 "past_key_values[0].key_shape",
                 i, fname, p->a + i, ss_shape_str(t->shape, t->ndim, got, sizeof got),
                 ss_shape_str(ref, 4, want, sizeof want));
        return SS_EINVAL;
      }
    }
  }
  if (in->ndim == 3 && ref[2] + in->shape[1] > p->n_pos) {
    snprintf(err, errlen,
             "model '%s': past_len %lld + seq %lld exceeds max_position_embeddings %d", m->id,
             (long long)ref[2], (long long)in->shape[1], p->n_pos);
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
  ss_linear_forward(&p->cc, y, x, pr->w, pr->b, BT, pr->in, pr->out, SS_W_OUT_IN, accumulate);
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
  ss_matmul(SS_MM_N, SS_MM_N, BT, pr->in, pr->out, 1.0f, dy, pr->out, pr->w, pr->in,
            accumulate ? 1.0f : 0.0f, dx, pr->in);
  ss_lora_backward(s, &p->lora, &pr->lo, pr->in, pr->out, dx, dy, x, BT, lt, dlt, mk, xd);
}

static void act_forward(const llama *p, float *out, const float *x, size_t n) {
  if (p->act == ACT_SILU)
    ss_silu_forward(out, x, n);
  else if (p->act == ACT_GELU_TANH)
    ss_gelu_tanh_forward(out, x, n);
  else
    ss_gelu_erf_forward(out, x, n);
}

static void act_backward(const llama *p, float *d, const float *x, size_t n) {
  if (p->act == ACT_SILU)
    ss_silu_backward(d, x, n);
  else if (p->act == ACT_GELU_TANH)
    ss_gelu_tanh_backward(d, x, n);
  else
    ss_gelu_erf_backward(d, x, n);
}

/* ------------------------------------------------------------- the block ---- */

/*
 * One decoder layer, written once (HF LlamaDecoderLayer, eval mode) on the nn/ ops. Where its
 * activations live is the caller's choice: inference keeps one residual stream in place
 * (x == h == y) and reuses scratch for the rest (g == mm); training points x, h, q, k, v, atty,
 * g, u, att and the RMSNorm statistics into the layer's saved record (y is the next layer's x)
 * and uses scratch for ln, mm, K, V (recomputed in backward).
 */
typedef struct block_acts {
  float *x, *h, *y;     /* [BT, E] input, residual after attention, output (may alias) */
  float *ln;            /* [BT, E] norm1(x), then norm2(h) */
  float *rstd1, *rstd2; /* [BT] RMSNorm statistics, or NULL */
  float *q, *k, *v;     /* [BT, Q], [BT, KV], [BT, KV] projections (q, k after rope) */
  float *atty;          /* [BT, Q] attention output, heads side by side */
  float *att;           /* [B, NH, T, P+T] when att_all, else [T, P+T] */
  int att_all;
  float *K, *V;         /* [B, NKV, P+T, D] past + new keys/values */
  float *g, *u, *mm;    /* [BT, I] gate, up, act(gate) * up (mm may alias g) */
  float *lt;            /* [BT, r] LoRA scratch (NULL without adapters) */
  const ss_lora_mask *mk; /* a training forward's LoRA dropout (NULL: none) */
  float *xd;            /* [BT, max(E, Q, I)] dropout scratch (with mk) */
} block_acts;

static ss_attn_dims attn_dims(const llama *p, int B, int T, int P) {
  ss_attn_dims d = {B, T, P, p->NH, p->NKV, p->D, p->scale};
  return d;
}

/* The sequences whose rows a block call stacks: usually one ([B, T] rows at positions pos0..,
 * after P cached ones: past_k, past_v this layer's [B, NKV, P, D] wire bytes, or NULL when
 * P == 0); a batched decode step stacks several, each with its own past and positions (rope and
 * attention per sequence, every projection over all rows at once). K, V: its window. */
typedef struct seq_attn {
  int row0, B, T, P, pos0;
  const void *past_k, *past_v;
  float *K, *V;
} seq_attn;

static void block_forward(const llama *p, const lblock *bk, const block_acts *a, int BT,
                          const seq_attn *seqs, int nseq) {
  const int E = p->E, Q = p->NH * p->D, KV = p->NKV * p->D;
  const size_t cells = (size_t)BT * (size_t)E, ni = (size_t)BT * (size_t)p->I;
  /* attention */
  ss_rmsnorm_forward(a->ln, a->rstd1, a->x, bk->ln1, BT, E, p->eps, p->one_plus);
  proj_forward(p, &bk->pr[P_Q], a->q, a->ln, BT, 0, a->lt, a->mk, a->xd);
  proj_forward(p, &bk->pr[P_K], a->k, a->ln, BT, 0, a->lt, a->mk, a->xd);
  proj_forward(p, &bk->pr[P_V], a->v, a->ln, BT, 0, a->lt, a->mk, a->xd);
  for (int i = 0; i < nseq; i++) {
    const seq_attn *s = &seqs[i];
    float *q = a->q + (size_t)s->row0 * (size_t)Q, *k = a->k + (size_t)s->row0 * (size_t)KV;
    float *v = a->v + (size_t)s->row0 * (size_t)KV;
    ss_attn_dims d = attn_dims(p, s->B, s->T, s->P);
    ss_rope_forward_freq(q, Q, s->B, s->T, p->NH, p->D, s->pos0, p->inv_freq);
    ss_rope_forward_freq(k, KV, s->B, s->T, p->NKV, p->D, s->pos0, p->inv_freq);
    ss_attention_forward_window(a->atty + (size_t)s->row0 * (size_t)Q, Q, a->att, a->att_all, s->K,
                                s->V, q, Q, k, v, KV, s->past_k, s->past_v, &d, p->window);
  }
  if (a->h != a->x) memcpy(a->h, a->x, cells * sizeof(float));
  proj_forward(p, &bk->pr[P_O], a->h, a->atty, BT, 1, a->lt, a->mk, a->xd);
  /* mlp */
  ss_rmsnorm_forward(a->ln, a->rstd2, a->h, bk->ln2, BT, E, p->eps, p->one_plus);
  proj_forward(p, &bk->pr[P_GATE], a->g, a->ln, BT, 0, a->lt, a->mk, a->xd);
  proj_forward(p, &bk->pr[P_UP], a->u, a->ln, BT, 0, a->lt, a->mk, a->xd);
  act_forward(p, a->mm, a->g, ni);
  for (size_t i = 0; i < ni; i++) a->mm[i] *= a->u[i];
  if (a->y != a->h) memcpy(a->y, a->h, cells * sizeof(float));
  proj_forward(p, &bk->pr[P_DOWN], a->y, a->mm, BT, 1, a->lt, a->mk, a->xd);
}

/*
 * The gradient of k_proj's bias (Qwen2, attention_bias), given dk' = dL/d(rotated keys) of one
 * call (positions 0..T-1), added into db [NKV*D]. Mathematically db = sum_t R_t^T dk'_t, and
 * sum_t dk'_t = 0 exactly (per head, a constant added to every key shifts each query's scores
 * by the same amount, which softmax ignores), so db = sum_t (R_t^T - I) dk'_t. Summing that form
 * keeps only the part the rotation makes (small on the slow rotary frequencies) instead of a
 * difference of large terms, whose float32 rounding AdamW, dividing by sqrt(v), would turn into
 * steps of size lr. cos - 1 is computed as -2 sin^2(a/2) (no cancellation).
 */
static int kbias_backward(const llama *p, float *db, const float *dk, int B, int T) {
  const int D = p->D, half = D / 2, KV = p->NKV * D;
  double *acc = calloc((size_t)KV, sizeof *acc);
  if (acc == NULL) return SS_ENOMEM;
  for (int t = 0; t < T; t++) {
    for (int i = 0; i < half; i++) {
      double ang = (double)t * p->inv_freq[i], sh = sin(0.5 * ang);
      double cm1 = -2.0 * sh * sh, sn = sin(ang);
      for (int b = 0; b < B; b++) {
        const float *row = dk + ((size_t)b * (size_t)T + (size_t)t) * (size_t)KV;
        for (int h = 0; h < p->NKV; h++) {
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

/* Backward scratch of one call. */
typedef struct block_grads {
  float *dln, *datty, *dq, *dk, *dv; /* [BT, E], [BT, Q], [BT, Q], [BT, KV], [BT, KV] */
  float *fa, *dmm;                   /* [BT, I] act(g), d(mm) */
  float *datt;                       /* [T, T] */
  float *dlt;                        /* [BT, r] */
  float *dw_sink;                    /* [E]: RMSNorm weight gradients of a frozen trunk */
} block_grads;

/*
 * Backward of block_forward (no past, positions from 0), a: the saved acts (x, h, q, k, v, atty,
 * g, u, att, rstd1, rstd2; ln, mm and lt scratch, refilled here). dres = dL/dy on entry, dL/dx
 * on return (updated in place):
 *   y = h + mm Wd^T            dmm = dres Wd (+ LoRA), dWd += dres^T mm
 *   mm = act(g) * u            du = dmm * act(g),  dg = dmm * u * act'(g)
 *   g, u = n2 Wg^T, n2 Wu^T    dn2 = dg Wg + du Wu;  RMSNorm': dres += d(h)
 *   h = x + atty Wo^T          datty = dres Wo
 *   attention, rope            dq, dk, dv (nn/attention.h), rotated back (nn/rope.h); k_proj's
 *                              bias from the rotated dk (kbias_backward)
 *   q, k, v = n1 W^T + b       dn1 = dq Wq + dk Wk + dv Wv;  RMSNorm': dres += d(x)
 */
static int block_backward(llama *p, int l, const block_acts *a, const block_grads *g,
                          float *dres, int B, int T) {
  const lblock *bk = &p->blk[l];
  proj pk = bk->pr[P_K];
  int rc = 0;
  const int E = p->E, Q = p->NH * p->D, KV = p->NKV * p->D, BT = B * T;
  const size_t ni = (size_t)BT * (size_t)p->I;
  ss_params *s = &p->prm;
  ss_attn_dims d = attn_dims(p, B, T, 0);
  /* mlp */
  act_forward(p, g->fa, a->g, ni);
  for (size_t i = 0; i < ni; i++) a->mm[i] = g->fa[i] * a->u[i];
  proj_backward(p, &bk->pr[P_DOWN], g->dmm, 0, dres, a->mm, BT, a->lt, g->dlt, a->mk, a->xd);
  for (size_t i = 0; i < ni; i++) { /* mm (scratch) becomes du; dmm becomes d(act(g)) */
    float dm = g->dmm[i];
    a->mm[i] = dm * g->fa[i];
    g->dmm[i] = dm * a->u[i];
  }
  act_backward(p, g->dmm, a->g, ni);
  ss_rmsnorm_forward(a->ln, NULL, a->h, bk->ln2, BT, E, p->eps, p->one_plus);
  proj_backward(p, &bk->pr[P_UP], g->dln, 0, a->mm, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  proj_backward(p, &bk->pr[P_GATE], g->dln, 1, g->dmm, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_params_lock(s);
  ss_rmsnorm_backward(dres, bk->iln2 >= 0 ? ss_params_grad(s, bk->iln2) : g->dw_sink, g->dln,
                      a->h, bk->ln2, a->rstd2, BT, E, p->one_plus);
  ss_params_unlock(s);
  /* attention */
  proj_backward(p, &bk->pr[P_O], g->datty, 0, dres, a->atty, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_attention_backward(g->dq, g->dk, g->dv, g->datt, g->datty, Q, a->att, a->q, Q, a->k, a->v,
                        KV, &d);
  if (pk.ib >= 0) { /* k_proj's bias from the rotated-key gradient (kbias_backward) */
    ss_params_lock(s);
    rc = kbias_backward(p, ss_params_grad(s, pk.ib), g->dk, B, T);
    ss_params_unlock(s);
    pk.ib = -1;
  }
  ss_rope_backward_freq(g->dq, Q, B, T, p->NH, p->D, 0, p->inv_freq);
  ss_rope_backward_freq(g->dk, KV, B, T, p->NKV, p->D, 0, p->inv_freq);
  ss_rmsnorm_forward(a->ln, NULL, a->x, bk->ln1, BT, E, p->eps, p->one_plus);
  proj_backward(p, &bk->pr[P_Q], g->dln, 0, g->dq, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  proj_backward(p, &pk, g->dln, 1, g->dk, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  proj_backward(p, &bk->pr[P_V], g->dln, 1, g->dv, a->ln, BT, a->lt, g->dlt, a->mk, a->xd);
  ss_params_lock(s);
  ss_rmsnorm_backward(dres, bk->iln1 >= 0 ? ss_params_grad(s, bk->iln1) : g->dw_sink, g->dln,
                      a->x, bk->ln1, a->rstd1, BT, E, p->one_plus);
  ss_params_unlock(s);
  return rc;
}

/* ------------------------------------------------------------- inference ---- */



static int llama_forward_kv(const ss_model *m, const ss_tensor *in, ss_tensor *out, ss_kv_io *kv,
                            const ss_meta *meta, char *err, size_t errlen) {
  const llama *p = m->impl;
  const int E = p->E, Q = p->NH * p->D, KVd = p->NKV * p->D, NI = p->I, r = p->lora.r;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = p->b - p->a;
  const int want_present = kv != NULL && kv->want_present;
  const ss_kv_layer *past = kv != NULL && kv->n_layers > 0 ? kv->past : NULL;
  const int P = past != NULL ? (int)past[0].key.shape[2] : 0, T = P + S;
  const size_t rows = (size_t)B * (size_t)S, kvn = (size_t)B * (size_t)p->NKV * (size_t)T * p->D;
  float *scratch;
  block_acts a;
  size_t need;
  int pos0;

  if (past != NULL && kv->n_layers != L) {
    snprintf(err, errlen, "model '%s': %d past_key_values entries, expected %d", m->id,
             kv->n_layers, L);
    return SS_EINVAL;
  }
  if (want_present && (kv->present == NULL || kv->n_layers != L)) {
    snprintf(err, errlen, "model '%s': present cache needs %d entries", m->id, L);
    return SS_EINVAL;
  }
  if (position_offset(m, meta, &pos0, err, errlen) != 0) return SS_EINVAL;
  if (pos0 < 0) pos0 = P;
  if (pos0 + S > p->n_pos) {
    snprintf(err, errlen, "model '%s': position %d + seq %d exceeds max_position_embeddings %d",
             m->id, pos0, S, p->n_pos);
    return SS_EINVAL;
  }
  /* ln [rows,E] + q, atty [rows,Q] + k, v [rows,KV] + g, u [rows,I] + lt [rows,r] + att [S,T]
   * (+ K, V scratch) */
  need = rows * ((size_t)E + 2 * (size_t)Q + 2 * (size_t)KVd + 2 * (size_t)NI + (size_t)r) +
         (size_t)S * (size_t)T + (want_present ? 0 : 2 * kvn);
  if ((scratch = malloc(need * sizeof(float))) == NULL) {
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of activations", m->id,
             need * sizeof(float) >> 20);
    return SS_ENOMEM;
  }
  memset(&a, 0, sizeof a);
  a.x = a.h = a.y = out->data; /* the residual stream, updated in place */
  a.ln = scratch;
  a.q = a.ln + rows * (size_t)E;
  a.atty = a.q + rows * (size_t)Q;
  a.k = a.atty + rows * (size_t)Q;
  a.v = a.k + rows * (size_t)KVd;
  a.g = a.mm = a.v + rows * (size_t)KVd;
  a.u = a.g + rows * (size_t)NI;
  a.lt = a.u + rows * (size_t)NI;
  a.att = a.lt + rows * (size_t)r;
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
      free(scratch);
      return SS_ECANCELLED;
    }
    if (want_present) {
      if (ss_trunk_alloc_present(&kv->present[l], B, p->NKV, T, p->D) != 0) {
        ss_trunk_free_present(kv, l + 1);
        free(scratch);
        snprintf(err, errlen, "model '%s': out of memory for the present cache", m->id);
        return SS_ENOMEM;
      }
      a.K = kv->present[l].key.data;
      a.V = kv->present[l].value.data;
    }
    seq_attn s = {0, B, S, P, pos0, P > 0 ? past[l].key.data : NULL,
                  P > 0 ? past[l].value.data : NULL, a.K, a.V};
    block_forward(p, &p->blk[l], &a, B * S, &s, 1);
  }
  free(scratch);
  return 0;
}

/* n one-token decode steps of different sequences (each [1, 1, E], its own past of any length,
 * at position = its past length), one batch through every projection; rope and attention per
 * sequence. Each step's result equals forward_kv alone. */
static int llama_forward_kv_batch(const ss_model *m, int n, const ss_tensor *in, ss_tensor *out,
                                  ss_kv_io *kv, char *err, size_t errlen) {
  const llama *p = m->impl;
  const int E = p->E, Q = p->NH * p->D, KVd = p->NKV * p->D, NI = p->I, r = p->lora.r;
  const int L = p->b - p->a;
  size_t maxT = 1, kvscratch = 0;
  for (int i = 0; i < n; i++) {
    int P = kv[i].past ? (int)kv[i].past[0].key.shape[2] : 0;
    if (in[i].ndim != 3 || in[i].shape[0] != 1 || in[i].shape[1] != 1 || P + 1 > p->n_pos) {
      snprintf(err, errlen, "model '%s': a batched decode step is one token [1,1,%d] within "
               "max_position_embeddings", m->id, E);
      return SS_EINVAL;
    }
    if ((size_t)P + 1 > maxT) maxT = (size_t)P + 1;
    if (!kv[i].want_present) kvscratch += 2 * (size_t)KVd * (size_t)(P + 1);
  }
  const size_t rows = (size_t)n;
  /* x, ln [rows,E]; q, atty [rows,Q]; k, v [rows,KV]; g, u [rows,I]; lt [rows,r]; att [maxT] */
  size_t need = rows * (2 * (size_t)E + 2 * (size_t)Q + 2 * (size_t)KVd + 2 * (size_t)NI +
                        (size_t)r) + maxT + kvscratch;
  float *scratch = malloc(need * sizeof(float));
  seq_attn *seqs = calloc((size_t)n, sizeof *seqs);
  if (!scratch || !seqs) {
    free(scratch);
    free(seqs);
    snprintf(err, errlen, "model '%s': out of memory for a batched decode step", m->id);
    return SS_ENOMEM;
  }
  block_acts a;
  memset(&a, 0, sizeof a);
  a.x = a.h = a.y = scratch;
  a.ln = a.x + rows * (size_t)E;
  a.q = a.ln + rows * (size_t)E;
  a.atty = a.q + rows * (size_t)Q;
  a.k = a.atty + rows * (size_t)Q;
  a.v = a.k + rows * (size_t)KVd;
  a.g = a.mm = a.v + rows * (size_t)KVd;
  a.u = a.g + rows * (size_t)NI;
  a.lt = r ? a.u + rows * (size_t)NI : NULL;
  a.att = a.u + rows * (size_t)NI + rows * (size_t)r;
  float *kvs = a.att + maxT;
  for (int i = 0; i < n; i++) {
    memcpy(a.x + (size_t)i * (size_t)E, in[i].data, (size_t)E * sizeof(float));
    if (kv[i].want_present) memset(kv[i].present, 0, (size_t)L * sizeof *kv[i].present);
  }
  int rc = 0;
  float **win = calloc(2 * (size_t)n, sizeof *win);
  if (!win) rc = SS_ENOMEM;
  for (int l = 0; l < L && rc == 0; l++) {
    if ((rc = ss_trunk_batch_windows(kv, n, l, p->NKV, p->D, kvs, win, win + n)) != 0) break;
    for (int i = 0; i < n; i++) {
      int P = ss_trunk_past_len(&kv[i]);
      seqs[i] = (seq_attn){i, 1, 1, P, P, P ? kv[i].past[l].key.data : NULL,
                           P ? kv[i].past[l].value.data : NULL, win[i], win[n + i]};
    }
    block_forward(p, &p->blk[l], &a, n, seqs, n);
  }
  free(win);
  rc = ss_trunk_batch_finish(m, rc, n, L, E, a.x, out, kv, err, errlen);
  free(seqs);
  free(scratch);
  return rc;
}

static int llama_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                         const ss_meta *meta, char *err, size_t errlen) {
  return llama_forward_kv(m, in, out, NULL, meta, err, errlen);
}

/* ------------------------------------------------------------- training ---- */

/* The widest projection input (the LoRA dropout scratch's row): hidden, heads x head_dim or
 * intermediate. */
static size_t lora_max_in(const llama *p) {
  size_t m = (size_t)p->E, q = (size_t)p->NH * (size_t)p->D;
  if (q > m) m = q;
  if ((size_t)p->I > m) m = (size_t)p->I;
  return m;
}

/*
 * Training (no KV cache, positions from 0). Per layer, forward_train keeps in one allocation:
 *   x, h [BT, E]; q, atty [BT, Q]; k, v [BT, KV]; g, u [BT, I]; rstd1, rstd2 [BT];
 *   att [B, NH, S, S]
 * norm1(x), norm2(h), act(g) * u and the LoRA x A^T are recomputed in backward.
 */
typedef struct llama_saved {
  int B, S;
  ss_lora_mask mk;  /* LoRA dropout of this forward (p 0: none) */
  size_t per_layer; /* floats per layer */
  float *buf;       /* L x per_layer */
} llama_saved;

static size_t saved_per_layer(const llama *p, int B, int S) {
  size_t rows = (size_t)B * (size_t)S, Q = (size_t)p->NH * p->D, KV = (size_t)p->NKV * p->D;
  return rows * (2 * (size_t)p->E + 2 * Q + 2 * KV + 2 * (size_t)p->I + 2) +
         (size_t)B * (size_t)p->NH * (size_t)S * (size_t)S;
}

static void saved_layer(const llama *p, const llama_saved *sv, int l, float *out, block_acts *a) {
  size_t rows = (size_t)sv->B * (size_t)sv->S, E = (size_t)p->E;
  size_t Q = (size_t)p->NH * p->D, KV = (size_t)p->NKV * p->D, I = (size_t)p->I;
  float *q = sv->buf + (size_t)l * sv->per_layer;
  a->x = q;
  a->h = a->x + rows * E;
  a->q = a->h + rows * E;
  a->atty = a->q + rows * Q;
  a->k = a->atty + rows * Q;
  a->v = a->k + rows * KV;
  a->g = a->v + rows * KV;
  a->u = a->g + rows * I;
  a->rstd1 = a->u + rows * I;
  a->rstd2 = a->rstd1 + rows;
  a->att = a->rstd2 + rows;
  a->att_all = 1;
  a->y = l + 1 < p->b - p->a ? q + sv->per_layer : out;
}

static int llama_forward_train(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                               const char *forward_id, void **saved, size_t *saved_bytes,
                               char *err, size_t errlen) {
  const llama *p = m->impl;
  const int E = p->E, NI = p->I, KVd = p->NKV * p->D, r = p->lora.r;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = p->b - p->a;
  const size_t rows = (size_t)B * (size_t)S;
  size_t per = saved_per_layer(p, B, S), total = 0;
  llama_saved *sv = NULL;
  float *scratch = NULL;
  block_acts a;

  *saved = NULL;
  *saved_bytes = 0;
  /* scratch: ln [BT, E], mm [BT, I], K and V [B, NKV, S, D], lt [BT, r], xd [BT, maxin] */
  const size_t maxin = p->lora.dropout > 0.0f ? lora_max_in(p) : 0;
  if (__builtin_mul_overflow(per, (size_t)L * sizeof(float), &total) ||
      (sv = malloc(sizeof *sv + total)) == NULL ||
      (scratch = malloc(rows * ((size_t)E + (size_t)NI + 2 * (size_t)KVd + (size_t)r + maxin) *
                        sizeof(float))) == NULL) {
    free(sv);
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of saved activations", m->id,
             total >> 20);
    return SS_ENOMEM;
  }
  sv->B = B;
  sv->S = S;
  sv->per_layer = per;
  sv->buf = (float *)(sv + 1);
  memset(&a, 0, sizeof a);
  a.ln = scratch;
  a.mm = a.ln + rows * (size_t)E;
  a.K = a.mm + rows * (size_t)NI;
  a.V = a.K + rows * (size_t)KVd;
  a.lt = a.V + rows * (size_t)KVd;
  a.xd = a.lt + rows * (size_t)r;
  sv->mk.p = p->lora.dropout;
  sv->mk.key = p->lora.dropout > 0.0f ? ss_lora_mask_key(p->lora.seed, forward_id) : 0;
  a.mk = sv->mk.p > 0.0f ? &sv->mk : NULL;
  memcpy(sv->buf, in->data, rows * (size_t)E * sizeof(float)); /* layer 0's x */
  for (int l = 0; l < L; l++) {
    saved_layer(p, sv, l, out->data, &a);
    seq_attn s = {0, B, S, 0, 0, NULL, NULL, a.K, a.V};
    block_forward(p, &p->blk[l], &a, B * S, &s, 1);
  }
  free(scratch);
  *saved = sv;
  *saved_bytes = sizeof *sv + total;
  return 0;
}

static int llama_backward(ss_model *m, const void *saved, const ss_tensor *grad_out,
                          ss_tensor *grad_in, char *err, size_t errlen) {
  llama *p = m->impl;
  const llama_saved *sv = saved;
  const int E = p->E, Q = p->NH * p->D, KVd = p->NKV * p->D, NI = p->I, r = p->lora.r;
  const int B = sv->B, S = sv->S, L = p->b - p->a;
  const size_t rows = (size_t)B * (size_t)S;
  float *dres = grad_in->data, *scratch = NULL;
  block_acts a;
  block_grads g;
  size_t need;

  if (grad_out->numel != rows * (size_t)E || grad_in->numel != rows * (size_t)E) {
    snprintf(err, errlen,
             "model '%s': backward got grad_output of %zu values and grad_input of %zu, expected "
             "%zu for [%d, %d, %d]",
             m->id, grad_out->numel, grad_in->numel, rows * (size_t)E, B, S, E);
    return SS_EINVAL;
  }
  /* ln, dln [R,E]; datty, dq [R,Q]; dk, dv [R,KV]; mm, fa, dmm [R,I]; lt, dlt [R,r]; datt [S,S];
   * dw_sink [E] */
  need = rows * (2 * (size_t)E + 2 * (size_t)Q + 2 * (size_t)KVd + 3 * (size_t)NI +
                 2 * (size_t)r + (sv->mk.p > 0.0f ? lora_max_in(p) : 0)) +
         (size_t)S * (size_t)S + (size_t)E;
  if (ss_params_grads(&p->prm) != 0 || (scratch = malloc(need * sizeof(float))) == NULL) {
    snprintf(err, errlen, "model '%s': out of memory for backward", m->id);
    return SS_ENOMEM;
  }
  memset(&a, 0, sizeof a);
  a.ln = scratch;
  g.dln = a.ln + rows * (size_t)E;
  g.datty = g.dln + rows * (size_t)E;
  g.dq = g.datty + rows * (size_t)Q;
  g.dk = g.dq + rows * (size_t)Q;
  g.dv = g.dk + rows * (size_t)KVd;
  a.mm = g.dv + rows * (size_t)KVd;
  g.fa = a.mm + rows * (size_t)NI;
  g.dmm = g.fa + rows * (size_t)NI;
  a.lt = g.dmm + rows * (size_t)NI;
  g.dlt = a.lt + rows * (size_t)r;
  g.datt = g.dlt + rows * (size_t)r;
  g.dw_sink = g.datt + (size_t)S * (size_t)S;
  memset(g.dw_sink, 0, (size_t)E * sizeof(float));
  a.xd = g.dw_sink + E;                    /* [BT, maxin] with dropout */
  a.mk = sv->mk.p > 0.0f ? &sv->mk : NULL; /* the forward's masks */
  memmove(dres, grad_out->data, rows * (size_t)E * sizeof(float));
  for (int l = L - 1; l >= 0; l--) {
    float *lt = a.lt, *mm = a.mm, *ln = a.ln;
    saved_layer(p, sv, l, NULL, &a);
    a.lt = lt, a.mm = mm, a.ln = ln; /* (saved_layer leaves mk, xd alone) */
    if (block_backward(p, l, &a, &g, dres, B, S) != 0) {
      free(scratch);
      snprintf(err, errlen, "model '%s': out of memory for backward", m->id);
      return SS_ENOMEM;
    }
  }
  free(scratch);
  return 0;
}

static int llama_step(ss_model *m, const ss_optim *opt, char *err, size_t errlen) {
  llama *p = m->impl;
  return ss_params_step(&p->prm, opt, m->id, err, errlen); /* all or nothing (nn/optim.c) */
}

static void llama_free_saved(const ss_model *m, void *saved) {
  (void)m;
  free(saved);
}

/* ------------------------------------------------------------- LoRA ---- */

/* The PEFT key of layer's projection k (a GPT-style causal LM: base_model.model.model.). */
static void lora_key(int layer, int k, char *name, size_t len) {
  snprintf(name, len, "base_model.model.model.layers.%d.%s", layer, proj_path[k]);
}

static int llama_save(const ss_model *m, const char *path, char *err, size_t errlen) {
  const llama *p = m->impl;
  if (p->lora.r == 0) return ss_params_save(&p->prm, path, err, errlen);
  return ss_lora_save(&p->prm, &p->lora, proj_short, N_PROJ, p->a, p->b, 0, path, err, errlen);
}

/* Adapters: A (PEFT init, seeded) and B (zero) for every target of every layer, or read from
 * adapter_dir/adapter_model.safetensors. */
static int lora_setup(llama *p, const char *adapter_dir, char *err, size_t errlen) {
  char key[256], path[1200];
  uint64_t st = 0x5EEDull;
  ss_st_file *ad = NULL;
  int rc = 0;
  if (adapter_dir != NULL &&
      (rc = ss_lora_open(adapter_dir, &ad, path, sizeof path, err, errlen)) != 0)
    return rc;
  for (int l = 0; l < p->b - p->a && rc == 0; l++) {
    for (int k = 0; k < N_PROJ && rc == 0; k++) {
      proj *pr = &p->blk[l].pr[k];
      if (!(p->lora.targets & (1u << k))) continue;
      lora_key(p->a + l, k, key, sizeof key);
      pr->lo.unit = (p->a + l) * 16 + k; /* dropout masks: lora.h */
      if (ad != NULL)
        rc = ss_lora_load(&pr->lo, ad, path, key, p->lora.r, pr->in, pr->out, err, errlen);
      else if ((rc = ss_lora_init(&pr->lo, p->lora.r, pr->in, pr->out, &st)) != 0)
        snprintf(err, errlen, "out of memory");
    }
  }
  ss_st_close(ad); /* the adapters are copies */
  return rc;
}

/* ------------------------------------------------------------- parameters ---- */

/* Full fine-tuning: every trunk tensor under its loaded name. LoRA: the adapters only. */
static int llama_params(llama *p) {
  int L = p->b - p->a;
  char name[256], full[300];
  ss_params *s = &p->prm;
  if (ss_params_init(s, (size_t)L * W_PER_LAYER) != 0) return SS_ENOMEM;
  for (int l = 0; l < L; l++) {
    lblock *bk = &p->blk[l];
    if (p->lora.r > 0) {
      for (int k = 0; k < N_PROJ; k++) {
        proj *pr = &bk->pr[k];
        if (pr->lo.a == NULL) continue;
        lora_key(p->a + l, k, name, sizeof name);
        if (ss_lora_add_params(s, &pr->lo, name, p->lora.r, pr->in, pr->out) != 0)
          return SS_ENOMEM;
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
      if (j == W_LN1)
        bk->iln1 = idx;
      else if (j == W_LN2)
        bk->iln2 = idx;
      else if ((j - W_PROJ0) % 2)
        bk->pr[(j - W_PROJ0) / 2].ib = idx;
      else
        bk->pr[(j - W_PROJ0) / 2].iw = idx;
    }
  }
  return 0;
}

static void llama_destroy(ss_model *m) {
  llama_free(m->impl);
  m->impl = NULL;
}

static const ss_model_ops llama_ops = {.check = llama_check,
                                       .forward = llama_forward,
                                       .destroy = llama_destroy,
                                       .check_kv = llama_check_kv,
                                       .forward_kv_batch = llama_forward_kv_batch,
                                       .forward_kv = llama_forward_kv,
                                       .forward_train = llama_forward_train,
                                       .backward = llama_backward,
                                       .step = llama_step,
                                       .free_saved = llama_free_saved,
                                       .save = llama_save};

/* ------------------------------------------------------------- constructor ---- */

int ss_model_llama_new(ss_model *m, const char *const *params, size_t n, char *err,
                       size_t errlen) {
  const char *weights = NULL, *config = NULL, *layers = ":", *dt = "f32";
  const char *lrank = NULL, *lalpha = NULL, *ltargets = NULL, *adapter = NULL;
  const char *ldrop = NULL, *lseed = NULL;
  char cfg_buf[1200], cfg_dir[1100], msg[1024];
  int rc;
  int64_t n_params = 0;
  llama *p;
  wsrc w;

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
               "model '%s': unknown parameter '%s' for kind 'llama' (known: weights, config, "
               "layers, lora_rank, lora_alpha, lora_targets, adapter, lora_dropout, "
               "lora_seed)",
               m->id, k);
      return SS_EINVAL;
    }
  }
  if (weights == NULL || weights[0] == '\0') {
    snprintf(err, errlen,
             "model '%s': kind 'llama' needs weights=PATH (a Hugging Face model.safetensors, "
             "its directory or a sharded checkpoint's index)",
             m->id);
    return SS_EINVAL;
  }
  if ((p = calloc(1, sizeof *p)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  memset(&w, 0, sizeof w);
  w.p = p;
  msg[0] = '\0';
  rc = wsrc_open(&w, weights, cfg_dir, sizeof cfg_dir, msg, sizeof msg);
  if (rc == 0 && (config == NULL || config[0] == '\0')) {
    snprintf(cfg_buf, sizeof cfg_buf, "%sconfig.json", cfg_dir);
    config = cfg_buf;
  }
  if (rc == 0) rc = load_config(p, config, msg, sizeof msg);
  if (rc == 0) rc = ss_trunk_layers(layers, p->n_layer, &p->a, &p->b, msg, sizeof msg);
  if (rc == 0) rc = load_weights(p, &w, weights, &dt, &n_params, msg, sizeof msg);
  /* LoRA (PEFT's llama default targets: q_proj, v_proj) */
  if (rc == 0)
    rc = ss_lora_settings(lrank, lalpha, ltargets, adapter, ldrop, lseed, proj_short, N_PROJ,
                          (1u << P_Q) | (1u << P_V), &p->lora, msg, sizeof msg);
  if (rc == 0 && p->lora.r > 0) rc = lora_setup(p, adapter, msg, sizeof msg);
  if (rc == 0 && llama_params(p) != 0) {
    snprintf(msg, sizeof msg, "out of memory");
    rc = SS_ENOMEM;
  }
  /* optimizer state: in the weights file (full fine-tuning checkpoints) or the adapter's
   * directory (optimizer.safetensors) */
  if (rc == 0 && p->lora.r == 0)
    rc = ss_params_restore(&p->prm, p->files[0], msg, sizeof msg);
  else if (rc == 0 && adapter != NULL)
    rc = ss_lora_restore(&p->prm, adapter, msg, sizeof msg);
  wsrc_close(&w);
  if (rc != 0) {
    snprintf(err, errlen, "model '%s': %s", m->id, msg);
    llama_free(p);
    return rc;
  }
  m->kind = "llama";
  m->ops = &llama_ops;
  p->cc = (ss_compute){(ss_mm_dtype)m->compute, m};
  m->impl = p;
  m->weights = p->files[0];
  m->exec = SS_EXEC_WORKER;
  m->echo = 0;
  m->n_kv_layers = p->b - p->a;
  m->n_params = n_params;
  m->weight_bytes = (size_t)n_params * sizeof(float);
  {
    char lora[64] = "";
    if (p->lora.r > 0) snprintf(lora, sizeof lora, ", LoRA r %d", p->lora.r);
    snprintf(m->describe, sizeof m->describe,
             "llama (%s) layers %d:%d of %d (hidden %d, %d/%d heads), %.1fM params, %s%s",
             p->model_type, p->a, p->b, p->n_layer, p->E, p->NH, p->NKV,
             (double)n_params / 1e6, dt, lora);
  }
  return 0;
}
