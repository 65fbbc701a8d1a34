/*
 * registry.c — model specs ("ID=KIND[,key=value...]") and the table of model kinds.
 *
 * Thread: main thread at start-up (models are created before the loop runs and are immutable
 * afterwards). The table below is the only place that knows every kind: its constructor and
 * the spec keys it accepts, so an unknown kind or key is refused here with a message listing
 * what is allowed, before any constructor runs.
 *
 * A bare word after key=value (no '=') continues that key's value as a list:
 * "lora_targets=q_proj,v_proj" gives lora_targets the value "q_proj,v_proj".
 *
 * Kinds that can train (mlp, gpt2, llama) also take the training keys, parsed here into m->optim
 * and m->save_path and left out of what their constructor sees: optimizer=sgd|adamw (default sgd),
 * beta1, beta2, eps (adamw only), weight_decay (SGD: added to the gradient, default 0; AdamW:
 * decoupled, default 0.01), save=PATH (checkpoint on drain and SIGUSR1). Every model gets its
 * weights lock (m->lock) here and loses it in ss_model_free.
 *
 * The same kinds take compute=fp32|bf16|int8 (the dtype of their weight products; default fp32;
 * int8 is weight-only, on any CPU),
 * parsed here into m->compute before the constructor runs (which keeps it for its linear layers:
 * nn/matmul.h ss_matmul_w). bf16 is refused at start-up on a CPU without native bf16 products
 * (avx512_bf16 / AMX), with a message naming what is missing (never a silent fp32 run).
 * So are the Split-Learning trainer's keys (service/train.c): implicit_training=0|1 (an
 * untagged Compute is a training forward, paired with the next ComputeBackward of its
 * connection), learning_rate=LR and accumulation_step=N (what a ComputeBackward that sends
 * neither uses; no learning_rate: such calls only accumulate).
 *
 * And backend=cpu|reference (default cpu): the op table and allocator their ops run on
 * (nn/backend/backend.h), parsed into m->backend before the constructor runs. reference is the
 * slow double-accumulating oracle; it computes in f32 only, so compute=bf16|int8 with it is
 * refused. The model's describe line (start-up log, GetServiceInfo) names its backend.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "models/nn/backend/backend.h"
#include "models/nn/matmul.h"

typedef int (*kind_ctor)(ss_model *m, const char *const *params, size_t n, char *err,
                         size_t errlen);

typedef struct kind_entry {
  const char *name;
  kind_ctor ctor;
  const char *const *keys; /* NULL-terminated list of accepted spec keys */
  int trains;              /* also accepts the training keys (train_keys) */
} kind_entry;

static const char *const no_keys[] = {NULL};
/* Each kind's own keys (passed to its constructor)... */
static const char *const mlp_keys[] = {"weights", "activation", NULL};
static const char *const gpt2_keys[] = {
    "weights",      "config",  "layers",       "lora_rank", "lora_alpha",
    "lora_targets", "adapter", "lora_dropout", "lora_seed", NULL};
static const char *const llama_keys[] = {
    "weights",      "config",  "layers",       "lora_rank", "lora_alpha",
    "lora_targets", "adapter", "lora_dropout", "lora_seed", NULL};

/* ...and the training, batching, wire and compute keys, written once: accepted by every kind
 * that can train, parsed here (parse_training, parse_compute) and never passed to the kind's
 * constructor. */
static const char *const train_keys[] = {"optimizer",
                                         "beta1",
                                         "beta2",
                                         "eps",
                                         "weight_decay",
                                         "save",
                                         "max_batch_rows",
                                         "batch_delay_us",
                                         "decode_batch",
                                         "wire_dtype",
                                         "wire_codec",
                                         "compute",
                                         "implicit_training",
                                         "learning_rate",
                                         "accumulation_step",
                                         "backend",
                                         NULL};

