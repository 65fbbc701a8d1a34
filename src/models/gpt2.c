/*
 * gpt2.c — the "gpt2" model kind: the trunk of a split GPT-2, i.e. transformer blocks [a, b) of
 * a Hugging Face GPT-2 checkpoint, with an attention (KV) cache. Input and output are hidden
 * states [batch, seq, n_embd] float32; the client's bottom has already added the positions.
 *
 * Spec: ID=gpt2,weights=model.safetensors[,config=config.json][,layers=A:B]
 *   config defaults to config.json next to the weights; layers to 0:n_layer ("A:" and ":B" too).
 *
 * Weights: keys h.{i}.ln_1.{weight,bias}, h.{i}.attn.c_attn.{weight,bias},
 * h.{i}.attn.c_proj.{weight,bias}, h.{i}.ln_2.{weight,bias}, h.{i}.mlp.c_fc.{weight,bias},
 * h.{i}.mlp.c_proj.{weight,bias}, optionally under "transformer."; F32/F16/BF16. Linear layers
 * are HF Conv1D: W is [in, out] and y = x W + b, i.e. sgemm(RowMajor, NoTrans, NoTrans).
 * Only the trunk's tensors are touched. F32 tensors are used in place from the mmap (one copy in
 * the page cache, shared by every worker) when 4-byte aligned, else copied once at load;
 * F16/BF16 are converted to f32 once at load.
 *
 * Block (HF GPT2Block, eval mode):  h = x + c_proj(attn(ln_1(x)));  y = h + mlp(ln_2(h))
 *   attn: q,k,v = split(ln_1(x) c_attn); per head softmax(q k^T / sqrt(d) + causal) v
 *   mlp:  c_proj(gelu_new(c_fc(.))),  gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
 * The residual stream lives in out->data; c_proj results are added to it with sgemm beta = 1.
 *
 * KV cache: past[l].key/value [batch, heads, P, head_dim] (layer a + l). Keys/values of the
 * whole window [0, P + seq) are assembled per layer in one buffer K/V [batch, heads, P+seq, d];
 * when the caller wants the present cache that buffer *is* present[l] (malloc'd here, owned by
 * the caller), else it is scratch. A new token at absolute position P + i attends to keys
 * 0..P+i.
 *
 * Thread: created on the main thread, then shared by all workers; check() and check_kv() on the
 * loop thread; forward()/forward_kv() on workers, reentrant (all scratch is malloc'd per call).
 * Training (see "training" below): forward_train/backward under the model's read lock (backward
 * calls serialize only their gradient sums, on gmu); step() under the write lock is the only
 * writer of weights, copying mmap views on first write; save() writes the trunk's layers only,
 * under their original names.
 */
#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "models/linear.h"
#include "models/vmath.h"
#include "models/model.h"
#include "models/optim.h"
#include "models/safetensors.h"

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

typedef struct gpt2_block {
  const float *t[T_PER_LAYER]; /* float32 views: into the mmap or into own[] */
  float *own[T_PER_LAYER];     /* converted / realigned copies (NULL when mmapped) */
  float attn_scale;            /* 1/sqrt(head_dim) (and / (layer+1) when configured) */
} gpt2_block;

typedef struct gpt2 {
  int n_embd, n_head, head_dim, n_inner, n_layer, n_pos;
  int a, b; /* trunk layers [a, b) */
  float eps;
  gpt2_block *blk;    /* b - a blocks */
  ss_st_file *st;     /* keeps the mmap alive */
  const char *prefix; /* static: "" or "transformer." as in the loaded file (save writes it back) */
  /* training: one param per tensor (layer-major, T_PER_LAYER each), gradients summed under gmu
   * by concurrent backward calls; optimizer steps taken so far. */
  ss_param *prm;
  uv_mutex_t gmu;
  int64_t t;
} gpt2;

static void gpt2_free(gpt2 *p) {
  if (p == NULL) return;
  if (p->blk != NULL)
    for (int l = 0; l < p->b - p->a; l++)
      for (int k = 0; k < T_PER_LAYER; k++) free(p->blk[l].own[k]);
  if (p->prm != NULL) {
    for (int i = 0; i < (p->b - p->a) * T_PER_LAYER; i++) ss_param_free_state(&p->prm[i]);
    uv_mutex_destroy(&p->gmu);
    free(p->prm);
  }
  free(p->blk);
  ss_st_close(p->st);
  free(p);
}

/* ------------------------------------------------------------- config.json ---- */

/* A positive integer field; *found = 0 when absent (or null). */
static int cfg_int(json_t *root, const char *key, const char *path, int *out, int *found, char *err,
                   size_t errlen) {
  json_t *v = json_object_get(root, key);
  *found = 0;
  if (v == NULL || json_is_null(v)) return 0;
  if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT_MAX / 8) {
    snprintf(err, errlen, "config %.200s: '%s' must be a positive integer", path, key);
    return SS_EINVAL;
  }
  *out = (int)json_integer_value(v);
  *found = 1;
  return 0;
}

