/*
 * lora.c — LoRA adapters shared by the trunk kinds (see lora.h): the low-rank path, PEFT's
 * initialisation, the spec keys and the PEFT directory layout.
 *
 * Thread: set-up and save on the main thread or under the model's read lock; forward/backward on
 * workers (reentrant; gradient sums under the params mutex).
 */
#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/lora.h"

#include "core/config.h"
#include "core/file.h"
#include "models/nn/backend/backend.h"

uint64_t ss_lora_mask_key(uint64_t seed, const char *forward_id) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (const unsigned char *q = (const unsigned char *)(forward_id ? forward_id : ""); *q; q++) {
    h ^= *q;
    h *= 0x100000001B3ull;
  }
  return ss_dropout_mix(seed ^ ss_dropout_mix(h));
}

void ss_lora_dropout(const ss_compute *cc, float *xd, const float *x, size_t n,
                     const ss_lora_mask *mk, int unit) {
  ss_op_dropout(cc, xd, x, n, ss_dropout_mix(mk->key ^ ((uint64_t)unit * SS_DROPOUT_GOLDEN)),
                mk->p);
}

static int dropping(const ss_lora_mask *mk) { return mk != NULL && mk->p > 0.0f; }

void ss_lora_forward(const ss_lora_cfg *c, const ss_lora *l, int in, int out, float *y,
                     const float *x, int BT, float *lt, const ss_lora_mask *mk, float *xd) {
  const int r = c->r;
  if (l->a == NULL) return;
  if (dropping(mk)) {
    ss_lora_dropout(c->cc, xd, x, (size_t)BT * (size_t)in, mk, l->unit);
    x = xd;
  }
  ss_op_matmul(c->cc, SS_MM_N, SS_MM_T, BT, r, in, 1.0f, x, in, l->a, in, 0.0f, lt, r);
  ss_op_matmul(c->cc, SS_MM_N, SS_MM_T, BT, out, r, c->s, lt, r, l->b, r, 1.0f, y, out);
}

