/*
 * registry.c — model specs ("ID=KIND[,key=value...]") and the table of model kinds.
 *
 * Thread: main thread at start-up (models are created before the loop runs and are immutable
 * afterwards). The two tables below are the only place that knows every kind (its constructor)
 * and every spec key (one row each: the kinds that take it, its value type and range, default
 * and meaning), so an unknown kind or key, or a value of the wrong type or out of range, is
 * refused here with a message saying what is allowed, before any constructor runs; the same
 * rows print `splitserve --help-model-keys` (the README's model key table).
 *
 * A bare word after key=value (no '=') continues that key's value as a list:
 * "lora_targets=q_proj,v_proj" gives lora_targets the value "q_proj,v_proj".
 *
 * Kinds that can train (mlp, gpt2, llama, gpt_neox) also take the registry's own keys (rows with a
 * field), parsed here (parse_shared) and left out of what their constructor sees: the training keys
 * (optimizer, AdamW's betas and eps, weight_decay: SGD adds it to the gradient, AdamW decays;
 * save=PATH, written on drain and SIGUSR1), batching and wire keys, the Split-Learning trainer's
 * keys (service/train.c: implicit_training, learning_rate, accumulation_step), compute (the
 * dtype of the weight products, kept in m->compute for nn/matmul.h ss_matmul_w; bf16 is refused
 * at start-up on a CPU without avx512_bf16 / AMX, naming what is missing, never a silent fp32
 * run) and backend (the op table and allocator of the model's ops, nn/backend/backend.h;
 * reference is the slow double-accumulating oracle, fp32 only, so compute=bf16|int8 with it is
 * refused). The describe line (start-up log, GetServiceInfo) names the compute and backend.
 * Every model gets its weights lock (m->lock) here and loses it in ss_model_free.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "models/nn/backend/backend.h"
#include "models/nn/matmul.h"
#include "splitserve.h"

typedef int (*kind_ctor)(ss_model *m, const char *const *params, size_t n, char *err,
                         size_t errlen);

/* Which kinds take a key: one bit per kind that has keys. */
enum { KM_MLP = 1u << 0, KM_GPT2 = 1u << 1, KM_LLAMA = 1u << 2, KM_NEOX = 1u << 3 };
#define KM_TRUNK (KM_GPT2 | KM_LLAMA | KM_NEOX)
#define KM_TRAIN (KM_MLP | KM_TRUNK)

typedef struct kind_entry {
  const char *name;
  kind_ctor ctor;
  unsigned bit; /* its KM_ bit (0: takes no keys) */
} kind_entry;

