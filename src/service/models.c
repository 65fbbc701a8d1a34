/*
 * models.c — the served model set: loading at start-up, lookup by model_id, per-model admission
 * limits, and the SIGHUP reload of a --config file.
 *
 * Threads: lookup and the swap run on the loop thread. A reload parses the file and loads the
 * new models on a worker thread (a pool job: loading mmaps and converts weights and must never
 * stall the loop); the job only reads its own copy of the current specs. Back on the loop the
 * new set replaces the old one at once: unchanged models (same spec) are kept with their queues,
 * new ones appear, removed ones are retired — no new calls reach them and they are freed when
 * their last in-flight call ends. A config that does not parse or whose models fail to load is
 * refused with a log line, and the old set keeps serving.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "core/macros.h"
#include "models/safetensors.h"
#include "service/auth.h"
#include "service/service_int.h"

static const char *const builtin_specs[] = {"mlp=mlp", "identity=identity", "scale=scale",
                                            "sleep=sleep", "spin=spin"};
#define N_BUILTIN (sizeof builtin_specs / sizeof builtin_specs[0])
#define N_BUILTIN_ALWAYS 2 /* mlp, identity; the rest are test models (--enable-test-models) */

/* The kinds that exist for tests and benchmarks only: they burn CPU, hold timers or scale
 * tensors on request, so a production server does not offer them unless asked to. */
static int test_kind(const char *kind, size_t len) {
  static const char *const kinds[] = {"scale", "sleep", "spin"};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (strlen(kinds[i]) == len && strncmp(kinds[i], kind, len) == 0) return 1;
  return 0;
}

int ss_models_test_disabled(const ss_service *s, const char *id) {
  if (s->cfg.enable_test_models || !id) return 0;
  for (size_t k = N_BUILTIN_ALWAYS; k < N_BUILTIN; k++)
    if (strncmp(builtin_specs[k], id, strlen(id)) == 0 && builtin_specs[k][strlen(id)] == '=')
      return 1;
  return 0;
}

ss_served_model *ss_service_find_model(ss_service *s, const char *id) {
  if (!id || !*id) return s->nmodels ? s->models[0] : NULL;
  for (size_t i = 0; i < s->nmodels; i++)
    if (strcmp(s->models[i]->model->id, id) == 0) return s->models[i];
  return NULL;
}

static void warn_unserved(void *user, int line, const char *model) {
  ss_service *s = user;
  if (ss_service_find_model(s, model)) return;
  char have[512];
  ss_models_list(s, have, sizeof have);
  SS_LOGW(
      "%s:%d: model '%s' is not served by this server (it serves: %s); a typo? "
      "calls for it will be refused",
      s->cfg.auth_tokens, line, model, have);
}

void ss_models_check_auth(ss_service *s) {
  if (s->auth) ss_auth_each_model(s->auth, warn_unserved, s);
}

void ss_models_list(const ss_service *s, char *buf, size_t len) {
  size_t off = 0;
  buf[0] = 0;
  for (size_t i = 0; i < s->nmodels && off + 1 < len; i++) {
    int n = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", s->models[i]->model->id);
    if (n < 0) break;
    off += (size_t)n;
  }
}

static void apply_limits(ss_service *s, ss_served_model *sm) {
  const ss_model *m = sm->model;
  int limit = sm->conf_inflight >= 0 ? sm->conf_inflight : s->cfg.max_inflight;
  int queue = sm->conf_queue >= 0 ? sm->conf_queue : s->cfg.max_queue;
  if (m->exec == SS_EXEC_WORKER) {
    /* A worker model cannot run more at once than there are workers (1 when inline). */
    int w = s->cfg.workers > 0 ? s->cfg.workers : 1;
    if (limit <= 0 || limit > w) limit = w;
  }
  if (m->exec == SS_EXEC_INLINE) limit = 0;
  sm->admit.limit = limit;
  sm->admit.max_queue = queue;
}

