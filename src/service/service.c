/*
 * service.c — the service object: its method table (which file handles which RPC), its life
 * (models, sessions, activations, monitor timer) and what it does when the transport drains.
 *
 * Methods and their handlers:
 *   /splitlearn.comm.ComputeService/Compute           compute.c  ss_h_compute
 *   /splitlearn.comm.ComputeService/ComputeBackward   train.c    ss_h_backward
 *   /splitlearn.comm.ComputeService/HealthCheck       info.c     ss_h_health_check
 *   /splitlearn.comm.ComputeService/GetServiceInfo    info.c     ss_h_service_info
 *   /splitlearn.comm.ComputeService/StreamMonitoring  info.c     ss_h_stream_monitoring
 *   /grpc.health.v1.Health/Check                      info.c     ss_h_grpc_health_check
 *   /grpc.health.v1.Health/Watch                      info.c     ss_h_grpc_health_watch
 *
 * Authentication (--auth-tokens): the methods that need a token have ss_access_precheck as
 * their precheck; who may call what is access.c (on the token table, auth.c).
 *
 * Thread: loop thread (ss_service_new before the loop runs; ss_service_free after it ended).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "service/auth.h"
#include "service/compute_int.h"
#include "service/service_int.h"
#include "service/sessions.h"
#include "service/train_int.h"

/* Health, info and monitoring requests carry no data (at most a service name or an interval):
 * SS_SMALL_REQUEST bounds them before a byte of them is buffered. */
#define SS_SMALL_REQUEST 1024

/* State sizes come from the handlers' state types (compute_int.h, train_int.h,
 * service_int.h): the table is constant, nothing is filled in at start-up. */
static const ss_method methods[] = {
    {"/splitlearn.comm.ComputeService/Compute", 0, sizeof(compute_state), ss_h_compute, 0,
     ss_access_precheck},
    {"/splitlearn.comm.ComputeService/ComputeBackward", 0, sizeof(backward_state), ss_h_backward, 0,
     ss_access_precheck},
    {"/splitlearn.comm.ComputeService/HealthCheck", 0, sizeof(info_state), ss_h_health_check,
     SS_SMALL_REQUEST, NULL},
    {"/splitlearn.comm.ComputeService/GetServiceInfo", 0, sizeof(info_state), ss_h_service_info,
     SS_SMALL_REQUEST, ss_access_precheck},
    {"/splitlearn.comm.ComputeService/StreamMonitoring", 1, sizeof(ss_watch),
     ss_h_stream_monitoring, SS_SMALL_REQUEST, ss_access_precheck},
    {"/grpc.health.v1.Health/Check", 0, sizeof(info_state), ss_h_grpc_health_check,
     SS_SMALL_REQUEST, NULL},
    {"/grpc.health.v1.Health/Watch", 1, sizeof(ss_watch), ss_h_grpc_health_watch, SS_SMALL_REQUEST,
     NULL},
};

const ss_method *ss_service_methods(size_t *n) {
  *n = sizeof methods / sizeof methods[0];
  return methods;
}

static const char *const kept_headers[] = {"authorization", "x-session-id", "x-forward-id"};

const char *const *ss_service_headers(size_t *n) {
  *n = sizeof kept_headers / sizeof kept_headers[0];
  return kept_headers;
}

/* ------------------------------------------------------------ drain --- */

void ss_service_drain_started(ss_service *s) {
  s->draining = 1;
  ss_info_on_drain(s);
}

void ss_service_drained(ss_service *s, int graceful) {
  /* Every unary call is answered: write the checkpoints (not when the operator asked for an
   * immediate stop). */
  if (graceful) ss_models_save_all(s, "drain");
}

int ss_service_busy(const ss_service *s) { return s->saving > 0; }

void ss_service_attach(ss_service *svc, ss_grpc_server *g) { svc->grpc = g; }

/* ------------------------------------------------------------------ life --- */

static void on_monitor(uv_timer_t *t) {
  ss_service *s = t->data;
  ss_monitor_sample(&s->mon);
  ss_sessions_sweep(s->sessions);
  ss_train_sweep(s);
}