static const kind_entry kinds[] = {
    {"identity", ss_model_identity_new, 0},  {"scale", ss_model_scale_new, 0},
    {"sleep", ss_model_sleep_new, 0},        {"spin", ss_model_spin_new, 0},
    {"mlp", ss_model_mlp_new, KM_MLP},       {"gpt2", ss_model_gpt2_new, KM_GPT2},
    {"llama", ss_model_llama_new, KM_LLAMA}, {"gpt_neox", ss_model_gpt_neox_new, KM_NEOX},
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

/* The value types of spec keys. */
typedef enum {
  SK_PATH, /* a non-empty file or directory path */
  SK_TEXT, /* free text the constructor parses (layers=A:B, lora_targets=a,b) */
  SK_BOOL, /* 0 or 1 */
  SK_INT,  /* an integer in [lo, hi] */
  SK_U64,  /* an unsigned 64-bit integer */
  SK_REAL, /* a finite number in the range `range` says (lo, hi; open ends by flags) */
  SK_ENUM, /* one of choices ("a|b|c"); the value is its index */
  SK_DTYPE /* a tensor dtype name (core/tensor: float32, float16, bfloat16 and aliases) */
} sk_type;
enum { SK_LO_OPEN = 1, SK_HI_OPEN = 2 };
#define NO_FIELD ((size_t)-1)

/* One spec key: every key of every kind is one row. The registry checks each value against its
 * row before any constructor runs; keys with a field are the registry's (shared by the kinds
 * that can train, parsed into the model and never passed to the constructor), the others are the
 * kind's own and reach its constructor as text. `splitserve --help-model-keys` prints the rows
 * (the README's model key table, checked by tests/check_settings.py). */
typedef struct spec_key {
  const char *name;
  unsigned kinds; /* KM_ bits of the kinds that take it */
  sk_type type;
  double lo, hi;       /* SK_INT, SK_REAL */
  int open;            /* SK_REAL: SK_LO_OPEN | SK_HI_OPEN */
  const char *choices; /* SK_ENUM: "a|b|c"; SK_REAL: the range in words when the numbers
                        * would read badly (NULL: "in [lo, hi)") */
  size_t field;        /* the registry's keys: offset of the int / float in ss_model, or
                        * NO_FIELD (set by hand: save, backend); own keys: 0 */
  int own;             /* 1: the kind's own key (passed to the constructor) */
  const char *dflt, *help;
} spec_key;

#define OWN(n, k, t, lo, hi, op, ch, d, h) \
  { n, k, t, lo, hi, op, ch, 0, 1, d, h }
#define REG(n, t, lo, hi, op, ch, f, d, h) \
  { n, KM_TRAIN, t, lo, hi, op, ch, f, 0, d, h }
#define MF(f) offsetof(ss_model, f)

static const spec_key spec_keys[] = {
    /* the kinds' own keys */
    OWN("weights", KM_TRAIN, SK_PATH, 0, 0, 0, NULL, "mlp: the embedded 768-768-768",
        "the checkpoint: a safetensors file; trunks also its directory, or a sharded "
        "checkpoint's directory or index"),
    OWN("activation", KM_MLP, SK_ENUM, 0, 0, 0, "relu|gelu", "relu",
        "the activation between the Linear layers"),
    OWN("config", KM_TRUNK, SK_PATH, 0, 0, 0, NULL, "config.json beside the weights",
        "the Hugging Face config.json"),
    OWN("layers", KM_TRUNK, SK_TEXT, 0, 0, 0, NULL, ":", "the blocks A:B of the trunk (A: or :B)"),
    OWN("lora_rank", KM_TRUNK, SK_INT, 1, 4096, 0, NULL, "none",
        "LoRA rank r: trains adapters on a frozen trunk"),
    OWN("lora_alpha", KM_TRUNK, SK_REAL, 0, FLT_MAX, SK_LO_OPEN, NULL, "2 r",
        "LoRA alpha (the adapters scale by alpha / r)"),
    OWN("lora_targets", KM_TRUNK, SK_TEXT, 0, 0, 0, NULL, "PEFT's (c_attn; q_proj,v_proj)",
        "the layers that get adapters, PEFT names, comma-separated"),
    OWN("adapter", KM_TRUNK, SK_PATH, 0, 0, 0, NULL, "none",
        "a PEFT adapter directory to load (adapter_config.json, adapter_model.safetensors)"),
    OWN("lora_dropout", KM_TRUNK, SK_REAL, 0, 1, SK_HI_OPEN, NULL, "the adapter's, else 0",
        "dropout on the adapters' inputs in training forwards"),
    OWN("lora_seed", KM_TRUNK, SK_U64, 0, 0, 0, NULL, "0", "the seed of the dropout masks"),
    /* the registry's keys, shared by the kinds that can train */
    REG("optimizer", SK_ENUM, 0, 0, 0, "sgd|adamw", MF(optim.kind), "sgd",
        "the optimizer of ComputeBackward's steps"),
    REG("beta1", SK_REAL, 0, 1, SK_HI_OPEN, NULL, MF(optim.beta1), "0.9", "AdamW beta1"),
    REG("beta2", SK_REAL, 0, 1, SK_HI_OPEN, NULL, MF(optim.beta2), "0.999", "AdamW beta2"),
    REG("eps", SK_REAL, 0, 1, SK_LO_OPEN, NULL, MF(optim.eps), "1e-8", "AdamW eps"),
    REG("weight_decay", SK_REAL, 0, 1e6, 0, ">= 0", MF(optim.weight_decay), "0 (sgd), 0.01 (adamw)",
        "SGD: added to the gradient; AdamW: decoupled"),
    REG("save", SK_PATH, 0, 0, 0, NULL, NO_FIELD, "none",
        "checkpoint path, written atomically on drain and SIGUSR1"),
    REG("max_batch_rows", SK_INT, 0, 1 << 20, 0, NULL, MF(max_batch_rows), "0 (off)",
        "dynamic batching of concurrent calls up to N rows"),
    REG("batch_delay_us", SK_INT, 0, 1000000, 0, NULL, MF(batch_delay_us), "0",
        "how long a batch waits for company"),
    REG("decode_batch", SK_BOOL, 0, 0, 0, NULL, MF(decode_batch), "1",
        "one-token steps of different sequences batch"),
    REG("wire_dtype", SK_DTYPE, 0, 0, 0, NULL, MF(wire_dtype), "--wire-dtype",
        "dtype of tensors without metadata"),
    REG("wire_codec", SK_ENUM, 0, 0, 0, "none|zlib", MF(wire_codec), "--wire-codec",
        "codec of tensors without metadata"),
    REG("compute", SK_ENUM, 0, 0, 0, "fp32|bf16|int8", MF(compute), "fp32",
        "dtype of the weight products (bf16 needs avx512_bf16 or AMX)"),
    REG("backend", SK_ENUM, 0, 0, 0, "cpu|reference", NO_FIELD, "cpu",
        "the op table and allocator the model runs on"),
    REG("implicit_training", SK_BOOL, 0, 0, 0, NULL, MF(implicit_training), "0",
        "an untagged Compute is a training forward for the next ComputeBackward"),
    REG("learning_rate", SK_REAL, 0, 1e6, SK_LO_OPEN, "in (0, 1e6]", MF(learning_rate), "none",
        "the step of a ComputeBackward that sends none"),
    REG("accumulation_step", SK_INT, 1, 1000000, 0, NULL, MF(accumulation_step), "1",
        "backward calls per step when the request says none"),
};
#define N_SPEC_KEYS (sizeof spec_keys / sizeof spec_keys[0])
_Static_assert(sizeof(ss_opt_kind) == sizeof(int), "optimizer is stored as an int");

static const spec_key *spec_key_find(const char *name) {
  for (size_t i = 0; i < N_SPEC_KEYS; i++)
    if (strcmp(spec_keys[i].name, name) == 0) return &spec_keys[i];
  return NULL;
}

static void join_names(const char *const *names, size_t n, char *buf, size_t buflen) {
  size_t pos = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    int w = snprintf(buf + pos, buflen - pos, "%s%s", i ? ", " : "", names[i]);
    if (w < 0 || (size_t)w >= buflen - pos) break;
    pos += (size_t)w;
  }
}