void ss_lora_backward(ss_params *prm, const ss_lora_cfg *c, const ss_lora *l, int in, int out,
                      float *dx, const float *dy, const float *x, int BT, float *lt, float *dlt,
                      const ss_lora_mask *mk, float *xd) {
  const int r = c->r;
  const float sc = c->s;
  const size_t n = (size_t)BT * (size_t)in;
  if (l->a == NULL) return;
  if (dropping(mk)) {
    ss_lora_dropout(c->cc, xd, x, n, mk, l->unit); /* the forward's masks, regenerated */
    x = xd;
  }
  ss_op_matmul(c->cc, SS_MM_N, SS_MM_T, BT, r, in, 1.0f, x, in, l->a, in, 0.0f, lt, r);
  ss_op_matmul(c->cc, SS_MM_N, SS_MM_N, BT, r, out, sc, dy, out, l->b, r, 0.0f, dlt, r);
  if (l->ia >= 0) {
    ss_params_lock(prm);
    /* dB [out, r] += s dy^T lt;  dA [r, in] += dlt^T drop(x) */
    ss_op_matmul(c->cc, SS_MM_T, SS_MM_N, out, r, BT, sc, dy, out, lt, r, 1.0f,
                 ss_params_grad(prm, l->ib), r);
    ss_op_matmul(c->cc, SS_MM_T, SS_MM_N, r, in, BT, 1.0f, dlt, r, x, in, 1.0f,
                 ss_params_grad(prm, l->ia), in);
    ss_params_unlock(prm);
  }
  if (dropping(mk)) { /* dx += drop'(dlt A): the same mask and scale */
    ss_op_matmul(c->cc, SS_MM_N, SS_MM_N, BT, in, r, 1.0f, dlt, r, l->a, in, 0.0f, xd, in);
    ss_lora_dropout(c->cc, xd, xd, n, mk, l->unit);
    ss_op_add(c->cc, dx, xd, n);
    return;
  }
  ss_op_matmul(c->cc, SS_MM_N, SS_MM_N, BT, in, r, 1.0f, dlt, r, l->a, in, 1.0f, dx, in);
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int ss_lora_init(ss_lora *l, const ss_compute *cc, int r, int in, int out, uint64_t *state) {
  size_t na = (size_t)r * (size_t)in, nb = (size_t)out * (size_t)r;
  l->cc = cc;
  l->a_own = ss_op_alloc(cc, na * sizeof(float));
  l->b_own = ss_op_alloc(cc, nb * sizeof(float));
  l->ia = l->ib = -1;
  if (l->a_own == NULL || l->b_own == NULL) return SS_ENOMEM;
  memset(l->b_own, 0, nb * sizeof(float));
  /* kaiming_uniform_(a=sqrt(5)) on [r, in]: gain sqrt(2/6), bound gain sqrt(3/in) = 1/sqrt(in) */
  for (size_t i = 0; i < na; i++) {
    double u = (double)(splitmix64(state) >> 40) * 0x1p-24;
    l->a_own[i] = (float)((2.0 * u - 1.0) / sqrt((double)in));
  }
  l->a = l->a_own;
  l->b = l->b_own;
  return 0;
}

int ss_lora_load(ss_lora *l, const ss_compute *cc, const ss_st_file *ad, const char *path,
                 const char *key, int r, int in, int out, char *err, size_t errlen) {
  char name[300];
  l->cc = cc;
  l->ia = l->ib = -1;
  for (int f = 0; f < 2; f++) {
    const ss_st_tensor *t;
    int64_t want[2] = {f ? out : r, f ? r : in};
    const float **view = f ? &l->b : &l->a;
    float **own = f ? &l->b_own : &l->a_own;
    snprintf(name, sizeof name, "%s.lora_%s.weight", key, f ? "B" : "A");
    if ((t = ss_st_find(ad, name)) == NULL) {
      snprintf(err, errlen, "adapter %.200s: missing '%s'", path, name);
      return SS_EINVAL;
    }
    if (t->ndim != 2 || t->shape[0] != want[0] || t->shape[1] != want[1]) {
      char got[96], w2[96];
      snprintf(err, errlen, "adapter %.200s: '%s' has shape %s, expected %s", path, name,
               ss_shape_str(t->shape, t->ndim, got, sizeof got),
               ss_shape_str(want, 2, w2, sizeof w2));
      return SS_EINVAL;
    }
    /* own copies (the adapter file is closed after loading; every step writes them) */
    if (ss_st_f32(t, view, own, ss_backend_of(cc)->alloc) != 0) return SS_ENOMEM;
    if (*own == NULL) {
      if ((*own = ss_op_alloc(cc, t->numel * sizeof(float))) == NULL) return SS_ENOMEM;
      memcpy(*own, *view, t->numel * sizeof(float));
      *view = *own;
    }
  }
  return 0;
}

int ss_lora_add_params(ss_params *prm, ss_lora *l, const char *key, int r, int in, int out) {
  char name[300];
  int64_t sa[2] = {r, in}, sb[2] = {out, r};
  snprintf(name, sizeof name, "%s.lora_A.weight", key);
  if ((l->ia = ss_params_add(prm, name, sa, 2, &l->a, &l->a_own)) < 0) return SS_ENOMEM;
  snprintf(name, sizeof name, "%s.lora_B.weight", key);
  if ((l->ib = ss_params_add(prm, name, sb, 2, &l->b, &l->b_own)) < 0) return SS_ENOMEM;
  return 0;
}

void ss_lora_free(ss_lora *l) {
  ss_op_release(l->cc, l->a_own);
  ss_op_release(l->cc, l->b_own);
  l->a_own = l->b_own = NULL;
  l->a = l->b = NULL;
}

/* "c_attn,c_proj" -> bits of names[]; a message on an unknown name. */
static int parse_targets(const char *s, const char *const *names, int n, unsigned *bits, char *err,
                         size_t errlen) {
  char buf[256], *save = NULL;
  *bits = 0;
  snprintf(buf, sizeof buf, "%s", s);
  for (char *t = strtok_r(buf, ",; ", &save); t != NULL; t = strtok_r(NULL, ",; ", &save)) {
    int k = -1;
    for (int j = 0; j < n; j++)
      if (strcmp(t, names[j]) == 0) k = j;
    if (k < 0) {
      char known[200];
      size_t pos = 0;
      known[0] = '\0';
      for (int j = 0; j < n && pos < sizeof known; j++) {
        int w = snprintf(known + pos, sizeof known - pos, "%s%s", j ? ", " : "", names[j]);
        if (w > 0) pos += (size_t)w;
      }
      snprintf(err, errlen, "lora_targets: unknown module '%.40s' (known: %s)", t, known);
      return SS_EINVAL;
    }
    *bits |= 1u << k;
  }
  if (*bits == 0) {
    snprintf(err, errlen, "lora_targets: empty");
    return SS_EINVAL;
  }
  return 0;
}

/* A LoRA alpha the adapters cannot use: not finite, <= 0, or beyond a float (the scale alpha / r
 * is computed in float: 1e39 would make every output NaN). */
static int alpha_bad(double v) { return !isfinite(v) || v <= 0.0 || v > (double)FLT_MAX; }

/* adapter=DIR: r, alpha and targets from DIR/adapter_config.json. */
static int read_config(const char *dir, const char *const *names, int n, int *r, double *alpha,
                       unsigned *targets, double *dropout, char *err, size_t errlen) {
  char path[1200], *text = NULL, msg[400];
  size_t len = 0;
  json_error_t je;
  json_t *root, *v;
  int rc;
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  /* through core/file.h: a FIFO, a directory or an oversized file is refused, never blocks */
  if ((rc = ss_file_read(path, 0, SS_CONFIG_MAX_BYTES, &text, &len, msg, sizeof msg)) != 0) {
    snprintf(err, errlen, "adapter %s", msg);
    return rc;
  }
  root = json_loadb(text, len, 0, &je);
  free(text);
  if (root == NULL) {
    snprintf(err, errlen, "adapter %.200s: %s (line %d)", path, je.text, je.line);
    return SS_EINVAL;
  }
  rc = SS_EINVAL;
  v = json_object_get(root, "r");
  if (v == NULL || !json_is_integer(v) || json_integer_value(v) < 1 ||
      json_integer_value(v) > 4096) {
    snprintf(err, errlen, "adapter %.200s: 'r' must be an integer in 1..4096", path);
    goto done;
  }
  *r = (int)json_integer_value(v);
  v = json_object_get(root, "lora_alpha");
  *alpha = 8.0; /* PEFT's default when the key is absent */
  if (v != NULL && (!json_is_number(v) || alpha_bad(json_number_value(v)))) {
    char got[64];
    if (json_is_number(v))
      snprintf(got, sizeof got, "%g", json_number_value(v));
    else if (json_is_string(v))
      snprintf(got, sizeof got, "the string \"%.40s\"", json_string_value(v));
    else
      snprintf(got, sizeof got, "a JSON %s", json_is_null(v) ? "null" : "value of another type");
    snprintf(err, errlen,
             "adapter %.200s: 'lora_alpha' must be a number > 0 and at most %g (a float), got %s",
             path, (double)FLT_MAX, got);
    goto done;
  }
  if (v != NULL) *alpha = json_number_value(v);
  v = json_object_get(root, "lora_dropout");
  *dropout = 0.0;
  if (v != NULL && json_is_number(v)) {
    *dropout = json_number_value(v);
    if (!(*dropout >= 0.0 && *dropout < 1.0)) {
      snprintf(err, errlen, "adapter %.200s: 'lora_dropout' must be in [0, 1)", path);
      goto done;
    }
  }
  v = json_object_get(root, "target_modules");
  *targets = 0;
  if (v != NULL && json_is_array(v)) {
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
      unsigned b;
      if (!json_is_string(e)) {
        snprintf(err, errlen, "adapter %.200s: bad target_modules", path);
        goto done;
      }
      if (parse_targets(json_string_value(e), names, n, &b, err, errlen) != 0) goto done;
      *targets |= b;
    }
  } else if (v != NULL && json_is_string(v)) {
    if (parse_targets(json_string_value(v), names, n, targets, err, errlen) != 0) goto done;
  }
  if (*targets == 0) {
    snprintf(err, errlen, "adapter %.200s: no target_modules", path);
    goto done;
  }
  rc = 0;
done:
  json_decref(root);
  return rc;
}