static int load_config(gpt2 *p, const char *path, int *scale_weights, int *scale_by_layer,
                       char *err, size_t errlen) {
  json_error_t je;
  char *text = NULL; /* hardening: a regular file of at most 1 MiB (a FIFO would hang start-up) */
  size_t tlen = 0;
  int frc = ss_read_small_file(path, SS_CONFIG_MAX_BYTES, &text, &tlen, err, errlen);
  if (frc != 0) return frc == SS_EIO && access(path, F_OK) != 0 ? SS_ENOTFOUND : frc;
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
    if (cfg_int(root, required[i], path, req_out[i], &found, err, errlen) != 0) goto done;
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
  if (cfg_int(root, "n_positions", path, &p->n_pos, &found, err, errlen) != 0) goto done;
  if (!found && cfg_int(root, "n_ctx", path, &p->n_pos, &found, err, errlen) != 0) goto done;
  p->n_inner = 4 * p->n_embd;
  if (cfg_int(root, "n_inner", path, &p->n_inner, &found, err, errlen) != 0) goto done;
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

/* "A:B", "A:", ":B" or "" (all). */
static int parse_layers(const char *s, int n_layer, int *a, int *b, char *err, size_t errlen) {
  const char *colon = strchr(s, ':');
  char *end;
  long la = 0, lb = n_layer;
  if (colon == NULL) {
    snprintf(err, errlen, "layers '%s' must look like A:B (transformer blocks A..B-1)", s);
    return SS_EINVAL;
  }
  if (colon != s) {
    errno = 0;
    la = strtol(s, &end, 10);
    if (end != colon || errno != 0) {
      snprintf(err, errlen, "layers '%s' must look like A:B with integers A, B", s);
      return SS_EINVAL;
    }
  }
  if (colon[1] != '\0') {
    errno = 0;
    lb = strtol(colon + 1, &end, 10);
    if (*end != '\0' || errno != 0) {
      snprintf(err, errlen, "layers '%s' must look like A:B with integers A, B", s);
      return SS_EINVAL;
    }
  }
  if (la < 0 || lb > n_layer || la >= lb) {
    snprintf(err, errlen,
             "layers %ld:%ld outside 0:%d or empty (the checkpoint has %d layers; "
             "need 0 <= A < B <= %d)",
             la, lb, n_layer, n_layer, n_layer);
    return SS_ERANGE;
  }
  *a = (int)la;
  *b = (int)lb;
  return 0;
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
  char sbuf[128];
  (void)meta;
  if (in->ndim != 3) {
    snprintf(err, errlen, "model '%s' expects hidden states [batch, seq, %d] (3 dims), got %s",
             m->id, p->n_embd, ss_shape_str(in->shape, in->ndim, sbuf, sizeof sbuf));
    return SS_EINVAL;
  }
  if (in->shape[2] != p->n_embd) {
    snprintf(err, errlen, "model '%s' expects hidden size %d, got %lld", m->id, p->n_embd,
             (long long)in->shape[2]);
    return SS_EINVAL;
  }
  if (in->shape[0] < 1 || in->shape[1] < 1) {
    snprintf(err, errlen, "model '%s' expects batch >= 1 and seq >= 1, got %s", m->id,
             ss_shape_str(in->shape, in->ndim, sbuf, sizeof sbuf));
    return SS_EINVAL;
  }
  if (in->shape[1] > p->n_pos) {
    snprintf(err, errlen, "model '%s': seq %lld exceeds n_positions %d", m->id,
             (long long)in->shape[1], p->n_pos);
    return SS_EINVAL;
  }
  if (in->shape[0] * in->shape[1] > INT_MAX / 4) {
    snprintf(err, errlen, "model '%s': batch x seq %lld is too large for one call", m->id,
             (long long)(in->shape[0] * in->shape[1]));
    return SS_EINVAL;
  }
  memcpy(out_shape, in->shape, 3 * sizeof(int64_t));
  *out_ndim = 3;
  return 0;
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

/* ------------------------------------------------------------- forward ---- */

/* mean_out, rstd_out: per-row statistics for backward (training), or NULL. */
static void layer_norm(const float *x, float *y, size_t rows, int n, const float *g, const float *b,
                       float eps, float *mean_out, float *rstd_out) {
  /* Rows are independent: split over the worker's intra-op threads for a prefill. */
#pragma omp parallel for schedule(static) if (rows >= 32)
  for (size_t r = 0; r < rows; r++) {
    const float *xr = x + r * (size_t)n;
    float *yr = y + r * (size_t)n;
    double mean = 0.0, var = 0.0;
    float inv, mf;
    for (int j = 0; j < n; j++) mean += xr[j];
    mean /= n;
    for (int j = 0; j < n; j++) {
      double d = xr[j] - mean;
      var += d * d;
    }
    var /= n;
    inv = (float)(1.0 / sqrt(var + (double)eps));
    mf = (float)mean;
    if (mean_out != NULL) {
      mean_out[r] = mf;
      rstd_out[r] = inv;
    }
    for (int j = 0; j < n; j++) yr[j] = (xr[j] - mf) * inv * g[j] + b[j];
  }
}

/* y[r][:] = bias (so that a following sgemm with beta = 1 adds x W on top) or += bias. */
static void add_rows(float *y, size_t rows, int n, const float *bias) {
  for (size_t r = 0; r < rows; r++) {
    float *yr = y + r * (size_t)n;
    for (int j = 0; j < n; j++) yr[j] += bias[j];
  }
}

static void fill_rows(float *y, size_t rows, int n, const float *bias) {
  for (size_t r = 0; r < rows; r++) memcpy(y + r * (size_t)n, bias, (size_t)n * sizeof(float));
}

/* Causal softmax of one (batch, head) score block [S, T] in place; query i sees keys 0..P+i. */
static void causal_softmax(float *s, int S, int T, int P, float scale) {
  for (int i = 0; i < S; i++) {
    float *row = s + (size_t)i * (size_t)T, mx = -INFINITY, sum = 0.0f, inv;
    int n = P + i + 1;
    for (int j = 0; j < n; j++) {
      row[j] *= scale;
      if (row[j] > mx) mx = row[j];
    }
    for (int j = 0; j < n; j++) row[j] -= mx;
    ss_vexp(row, row, (size_t)n);
    for (int j = 0; j < n; j++) sum += row[j];
    inv = 1.0f / sum;
    for (int j = 0; j < n; j++) row[j] *= inv;
    for (int j = n; j < T; j++) row[j] = 0.0f;
  }
}

static void free_present(ss_kv_io *kv, int n) {
  for (int l = 0; l < n; l++) {
    free(kv->present[l].key.data);
    free(kv->present[l].value.data);
    memset(&kv->present[l], 0, sizeof kv->present[l]);
  }
}

static int gpt2_forward_kv(const ss_model *m, const ss_tensor *in, ss_tensor *out, ss_kv_io *kv,
                           const ss_meta *meta, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  const int E = p->n_embd, H = p->n_head, D = p->head_dim, NI = p->n_inner;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = p->b - p->a;
  const int want_present = kv != NULL && kv->want_present;
  const ss_kv_layer *past = kv != NULL && kv->n_layers > 0 ? kv->past : NULL;
  const int P = past != NULL ? (int)past[0].key.shape[2] : 0, T = P + S;
  const size_t rows = (size_t)B * (size_t)S, kvn = (size_t)B * H * (size_t)T * D;
  float *h = out->data, *scratch, *ln, *qkv, *att, *fc, *sc, *Ks = NULL, *Vs = NULL;
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
  need = rows * (5 * (size_t)E + (size_t)NI) + (size_t)S * (size_t)T + (want_present ? 0 : 2 * kvn);
  if ((scratch = malloc(need * sizeof(float))) == NULL) {
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of activations", m->id,
             need * sizeof(float) >> 20);
    return SS_ENOMEM;
  }
  ln = scratch;
  qkv = ln + rows * (size_t)E;
  att = qkv + rows * 3 * (size_t)E;
  fc = att + rows * (size_t)E;
  sc = fc + rows * (size_t)NI;
  if (!want_present) {
    Ks = sc + (size_t)S * (size_t)T;
    Vs = Ks + kvn;
  } else {
    memset(kv->present, 0, (size_t)L * sizeof *kv->present);
  }
  if ((void *)h != in->data) memmove(h, in->data, rows * (size_t)E * sizeof(float));

  for (int l = 0; l < L; l++) {
    const gpt2_block *bk = &p->blk[l];
    float *K = Ks, *V = Vs;
    if (ss_meta_cancelled(meta)) { /* nobody waits for the result (hardening: cancel check) */
      if (want_present) free_present(kv, l);
      free(scratch);
      return SS_ECANCELLED;
    }
    if (want_present) {
      ss_kv_layer *pr = &kv->present[l];
      K = malloc(kvn * sizeof(float));
      V = malloc(kvn * sizeof(float));
      pr->key.data = K;
      pr->value.data = V;
      if (K == NULL || V == NULL) {
        free_present(kv, l + 1);
        free(scratch);
        snprintf(err, errlen, "model '%s': out of memory for the present cache", m->id);
        return SS_ENOMEM;
      }
      for (int f = 0; f < 2; f++) {
        ss_tensor *t = f ? &pr->value : &pr->key;
        t->dtype = SS_DTYPE_F32;
        t->ndim = 4;
        t->shape[0] = B;
        t->shape[1] = H;
        t->shape[2] = T;
        t->shape[3] = D;
        t->numel = kvn;
        t->nbytes = kvn * sizeof(float);
      }
    }
    /* attention */
    layer_norm(h, ln, rows, E, bk->t[T_LN1_W], bk->t[T_LN1_B], p->eps, NULL, NULL);
    fill_rows(qkv, rows, 3 * E, bk->t[T_ATTN_B]);
    ss_linear_xw(ln, rows, (size_t)E, bk->t[T_ATTN_W], NULL, 3 * (size_t)E, qkv, 1);
    for (int bi = 0; bi < B; bi++) {
      for (int hi = 0; hi < H; hi++) {
        size_t bh = (size_t)bi * H + (size_t)hi, pbytes = (size_t)P * D * sizeof(float);
        float *Kb = K + bh * (size_t)T * D, *Vb = V + bh * (size_t)T * D;
        if (P > 0) { /* past data may be unaligned (wire bytes): memcpy only */
          memcpy(Kb, (const char *)past[l].key.data + bh * pbytes, pbytes);
          memcpy(Vb, (const char *)past[l].value.data + bh * pbytes, pbytes);
        }
        for (int i = 0; i < S; i++) {
          const float *row = qkv + ((size_t)bi * S + i) * 3 * (size_t)E + (size_t)hi * D;
          memcpy(Kb + (size_t)(P + i) * D, row + E, (size_t)D * sizeof(float));
          memcpy(Vb + (size_t)(P + i) * D, row + 2 * E, (size_t)D * sizeof(float));
        }
        /* scores [S,T] = Q [S,D] (row stride 3E) K^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, T, D, 1.0f,
                    qkv + (size_t)bi * S * 3 * (size_t)E + (size_t)hi * D, 3 * E, Kb, D, 0.0f, sc,
                    T);
        causal_softmax(sc, S, T, P, bk->attn_scale);
        /* att[:, head] [S,D] (row stride E) = P [S,T] V [T,D] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, D, T, 1.0f, sc, T, Vb, D, 0.0f,
                    att + (size_t)bi * S * (size_t)E + (size_t)hi * D, E);
      }
    }
    /* Projections through ss_linear_xw: sgemm, or for a decode step's few rows a kernel that
     * streams the weights once instead of packing them (models/linear.h). */
    ss_linear_xw(att, rows, (size_t)E, bk->t[T_APROJ_W], bk->t[T_APROJ_B], (size_t)E, h, 1);
    /* mlp */
    layer_norm(h, ln, rows, E, bk->t[T_LN2_W], bk->t[T_LN2_B], p->eps, NULL, NULL);
    ss_linear_xw(ln, rows, (size_t)E, bk->t[T_FC_W], bk->t[T_FC_B], (size_t)NI, fc, 0);
    ss_gelu_new(fc, rows * (size_t)NI);
    ss_linear_xw(fc, rows, (size_t)NI, bk->t[T_MPROJ_W], bk->t[T_MPROJ_B], (size_t)E, h, 1);
  }
  free(scratch);
  return 0;
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
 *   probs  [B, H, S, S] softmax probabilities (zero above the diagonal)
 *   mean1, rstd1, mean2, rstd2 [BT]  LayerNorm statistics
 * ln_1(x), ln_2(h) and gelu_new(fc) are recomputed in backward from these (cheap, O(BT x E)).
 *
 * Backward of one block, dres = dL/dy on entry (kept in grad_in's buffer, updated in place):
 *   y = h + gelu(fc) Wp + bp      dWp += gelu(fc)^T dres, dbp += sum dres, dg = dres Wp^T
 *                                 dfc = dg * gelu_new'(fc)
 *   fc = ln_2(h) Wf + bf          dWf += ln_2^T dfc, dbf += sum dfc, dln = dfc Wf^T
 *   ln_2                          dres += LN'(dln) (and dgain, dbias): now dres = dL/dh
 *   h = x + atty Wa + ba          dWa += atty^T dres, dba += sum dres, datty = dres Wa^T
 *   attention, per (batch, head): dV = P^T dA, dP = dA V^T, dS = P * (dP - rowsum(P * dP)),
 *                                 dQ = scale dS K, dK = scale dS^T Q
 *   qkv = ln_1(x) Wqkv + bqkv     dWqkv += ln_1^T dqkv, dbqkv += sum dqkv, dln = dqkv Wqkv^T
 *   ln_1                          dres += LN'(dln): now dres = dL/dx, the previous block's dL/dy
 * Weight gradients are added into the model's buffers under gmu (one short critical section
 * per tensor), so concurrent backward calls sum their gradients.
 *
 * The key part of c_attn's bias, bqkv[E, 2E), gets no gradient: adding a constant to every key
 * shifts each query's scores by the same q.b, which softmax ignores, so its gradient is exactly
 * zero (sum over keys of dK = sum_i q_i sum_j dS_ij = 0). Float rounding would leave ~1e-8 there,
 * and AdamW, which divides by sqrt(v), would turn that noise into steps of size lr.
 */
typedef struct gpt2_saved {
  int B, S;
  size_t per_layer; /* floats per layer */
  float *buf;       /* L x per_layer */
} gpt2_saved;

typedef struct layer_saved {
  float *x, *h, *qkv, *atty, *fc, *probs, *mean1, *rstd1, *mean2, *rstd2;
} layer_saved;

static size_t saved_per_layer(const gpt2 *p, int B, int S) {
  size_t rows = (size_t)B * (size_t)S;
  return rows * (6 * (size_t)p->n_embd + (size_t)p->n_inner + 4) +
         (size_t)B * (size_t)p->n_head * (size_t)S * (size_t)S;
}

static void saved_layer(const gpt2 *p, const gpt2_saved *sv, int l, layer_saved *o) {
  size_t rows = (size_t)sv->B * (size_t)sv->S, E = (size_t)p->n_embd;
  float *q = sv->buf + (size_t)l * sv->per_layer;
  o->x = q;
  o->h = o->x + rows * E;
  o->qkv = o->h + rows * E;
  o->atty = o->qkv + rows * 3 * E;
  o->fc = o->atty + rows * E;
  o->mean1 = o->fc + rows * (size_t)p->n_inner;
  o->rstd1 = o->mean1 + rows;
  o->mean2 = o->rstd1 + rows;
  o->rstd2 = o->mean2 + rows;
  o->probs = o->rstd2 + rows;
}

/* y = LayerNorm(x) from saved statistics (the forward's exact values). */
static void layer_norm_apply(const float *x, float *y, size_t rows, int n, const float *g,
                             const float *b, const float *mean, const float *rstd) {
  for (size_t r = 0; r < rows; r++) {
    const float *xr = x + r * (size_t)n;
    float *yr = y + r * (size_t)n;
    for (int j = 0; j < n; j++) yr[j] = (xr[j] - mean[r]) * rstd[r] * g[j] + b[j];
  }
}

/* dx += dL/dx of y = LayerNorm(x) given dy; dg += sum dy * xhat; db += sum dy. */
static void layer_norm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                                const float *mean, const float *rstd, const float *g, size_t rows,
                                int n) {
  for (size_t r = 0; r < rows; r++) {
    const float *dyr = dy + r * (size_t)n, *xr = x + r * (size_t)n;
    float *dxr = dx + r * (size_t)n;
    double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
    float a, c;
    for (int j = 0; j < n; j++) {
      float xhat = (xr[j] - mean[r]) * rstd[r], dnorm = dyr[j] * g[j];
      dnorm_mean += dnorm;
      dnorm_norm_mean += (double)dnorm * xhat;
    }
    a = (float)(dnorm_mean / n);
    c = (float)(dnorm_norm_mean / n);
    for (int j = 0; j < n; j++) {
      float xhat = (xr[j] - mean[r]) * rstd[r], dnorm = dyr[j] * g[j];
      db[j] += dyr[j];
      dg[j] += dyr[j] * xhat;
      dxr[j] += (dnorm - a - xhat * c) * rstd[r];
    }
  }
}

/* Conv1D y = x W + b (x [rows, in], W [in, out]) backward: dW += x^T dy and db += sum dy under
 * gmu, except db[zlo, zhi), whose true gradient is zero (see gpt2_backward); dx = dy W^T
 * (overwritten) when dx is not NULL. */
static void conv1d_backward(gpt2 *p, float *dx, float *dW, float *db, const float *dy,
                            const float *x, const float *W, int rows, int in, int out, int zlo,
                            int zhi) {
  uv_mutex_lock(&p->gmu);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, out, rows, 1.0f, x, in, dy, out, 1.0f,
              dW, out);
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < out; j++)
      if (j < zlo || j >= zhi) db[j] += dy[(size_t)r * (size_t)out + (size_t)j];
  uv_mutex_unlock(&p->gmu);
  if (dx != NULL)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, in, out, 1.0f, dy, out, W, out, 0.0f,
                dx, in);
}