/* "a|b|c" as "a, b or c" into buf. */
static void choices_text(const char *choices, char *buf, size_t len) {
  size_t pos = 0, n = 1;
  for (const char *c = choices; *c; c++) n += *c == '|';
  buf[0] = '\0';
  for (size_t i = 0; i < n && pos + 1 < len; i++) {
    const char *end = strchr(choices, '|');
    int w = (int)(end ? (size_t)(end - choices) : strlen(choices));
    int k = snprintf(buf + pos, len - pos, "%s%.*s",
                     i == 0       ? ""
                     : i + 1 == n ? " or "
                                  : ", ",
                     w, choices);
    if (k > 0) pos += (size_t)k;
    choices = end ? end + 1 : choices;
  }
}

/* The range of an SK_REAL or SK_INT row in words ("in [0, 1)", ">= 0"). */
static void range_text(const spec_key *k, char *buf, size_t len) {
  if (k->choices != NULL) /* the row's own words */
    snprintf(buf, len, "%s", k->choices);
  else if (k->hi == FLT_MAX)
    snprintf(buf, len, "> %g and at most %g (a float)", k->lo, (double)FLT_MAX);
  else
    snprintf(buf, len, "in %c%g, %g%c", (k->open & SK_LO_OPEN) ? '(' : '[', k->lo, k->hi,
             (k->open & SK_HI_OPEN) ? ')' : ']');
}

/* v checked against row k. *out: SK_INT, SK_BOOL, SK_ENUM, SK_DTYPE: the integer (enum: the
 * index); SK_REAL: the number. 0, or SS_EINVAL with "model 'ID': KEY must be ..., got 'V'". */