int ss_lora_settings(const char *rank, const char *alpha_s, const char *targets_s,
                     const char *adapter, const char *dropout_s, const char *seed_s,
                     const char *const *names, int n, unsigned def_targets, ss_lora_cfg *c,
                     char *err, size_t errlen) {
  int r = 0, rc = 0;
  double alpha = -1.0, dropout = 0.0;
  unsigned targets = 0;
  memset(c, 0, sizeof *c);
  if (rank == NULL && alpha_s == NULL && targets_s == NULL && adapter == NULL) {
    if (dropout_s != NULL || seed_s != NULL) {
      snprintf(err, errlen, "lora_dropout and lora_seed need LoRA (lora_rank=R or adapter=DIR)");
      return SS_EINVAL;
    }
    return 0;
  }
  if (adapter != NULL)
    rc = read_config(adapter, names, n, &r, &alpha, &targets, &dropout, err, errlen);
  if (rc == 0 && dropout_s != NULL) {
    char *end;
    double v = strtod(dropout_s, &end);
    if (*dropout_s == '\0' || *end != '\0' || !(v >= 0.0 && v < 1.0)) {
      snprintf(err, errlen, "lora_dropout must be a number in [0, 1), got '%s'", dropout_s);
      return SS_EINVAL;
    }
    dropout = v;
  }
  if (rc == 0 && seed_s != NULL) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(seed_s, &end, 0);
    if (*seed_s == '\0' || *seed_s == '-' || *end != '\0' || errno != 0) {
      snprintf(err, errlen, "lora_seed must be an unsigned 64-bit integer, got '%s'", seed_s);
      return SS_EINVAL;
    }
    c->seed = (uint64_t)v;
  }
  if (rc == 0 && rank != NULL) {
    char *end;
    long v = strtol(rank, &end, 10);
    if (*rank == '\0' || *end != '\0' || v < 1 || v > 4096) {
      snprintf(err, errlen, "lora_rank must be an integer in 1..4096, got '%s'", rank);
      return SS_EINVAL;
    } else if (adapter != NULL && v != r) {
      snprintf(err, errlen, "lora_rank %ld disagrees with the adapter's r %d", v, r);
      return SS_EINVAL;
    }
    r = (int)v;
  }
  if (rc == 0 && alpha_s != NULL) {
    char *end;
    double v = strtod(alpha_s, &end);
    if (*alpha_s == '\0' || *end != '\0' || alpha_bad(v)) {
      snprintf(err, errlen, "lora_alpha must be a number > 0 and at most %g (a float), got '%s'",
               (double)FLT_MAX, alpha_s);
      return SS_EINVAL;
    } else if (adapter != NULL && fabs(v - alpha) > 1e-9 * fabs(alpha)) {
      snprintf(err, errlen, "lora_alpha %g disagrees with the adapter's %g", v, alpha);
      return SS_EINVAL;
    }
    alpha = v;
  }
  if (rc == 0 && targets_s != NULL) {
    unsigned t2;
    rc = parse_targets(targets_s, names, n, &t2, err, errlen);
    if (rc == 0 && adapter != NULL && t2 != targets) {
      snprintf(err, errlen, "lora_targets '%s' disagree with the adapter's target_modules",
               targets_s);
      return SS_EINVAL;
    }
    targets = t2;
  }
  if (rc != 0) return rc;
  if (r == 0) {
    snprintf(err, errlen, "LoRA needs lora_rank=R (or adapter=DIR)");
    return SS_EINVAL;
  }
  c->r = r;
  c->alpha = (float)(alpha > 0 ? alpha : 2.0 * r);
  c->s = c->alpha / (float)r;
  c->targets = targets ? targets : def_targets;
  c->dropout = (float)dropout;
  return 0;
}