static int gpt2_forward_train(const ss_model *m, const ss_tensor *in, ss_tensor *out, void **saved,
                              size_t *saved_bytes, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  const int E = p->n_embd, H = p->n_head, D = p->head_dim, NI = p->n_inner;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = p->b - p->a;
  const size_t rows = (size_t)B * (size_t)S;
  size_t per = saved_per_layer(p, B, S), total;
  gpt2_saved *sv;
  float *ln = NULL, *fcg = NULL;

  *saved = NULL;
  *saved_bytes = 0;
  sv = NULL;
  if (__builtin_mul_overflow(per, (size_t)L * sizeof(float), &total) ||
      (sv = malloc(sizeof *sv + total)) == NULL || (ln = malloc(rows * (size_t)E * 4)) == NULL ||
      (fcg = malloc(rows * (size_t)NI * 4)) == NULL) {
    free(sv);
    free(ln);
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of saved activations", m->id,
             total >> 20);
    return SS_ENOMEM;
  }
  sv->B = B;
  sv->S = S;
  sv->per_layer = per;
  sv->buf = (float *)(sv + 1);
  {
    layer_saved s0;
    saved_layer(p, sv, 0, &s0);
    memcpy(s0.x, in->data, rows * (size_t)E * sizeof(float));
  }
  for (int l = 0; l < L; l++) {
    const gpt2_block *bk = &p->blk[l];
    layer_saved ls, next;
    float *y;
    saved_layer(p, sv, l, &ls);
    if (l + 1 < L) {
      saved_layer(p, sv, l + 1, &next);
      y = next.x;
    } else {
      y = out->data;
    }
    /* attention */
    layer_norm(ls.x, ln, rows, E, bk->t[T_LN1_W], bk->t[T_LN1_B], p->eps, ls.mean1, ls.rstd1);
    fill_rows(ls.qkv, rows, 3 * E, bk->t[T_ATTN_B]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, 3 * E, E, 1.0f, ln, E,
                bk->t[T_ATTN_W], 3 * E, 1.0f, ls.qkv, 3 * E);
    for (int bi = 0; bi < B; bi++) {
      for (int hi = 0; hi < H; hi++) {
        const float *Q = ls.qkv + (size_t)bi * S * 3 * (size_t)E + (size_t)hi * D;
        float *Pr = ls.probs + ((size_t)bi * H + (size_t)hi) * (size_t)S * S;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, D, 1.0f, Q, 3 * E, Q + E, 3 * E,
                    0.0f, Pr, S);
        causal_softmax(Pr, S, S, 0, bk->attn_scale);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, D, S, 1.0f, Pr, S, Q + 2 * E,
                    3 * E, 0.0f, ls.atty + (size_t)bi * S * (size_t)E + (size_t)hi * D, E);
      }
    }
    memcpy(ls.h, ls.x, rows * (size_t)E * sizeof(float));
    add_rows(ls.h, rows, E, bk->t[T_APROJ_B]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, E, E, 1.0f, ls.atty, E,
                bk->t[T_APROJ_W], E, 1.0f, ls.h, E);
    /* mlp */
    layer_norm(ls.h, ln, rows, E, bk->t[T_LN2_W], bk->t[T_LN2_B], p->eps, ls.mean2, ls.rstd2);
    fill_rows(ls.fc, rows, NI, bk->t[T_FC_B]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, NI, E, 1.0f, ln, E,
                bk->t[T_FC_W], NI, 1.0f, ls.fc, NI);
    memcpy(fcg, ls.fc, rows * (size_t)NI * sizeof(float));
    ss_gelu_new(fcg, rows * (size_t)NI);
    memcpy(y, ls.h, rows * (size_t)E * sizeof(float));
    add_rows(y, rows, E, bk->t[T_MPROJ_B]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, E, NI, 1.0f, fcg, NI,
                bk->t[T_MPROJ_W], E, 1.0f, y, E);
  }
  free(ln);
  free(fcg);
  *saved = sv;
  *saved_bytes = sizeof *sv + total;
  return 0;
}

