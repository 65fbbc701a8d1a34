/*
 * trunk.c — see trunk.h.
 */
#include "models/trunk.h"

#include "models/nn/backend/backend.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* present[l] = key/value [B, H, T, D] from cc's backend, released by its callback. */
int ss_trunk_alloc_present(const ss_compute *cc, ss_kv_layer *pr, int B, int H, int T, int D) {
  size_t kvn = (size_t)B * (size_t)H * (size_t)T * (size_t)D;
  pr->release = ss_backend_of(cc)->release;
  pr->key.data = ss_op_alloc(cc, kvn * sizeof(float));
  pr->value.data = ss_op_alloc(cc, kvn * sizeof(float));
  if (pr->key.data == NULL || pr->value.data == NULL) return SS_ENOMEM;
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
  return 0;
}

void ss_trunk_free_present(ss_kv_io *kv, int n) {
  for (int l = 0; l < n; l++) {
    ss_kv_release(&kv->present[l]);
    memset(&kv->present[l], 0, sizeof kv->present[l]);
  }
}

int ss_trunk_batch_windows(const ss_compute *cc, ss_kv_io *kv, int n, int l, int H, int D,
                           float *scratch, float **K, float **V) {
  for (int i = 0; i < n; i++) {
    size_t win = (size_t)H * (size_t)(ss_trunk_past_len(&kv[i]) + 1) * (size_t)D;
    if (kv[i].want_present) {
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
  if (rc != 0) {
    for (int i = 0; i < n; i++)
      if (kv[i].want_present) ss_trunk_free_present(&kv[i], L);
    snprintf(err, errlen, "model '%s': out of memory for the present caches", m->id);
    return rc;
  }
  for (int i = 0; i < n; i++)
    memcpy(out[i].data, x + (size_t)i * (size_t)E, (size_t)E * sizeof(float));
  return 0;
}