static ss_served_model *served_new(ss_service *s, ss_model *m, const char *spec, int inflight,
                                   int queue) {
  ss_served_model *sm = calloc(1, sizeof *sm);
  if (!sm) return NULL;
  sm->spec = strdup(spec);
  if (!sm->spec) {
    free(sm);
    return NULL;
  }
  sm->model = m;
  sm->conf_inflight = inflight;
  sm->conf_queue = queue;
  ss_admit_init(&sm->admit, 0, 0);
  ss_admit_init(&sm->train_admit, 1, s->cfg.max_queue);
  apply_limits(s, sm);
  return sm;
}

static void served_free(ss_served_model *sm) {
  ss_model_free(sm->model);
  free(sm->spec);
  free(sm);
}

void ss_served_ref(ss_served_model *sm) {
  assert(sm->refs >= 0);
  sm->refs++;
}

void ss_served_unref(ss_served_model *sm) {
  assert(sm->refs > 0);
  if (--sm->refs == 0 && sm->retired) {
    SS_LOGI("model '%s' unloaded (retired by a reload, last call finished)", sm->model->id);
    served_free(sm);
  }
}

static void retire(ss_served_model *sm) {
  sm->retired = 1;
  if (sm->refs == 0) {
    SS_LOGI("model '%s' unloaded", sm->model->id);
    served_free(sm);
  } else {
    SS_LOGI("model '%s' retired: unloads after its %d in-flight call(s)", sm->model->id, sm->refs);
  }
}

void ss_models_free(ss_service *s) {
  for (size_t i = 0; i < s->nmodels; i++) served_free(s->models[i]);
  free(s->models);
  s->models = NULL;
  s->nmodels = 0;
}

/* ------------------------------------------------------------- building --- */

/* A model set under construction: specs, limits, and the models loaded for them. */
typedef struct build_entry {
  char *spec;
  int inflight, queue;
  ss_model *model; /* loaded here, or NULL when an existing model with this spec is kept */
} build_entry;

typedef struct build {
  build_entry *v;
  size_t n;
} build;

static int build_add(build *b, const char *spec, int inflight, int queue) {
  build_entry *v = realloc(b->v, (b->n + 1) * sizeof *v);
  if (!v) return SS_ENOMEM;
  b->v = v;
  v[b->n] = (build_entry){strdup(spec), inflight, queue, NULL};
  if (!v[b->n].spec) return SS_ENOMEM;
  b->n++;
  return 0;
}

static void build_free(build *b) {
  for (size_t i = 0; i < b->n; i++) {
    free(b->v[i].spec);
    ss_model_free(b->v[i].model);
  }
  free(b->v);
  b->v = NULL;
  b->n = 0;
}

static int spec_in(const char *spec, char *const *keep, size_t nkeep) {
  for (size_t i = 0; i < nkeep; i++)
    if (strcmp(spec, keep[i]) == 0) return 1;
  return 0;
}

/* Load every entry whose spec is not in keep[]; add the built-ins whose ids are free.
 * Any thread (it touches only b). */