static const kind_entry kinds[] = {
    {"identity", ss_model_identity_new, no_keys, 0}, {"scale", ss_model_scale_new, no_keys, 0},
    {"sleep", ss_model_sleep_new, no_keys, 0},       {"spin", ss_model_spin_new, no_keys, 0},
    {"mlp", ss_model_mlp_new, mlp_keys, 1},          {"gpt2", ss_model_gpt2_new, gpt2_keys, 1},
    {"llama", ss_model_llama_new, llama_keys, 1},
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

static void join_names(const char *const *names, size_t n, int null_terminated, char *buf,
                       size_t buflen) {
  size_t pos = 0;
  buf[0] = '\0';
  for (size_t i = 0; null_terminated ? names[i] != NULL : i < n; i++) {
    int w = snprintf(buf + pos, buflen - pos, "%s%s", i ? ", " : "", names[i]);
    if (w < 0 || (size_t)w >= buflen - pos) break;
    pos += (size_t)w;
  }
}

static int is_train_key(const char *key) {
  for (size_t i = 0; train_keys[i] != NULL; i++)
    if (strcmp(key, train_keys[i]) == 0) return 1;
  return 0;
}

/* A finite float spec value in [lo, hi] (hi_open: < hi). */
static int parse_real(const char *id, const char *key, const char *v, double lo, double hi,
                      int hi_open, const char *range, float *out, char *err, size_t errlen) {
  char *end;
  double d;
  errno = 0;
  d = strtod(v, &end);
  if (v[0] == '\0' || *end != '\0' || errno != 0 || !isfinite(d) || d < lo || d > hi ||
      (hi_open && d >= hi)) {
    snprintf(err, errlen, "model '%s': %s must be a number %s, got '%s'", id, key, range, v);
    return SS_EINVAL;
  }
  *out = (float)d;
  return 0;
}

/* compute=fp32|bf16|int8 (see the top comment) into m->compute. */
static int parse_compute(ss_model *m, const char *const *params, size_t n, char *err,
                         size_t errlen) {
  m->compute = SS_MM_F32;
  for (size_t i = 0; i < n; i++) {
    const char *v = params[2 * i + 1];
    char why[160];
    if (strcmp(params[2 * i], "compute") != 0 || strcmp(v, "fp32") == 0) continue;
    if (strcmp(v, "int8") == 0) {
      m->compute = SS_MM_INT8;
      continue;
    }
    if (strcmp(v, "bf16") != 0) {
      snprintf(err, errlen, "model '%s': compute must be fp32, bf16 or int8, got '%s'", m->id, v);
      return SS_EINVAL;
    }
    if (ss_matmul_bf16_check(why, sizeof why) != 0) {
      snprintf(err, errlen, "model '%s': %s", m->id, why);
      return SS_EINVAL;
    }
    m->compute = SS_MM_BF16;
  }
  return 0;
}

/* backend=cpu|reference (see the top comment) into m->backend; after parse_compute. */
static int parse_backend(ss_model *m, const char *const *params, size_t n, char *err,
                         size_t errlen) {
  m->backend = &ss_backend_cpu;
  for (size_t i = 0; i < n; i++) {
    const char *v = params[2 * i + 1];
    if (strcmp(params[2 * i], "backend") != 0) continue;
    if ((m->backend = ss_backend_find(v)) == NULL) {
      snprintf(err, errlen, "model '%s': backend must be cpu or reference, got '%s'", m->id, v);
      return SS_EINVAL;
    }
  }
  if (m->backend == &ss_backend_reference && m->compute != SS_MM_F32) {
    snprintf(err, errlen,
             "model '%s': backend=reference computes in fp32 only (it is the numerical oracle); "
             "drop compute=%s or use backend=cpu",
             m->id, m->compute == SS_MM_BF16 ? "bf16" : "int8");
    return SS_EINVAL;
  }
  return 0;
}

/* The training keys of a spec into m->optim and m->save_path (defaults: SGD without weight
 * decay; AdamW betas 0.9, 0.999, eps 1e-8, weight_decay 0.01). */
static int parse_training(ss_model *m, const char *const *params, size_t n, char *err,
                          size_t errlen) {
  const char *opt = "sgd", *save = NULL, *adam_only = NULL;
  int rc = 0;
  ss_optim *o = &m->optim;

  for (size_t i = 0; i < n; i++)
    if (strcmp(params[2 * i], "optimizer") == 0) opt = params[2 * i + 1];
  if (strcmp(opt, "sgd") == 0) {
    o->kind = SS_OPT_SGD;
  } else if (strcmp(opt, "adamw") == 0) {
    o->kind = SS_OPT_ADAMW;
  } else {
    snprintf(err, errlen, "model '%s': optimizer must be sgd or adamw, got '%s'", m->id, opt);
    return SS_EINVAL;
  }
  o->lr = 0.0f;
  o->beta1 = 0.9f;
  o->beta2 = 0.999f;
  o->eps = 1e-8f;
  o->weight_decay = o->kind == SS_OPT_ADAMW ? 0.01f : 0.0f;
  for (size_t i = 0; i < n && rc == 0; i++) {
    const char *k = params[2 * i], *v = params[2 * i + 1];
    if (strcmp(k, "beta1") == 0) {
      adam_only = k;
      rc = parse_real(m->id, k, v, 0.0, 1.0, 1, "in [0, 1)", &o->beta1, err, errlen);
    } else if (strcmp(k, "beta2") == 0) {
      adam_only = k;
      rc = parse_real(m->id, k, v, 0.0, 1.0, 1, "in [0, 1)", &o->beta2, err, errlen);
    } else if (strcmp(k, "eps") == 0) {
      adam_only = k;
      rc = parse_real(m->id, k, v, 0.0, 1.0, 0, "in [0, 1]", &o->eps, err, errlen);
      if (rc == 0 && !(o->eps > 0.0f)) {
        snprintf(err, errlen, "model '%s': eps must be a number in (0, 1], got '%s'", m->id, v);
        rc = SS_EINVAL;
      }
    } else if (strcmp(k, "weight_decay") == 0) {
      rc = parse_real(m->id, k, v, 0.0, 1e6, 0, ">= 0", &o->weight_decay, err, errlen);
    } else if (strcmp(k, "max_batch_rows") == 0 || strcmp(k, "batch_delay_us") == 0) {
      char *end;
      errno = 0;
      long x = strtol(v, &end, 10);
      long hi = strcmp(k, "max_batch_rows") == 0 ? 1 << 20 : 1000000;
      if (!*v || *end || errno || x < 0 || x > hi) {
        snprintf(err, errlen, "model '%s': %s must be an integer in [0, %ld], got '%s'", m->id, k,
                 hi, v);
        return SS_EINVAL;
      }
      if (k[0] == 'm')
        m->max_batch_rows = (int)x;
      else
        m->batch_delay_us = (int)x;
    } else if (strcmp(k, "decode_batch") == 0) {
      if (strcmp(v, "0") != 0 && strcmp(v, "1") != 0) {
        snprintf(err, errlen, "model '%s': decode_batch must be 0 or 1, got '%s'", m->id, v);
        return SS_EINVAL;
      }
      m->decode_batch = v[0] == '1';
    } else if (strcmp(k, "wire_dtype") == 0) {
      ss_dtype dt;
      if (ss_dtype_parse(v, &dt) != 0) {
        snprintf(err, errlen,
                 "model '%s': wire_dtype must be float32, float16 or bfloat16, got '%s'", m->id, v);
        return SS_EINVAL;
      }
      m->wire_dtype = (int)dt;
    } else if (strcmp(k, "implicit_training") == 0) {
      if (strcmp(v, "0") != 0 && strcmp(v, "1") != 0) {
        snprintf(err, errlen, "model '%s': implicit_training must be 0 or 1, got '%s'", m->id, v);
        return SS_EINVAL;
      }
      m->implicit_training = v[0] == '1';
    } else if (strcmp(k, "learning_rate") == 0) {
      rc = parse_real(m->id, k, v, 0.0, 1e6, 0, "in (0, 1e6]", &m->learning_rate, err, errlen);
      if (rc == 0 && !(m->learning_rate > 0.0f)) {
        snprintf(err, errlen, "model '%s': learning_rate must be a number in (0, 1e6], got '%s'",
                 m->id, v);
        rc = SS_EINVAL;
      }
    } else if (strcmp(k, "accumulation_step") == 0) {
      char *end;
      errno = 0;
      long x = strtol(v, &end, 10);
      if (!*v || *end || errno || x < 1 || x > 1000000) {
        snprintf(err, errlen,
                 "model '%s': accumulation_step must be an integer in [1, 1000000], "
                 "got '%s'",
                 m->id, v);
        return SS_EINVAL;
      }
      m->accumulation_step = (int)x;
    } else if (strcmp(k, "wire_codec") == 0) {
      if (strcmp(v, "zlib") != 0 && strcmp(v, "none") != 0) {
        snprintf(err, errlen, "model '%s': wire_codec must be none or zlib, got '%s'", m->id, v);
        return SS_EINVAL;
      }
      m->wire_codec = strcmp(v, "zlib") == 0;
    } else if (strcmp(k, "save") == 0) {
      save = v;
      if (v[0] == '\0') {
        snprintf(err, errlen, "model '%s': save must be a file path, got ''", m->id);
        rc = SS_EINVAL;
      }
    }
  }
  if (rc != 0) return rc;
  if (adam_only != NULL && o->kind != SS_OPT_ADAMW) {
    snprintf(err, errlen, "model '%s': %s applies to optimizer=adamw only (optimizer is %s)", m->id,
             adam_only, opt);
    return SS_EINVAL;
  }
  if (save != NULL && (m->save_path = strdup(save)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  return 0;
}

int ss_model_create_kind(const char *id, const char *kind, const char *const *params, size_t n,
                         ss_model **out, char *err, size_t errlen) {
  const kind_entry *k = NULL;
  ss_model *m;
  char list[400];
  const char *const *ctor_params;
  const char **own_params = NULL;
  size_t ctor_n;
  int rc;

  *out = NULL;
  if (id == NULL || id[0] == '\0') {
    snprintf(err, errlen, "model id must not be empty");
    return SS_EINVAL;
  }
  for (size_t i = 0; i < N_KINDS; i++)
    if (kind != NULL && strcmp(kind, kinds[i].name) == 0) k = &kinds[i];
  if (k == NULL) {
    const char *names[N_KINDS];
    for (size_t i = 0; i < N_KINDS; i++) names[i] = kinds[i].name;
    join_names(names, N_KINDS, 0, list, sizeof list);
    snprintf(err, errlen, "model '%s': unknown kind '%s' (known kinds: %s)", id, kind ? kind : "",
             list);
    return SS_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    const char *key = params[2 * i];
    int ok = k->trains && is_train_key(key);
    for (size_t j = 0; k->keys[j] != NULL; j++)
      if (strcmp(key, k->keys[j]) == 0) ok = 1;
    if (!ok) {
      if (k->keys[0] == NULL && !k->trains) {
        snprintf(err, errlen, "model '%s': kind '%s' takes no parameters, got '%s'", id, k->name,
                 key);
      } else {
        char shared[400];
        join_names(k->keys, 0, 1, list, sizeof list);
        join_names(train_keys, 0, 1, shared, sizeof shared);
        snprintf(err, errlen, "model '%s': unknown parameter '%s' for kind '%s' (known: %s%s%s)",
                 id, key, k->name, list, k->trains ? ", " : "", k->trains ? shared : "");
      }
      return SS_EINVAL;
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(key, params[2 * j]) == 0) {
        snprintf(err, errlen, "model '%s': parameter '%s' given twice", id, key);
        return SS_EINVAL;
      }
    }
  }
  m = calloc(1, sizeof *m);
  if (m == NULL || (m->id = strdup(id)) == NULL) {
    free(m);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  if (uv_rwlock_init(&m->lock) != 0) {
    free(m->id);
    free(m);
    snprintf(err, errlen, "model '%s': cannot create its weights lock", id);
    return SS_ENOMEM;
  }
  m->kind = k->name;
  m->wire_dtype = m->wire_codec = -1; /* unset: the server's defaults apply */
  m->decode_batch = 1;                /* one-token steps of different sequences batch */
  rc = 0;
  ctor_params = params;
  ctor_n = n;
  if (k->trains) {
    /* Training keys are the registry's; the constructor sees the rest. */
    rc = parse_compute(m, params, n, err, errlen);
    if (rc == 0) rc = parse_backend(m, params, n, err, errlen);
    if (rc == 0) rc = parse_training(m, params, n, err, errlen);
    if (rc == 0 && n > 0 && (own_params = malloc(2 * n * sizeof *own_params)) == NULL) {
      snprintf(err, errlen, "out of memory");
      rc = SS_ENOMEM;
    }
    if (rc == 0) {
      ctor_n = 0;
      for (size_t i = 0; i < n; i++) {
        if (is_train_key(params[2 * i])) continue;
        own_params[2 * ctor_n] = params[2 * i];
        own_params[2 * ctor_n + 1] = params[2 * i + 1];
        ctor_n++;
      }
      ctor_params = own_params;
    }
  }
  if (rc == 0) {
    rc = k->ctor(m, ctor_params, ctor_n, err, errlen);
    if (rc != 0) m->ops = NULL; /* a failed constructor has freed its own impl */
  }
  if (rc == 0 && m->compute != SS_MM_F32) { /* say so where the model is described */
    size_t len = strlen(m->describe);
    snprintf(m->describe + len, sizeof m->describe - len, "; compute %s",
             m->compute == SS_MM_BF16 ? "bf16" : "int8 (weight-only)");
  }
  if (rc == 0 && m->backend != NULL) { /* kinds with ops: which backend runs them */
    size_t len = strlen(m->describe);
    snprintf(m->describe + len, sizeof m->describe - len, "; backend %s", m->backend->name);
  }
  free(own_params);
  if (rc != 0) {
    ss_model_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

int ss_model_create(const char *spec, ss_model **out, char *err, size_t errlen) {
  const char *params[64];
  char *copy, *eq, *kind, *rest, *tok, *next;
  size_t n = 0;
  int rc;

  *out = NULL;
  if (spec == NULL || (eq = strchr(spec, '=')) == NULL || eq == spec) {
    snprintf(err, errlen, "model spec '%s' must look like ID=KIND[,key=value...]",
             spec ? spec : "");
    return SS_EINVAL;
  }
  if ((copy = strdup(spec)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  eq = copy + (eq - spec);
  *eq = '\0';
  kind = eq + 1;
  rest = strchr(kind, ',');
  if (rest != NULL) *rest++ = '\0';
  if (kind[0] == '\0') {
    snprintf(err, errlen, "model spec '%s': missing KIND after '='", spec);
    free(copy);
    return SS_EINVAL;
  }
  for (tok = rest; tok != NULL; tok = next) {
    char *v;
    next = strchr(tok, ',');
    if (next != NULL) *next++ = '\0';
    if (tok[0] == '\0') continue; /* empty item (",,"): skipped */
    v = strchr(tok, '=');
    if (v == NULL && n > 0) {
      /* a bare word continues the previous key's list: put its comma back. The previous value
       * ends right before it only when nothing (no empty item) came between. */
      char *prev_end = (char *)params[n - 1] + strlen(params[n - 1]);
      if (prev_end + 1 == tok) {
        *prev_end = ',';
        continue;
      }
    }
    if (v == NULL || v == tok) {
      snprintf(err, errlen, "model spec '%s': parameter '%s' must be key=value", spec, tok);
      free(copy);
      return SS_EINVAL;
    }
    if (n + 2 > sizeof params / sizeof params[0]) {
      snprintf(err, errlen, "model spec '%s': too many parameters", spec);
      free(copy);
      return SS_EINVAL;
    }
    *v = '\0';
    params[n++] = tok;
    params[n++] = v + 1;
  }
  rc = ss_model_create_kind(copy, kind, params, n / 2, out, err, errlen);
  free(copy);
  return rc;
}

void ss_model_free(ss_model *m) {
  if (m == NULL) return;
  if (m->ops != NULL && m->ops->destroy != NULL) m->ops->destroy(m);
  ss_matmul_weights_drop(m); /* its packed weight copies and mapping registration */
  uv_rwlock_destroy(&m->lock);
  free(m->save_path);
  free(m->id);
  free(m);
}
