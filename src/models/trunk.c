/*
 * trunk.c — see trunk.h.
 */
#include "models/trunk.h"

#include "core/config.h"
#include "core/file.h"
#include "models/nn/backend/backend.h"
#include "models/nn/deferred.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A positive integer field; *found = 0 when absent (or null). */
int ss_trunk_cfg_int(json_t *root, const char *key, const char *path, int *out, int *found,
                     char *err, size_t errlen) {
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

int ss_trunk_cfg_required(json_t *root, const char *const *keys, int *const *out, int n,
                          const char *path, char *err, size_t errlen) {
  for (int i = 0; i < n; i++) {
    int found;
    if (ss_trunk_cfg_int(root, keys[i], path, out[i], &found, err, errlen) != 0) return SS_EINVAL;
    if (!found) {
      snprintf(err, errlen, "config %.200s: missing '%s'", path, keys[i]);
      return SS_EINVAL;
    }
  }
  return 0;
}

/* A positive finite number field; *found = 0 when absent (or null). */
int ss_trunk_cfg_num(json_t *root, const char *key, const char *path, double *out, int *found,
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

json_t *ss_trunk_cfg_load(const char *path, const char *cfg_dir, char *buf, size_t buflen,
                          const char **used, int *rc, char *err, size_t errlen) {
  json_t *root;
  if (path == NULL || path[0] == '\0') {
    snprintf(buf, buflen, "%sconfig.json", cfg_dir);
    path = buf;
  }
  *used = path;
  if ((root = ss_ckpt_json("config", path, SS_CONFIG_MAX_BYTES, rc, err, errlen)) == NULL)
    return NULL;
  if (!json_is_object(root)) {
    snprintf(err, errlen, "config %.200s: not a JSON object", path);
    json_decref(root);
    *rc = SS_EINVAL;
    return NULL;
  }
  return root;
}

/* "A:B", "A:", ":B" or "" (all). */
int ss_trunk_layers(const char *s, int n_layer, int *a, int *b, char *err, size_t errlen) {
  const char *colon = strchr(s, ':');
  char *end;
  long la = 0, lb = n_layer;
  if (colon == NULL) {
    snprintf(err, errlen, "layers '%s' must look like A:B (blocks A..B-1)", s);
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

/* kv's key and value: float32 [B, H, len, D] views of buffers of n floats each. */
static void kv_tensors(ss_kv_layer *kv, int B, int H, int len, int D, size_t n) {
  for (int f = 0; f < 2; f++) {
    ss_tensor *t = f ? &kv->value : &kv->key;
    t->dtype = SS_DTYPE_F32;
    t->ndim = 4;
    t->shape[0] = B;
    t->shape[1] = H;
    t->shape[2] = len;
    t->shape[3] = D;
    t->numel = n;
    t->nbytes = n * sizeof(float);
  }
}

/* present[l] = key/value [B, H, T, D] from cc's backend, released by its callback. */
int ss_trunk_alloc_present(const ss_compute *cc, ss_kv_layer *pr, int B, int H, int T, int D) {
  size_t kvn = (size_t)B * (size_t)H * (size_t)T * (size_t)D;
  pr->release = ss_backend_of(cc)->release;
  pr->key.data = ss_op_alloc(cc, kvn * sizeof(float));
  pr->value.data = ss_op_alloc(cc, kvn * sizeof(float));
  if (pr->key.data == NULL || pr->value.data == NULL) return SS_ENOMEM;
  kv_tensors(pr, B, H, T, D, kvn);
  return 0;
}

void ss_trunk_free_present(ss_kv_io *kv, int n) {
  for (int l = 0; l < n; l++) {
    ss_kv_release(&kv->present[l]);
    memset(&kv->present[l], 0, sizeof kv->present[l]);
  }
}

int ss_trunk_kv_reserve(const ss_compute *cc, ss_kv_layer *c, int B, int H, int need, int D,
                        int max) {
  const int len = c->key.data != NULL && c->key.shape[0] == B ? ss_kv_len(c) : 0;
  const size_t row = (size_t)D * sizeof(float);
  int cap = 2 * c->cap > need ? 2 * c->cap : need;
  float *k, *v;
  if (c->key.data != NULL && c->key.shape[0] == B && c->cap >= need) return 0;
  cap = (cap + 15) / 16 * 16; /* geometric, in steps of 16 keys, at most the positions */
  if (cap > max && max >= need) cap = max;
  size_t n = (size_t)B * (size_t)H * (size_t)cap * (size_t)D;
  k = ss_op_alloc(cc, n * sizeof(float));
  v = ss_op_alloc(cc, n * sizeof(float));
  if (k == NULL || v == NULL) {
    ss_op_release(cc, k);
    ss_op_release(cc, v);
    return SS_ENOMEM;
  }
  for (size_t bh = 0; bh < (size_t)B * (size_t)H && len > 0; bh++) { /* the past, once */
    memcpy(k + bh * (size_t)cap * (size_t)D, (const char *)c->key.data + bh * (size_t)c->cap * row,
           (size_t)len * row);
    memcpy(v + bh * (size_t)cap * (size_t)D,
           (const char *)c->value.data + bh * (size_t)c->cap * row, (size_t)len * row);
  }
  ss_kv_release(c);
  c->release = ss_backend_of(cc)->release;
  c->cap = cap;
  c->key.data = k;
  c->value.data = v;
  kv_tensors(c, B, H, len, D, n);
  return 0;
}

void ss_trunk_kv_set_len(ss_kv_layer *c, int n, int len) {
  for (int l = 0; l < n; l++) c[l].key.shape[2] = c[l].value.shape[2] = len;
}

int ss_trunk_batch_windows(const ss_compute *cc, ss_kv_io *kv, int n, int l, int H, int D,
                           int n_pos, float *scratch, float **K, float **V, int *cap) {
  for (int i = 0; i < n; i++) {
    size_t win = (size_t)H * (size_t)(ss_trunk_past_len(&kv[i]) + 1) * (size_t)D;
    cap[i] = 0;
    if (kv[i].cache != NULL) { /* in place: the step's key and value go at P */
      ss_kv_layer *c = &kv[i].cache[l];
      if (ss_trunk_kv_reserve(cc, c, 1, H, ss_trunk_past_len(&kv[i]) + 1, D, n_pos) != 0)
        return SS_ENOMEM;
      K[i] = c->key.data;
      V[i] = c->value.data;
      cap[i] = c->cap;
    } else if (kv[i].want_present) {
      if (ss_trunk_alloc_present(cc, &kv[i].present[l], 1, H, ss_trunk_past_len(&kv[i]) + 1, D) !=
          0)
        return SS_ENOMEM;
      K[i] = kv[i].present[l].key.data;
      V[i] = kv[i].present[l].value.data;
    } else {
      K[i] = scratch;
      V[i] = scratch + win;
      scratch += 2 * win;
    }
  }
  return 0;
}

int ss_trunk_check_hidden(const ss_model *m, const ss_tensor *in, int hidden, int n_pos,
                          const char *pos_key, int64_t *out_shape, int *out_ndim, char *err,
                          size_t errlen) {
  char sbuf[128];
  if (in->ndim != 3) {
    snprintf(err, errlen, "model '%s' expects hidden states [batch, seq, %d] (3 dims), got %s",
             m->id, hidden, ss_shape_str(in->shape, in->ndim, sbuf, sizeof sbuf));
    return SS_EINVAL;
  }
  if (in->shape[2] != hidden) {
    snprintf(err, errlen, "model '%s' expects hidden size %d, got %lld", m->id, hidden,
             (long long)in->shape[2]);
    return SS_EINVAL;
  }
  if (in->shape[0] < 1 || in->shape[1] < 1) {
    snprintf(err, errlen, "model '%s' expects batch >= 1 and seq >= 1, got %s", m->id,
             ss_shape_str(in->shape, in->ndim, sbuf, sizeof sbuf));
    return SS_EINVAL;
  }
  if (in->shape[1] > n_pos) {
    snprintf(err, errlen, "model '%s': seq %lld exceeds %s %d", m->id, (long long)in->shape[1],
             pos_key, n_pos);
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

int ss_trunk_batch_finish(const ss_model *m, int rc, int n, int L, int E, const float *x,
                          ss_tensor *out, ss_kv_io *kv, char *err, size_t errlen) {
  if (rc != 0) { /* in-place caches keep their length: unchanged */
    for (int i = 0; i < n; i++)
      if (kv[i].want_present) ss_trunk_free_present(&kv[i], L);
    snprintf(err, errlen, "model '%s': out of memory for the present caches", m->id);
    return rc;
  }
  for (int i = 0; i < n; i++) {
    memcpy(out[i].data, x + (size_t)i * (size_t)E, (size_t)E * sizeof(float));
    if (kv[i].cache != NULL) ss_trunk_kv_set_len(kv[i].cache, L, ss_trunk_past_len(&kv[i]) + 1);
  }
  return 0;
}

/* ------------------------------------------------------------- the runtime ---- */

size_t ss_trunk_carve(const ss_trunk_arch *ar, const size_t *n, float *base, void *work) {
  size_t used = 0;
  for (int i = 0; i < ar->n_slots; i++) {
    float **f = base != NULL ? (float **)(void *)((char *)work + ar->slots[i]) : NULL;
    if (n[i] == 0) continue;
    if (n[i] > SS_TRUNK_ALIAS(SS_TRUNK_MAX_SLOTS)) { /* the memory of an earlier slot */
      size_t j = SS_TRUNK_ALIAS(0) - n[i];
      if (f != NULL) *f = *(float **)(void *)((char *)work + ar->slots[j]);
      continue;
    }
    if (f != NULL) *f = base + used;
    used += n[i];
  }
  return used;
}

/* The table of phase ph for d, with K, V scratch of kv floats each (0: none). */
static void phase_sizes(const ss_trunk *t, ss_trunk_phase ph, const ss_trunk_dims *d, size_t kv,
                        size_t *n) {
  memset(n, 0, SS_TRUNK_MAX_SLOTS * sizeof *n);
  t->arch->sizes(t->impl, ph, d, n);
  if (kv > 0) n[SS_TRUNK_K] = n[SS_TRUNK_V] = kv;
}

static void set_ptr(const ss_trunk *t, void *work, int slot, float *v) {
  *(float **)(void *)((char *)work + t->arch->slots[slot]) = v;
}

static int trunk_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                       int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  const ss_trunk *t = m->impl;
  if (ss_trunk_check_hidden(m, in, t->E, t->n_pos, t->arch->pos_key, out_shape, out_ndim, err,
                            errlen) != 0)
    return SS_EINVAL;
  return t->arch->check_meta ? t->arch->check_meta(m, in, meta, err, errlen) : 0;
}

static int trunk_check_kv(const ss_model *m, const ss_tensor *in, const ss_kv_layer *past,
                          int n_past, char *err, size_t errlen) {
  const ss_trunk *t = m->impl;
  char got[128], want[128], layer[32] = "";
  int64_t ref[4] = {0, 0, 0, 0};
  if (n_past == 0) return 0;
  if (n_past != m->n_kv_layers) {
    snprintf(err, errlen,
             "model '%s' expects %d past_key_values entries (one per trunk layer %d:%d), got %d",
             m->id, m->n_kv_layers, t->a, t->b, n_past);
    return SS_EINVAL;
  }
  for (int i = 0; i < n_past; i++) {
    if (t->arch->kv_msg_layer) snprintf(layer, sizeof layer, " (layer %d)", t->a + i);
    for (int f = 0; f < 2; f++) {
      const ss_tensor *x = f ? &past[i].value : &past[i].key;
      const char *fname = f ? "value" : "key";
      int ok = x->ndim == 4;
      if (x->dtype != SS_DTYPE_F32) {
        snprintf(err, errlen, "past_key_values[%d].%s must be float32, got %s", i, fname,
                 ss_dtype_name(x->dtype));
        return SS_EINVAL;
      }
      if (i == 0 && f == 0) {
        int64_t ws[4] = {in->ndim == 3 ? in->shape[0] : 1, t->NKV, x->ndim == 4 ? x->shape[2] : 0,
                         t->D};
        for (int d = 0; ok && d < 4; d++) ok = x->shape[d] == ws[d] && x->shape[d] >= 0;
        if (!ok) {
          snprintf(err, errlen,
                   "past_key_values[0].key_shape%s is %s, expected [%lld,%d,past_len,%d] "
                   "([batch, %s, past_len, head_dim])",
                   layer, ss_shape_str(x->shape, x->ndim, got, sizeof got), (long long)ws[0],
                   t->NKV, t->D, t->arch->kv_heads_key);
          return SS_EINVAL;
        }
        memcpy(ref, x->shape, sizeof ref);
        continue;
      }
      for (int d = 0; ok && d < 4; d++) ok = x->shape[d] == ref[d];
      if (!ok) {
        snprintf(err, errlen,
                 "past_key_values[%d].%s_shape%s is %s, expected %s like "
                 "past_key_values[0].key_shape",
                 i, fname, layer, ss_shape_str(x->shape, x->ndim, got, sizeof got),
                 ss_shape_str(ref, 4, want, sizeof want));
        return SS_EINVAL;
      }
    }
  }
  if (in->ndim == 3 && ref[2] + in->shape[1] > t->n_pos) {
    snprintf(err, errlen, "model '%s': past_len %lld + seq %lld exceeds %s %d", m->id,
             (long long)ref[2], (long long)in->shape[1], t->arch->pos_key, t->n_pos);
    return SS_EINVAL;
  }
  return 0;
}

/* One allocation of n floats + extra from the model's backend, carved for phase sizes n. */
static float *carve_new(const ss_trunk *t, const size_t *n, size_t extra, void *work,
                        size_t *used) {
  size_t floats = ss_trunk_carve(t->arch, n, NULL, work) + extra;
  float *base = ss_op_alloc(t->cc, floats * sizeof(float));
  if (base != NULL) ss_trunk_carve(t->arch, n, base, work);
  if (used != NULL) *used = floats;
  return base;
}

static int trunk_forward_kv(const ss_model *m, const ss_tensor *in, ss_tensor *out, ss_kv_io *kv,
                            const ss_meta *meta, char *err, size_t errlen) {
  const ss_trunk *t = m->impl;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = t->b - t->a, E = t->E;
  const int want_present = kv != NULL && kv->want_present;
  ss_kv_layer *cache = kv != NULL && kv->n_layers > 0 ? kv->cache : NULL;
  const ss_kv_layer *past = kv != NULL && kv->n_layers > 0 && !cache ? kv->past : NULL;
  const int P = cache != NULL ? ss_kv_len(&cache[0]) : past != NULL ? (int)past[0].key.shape[2] : 0;
  const ss_trunk_dims d = {(size_t)B * (size_t)S, B, S, P + S, 0};
  size_t n[SS_TRUNK_MAX_SLOTS], used = 0;
  int pos0 = -1, *pos = NULL, rc = 0;
  float *scratch;
  void *work;

  if ((past != NULL || cache != NULL) && kv->n_layers != L) {
    snprintf(err, errlen, "model '%s': %d past_key_values entries, expected %d", m->id,
             kv->n_layers, L);
    return SS_EINVAL;
  }
  if (want_present && (kv->present == NULL || kv->n_layers != L)) {
    snprintf(err, errlen, "model '%s': present cache needs %d entries", m->id, L);
    return SS_EINVAL;
  }
  if (t->arch->positions != NULL &&
      (rc = t->arch->positions(m, meta, B, S, &pos0, &pos, err, errlen)) != 0)
    return rc;
  if (pos0 < 0) pos0 = P;
  if (pos0 + S > t->n_pos) {
    free(pos);
    snprintf(err, errlen, "model '%s': position %d + seq %d exceeds %s %d", m->id, pos0, S,
             t->arch->pos_key, t->n_pos);
    return SS_EINVAL;
  }
  phase_sizes(t, SS_TRUNK_INFER, &d,
              want_present || cache ? 0 : (size_t)B * t->NKV * (size_t)d.T * t->D, n);
  if ((work = calloc(1, t->arch->work_size)) == NULL ||
      (scratch = carve_new(t, n, 0, work, &used)) == NULL) {
    free(work);
    free(pos);
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of activations", m->id,
             used * sizeof(float) >> 20);
    return SS_ENOMEM;
  }
  for (int s = SS_TRUNK_X; s <= SS_TRUNK_Y; s++) set_ptr(t, work, s, out->data); /* in place */
  if (want_present) memset(kv->present, 0, (size_t)L * sizeof *kv->present);
  if (out->data != in->data) memmove(out->data, in->data, d.rows * (size_t)E * sizeof(float));
  for (int l = 0; l < L && rc == 0; l++) {
    ss_trunk_seq s = {0, B, S, P, pos0, NULL, NULL, NULL, NULL, pos, 0};
    if (ss_meta_cancelled(meta)) { /* nobody waits for the result: stop between layers */
      if (want_present) ss_trunk_free_present(kv, l);
      rc = SS_ECANCELLED;
      break;
    }
    if (cache != NULL) { /* a session's cache in place: this call's keys go at P */
      if (ss_trunk_kv_reserve(t->cc, &cache[l], B, t->NKV, d.T, t->D, t->n_pos) != 0) {
        snprintf(err, errlen, "model '%s': out of memory for the session cache", m->id);
        rc = SS_ENOMEM;
        break;
      }
      set_ptr(t, work, SS_TRUNK_K, cache[l].key.data);
      set_ptr(t, work, SS_TRUNK_V, cache[l].value.data);
      s.cap = cache[l].cap;
    } else if (want_present) {
      if (ss_trunk_alloc_present(t->cc, &kv->present[l], B, t->NKV, d.T, t->D) != 0) {
        ss_trunk_free_present(kv, l + 1);
        snprintf(err, errlen, "model '%s': out of memory for the present cache", m->id);
        rc = SS_ENOMEM;
        break;
      }
      set_ptr(t, work, SS_TRUNK_K, kv->present[l].key.data);
      set_ptr(t, work, SS_TRUNK_V, kv->present[l].value.data);
    }
    s.K = *(float **)(void *)((char *)work + t->arch->slots[SS_TRUNK_K]);
    s.V = *(float **)(void *)((char *)work + t->arch->slots[SS_TRUNK_V]);
    if (past != NULL) {
      s.past_k = past[l].key.data;
      s.past_v = past[l].value.data;
    }
    t->arch->block_forward(t->impl, l, work, B * S, &s, 1);
  }
  if (rc == 0 && cache != NULL) ss_trunk_kv_set_len(cache, L, P + S); /* the step is kept */
  ss_op_release(t->cc, scratch);
  free(work);
  free(pos);
  return rc;
}

static int trunk_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                         const ss_meta *meta, char *err, size_t errlen) {
  return trunk_forward_kv(m, in, out, NULL, meta, err, errlen);
}

/* n one-token decode steps of different sequences (each [1, 1, E], its own past of any length,
 * at position = its past length), one batch through every dense layer; rope and attention per
 * sequence. Each step's result equals forward_kv alone. */
static int trunk_forward_kv_batch(const ss_model *m, int n, const ss_tensor *in, ss_tensor *out,
                                  ss_kv_io *kv, char *err, size_t errlen) {
  const ss_trunk *t = m->impl;
  const int E = t->E, L = t->b - t->a;
  size_t maxT = 1, kvscratch = 0, sz[SS_TRUNK_MAX_SLOTS];
  for (int i = 0; i < n; i++) {
    int P = ss_trunk_past_len(&kv[i]);
    if (in[i].ndim != 3 || in[i].shape[0] != 1 || in[i].shape[1] != 1 || P + 1 > t->n_pos) {
      snprintf(err, errlen, "model '%s': a batched decode step is one token [1,1,%d] within %s",
               m->id, E, t->arch->pos_key);
      return SS_EINVAL;
    }
    if ((size_t)P + 1 > maxT) maxT = (size_t)P + 1;
    if (!kv[i].want_present && kv[i].cache == NULL)
      kvscratch += 2 * (size_t)t->NKV * (size_t)(P + 1) * (size_t)t->D;
  }
  const ss_trunk_dims d = {(size_t)n, n, 1, (int)maxT, 0};
  size_t used;
  phase_sizes(t, SS_TRUNK_BATCH, &d, 0, sz);
  void *work = calloc(1, t->arch->work_size);
  float *scratch = work ? carve_new(t, sz, kvscratch, work, &used) : NULL;
  ss_trunk_seq *seqs = calloc((size_t)n, sizeof *seqs);
  float **win = calloc(2 * (size_t)n, sizeof *win);
  int *cap = calloc((size_t)n, sizeof *cap), rc = 0;
  if (!work || !scratch || !seqs || !win || !cap) {
    rc = SS_ENOMEM;
  } else {
    float *x = *(float **)(void *)((char *)work + t->arch->slots[SS_TRUNK_X]);
    float *kvs = scratch + (used - kvscratch);
    for (int i = 0; i < n; i++) {
      memcpy(x + (size_t)i * (size_t)E, in[i].data, (size_t)E * sizeof(float));
      if (kv[i].want_present) memset(kv[i].present, 0, (size_t)L * sizeof *kv[i].present);
    }
    for (int l = 0; l < L && rc == 0; l++) {
      if ((rc = ss_trunk_batch_windows(t->cc, kv, n, l, t->NKV, t->D, t->n_pos, kvs, win, win + n,
                                       cap)) != 0)
        break;
      for (int i = 0; i < n; i++) {
        int P = ss_trunk_past_len(&kv[i]);
        seqs[i] = (ss_trunk_seq){i,
                                 1,
                                 1,
                                 P,
                                 P,
                                 P && !cap[i] ? kv[i].past[l].key.data : NULL,
                                 P && !cap[i] ? kv[i].past[l].value.data : NULL,
                                 win[i],
                                 win[n + i],
                                 NULL,
                                 cap[i]};
      }
      t->arch->block_forward(t->impl, l, work, n, seqs, n);
    }
    rc = ss_trunk_batch_finish(m, rc, n, L, E, x, out, kv, err, errlen);
  }
  if (rc == SS_ENOMEM && (!work || !scratch || !seqs || !win || !cap))
    snprintf(err, errlen, "model '%s': out of memory for a batched decode step", m->id);
  free(cap);
  free(win);
  free(seqs);
  ss_op_release(t->cc, scratch);
  free(work);
  return rc;
}

/* ------------------------------------------------------------- training ---- */

/*
 * Training (no KV cache: a training forward starts at position 0). forward_train keeps, per
 * layer, what the table's SAVED phase says (x first: layer l's y is layer l + 1's x, the last
 * one's is the output), in one allocation of the backend; TRAIN scratch is what backward
 * recomputes. backward walks the layers down with BACKWARD scratch.
 */
typedef struct trunk_saved {
  int B, S;
  ss_lora_mask mk;  /* LoRA dropout of this forward (p 0: none) */
  size_t per_layer; /* floats per layer */
  float *buf;       /* L x per_layer, the backend's */
} trunk_saved;

static size_t saved_per_layer(const ss_trunk *t, int B, int S) {
  size_t n[SS_TRUNK_MAX_SLOTS];
  const ss_trunk_dims d = {(size_t)B * (size_t)S, B, S, S, 0};
  phase_sizes(t, SS_TRUNK_SAVED, &d, 0, n);
  return ss_trunk_carve(t->arch, n, NULL, NULL);
}

/* Point work's saved slots at layer l's record; y: the next layer's x, or out for the last. */
static void saved_layer(const ss_trunk *t, const trunk_saved *sv, const size_t *n, int l,
                        float *out, void *work) {
  float *q = sv->buf + (size_t)l * sv->per_layer;
  ss_trunk_carve(t->arch, n, q, work);
  *(int *)(void *)((char *)work + t->arch->att_all_off) = 1;
  set_ptr(t, work, SS_TRUNK_Y, l + 1 < t->b - t->a ? q + sv->per_layer : out);
}

/* The model's deferred weights (nn/deferred.h) made real f32 before training or saving reads
 * them: 0, or SS_ENOMEM with a message. */
static int make_real(const ss_model *m, char *err, size_t errlen) {
  if (ss_weights_deferred_make(m) == 0) return 0;
  snprintf(err, errlen, "model '%s': out of memory making the f32 weights training needs", m->id);
  return SS_ENOMEM;
}

static int trunk_forward_train(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                               const char *forward_id, void **saved, size_t *saved_bytes, char *err,
                               size_t errlen) {
  const ss_trunk *t = m->impl;
  const int B = (int)in->shape[0], S = (int)in->shape[1], L = t->b - t->a;
  const ss_trunk_dims d = {(size_t)B * (size_t)S, B, S, S, t->lora->dropout > 0.0f};
  size_t per = saved_per_layer(t, B, S), total = 0, n[SS_TRUNK_MAX_SLOTS];
  trunk_saved *sv = NULL;
  float *scratch = NULL;
  void *work = NULL;

  *saved = NULL;
  *saved_bytes = 0;
  if (make_real(m, err, errlen) != 0) return SS_ENOMEM;
  phase_sizes(t, SS_TRUNK_TRAIN, &d, (size_t)B * t->NKV * (size_t)S * t->D, n);
  if (__builtin_mul_overflow(per, (size_t)L * sizeof(float), &total) ||
      (work = calloc(1, t->arch->work_size)) == NULL || (sv = calloc(1, sizeof *sv)) == NULL ||
      (sv->buf = ss_op_alloc(t->cc, total)) == NULL ||
      (scratch = carve_new(t, n, 0, work, NULL)) == NULL) {
    if (sv != NULL) ss_op_release(t->cc, sv->buf);
    free(sv);
    free(work);
    snprintf(err, errlen, "model '%s': out of memory for %zu MiB of saved activations", m->id,
             total >> 20);
    return SS_ENOMEM;
  }
  sv->B = B;
  sv->S = S;
  sv->per_layer = per;
  sv->mk.p = t->lora->dropout;
  sv->mk.key = t->lora->dropout > 0.0f ? ss_lora_mask_key(t->lora->seed, forward_id) : 0;
  *(const ss_lora_mask **)(void *)((char *)work + t->arch->mk_off) =
      sv->mk.p > 0.0f ? &sv->mk : NULL;
  memcpy(sv->buf, in->data, d.rows * (size_t)t->E * sizeof(float)); /* layer 0's x */
  phase_sizes(t, SS_TRUNK_SAVED, &d, 0, n);
  for (int l = 0; l < L; l++) {
    ss_trunk_seq s = {0, B, S, 0, 0, NULL, NULL, NULL, NULL, NULL, 0};
    saved_layer(t, sv, n, l, out->data, work);
    s.K = *(float **)(void *)((char *)work + t->arch->slots[SS_TRUNK_K]);
    s.V = *(float **)(void *)((char *)work + t->arch->slots[SS_TRUNK_V]);
    t->arch->block_forward(t->impl, l, work, B * S, &s, 1);
  }
  ss_op_release(t->cc, scratch);
  free(work);
  *saved = sv;
  *saved_bytes = sizeof *sv + total;
  return 0;
}

static int trunk_backward(ss_model *m, const void *saved, const ss_tensor *grad_out,
                          ss_tensor *grad_in, char *err, size_t errlen) {
  ss_trunk *t = m->impl;
  const trunk_saved *sv = saved;
  const int B = sv->B, S = sv->S, L = t->b - t->a, E = t->E;
  const ss_trunk_dims d = {(size_t)B * (size_t)S, B, S, S, sv->mk.p > 0.0f};
  size_t n[SS_TRUNK_MAX_SLOTS];
  float *scratch = NULL;
  void *work = NULL;
  int rc = 0;

  if (grad_out->numel != d.rows * (size_t)E || grad_in->numel != d.rows * (size_t)E) {
    snprintf(err, errlen,
             "model '%s': backward got grad_output of %zu values and grad_input of %zu, expected "
             "%zu for [%d, %d, %d]",
             m->id, grad_out->numel, grad_in->numel, d.rows * (size_t)E, B, S, E);
    return SS_EINVAL;
  }
  if (make_real(m, err, errlen) != 0) return SS_ENOMEM;
  phase_sizes(t, SS_TRUNK_BACKWARD, &d, 0, n);
  if (ss_params_grads(t->prm) != 0 || (work = calloc(1, t->arch->work_size)) == NULL ||
      (scratch = carve_new(t, n, 0, work, NULL)) == NULL) {
    free(work);
    snprintf(err, errlen, "model '%s': out of memory for backward", m->id);
    return SS_ENOMEM;
  }
  if (t->arch->backward_init != NULL) t->arch->backward_init(t->impl, work);
  *(const ss_lora_mask **)(void *)((char *)work + t->arch->mk_off) =
      sv->mk.p > 0.0f ? &sv->mk : NULL; /* the forward's masks */
  memmove(grad_in->data, grad_out->data, d.rows * (size_t)E * sizeof(float));
  phase_sizes(t, SS_TRUNK_SAVED, &d, 0, n);
  for (int l = L - 1; l >= 0 && rc == 0; l--) {
    saved_layer(t, sv, n, l, NULL, work);
    if ((rc = t->arch->block_backward(t->impl, l, work, grad_in->data, B, S)) != 0)
      snprintf(err, errlen, "model '%s': out of memory for backward", m->id);
  }
  ss_op_release(t->cc, scratch);
  free(work);
  return rc;
}

static int trunk_step(ss_model *m, const ss_optim *opt, char *err, size_t errlen) {
  ss_trunk *t = m->impl;
  return ss_params_step(t->prm, opt, m->id, err, errlen); /* all or nothing (nn/optim.c) */
}

static void trunk_free_saved(const ss_model *m, void *saved) {
  const ss_trunk *t = m->impl;
  trunk_saved *sv = saved;
  ss_op_release(t->cc, sv->buf);
  free(sv);
}

static size_t trunk_train_bytes(const ss_model *m, const ss_tensor *in) {
  const ss_trunk *t = m->impl;
  size_t total;
  if (in->ndim != 3 || in->shape[0] > INT_MAX || in->shape[1] > INT_MAX) return SIZE_MAX;
  if (__builtin_mul_overflow(saved_per_layer(t, (int)in->shape[0], (int)in->shape[1]),
                             (size_t)(t->b - t->a) * sizeof(float), &total))
    return SIZE_MAX;
  return sizeof(trunk_saved) + total;
}

/* The trunk's tensors under their loaded names, F32; with LoRA the PEFT directory. */
static int trunk_save(const ss_model *m, const char *path, char *err, size_t errlen) {
  const ss_trunk *t = m->impl;
  if (t->lora->r == 0 && make_real(m, err, errlen) != 0) return SS_ENOMEM;
  if (t->lora->r == 0) return ss_params_save(t->prm, path, err, errlen);
  return ss_lora_save(t->prm, t->lora, t->arch->lora_targets, t->arch->n_lora_targets, t->a, t->b,
                      t->arch->fan_in_fan_out, path, err, errlen);
}

static void trunk_destroy(ss_model *m) {
  ss_trunk *t = m->impl;
  if (t != NULL) t->arch->destroy(t->impl);
  free(t);
  m->impl = NULL;
}

const ss_model_ops ss_trunk_ops = {.check = trunk_check,
                                   .forward = trunk_forward,
                                   .destroy = trunk_destroy,
                                   .check_kv = trunk_check_kv,
                                   .forward_kv = trunk_forward_kv,
                                   .forward_kv_batch = trunk_forward_kv_batch,
                                   .forward_train = trunk_forward_train,
                                   .backward = trunk_backward,
                                   .step = trunk_step,
                                   .free_saved = trunk_free_saved,
                                   .train_bytes = trunk_train_bytes,
                                   .save = trunk_save};

int ss_trunk_attach(ss_model *m, const ss_trunk *desc, const ss_ckpt *ck, int64_t n_params,
                    char *err, size_t errlen) {
  ss_trunk *t = malloc(sizeof *t);
  size_t len = strlen(m->describe);
  if (t == NULL) {
    desc->arch->destroy(desc->impl);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  *t = *desc;
  if (t->lora->r > 0)
    snprintf(m->describe + len, sizeof m->describe - len, ", LoRA r %d", t->lora->r);
  *t->cc = ss_model_compute(m); /* as the architecture took it before loading */
  t->prm->cc = t->cc;
  t->lora->cc = t->cc;
  for (int i = 0; i < ck->n_files; i++) { /* f32 views: their pages go once packed */
    const void *map;
    size_t map_len;
    ss_st_mapping(ck->files[i], &map, &map_len);
    ss_matmul_weights_source(m, map, map_len);
  }
  m->impl = t;
  m->ops = &ss_trunk_ops;
  m->kind = desc->arch->kind;
  m->n_kv_layers = t->b - t->a;
  m->weights = ss_ckpt_first(ck);
  m->exec = SS_EXEC_WORKER;
  m->echo = 0;
  m->n_params = n_params;
  m->weight_bytes = (size_t)n_params * sizeof(float);
  return 0;
}

int ss_trunk_spec_parse(const ss_model *m, const char *kind, const char *weights_what,
                        const char *const *params, size_t n, ss_trunk_spec *sp, char *err,
                        size_t errlen) {
  static const char *const keys[] = {"weights",   "config",       "layers",
                                     "lora_rank", "lora_alpha",   "lora_targets",
                                     "adapter",   "lora_dropout", "lora_seed"};
  const char **field[] = {&sp->weights,   &sp->config,       &sp->layers,
                          &sp->lora_rank, &sp->lora_alpha,   &sp->lora_targets,
                          &sp->adapter,   &sp->lora_dropout, &sp->lora_seed};
  memset(sp, 0, sizeof *sp);
  sp->layers = ":";
  for (size_t i = 0; i < n; i++) {
    size_t k = 0;
    while (k < sizeof keys / sizeof keys[0] && strcmp(params[2 * i], keys[k]) != 0) k++;
    if (k == sizeof keys / sizeof keys[0]) { /* the registry's table lists the known ones */
      snprintf(err, errlen, "model '%s': parameter '%s' is not a trunk key (kind '%s')", m->id,
               params[2 * i], kind);
      return SS_EINVAL;
    }
    *field[k] = params[2 * i + 1];
  }
  if (sp->weights == NULL || sp->weights[0] == '\0') {
    snprintf(err, errlen, "model '%s': kind '%s' needs weights=PATH (%s)", m->id, kind,
             weights_what);
    return SS_EINVAL;
  }
  return 0;
}

int ss_trunk_lora_all(void *impl, const ss_compute *cc, int n, int r,
                      int (*describe)(void *impl, int i, ss_trunk_lora_site *site),
                      const char *adapter_dir, char *err, size_t errlen) {
  char path[1200];
  uint64_t st = 0x5EEDull;
  ss_st_file *ad = NULL;
  int rc = 0;
  if (adapter_dir != NULL &&
      (rc = ss_lora_open(adapter_dir, &ad, path, sizeof path, err, errlen)) != 0)
    return rc;
  for (int i = 0; i < n && rc == 0; i++) {
    ss_trunk_lora_site s;
    memset(&s, 0, sizeof s);
    if (!describe(impl, i, &s)) continue;
    s.lo->unit = s.unit; /* dropout masks: lora.h */
    if (ad != NULL)
      rc = ss_lora_load(s.lo, cc, ad, path, s.key, r, s.in, s.out, err, errlen);
    else if ((rc = ss_lora_init(s.lo, cc, r, s.in, s.out, &st)) != 0)
      snprintf(err, errlen, "out of memory");
  }
  ss_st_close(ad); /* the adapters are copies */
  return rc;
}

int ss_trunk_open(const ss_trunk_spec *sp, ss_ckpt *ck, json_t **root, char *cfg_path,
                  size_t cfg_len, char *msg, size_t len) {
  char dir[1100];
  const char *used = NULL;
  int rc = ss_ckpt_open(ck, sp->weights, dir, sizeof dir, msg, len);
  *root = NULL;
  if (rc == 0) *root = ss_trunk_cfg_load(sp->config, dir, cfg_path, cfg_len, &used, &rc, msg, len);
  if (rc == 0 && used != cfg_path) snprintf(cfg_path, cfg_len, "%s", used);
  return rc;
}

int ss_trunk_training(const ss_trunk_arch *arch, void *impl, const ss_trunk_spec *sp,
                      unsigned default_targets, ss_lora_cfg *lora, ss_params *prm,
                      const struct ss_st_file *ckpt,
                      int (*lora_setup)(void *impl, const char *adapter, char *msg, size_t len),
                      int (*params)(void *impl), char *msg, size_t len) {
  int rc = ss_lora_settings(sp->lora_rank, sp->lora_alpha, sp->lora_targets, sp->adapter,
                            sp->lora_dropout, sp->lora_seed, arch->lora_targets,
                            arch->n_lora_targets, default_targets, lora, msg, len);
  if (rc == 0 && lora->r > 0) rc = lora_setup(impl, sp->adapter, msg, len);
  if (rc == 0 && params(impl) != 0) {
    snprintf(msg, len, "out of memory");
    rc = SS_ENOMEM;
  }
  if (rc == 0 && lora->r == 0) /* a checkpoint's optimizer state */
    rc = ss_params_restore(prm, ckpt, msg, len);
  else if (rc == 0 && sp->adapter != NULL) /* the adapter's */
    rc = ss_lora_restore(prm, sp->adapter, msg, len);
  return rc;
}

/* ------------------------------------------------------------- loading weights ---- */

void *ss_trunk_load_begin(ss_trunk_load *ld, const ss_compute *cc, size_t n_found,
                          const ss_st_tensor ***found, size_t n_blk, size_t blk_size,
                          const char *path, char *err, size_t errlen) {
  void *blk;
  memset(ld, 0, sizeof *ld);
  ld->cc = cc;
  *found = calloc(n_found, sizeof **found);
  blk = calloc(n_blk, blk_size);
  if (*found == NULL || blk == NULL) {
    free(*found);
    free(blk);
    *found = NULL;
    snprintf(err, errlen, "weights %.200s: out of memory", path);
    return NULL;
  }
  return blk;
}

void ss_trunk_missing(ss_trunk_load *ld, const char *name) {
  if (ld->n_missing++ < 6 && ld->mpos < sizeof ld->missing) {
    int w = snprintf(ld->missing + ld->mpos, sizeof ld->missing - ld->mpos, "%s%s",
                     ld->mpos ? ", " : "", name);
    if (w > 0) ld->mpos += (size_t)w;
  }
}

int ss_trunk_missing_check(const ss_trunk_load *ld, const char *path, int a, int b, char *err,
                           size_t errlen) {
  const int n = ld->n_missing;
  if (n == 0) return 0;
  if (n > 6)
    snprintf(err, errlen, "weights %.200s: %d tensors of layers %d:%d missing: %s, ... (%d more)",
             path, n, a, b, ld->missing, n - 6);
  else
    snprintf(err, errlen, "weights %.200s: %d tensor%s of layers %d:%d missing: %s", path, n,
             n == 1 ? "" : "s", a, b, ld->missing);
  return SS_EINVAL;
}

int ss_trunk_weight(ss_trunk_load *ld, const ss_st_tensor *t, const int64_t *shape, int ndim,
                    const float **view, float **own, const char *path, const char *dims, char *err,
                    size_t errlen) {
  int ok = t->ndim == ndim;
  for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
  if (!ok) {
    char got[128], want[128];
    snprintf(err, errlen, "weights %.200s: '%s' has shape %s, expected %s (%s from the config)",
             path, t->name, ss_shape_str(t->shape, t->ndim, got, sizeof got),
             ss_shape_str(shape, ndim, want, sizeof want), dims);
    return SS_EINVAL;
  }
  float *d = NULL;
  if (ndim == 2 && t->dtype != SS_DTYPE_F32 && ss_backend_of(ld->cc) == &ss_backend_cpu &&
      ld->cc->owner != NULL && ss_matmul_w_always_packed(ld->cc) &&
      (d = ss_weight_deferred_new(ld->cc->owner, t->data, t->dtype, t->numel)) != NULL) {
    *view = d, *own = NULL; /* made real on demand: ss_trunk_make_real */
    ld->deferred = 1;
  } else if (ss_st_f32(t, view, own, ss_backend_of(ld->cc)->alloc) != 0) {
    snprintf(err, errlen, "weights %.200s: out of memory", path);
    return SS_ENOMEM;
  } else if (t->dtype != SS_DTYPE_F32 && ndim == 2) {
    ld->converted = 1;
  }
  ld->dts |= 1u << t->dtype;
  if (t->dtype == SS_DTYPE_F32 && *own != NULL) ld->copied = 1;
  ld->n_params += (int64_t)t->numel;
  return 0;
}

const char *ss_trunk_load_kind(const ss_trunk_load *ld) {
  if (ld->dts == 1u << SS_DTYPE_F32) return ld->copied ? "f32 copied" : "f32 mmap";
  if (ld->deferred && !ld->converted) {
    if (ld->dts == 1u << SS_DTYPE_BF16) return "bf16 as stored";
    if (ld->dts == 1u << SS_DTYPE_F16) return "f16 as stored";
    return "mixed as stored";
  }
  if (ld->dts == 1u << SS_DTYPE_F16) return "f16->f32";
  if (ld->dts == 1u << SS_DTYPE_BF16) return "bf16->f32";
  return "mixed->f32";
}