static int build_load(build *b, char *const *keep, size_t nkeep, int test_models, char *err,
                      size_t errlen) {
  size_t nuser = b->n;
  for (size_t i = 0; i < nuser; i++) {
    const char *kind = b->v[i].spec + strcspn(b->v[i].spec, "=");
    if (*kind) kind++;
    if (!test_models && test_kind(kind, strcspn(kind, ","))) {
      snprintf(err, errlen,
               "model %s: kind '%.*s' is a test model, disabled by default; start "
               "the server with --enable-test-models (config enable_test_models: "
               "true) to serve it",
               b->v[i].spec, (int)strcspn(kind, ","), kind);
      return SS_EINVAL;
    }
    if (spec_in(b->v[i].spec, keep, nkeep)) continue;
    char e[512];
    int rv = ss_model_create(b->v[i].spec, &b->v[i].model, e, sizeof e);
    if (rv != 0) {
      snprintf(err, errlen, "model %s: %s", b->v[i].spec, e);
      return rv;
    }
  }
  for (size_t i = 0; i < nuser; i++) { /* ids are unique */
    const char *a = b->v[i].spec;
    size_t la = strcspn(a, "=");
    for (size_t j = 0; j < i; j++)
      if (strcspn(b->v[j].spec, "=") == la && strncmp(b->v[j].spec, a, la) == 0) {
        snprintf(err, errlen, "model id '%.*s' given twice", (int)la, a);
        return SS_EINVAL;
      }
  }
  for (size_t k = 0; k < (test_models ? N_BUILTIN : N_BUILTIN_ALWAYS); k++) {
    size_t li = strcspn(builtin_specs[k], "=");
    int taken = 0;
    for (size_t i = 0; i < nuser; i++)
      if (strcspn(b->v[i].spec, "=") == li && strncmp(b->v[i].spec, builtin_specs[k], li) == 0)
        taken = 1;
    if (taken) continue;
    if (build_add(b, builtin_specs[k], -1, -1) != 0) return SS_ENOMEM;
    if (spec_in(builtin_specs[k], keep, nkeep)) continue;
    char e[512];
    int rv = ss_model_create(builtin_specs[k], &b->v[b->n - 1].model, e, sizeof e);
    if (rv != 0) {
      snprintf(err, errlen, "built-in model %s: %s", builtin_specs[k], e);
      return rv;
    }
  }
  return 0;
}

/* Loop thread: make b the served set, keeping existing models whose spec is unchanged. */
static int build_commit(ss_service *s, build *b) {
  ss_served_model **v = calloc(b->n ? b->n : 1, sizeof *v);
  if (!v) return SS_ENOMEM;
  for (size_t i = 0; i < b->n; i++) {
    build_entry *e = &b->v[i];
    ss_served_model *sm = NULL;
    if (!e->model) {
      for (size_t j = 0; j < s->nmodels; j++)
        if (s->models[j] && strcmp(s->models[j]->spec, e->spec) == 0) {
          sm = s->models[j];
          s->models[j] = NULL; /* taken over */
          sm->conf_inflight = e->inflight;
          sm->conf_queue = e->queue;
          apply_limits(s, sm);
          break;
        }
    } else {
      sm = served_new(s, e->model, e->spec, e->inflight, e->queue);
      if (sm) e->model = NULL;
    }
    if (!sm) { /* out of memory: undo the take-overs */
      for (size_t j = 0; j < i; j++)
        if (v[j] && !b->v[j].model) {
          for (size_t k = 0; k < s->nmodels; k++)
            if (!s->models[k]) {
              s->models[k] = v[j];
              break;
            }
        }
      free(v);
      return SS_ENOMEM;
    }
    v[i] = sm;
  }
  for (size_t j = 0; j < s->nmodels; j++)
    if (s->models[j]) retire(s->models[j]);
  free(s->models);
  s->models = v;
  s->nmodels = b->n;
  return 0;
}

int ss_models_load(ss_service *s, char *err, size_t errlen) {
  build b = {0};
  int rv = 0;
  for (size_t i = 0; i < s->cfg.n_models && rv == 0; i++)
    rv = build_add(&b, s->cfg.models[i],
                   s->cfg.model_max_inflight ? s->cfg.model_max_inflight[i] : -1,
                   s->cfg.model_max_queue ? s->cfg.model_max_queue[i] : -1);
  if (rv == 0)
    rv = build_load(&b, NULL, 0, s->cfg.enable_test_models, err, errlen);
  else
    snprintf(err, errlen, "out of memory");
  if (rv == 0 && build_commit(s, &b) != 0) {
    rv = SS_ENOMEM;
    snprintf(err, errlen, "out of memory");
  }
  build_free(&b);
  if (rv == 0 && s->cfg.save_weights) { /* --save-weights: the default model's checkpoint */
    ss_model *m = s->models[0]->model;
    if (!m->ops->save) {
      snprintf(err, errlen,
               "--save-weights: the default model '%s' (kind %s) has no weights to save", m->id,
               m->kind);
      return SS_EINVAL;
    }
    if (!m->save_path && !(m->save_path = strdup(s->cfg.save_weights))) return SS_ENOMEM;
  }
  return rv;
}