static int gpt2_backward(ss_model *m, const void *saved, const ss_tensor *grad_out,
                         ss_tensor *grad_in, char *err, size_t errlen) {
  gpt2 *p = m->impl;
  const gpt2_saved *sv = saved;
  const int E = p->n_embd, H = p->n_head, D = p->head_dim, NI = p->n_inner;
  const int B = sv->B, S = sv->S, L = p->b - p->a, R = B * S;
  const size_t rows = (size_t)R;
  float *dres = grad_in->data, *scratch, *ln, *dln, *datty, *dqkv, *fcg, *dfc, *dP;
  size_t need;
  int rc = 0;

  if (grad_out->numel != rows * (size_t)E || grad_in->numel != rows * (size_t)E) {
    snprintf(err, errlen,
             "model '%s': backward got grad_output of %zu values and grad_input of "
             "%zu, expected %zu for [%d, %d, %d]",
             m->id, grad_out->numel, grad_in->numel, rows * (size_t)E, B, S, E);
    return SS_EINVAL;
  }
  uv_mutex_lock(&p->gmu);
  for (int i = 0; i < L * T_PER_LAYER && rc == 0; i++) rc = ss_param_grad(&p->prm[i]);
  uv_mutex_unlock(&p->gmu);
  /* ln, dln, datty [R,E]; dqkv [R,3E]; fcg, dfc [R,I]; dP [S,S] */
  need = rows * (6 * (size_t)E + 2 * (size_t)NI) + (size_t)S * (size_t)S;
  if (rc != 0 || (scratch = malloc(need * sizeof(float))) == NULL) {
    snprintf(err, errlen, "model '%s': out of memory for backward", m->id);
    return SS_ENOMEM;
  }
  ln = scratch;
  dln = ln + rows * (size_t)E;
  datty = dln + rows * (size_t)E;
  dqkv = datty + rows * (size_t)E;
  fcg = dqkv + rows * 3 * (size_t)E;
  dfc = fcg + rows * (size_t)NI;
  dP = dfc + rows * (size_t)NI;
  memmove(dres, grad_out->data, rows * (size_t)E * sizeof(float));

  for (int l = L - 1; l >= 0; l--) {
    const gpt2_block *bk = &p->blk[l];
    ss_param *g = &p->prm[l * T_PER_LAYER];
    layer_saved ls;
    saved_layer(p, sv, l, &ls);
    /* mlp: y = h + gelu(fc) Wp + bp */
    memcpy(fcg, ls.fc, rows * (size_t)NI * sizeof(float));
    ss_gelu_new(fcg, rows * (size_t)NI);
    conv1d_backward(p, dfc, g[T_MPROJ_W].grad, g[T_MPROJ_B].grad, dres, fcg, bk->t[T_MPROJ_W], R,
                    NI, E, 0, 0);
    ss_gelu_new_backward(dfc, ls.fc, rows * (size_t)NI);
    layer_norm_apply(ls.h, ln, rows, E, bk->t[T_LN2_W], bk->t[T_LN2_B], ls.mean2, ls.rstd2);
    conv1d_backward(p, dln, g[T_FC_W].grad, g[T_FC_B].grad, dfc, ln, bk->t[T_FC_W], R, E, NI, 0, 0);
    uv_mutex_lock(&p->gmu);
    layer_norm_backward(dres, g[T_LN2_W].grad, g[T_LN2_B].grad, dln, ls.h, ls.mean2, ls.rstd2,
                        bk->t[T_LN2_W], rows, E);
    uv_mutex_unlock(&p->gmu);
    /* attention: h = x + atty Wa + ba */
    conv1d_backward(p, datty, g[T_APROJ_W].grad, g[T_APROJ_B].grad, dres, ls.atty, bk->t[T_APROJ_W],
                    R, E, E, 0, 0);
    for (int bi = 0; bi < B; bi++) {
      for (int hi = 0; hi < H; hi++) {
        size_t off = (size_t)bi * S * 3 * (size_t)E + (size_t)hi * D;
        const float *Q = ls.qkv + off, *K = Q + E, *V = Q + 2 * E;
        const float *Pr = ls.probs + ((size_t)bi * H + (size_t)hi) * (size_t)S * S;
        const float *dA = datty + (size_t)bi * S * (size_t)E + (size_t)hi * D;
        float *dQ = dqkv + off, *dK = dQ + E, *dV = dQ + 2 * E;
        const float scale = bk->attn_scale;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, D, S, 1.0f, Pr, S, dA, E, 0.0f, dV,
                    3 * E);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, D, 1.0f, dA, E, V, 3 * E, 0.0f,
                    dP, S);
        for (int i = 0; i < S; i++) { /* softmax backward, row i sees keys 0..i */
          const float *pr = Pr + (size_t)i * S;
          float *dr = dP + (size_t)i * S, dot = 0.0f;
          for (int j = 0; j <= i; j++) dot += pr[j] * dr[j];
          for (int j = 0; j <= i; j++) dr[j] = scale * pr[j] * (dr[j] - dot);
          for (int j = i + 1; j < S; j++) dr[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, D, S, 1.0f, dP, S, K, 3 * E, 0.0f,
                    dQ, 3 * E);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, D, S, 1.0f, dP, S, Q, 3 * E, 0.0f,
                    dK, 3 * E);
      }
    }
    layer_norm_apply(ls.x, ln, rows, E, bk->t[T_LN1_W], bk->t[T_LN1_B], ls.mean1, ls.rstd1);
    conv1d_backward(p, dln, g[T_ATTN_W].grad, g[T_ATTN_B].grad, dqkv, ln, bk->t[T_ATTN_W], R, E,
                    3 * E, E, 2 * E);
    uv_mutex_lock(&p->gmu);
    layer_norm_backward(dres, g[T_LN1_W].grad, g[T_LN1_B].grad, dln, ls.x, ls.mean1, ls.rstd1,
                        bk->t[T_LN1_W], rows, E);
    uv_mutex_unlock(&p->gmu);
  }
  free(scratch);
  return 0;
}