int ss_lora_open(const char *dir, ss_st_file **ad, char *path, size_t pathlen, char *err,
                 size_t errlen) {
  snprintf(path, pathlen, "%s/adapter_model.safetensors", dir);
  return ss_st_open(path, ad, err, errlen);
}

int ss_lora_restore(ss_params *prm, const char *dir, char *err, size_t errlen) {
  char path[1200];
  ss_st_file *f = NULL;
  int rc;
  snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
  if (access(path, F_OK) != 0) return 0;
  rc = ss_st_open(path, &f, err, errlen);
  if (rc == 0) rc = ss_params_restore(prm, f, err, errlen);
  ss_st_close(f);
  return rc;
}

/* The PEFT adapter_config.json. */
static int write_config(const ss_lora_cfg *c, const char *const *names, int n, int a, int b,
                        int fan_in_fan_out, const char *path, char *err, size_t errlen) {
  json_t *root = json_object(), *tm = json_array(), *ltt = json_array();
  int rc = 0;
  if (root == NULL || tm == NULL || ltt == NULL) {
    json_decref(root);
    json_decref(tm);
    json_decref(ltt);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  for (int k = 0; k < n; k++)
    if (c->targets & (1u << k)) json_array_append_new(tm, json_string(names[k]));
  for (int l = a; l < b; l++) json_array_append_new(ltt, json_integer(l));
  json_object_set_new(root, "peft_type", json_string("LORA"));
  json_object_set_new(root, "task_type", json_string("CAUSAL_LM"));
  json_object_set_new(root, "r", json_integer(c->r));
  json_object_set_new(root, "lora_alpha", json_real(c->alpha));
  json_object_set_new(root, "lora_dropout", json_real(round((double)c->dropout * 1e6) / 1e6));
  json_object_set_new(root, "bias", json_string("none"));
  json_object_set_new(root, "fan_in_fan_out", json_boolean(fan_in_fan_out));
  json_object_set_new(root, "inference_mode", json_true());
  json_object_set_new(root, "target_modules", tm);
  json_object_set_new(root, "layers_to_transform", ltt);
  json_object_set_new(root, "base_model_name_or_path", json_null());
  char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
  json_decref(root);
  if (text == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  rc = ss_file_write_atomic_buf(path, text, strlen(text), err, errlen); /* never via PATH.tmp */
  free(text);
  return rc;
}

int ss_lora_save(const ss_params *prm, const ss_lora_cfg *c, const char *const *names, int n, int a,
                 int b, int fan_in_fan_out, const char *dir, char *err, size_t errlen) {
  char file[1200];
  int rc;
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "cannot create adapter directory %.200s: %s", dir, strerror(errno));
    return SS_EIO;
  }
  snprintf(file, sizeof file, "%s/adapter_model.safetensors", dir);
  if ((rc = ss_params_write(prm, file, SS_PARAMS_VALUES, err, errlen)) != 0) return rc;
  snprintf(file, sizeof file, "%s/optimizer.safetensors", dir);
  if ((rc = ss_params_write(prm, file, SS_PARAMS_OPTIM, err, errlen)) != 0) return rc;
  snprintf(file, sizeof file, "%s/adapter_config.json", dir);
  return write_config(c, names, n, a, b, fan_in_fan_out, file, err, errlen);
}