/* ---------------------------------------------------------- checkpoints --- */

typedef struct save_job {
  ss_job job;
  ss_service *srv;
  ss_served_model *sm; /* holds a reference */
  const char *why;
  int rc;
  double ms;
  char err[512];
} save_job;

static void save_run(ss_job *job) {
  save_job *j = ss_container_of(job, save_job, job);
  ss_model *m = j->sm->model;
  uint64_t t0 = uv_hrtime();
  uv_rwlock_rdlock(&m->lock); /* a consistent version: no step runs meanwhile */
  j->rc = m->ops->save(m, m->save_path, j->err, sizeof j->err);
  uv_rwlock_rdunlock(&m->lock);
  j->ms = (double)(uv_hrtime() - t0) / 1e6;
}

static void save_done(ss_job *job) {
  save_job *j = ss_container_of(job, save_job, job);
  const ss_model *m = j->sm->model;
  if (!job->ran)
    SS_LOGW("checkpoint of model '%s' cancelled", m->id);
  else if (j->rc != 0) {
    SS_LOGE("checkpoint of model '%s' to %s failed: %s", m->id, m->save_path, j->err);
    j->srv->save_failed = 1;
  } else
    SS_LOGI("checkpoint (%s): model '%s' written to %s in %.1f ms", j->why, m->id, m->save_path,
            j->ms);
  j->srv->saving--;
  ss_served_unref(j->sm); /* the transport's flush check sees saving == 0 (busy hook) */
  free(j);
}

void ss_models_save_all(ss_service *s, const char *why) {
  for (size_t i = 0; i < s->nmodels; i++) {
    ss_served_model *sm = s->models[i];
    if (!sm->model->save_path || !sm->model->ops->save) continue;
    save_job *j = calloc(1, sizeof *j);
    if (!j) {
      SS_LOGE("checkpoint of model '%s': out of memory", sm->model->id);
      continue;
    }
    j->srv = s;
    j->sm = sm;
    ss_served_ref(sm);
    j->why = why;
    j->job.run = save_run;
    j->job.done = save_done;
    s->saving++;
    ss_pool_submit(s->pool, &j->job);
  }
}

/* -------------------------------------------------------------- reload --- */

typedef struct reload_job {
  ss_job job;
  ss_service *srv;
  char *path;    /* the --config file, or a description when models came from --model */
  int from_file; /* 0: rebuild the current specs (models given with --model) */
  char **all;    /* without a file: every current spec, with its limits (copies) */
  int *all_inflight, *all_queue;
  size_t nall;
  char **keep; /* specs of the current set (a copy: the worker never reads the server) */
  size_t nkeep;
  int test_models; /* --enable-test-models as at start-up (a reload does not change it) */
  build b;
  int rc;
  char err[1024];
} reload_job;

static void reload_job_free(reload_job *r) {
  for (size_t i = 0; i < r->nkeep; i++) free(r->keep[i]);
  for (size_t i = 0; i < r->nall; i++) free(r->all[i]);
  free(r->keep);
  free(r->all);
  free(r->all_inflight);
  free(r->all_queue);
  free(r->path);
  free(r);
}

static void reload_run(ss_job *job) {
  reload_job *r = ss_container_of(job, reload_job, job);
  if (!r->from_file) { /* the same specs: those whose files changed are loaded afresh */
    for (size_t i = 0; r->rc == 0 && i < r->nall; i++)
      if (build_add(&r->b, r->all[i], r->all_inflight[i], r->all_queue[i]) != 0) {
        r->rc = SS_ENOMEM;
        snprintf(r->err, sizeof r->err, "out of memory");
      }
  } else {
    ss_file_config fc;
    r->rc = ss_config_load(r->path, &fc, r->err, sizeof r->err);
    for (size_t i = 0; r->rc == 0 && i < fc.n_models; i++)
      if (build_add(&r->b, fc.models[i].spec, fc.models[i].max_inflight, fc.models[i].max_queue) !=
          0) {
        r->rc = SS_ENOMEM;
        snprintf(r->err, sizeof r->err, "out of memory");
      }
    ss_config_free(&fc);
  }
  if (r->rc == 0)
    r->rc = build_load(&r->b, r->keep, r->nkeep, r->test_models, r->err, sizeof r->err);
}

