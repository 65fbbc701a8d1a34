/*
 * server_config.c — where a server's configuration comes from: the defaults, a --config YAML
 * file under the command line, and the daemon's argv (include/splitserve.h:
 * ss_server_config_load, ss_server_config_args). Every setting is a row of core/settings.c;
 * nothing here names one, except --config and --model, which are not plain values.
 *
 * Thread: the main thread at start-up (pure parsing; nothing started).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/settings.h"
#include "splitserve.h"

struct ss_config_file {
  ss_file_config fc;   /* the --config file (zeroed without one) */
  const char **models; /* model specs cfg->models points to (strings in fc or argv) */
  int *inflight, *queue;
  size_t nmodels, cap;
  char **strs; /* strings from the command line cfg points into (owned) */
  size_t nstrs;
};

void ss_config_file_free(ss_config_file *f) {
  if (!f) return;
  ss_config_free(&f->fc);
  free(f->models);
  free(f->inflight);
  free(f->queue);
  for (size_t i = 0; i < f->nstrs; i++) free(f->strs[i]);
  free(f->strs);
  free(f);
}

static int add_model(ss_config_file *f, const char *spec, int inflight, int queue) {
  if (f->nmodels == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 8;
    const char **m = realloc(f->models, cap * sizeof *m);
    if (m) f->models = m;
    int *a = realloc(f->inflight, cap * sizeof *a);
    if (a) f->inflight = a;
    int *q = realloc(f->queue, cap * sizeof *q);
    if (q) f->queue = q;
    if (!m || !a || !q) return SS_ENOMEM;
    f->cap = cap;
  }
  f->models[f->nmodels] = spec;
  f->inflight[f->nmodels] = inflight;
  f->queue[f->nmodels++] = queue;
  return 0;
}

static void use_models(ss_server_config *cfg, const ss_config_file *f) {
  cfg->models = f->models;
  cfg->n_models = f->nmodels;
  cfg->model_max_inflight = f->inflight;
  cfg->model_max_queue = f->queue;
}

static int load_into(ss_server_config *cfg, const char *path, ss_config_file *f, char *err,
                     size_t errlen) {
  int rv = ss_config_load(path, &f->fc, err, errlen);
  for (size_t k = 0; rv == 0 && k < f->fc.n_models; k++)
    if (add_model(f, f->fc.models[k].spec, f->fc.models[k].max_inflight,
                  f->fc.models[k].max_queue) != 0) {
      snprintf(err, errlen, "out of memory");
      rv = SS_ENOMEM;
    }
  if (rv != 0) return rv;
  for (size_t i = 0; i < ss_nsettings; i++)
    if (f->fc.has[i]) ss_setting_copy(cfg, &f->fc.set, (int)i);
  use_models(cfg, f);
  cfg->config_path = path;
  return 0;
}

int ss_server_config_load(ss_server_config *cfg, const char *path, ss_config_file **out, char *err,
                          size_t errlen) {
  *out = NULL;
  ss_config_file *f = calloc(1, sizeof *f);
  if (!f) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  ss_server_config tmp = *cfg; /* cfg stays untouched on an error */
  int rv = load_into(&tmp, path, f, err, errlen);
  if (rv != 0) {
    ss_config_file_free(f);
    return rv;
  }
  *cfg = tmp;
  *out = f;
  return 0;
}

int ss_server_config_args(ss_server_config *cfg, int argc, char *const *argv, ss_config_file **out,
                          char *err, size_t errlen) {
  *out = NULL;
  ss_config_file *f = calloc(1, sizeof *f);
  if (!f) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  const char *config_path = NULL;
  int rv = 0;
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--config") == 0) config_path = argv[i + 1];
  if (config_path) { /* the file first: every flag overrides it, wherever it stands */
    char cerr[1024];
    if ((rv = load_into(cfg, config_path, f, cerr, sizeof cerr)) != 0)
      snprintf(err, errlen, "--config: %s", cerr);
  }
  for (int i = 1; rv == 0 && i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      ss_settings_usage(stdout);
      rv = 1;
      break;
    }
    if (strcmp(a, "--help-markdown") == 0) {
      ss_settings_markdown(stdout);
      rv = 1;
      break;
    }
    int k = ss_setting_by_flag(a);
    if (k < 0) {
      snprintf(err, errlen, "unknown flag %.200s (splitserve --help lists them)", a);
      rv = SS_EINVAL;
      break;
    }
    const ss_setting *s = &ss_settings[k];
    const char *v = NULL;
    if (s->type != SS_ST_BOOL) {
      if (i + 1 >= argc) {
        snprintf(err, errlen, "%s needs a value: %s %s", a, a, s->arg);
        rv = SS_EINVAL;
        break;
      }
      v = argv[++i];
    }
    if (s->type == SS_ST_CONFIG) continue; /* loaded above (the last one given) */
    if (s->type == SS_ST_MODEL) {
      if (config_path) {
        snprintf(err, errlen,
                 "--model with --config: list the models in %.300s (SIGHUP reloads them from "
                 "there)",
                 config_path);
        rv = SS_EINVAL;
      } else if (add_model(f, v, -1, -1) != 0) {
        snprintf(err, errlen, "out of memory");
        rv = SS_ENOMEM;
      }
      continue;
    }
    char *owned = NULL, msg[400];
    if ((rv = ss_setting_set(cfg, k, v, &owned, msg, sizeof msg)) != 0) {
      snprintf(err, errlen, "%s: %s", a, msg);
      break;
    }
    if (owned) {
      char **strs = realloc(f->strs, (f->nstrs + 1) * sizeof *strs);
      if (!strs) {
        free(owned);
        snprintf(err, errlen, "out of memory");
        rv = SS_ENOMEM;
        break;
      }
      f->strs = strs;
      f->strs[f->nstrs++] = owned;
    }
  }
  if (rv != 0) {
    ss_config_file_free(f);
    return rv;
  }
  if (!config_path) use_models(cfg, f);
  *out = f;
  return 0;
}