static int gpt2_step(ss_model *m, const ss_optim *opt, char *err, size_t errlen) {
  gpt2 *p = m->impl;
  if (p->prm[0].grad == NULL) return 0; /* no backward yet: nothing to apply */
  /* all or nothing: refused (weights untouched) when a weight would become NaN/Inf */
  return ss_params_step(p->prm, (size_t)(p->b - p->a) * T_PER_LAYER, opt, &p->t, m->id, err,
                        errlen);
}

static void gpt2_free_saved(const ss_model *m, void *saved) {
  (void)m;
  free(saved);
}

/* The trunk's tensors under their original names ("[transformer.]h.{i}.<suffix>"), F32. */
static int gpt2_save(const ss_model *m, const char *path, char *err, size_t errlen) {
  const gpt2 *p = m->impl;
  size_t n = (size_t)(p->b - p->a) * T_PER_LAYER;
  char(*names)[80] = malloc(n * sizeof *names);
  const char **np = malloc(n * sizeof *np);
  int64_t(*shapes)[2] = malloc(n * sizeof *shapes);
  const int64_t **sp = malloc(n * sizeof *sp);
  int *ndims = malloc(n * sizeof *ndims);
  const float **data = malloc(n * sizeof *data);
  int rc;

  if (names == NULL || np == NULL || shapes == NULL || sp == NULL || ndims == NULL ||
      data == NULL) {
    snprintf(err, errlen, "out of memory");
    rc = SS_ENOMEM;
  } else {
    for (int l = 0; l < p->b - p->a; l++) {
      for (int k = 0; k < T_PER_LAYER; k++) {
        size_t i = (size_t)l * T_PER_LAYER + (size_t)k;
        snprintf(names[i], sizeof names[i], "%sh.%d.%s", p->prefix, p->a + l, tensor_suffix[k]);
        np[i] = names[i];
        expected_shape(p, k, shapes[i], &ndims[i]);
        sp[i] = shapes[i];
        data[i] = p->blk[l].t[k];
      }
    }
    rc = ss_st_write_f32_atomic(path, n, np, sp, ndims, data, err, errlen);
  }
  free(names);
  free(np);
  free(shapes);
  free(sp);
  free(ndims);
  free(data);
  return rc;
}