static void reload_done(ss_job *job) {
  reload_job *r = ss_container_of(job, reload_job, job);
  ss_service *s = r->srv;
  s->reloading = 0;
  if (!job->ran) {
    SS_LOGW("config reload of %s cancelled (shutting down)", r->path);
  } else if (r->rc != 0) {
    SS_LOGE("config reload of %s refused: %s; still serving the previous models", r->path, r->err);
  } else if (build_commit(s, &r->b) != 0) {
    SS_LOGE("config reload of %s refused: out of memory; still serving the previous models",
            r->path);
  } else {
    SS_LOGI("config reloaded from %s: %zu models (default '%s')", r->path, s->nmodels,
            s->models[0]->model->id);
    for (size_t i = 0; i < s->nmodels; i++)
      SS_LOGI("model %-10s %s", s->models[i]->model->id, s->models[i]->model->describe);
  }
  build_free(&r->b);
  reload_job_free(r);
  ss_models_check_auth(s);               /* the token file may name models that came or went */
  if (s->reload_again && !s->draining) { /* a SIGHUP came meanwhile: the file may differ again */
    s->reload_again = 0;
    ss_models_reload(s);
  }
}

void ss_models_reload(ss_service *s) {
  if (s->reloading) {
    SS_LOGI("SIGHUP: a reload is running; another one follows it");
    s->reload_again = 1;
    return;
  }
  reload_job *r = calloc(1, sizeof *r);
  size_t n = s->nmodels ? s->nmodels : 1;
  if (r) {
    r->from_file = s->cfg.config_path != NULL;
    r->path = strdup(r->from_file ? s->cfg.config_path : "the --model specs");
    r->test_models = s->cfg.enable_test_models;
    r->keep = calloc(n, sizeof *r->keep);
    r->all = calloc(n, sizeof *r->all);
    r->all_inflight = calloc(n, sizeof *r->all_inflight);
    r->all_queue = calloc(n, sizeof *r->all_queue);
  }
  if (!r || !r->path || !r->keep || !r->all || !r->all_inflight || !r->all_queue) {
    if (r) reload_job_free(r);
    SS_LOGE("SIGHUP: out of memory; reload skipped");
    return;
  }
  for (size_t i = 0; !r->from_file && i < s->nmodels; i++) {
    r->all[r->nall] = strdup(s->models[i]->spec);
    r->all_inflight[r->nall] = s->models[i]->conf_inflight;
    r->all_queue[r->nall] = s->models[i]->conf_queue;
    if (r->all[r->nall]) r->nall++;
  }
  for (size_t i = 0; i < s->nmodels; i++) {
    const ss_model *m = s->models[i]->model;
    if (m->weights && ss_st_changed_on_disk(m->weights)) {
      SS_LOGI("SIGHUP: model '%s': its weights file changed on disk; loading it again", m->id);
      continue; /* not kept: loaded afresh from the new file */
    }
    r->keep[r->nkeep] = strdup(s->models[i]->spec);
    if (r->keep[r->nkeep]) r->nkeep++; /* a spec missing here is merely loaded again */
  }
  if (!r->from_file && r->nkeep == s->nmodels) { /* nothing changed on disk */
    SS_LOGI("SIGHUP: no --config file, and no weights file changed on disk: nothing to reload");
    reload_job_free(r);
    return;
  }
  r->srv = s;
  r->job.run = reload_run;
  r->job.done = reload_done;
  s->reloading = 1;
  SS_LOGI("SIGHUP: reloading %s on a worker", r->path);
  ss_pool_submit(s->pool, &r->job);
}