static int key_value(const char *id, const spec_key *k, const char *v, double *out, char *err,
                     size_t errlen) {
  char *end, what[160];
  errno = 0;
  switch (k->type) {
    case SK_PATH:
      if (v[0] != '\0') return 0;
      snprintf(what, sizeof what, "a %s path",
               strcmp(k->name, "save") == 0 ? "file" : "file or directory");
      break;
    case SK_TEXT: return 0;
    case SK_BOOL:
      if ((strcmp(v, "0") == 0 || strcmp(v, "1") == 0)) {
        *out = v[0] == '1';
        return 0;
      }
      snprintf(what, sizeof what, "0 or 1");
      break;
    case SK_INT: {
      long long x = strtoll(v, &end, 10);
      if (v[0] != '\0' && *end == '\0' && errno == 0 && (double)x >= k->lo && (double)x <= k->hi) {
        *out = (double)x;
        return 0;
      }
      snprintf(what, sizeof what, "an integer in [%.0f, %.0f]", k->lo, k->hi);
      break;
    }
    case SK_U64: {
      unsigned long long x = strtoull(v, &end, 10);
      (void)x;
      if (v[0] >= '0' && v[0] <= '9' && *end == '\0' && errno == 0) return 0;
      snprintf(what, sizeof what, "an unsigned 64-bit integer");
      break;
    }
    case SK_REAL: {
      double d = strtod(v, &end);
      if (v[0] != '\0' && *end == '\0' && errno == 0 && isfinite(d) &&
          ((k->open & SK_LO_OPEN) ? d > k->lo : d >= k->lo) &&
          ((k->open & SK_HI_OPEN) ? d < k->hi : d <= k->hi)) {
        *out = d;
        return 0;
      }
      char r[96];
      range_text(k, r, sizeof r);
      snprintf(what, sizeof what, "a number %s", r);
      break;
    }
    case SK_ENUM: {
      const char *c = k->choices;
      size_t n = strlen(v);
      for (int i = 0; c != NULL; i++) {
        const char *bar = strchr(c, '|');
        size_t w = bar ? (size_t)(bar - c) : strlen(c);
        if (n > 0 && w == n && strncmp(c, v, n) == 0) {
          *out = i;
          return 0;
        }
        c = bar ? bar + 1 : NULL;
      }
      choices_text(k->choices, what, sizeof what);
      break;
    }
    case SK_DTYPE: {
      ss_dtype dt;
      if (ss_dtype_parse(v, &dt) == 0) {
        *out = (double)dt;
        return 0;
      }
      snprintf(what, sizeof what, "float32, float16 or bfloat16");
      break;
    }
  }
  snprintf(err, errlen, "model '%s': %s must be %s, got '%s'", id, k->name, what, v);
  return SS_EINVAL;
}

/* The registry's keys of a spec into m (defaults first: SGD without weight decay, AdamW betas
 * 0.9, 0.999, eps 1e-8, weight_decay 0.01, compute fp32, backend cpu), then the checks that
 * span keys: AdamW-only keys, bf16 on this CPU, reference with fp32 only. */
