/*
 * registry.c — model specs ("ID=KIND[,key=value...]") and the table of model kinds.
 *
 * Thread: main thread at start-up (models are created before the loop runs and are immutable
 * afterwards). The table below is the only place that knows every kind: its constructor and
 * the spec keys it accepts, so an unknown kind or key is refused here with a message listing
 * what is allowed, before any constructor runs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"

typedef int (*kind_ctor)(ss_model *m, const char *const *params, size_t n, char *err,
                         size_t errlen);

typedef struct kind_entry {
  const char *name;
  kind_ctor ctor;
  const char *const *keys; /* NULL-terminated list of accepted spec keys */
} kind_entry;

static const char *const no_keys[] = {NULL};
static const char *const mlp_keys[] = {"weights", "activation", NULL};
static const char *const gpt2_keys[] = {"weights", "config", "layers", NULL};

static const kind_entry kinds[] = {
    {"identity", ss_model_identity_new, no_keys},
    {"scale", ss_model_scale_new, no_keys},
    {"sleep", ss_model_sleep_new, no_keys},
    {"spin", ss_model_spin_new, no_keys},
    {"mlp", ss_model_mlp_new, mlp_keys},
    {"gpt2", ss_model_gpt2_new, gpt2_keys},
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

int ss_model_create_kind(const char *id, const char *kind, const char *const *params, size_t n,
                         ss_model **out, char *err, size_t errlen) {
  const kind_entry *k = NULL;
  ss_model *m;
  char list[200];
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
    snprintf(err, errlen, "model '%s': unknown kind '%s' (known kinds: %s)", id,
             kind ? kind : "", list);
    return SS_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    const char *key = params[2 * i];
    int ok = 0;
    for (size_t j = 0; k->keys[j] != NULL; j++)
      if (strcmp(key, k->keys[j]) == 0) ok = 1;
    if (!ok) {
      if (k->keys[0] == NULL) {
        snprintf(err, errlen, "model '%s': kind '%s' takes no parameters, got '%s'", id, k->name,
                 key);
      } else {
        join_names(k->keys, 0, 1, list, sizeof list);
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
  }
  m = calloc(1, sizeof *m);
  if (m == NULL || (m->id = strdup(id)) == NULL) {
    free(m);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  m->kind = k->name;
  rc = k->ctor(m, params, n, err, errlen);
  if (rc != 0) {
    m->ops = NULL; /* a failed constructor has freed its own impl */
    ss_model_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

int ss_model_create(const char *spec, ss_model **out, char *err, size_t errlen) {
  const char *params[64];
  char *copy, *eq, *kind, *rest, *tok, *save = NULL;
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
  for (tok = rest ? strtok_r(rest, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
    char *v = strchr(tok, '=');
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
  free(m->id);
  free(m);
}