/* The trainable parameters (pointing at the blocks' tensor pointers) and the gradient mutex. */
static int gpt2_params(gpt2 *p) {
  int L = p->b - p->a;
  if ((p->prm = calloc((size_t)L * T_PER_LAYER, sizeof *p->prm)) == NULL) return SS_ENOMEM;
  if (uv_mutex_init(&p->gmu) != 0) {
    free(p->prm);
    p->prm = NULL;
    return SS_ENOMEM;
  }
  for (int l = 0; l < L; l++) {
    for (int k = 0; k < T_PER_LAYER; k++) {
      ss_param *q = &p->prm[l * T_PER_LAYER + k];
      int64_t shape[2];
      int ndim;
      expected_shape(p, k, shape, &ndim);
      q->view = &p->blk[l].t[k];
      q->own = &p->blk[l].own[k];
      q->numel = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1);
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
                                      .forward_kv = gpt2_forward_kv,
                                      .forward_train = gpt2_forward_train,
                                      .backward = gpt2_backward,
                                      .step = gpt2_step,
                                      .free_saved = gpt2_free_saved,
                                      .save = gpt2_save};

/* ------------------------------------------------------------- constructor ---- */

int ss_model_gpt2_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  const char *weights = NULL, *config = NULL, *layers = ":", *dt = "f32";
  char cfg_buf[4096], msg[1024];
  int scale_weights, scale_by_layer, rc;
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
    else {
      snprintf(err, errlen,
               "model '%s': unknown parameter '%s' for kind 'gpt2' (known: weights, "
               "config, layers)",
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
  if (rc == 0) rc = parse_layers(layers, p->n_layer, &p->a, &p->b, msg, sizeof msg);
  if (rc == 0) rc = load_weights(p, weights, &dt, &n_params, msg, sizeof msg);
  if (rc == 0 && gpt2_params(p) != 0) {
    snprintf(msg, sizeof msg, "out of memory");
    rc = SS_ENOMEM;
  }
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
  m->impl = p;
  m->weights = p->st;
  m->exec = SS_EXEC_WORKER;
  m->echo = 0;
  m->n_kv_layers = p->b - p->a;
  m->n_params = n_params;
  m->weight_bytes = (size_t)n_params * sizeof(float);
  snprintf(m->describe, sizeof m->describe,
           "gpt2 layers %d:%d of %d (n_embd %d, %d heads), %.1fM params, %s", p->a, p->b,
           p->n_layer, p->n_embd, p->n_head, (double)n_params / 1e6, dt);
  return 0;
}