static int parse_shared(ss_model *m, const char *const *params, size_t n, char *err,
                        size_t errlen) {
  const char *adam_only = NULL, *opt = "sgd";
  int wd_given = 0;
  ss_optim *o = &m->optim;
  o->kind = SS_OPT_SGD;
  o->beta1 = 0.9f;
  o->beta2 = 0.999f;
  o->eps = 1e-8f;
  m->compute = SS_MM_F32;
  m->backend = &ss_backend_cpu;
  for (size_t i = 0; i < n; i++) {
    const spec_key *k = spec_key_find(params[2 * i]);
    const char *v = params[2 * i + 1];
    double x = 0;
    int rc;
    if (k == NULL || k->own) continue;
    if ((rc = key_value(m->id, k, v, &x, err, errlen)) != 0) return rc;
    if (k->field == NO_FIELD) { /* set by hand */
      if (strcmp(k->name, "backend") == 0) {
        m->backend = x == 0 ? &ss_backend_cpu : &ss_backend_reference;
      } else if ((m->save_path = strdup(v)) == NULL) { /* save */
        snprintf(err, errlen, "out of memory");
        return SS_ENOMEM;
      }
    } else if (k->type == SK_REAL) {
      *(float *)(void *)((char *)m + k->field) = (float)x;
    } else {
      *(int *)(void *)((char *)m + k->field) = (int)x;
    }
    if (strcmp(k->name, "optimizer") == 0) opt = v;
    if (strncmp(k->name, "beta", 4) == 0 || strcmp(k->name, "eps") == 0) adam_only = k->name;
    if (strcmp(k->name, "weight_decay") == 0) wd_given = 1;
  }
  if (!wd_given) o->weight_decay = o->kind == SS_OPT_ADAMW ? 0.01f : 0.0f;
  if (adam_only != NULL && o->kind != SS_OPT_ADAMW) {
    snprintf(err, errlen, "model '%s': %s applies to optimizer=adamw only (optimizer is %s)", m->id,
             adam_only, opt);
    return SS_EINVAL;
  }
  if (m->compute == SS_MM_BF16) {
    char why[160];
    if (ss_matmul_bf16_check(why, sizeof why) != 0) {
      snprintf(err, errlen, "model '%s': %s", m->id, why);
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

/* The names of the keys kind bit takes, ", "-separated, into buf. */
static void kind_keys(unsigned bit, char *buf, size_t len) {
  size_t pos = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < N_SPEC_KEYS && pos + 1 < len; i++) {
    if (!(spec_keys[i].kinds & bit)) continue;
    int w = snprintf(buf + pos, len - pos, "%s%s", pos ? ", " : "", spec_keys[i].name);
    if (w > 0) pos += (size_t)w;
  }
}

void ss_model_keys_markdown(FILE *f) {
  fprintf(f, "| key | kinds | value | default | meaning |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < N_SPEC_KEYS; i++) {
    const spec_key *k = &spec_keys[i];
    char val[200], who[64] = "";
    size_t pos = 0;
    for (size_t j = 0; j < N_KINDS; j++) {
      if (!(kinds[j].bit & k->kinds)) continue;
      int w = snprintf(who + pos, sizeof who - pos, "%s%s", pos ? ", " : "", kinds[j].name);
      if (w > 0 && (size_t)w < sizeof who - pos) pos += (size_t)w;
    }
    switch (k->type) {
      case SK_PATH: snprintf(val, sizeof val, "path"); break;
      case SK_TEXT: snprintf(val, sizeof val, "text"); break;
      case SK_BOOL: snprintf(val, sizeof val, "0 or 1"); break;
      case SK_INT: snprintf(val, sizeof val, "integer in [%.0f, %.0f]", k->lo, k->hi); break;
      case SK_U64: snprintf(val, sizeof val, "unsigned 64-bit integer"); break;
      case SK_REAL: {
        char r[96];
        range_text(k, r, sizeof r);
        snprintf(val, sizeof val, "number %s", r);
        break;
      }
      case SK_ENUM: {
        char c[120];
        choices_text(k->choices, c, sizeof c);
        snprintf(val, sizeof val, "%s", c);
        break;
      }
      case SK_DTYPE: snprintf(val, sizeof val, "float32, float16 or bfloat16"); break;
    }
    fprintf(f, "| `%s` | %s | %s | %s | %s |\n", k->name, who, val, k->dflt, k->help);
  }
}

int ss_model_create_kind(const char *id, const char *kind, const char *const *params, size_t n,
                         ss_model **out, char *err, size_t errlen) {
  const kind_entry *k = NULL;
  ss_model *m;
  char list[600];
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
    join_names(names, N_KINDS, list, sizeof list);
    snprintf(err, errlen, "model '%s': unknown kind '%s' (known kinds: %s)", id, kind ? kind : "",
             list);
    return SS_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    const char *key = params[2 * i];
    const spec_key *sk = spec_key_find(key);
    double ignored;
    if (sk == NULL || !(sk->kinds & k->bit)) {
      if (k->bit == 0) {
        snprintf(err, errlen, "model '%s': kind '%s' takes no parameters, got '%s'", id, k->name,
                 key);
      } else {
        kind_keys(k->bit, list, sizeof list);
        snprintf(err, errlen, "model '%s': unknown parameter '%s' for kind '%s' (known: %s)", id,
                 key, k->name, list);
      }
      return SS_EINVAL;
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(key, params[2 * j]) == 0) {
        snprintf(err, errlen, "model '%s': parameter '%s' given twice", id, key);
        return SS_EINVAL;
      }
    }
    if (key_value(id, sk, params[2 * i + 1], &ignored, err, errlen) != 0) return SS_EINVAL;
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
  if (k->bit & KM_TRAIN) {
    /* The registry's keys are parsed here; the constructor sees the kind's own. */
    rc = parse_shared(m, params, n, err, errlen);
    if (rc == 0 && n > 0 && (own_params = malloc(2 * n * sizeof *own_params)) == NULL) {
      snprintf(err, errlen, "out of memory");
      rc = SS_ENOMEM;
    }
    if (rc == 0) {
      ctor_n = 0;
      for (size_t i = 0; i < n; i++) {
        if (!spec_key_find(params[2 * i])->own) continue;
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