int ss_service_new(uv_loop_t *loop, ss_pool *pool, const ss_server_config *cfg, ss_service **out,
                   char *err, size_t errlen) {
  *out = NULL;
  ss_service *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  s->cfg = *cfg;
  s->loop = loop;
  if (uv_mutex_init(&s->auth_mu) != 0) {
    snprintf(err, errlen, "cannot create a mutex");
    free(s);
    return SS_ENOMEM;
  }
  s->pool = pool;
  s->start_ns = uv_hrtime();
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  s->ncpu = ncpu > 0 ? (int)ncpu : 1;
  ss_tq_init(loop, &s->tq);
  uv_timer_init(loop, &s->monitor_timer);
  s->monitor_timer.data = s;
  uv_check_init(loop, &s->batch_check);
  s->batch_check.data = s;
  s->handles_open = 1;
  int rv = ss_sessions_new(s->cfg.session_max_bytes, s->cfg.session_ttl_s, &s->sessions);
  if (rv != 0) snprintf(err, errlen, "out of memory");
  if (rv == 0) {
    rv = ss_train_init(s);
    if (rv != 0) snprintf(err, errlen, "out of memory");
  }
  if (rv == 0 && s->cfg.auth_tokens) rv = ss_access_load(s, "auth", err, errlen);
  if (rv == 0 && s->cfg.auth_tokens && (rv = ss_auth_tag_key(s->owner_key)) != 0)
    snprintf(err, errlen, "no random bytes for the owner-tag key");
  if (rv == 0) rv = ss_models_load(s, err, errlen);
  if (rv == 0) ss_models_check_auth(s);
  if (rv != 0) {
    ss_service_close(s);
    uv_run(loop, UV_RUN_NOWAIT); /* let the closed handles finish */
    ss_service_free(s);
    return rv;
  }
  ss_monitor_sample(&s->mon);
  uv_timer_start(&s->monitor_timer, on_monitor, 1000, 1000);
  uv_unref((uv_handle_t *)&s->monitor_timer);
  *out = s;
  return 0;
}

void ss_service_log_start(const ss_service *s) {
  SS_LOGI(
      "splitserve %s: %d workers x %d intra-op threads, %zu models (default '%s'), "
      "threads now %d",
      SS_VERSION, s->cfg.workers, s->cfg.intra_op_threads, s->nmodels, s->models[0]->model->id,
      ss_thread_count());
  for (size_t i = 0; i < s->nmodels; i++)
    SS_LOGI("model %-10s %s", s->models[i]->model->id, s->models[i]->model->describe);
}

void ss_service_reload(ss_service *s) {
  if (s->draining) return;
  if (s->cfg.auth_tokens) {
    char err[512];
    if (ss_access_load(s, "SIGHUP", err, sizeof err) != 0)
      SS_LOGE("SIGHUP: auth tokens not reloaded, keeping the %zu old ones: %s",
              ss_auth_count(s->auth), err);
    else if (!s->cfg.config_path)
      ss_models_check_auth(s); /* else once reloaded */
  }
  ss_models_reload(s); /* the --config file, or the --model specs whose weights changed */
}

void ss_service_save_all(ss_service *s, const char *why) { ss_models_save_all(s, why); }

int ss_service_save_failed(const ss_service *s) { return s->save_failed; }

void ss_service_close(ss_service *s) {
  if (!s->handles_open) return;
  s->handles_open = 0;
  ss_batch_flush_all(s);
  uv_close((uv_handle_t *)&s->monitor_timer, NULL);
  uv_close((uv_handle_t *)&s->batch_check, NULL);
  ss_tq_close(&s->tq);
}

void ss_service_free(ss_service *s) {
  if (!s) return;
  if (s->acts) ss_train_free(s);
  ss_sessions_free(s->sessions);
  ss_models_free(s);
  ss_metrics_free(s);
  ss_auth_free(s->auth);
  uv_mutex_destroy(&s->auth_mu);
  free(s);
}
