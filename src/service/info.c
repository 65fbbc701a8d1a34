/*
 * info.c — the handlers that never compute: ComputeService.HealthCheck, GetServiceInfo,
 * StreamMonitoring, and the standard grpc.health.v1.Health Check and Watch.
 *
 * Thread: loop thread only; each answers at once (streams send from the timer queue).
 * Streaming calls (StreamMonitoring, Watch) do not hold a drain open: on drain, Watch streams
 * are sent NOT_SERVING, and every stream ends with OK once the unary calls are done.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/config.h"
#include "core/kcache.h"
#include "core/log.h"
#include "core/macros.h"
#include "core/settings.h"
#include "health.pb-c.h"
#include "models/nn/deferred.h"
#include "models/nn/matmul.h"
#include "service/auth.h"
#include "service/service_int.h"
#include "service/sessions.h"

static double uptime_s(const ss_service *s) { return (double)(uv_hrtime() - s->start_ns) / 1e9; }

static void info_release(ss_call *call) {
  info_state *st = ss_call_state(call);
  ss_metrics_observe(st->svc, "", st->method, ss_call_status(call), -1, -1,
                     (double)(uv_hrtime() - ss_call_start_ns(call)) / 1e9);
}

static void info_begin(ss_call *call, void *app, const char *method) {
  info_state *st = ss_call_state(call);
  st->svc = app;
  st->method = method;
  ss_call_set_hooks(call, NULL, info_release);
}

/* Unpack an empty-bodied request only to check it is valid protobuf. */
static int check_wire(ss_call *call, const ProtobufCMessageDescriptor *d) {
  size_t len;
  const uint8_t *req = ss_call_request(call, &len);
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, req);
  if (!m) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "request (%zu bytes) is not a valid %s protobuf",
                 len, d->name);
    return -1;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

void ss_h_health_check(ss_call *call, void *app) {
  info_begin(call, app, "HealthCheck");
  if (check_wire(call, &splitlearn__comm__health_request__descriptor) != 0) return;
  const ss_service *s = app;
  Splitlearn__Comm__HealthResponse r = SPLITLEARN__COMM__HEALTH_RESPONSE__INIT;
  r.status = s->draining ? "unhealthy" : "ok";
  r.message = s->draining ? "draining: shutting down" : "serving";
  r.version = SS_VERSION;
  r.has_uptime_seconds = 1;
  r.uptime_seconds = (float)uptime_s(s);
  ss_call_reply(call, &r.base, 0, NULL, 0, SS_NOT_OWNED);
}

#define SS_INFO_MAX 192 /* server keys (~60) + one per model */

typedef struct kvlist {
  Splitlearn__Comm__ServiceInfoResponse__CustomInfoEntry e[SS_INFO_MAX];
  Splitlearn__Comm__ServiceInfoResponse__CustomInfoEntry *p[SS_INFO_MAX];
  char val[SS_INFO_MAX][512]; /* a model's entry: its describe line (up to ~300 characters with
                               * LoRA, compute and backend) and then its counters, whole */
  size_t n;
} kvlist;

static void kv(kvlist *l, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void kv(kvlist *l, const char *key, const char *fmt, ...) {
  if (l->n >= SS_INFO_MAX) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(l->val[l->n], sizeof l->val[l->n], fmt, ap);
  va_end(ap);
  splitlearn__comm__service_info_response__custom_info_entry__init(&l->e[l->n]);
  l->e[l->n].key = (char *)key;
  l->e[l->n].value = l->val[l->n];
  l->p[l->n] = &l->e[l->n];
  l->n++;
}

/* Whether token tok (SS_AUTH_OFF: no authentication) may see model sm in GetServiceInfo. */
static int info_shows(const ss_service *s, int tok, const ss_served_model *sm) {
  return tok == SS_AUTH_OFF || ss_auth_allows(s->auth, tok, sm->model->id);
}

void ss_h_service_info(ss_call *call, void *app) {
  info_begin(call, app, "GetServiceInfo");
  int tok = ss_access_authenticate(app, call);
  if (tok == -1) return;
  if (check_wire(call, &splitlearn__comm__service_info_request__descriptor) != 0) return;
  const ss_service *s = app;
  ss_grpc_stats gs = {0};
  if (s->grpc) ss_grpc_server_stats(s->grpc, &gs);
  kvlist *l = calloc(1, sizeof *l);
  char *keys = calloc(s->nmodels, 64);
  if (!l || !keys) {
    free(l);
    free(keys);
    ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  size_t waiting = 0;
  int inflight = 0;
  char models[256] = "";
  size_t off = 0;
  /* A token limited to some models sees only those (their ids, entries, default). */
  for (size_t i = 0; i < s->nmodels; i++) {
    waiting += s->models[i]->admit.waiting;
    inflight += s->models[i]->admit.inflight;
    if (!info_shows(s, tok, s->models[i])) continue;
    int n = snprintf(models + off, sizeof models - off, "%s%s", off ? "," : "",
                     s->models[i]->model->id);
    if (n > 0 && (size_t)n < sizeof models - off) off += (size_t)n;
  }
  kv(l, "threads", "%d", ss_thread_count());
  kv(l, "thread_budget", "%d", ss_service_thread_budget(s));
  kv(l, "cores", "%d", s->ncpu);
  kv(l, "models", "%s", models);
  if (info_shows(s, tok, s->models[0])) kv(l, "default_model", "%s", s->models[0]->model->id);
  kv(l, "queue_depth", "%zu", waiting);
  kv(l, "pool_queued", "%zu", ss_pool_queued(s->pool));
  kv(l, "inflight", "%d", inflight);
  kv(l, "connections", "%zu", gs.connections);
  kv(l, "config_max_bytes", "%u", SS_CONFIG_MAX_BYTES);
  kv(l, "config_max_depth", "%d", SS_CONFIG_MAX_DEPTH);
  /* Every setting under its YAML key, in its units (core/settings.c), but the file paths
   * (tls_*, auth_tokens, save_weights): where the server keeps its secrets is not a client's
   * business. */
  for (size_t i = 0; i < ss_nsettings; i++) {
    const ss_setting *st = &ss_settings[i];
    char v[256];
    if (!st->key || st->type == SS_ST_STR || st->type == SS_ST_MODEL) continue;
    ss_setting_format(&s->cfg, (int)i, v, sizeof v);
    kv(l, st->key, "%s", v);
  }
  kv(l, "connections_refused", "%llu", (unsigned long long)gs.connections_refused);
  kv(l, "served", "%llu", (unsigned long long)gs.served);
  kv(l, "rejected", "%llu", (unsigned long long)gs.rejected);
  kv(l, "cancelled", "%llu", (unsigned long long)gs.cancelled);
  kv(l, "failed", "%llu", (unsigned long long)gs.failed);
  kv(l, "auth_tokens", "%zu", ss_auth_count(s->auth)); /* a count only; 0: no authentication */
  kv(l, "blas", "%s, %d thread(s) per worker", ss_matmul_engine_info(), s->cfg.intra_op_threads);
  kv(l, "matmul_scratch_bytes", "%zu", ss_matmul_scratch_bytes());    /* per-worker scratchpads */
  kv(l, "packed_weight_bytes", "%zu", ss_matmul_packed_bytes());      /* f32/bf16/int8 copies */
  kv(l, "deferred_weight_bytes", "%zu", ss_weights_deferred_bytes()); /* f32 not made: no RSS */
  size_t nsess, sess_bytes;
  uint64_t sess_evicted;
  ss_sessions_stats(s->sessions, &nsess, &sess_bytes, &sess_evicted);
  kv(l, "sessions", "%zu", nsess);
  kv(l, "session_bytes", "%zu", sess_bytes);
  kv(l, "sessions_evicted", "%llu", (unsigned long long)sess_evicted);
  size_t nact, act_bytes;
  uint64_t act_evicted;
  ss_kcache_stats(s->acts, &nact, &act_bytes, &act_evicted);
  kv(l, "activations", "%zu", nact); /* training forwards awaiting their backward */
  kv(l, "activation_bytes", "%zu", act_bytes);
  kv(l, "activations_evicted", "%llu", (unsigned long long)act_evicted);
  for (size_t i = 0; i < s->nmodels && l->n < SS_INFO_MAX; i++) {
    const ss_served_model *sm = s->models[i];
    if (!info_shows(s, tok, sm)) continue;
    snprintf(keys + 64 * i, 64, "model.%s", sm->model->id);
    kv(l, keys + 64 * i,
       "%s; params=%lld; weight_bytes=%zu; inflight=%d; queued=%zu; limit=%d; max_batch_rows=%d; "
       "batch_delay_us=%d; batches=%llu; batched_calls=%llu",
       sm->model->describe, (long long)sm->model->n_params, sm->model->weight_bytes,
       sm->admit.inflight, sm->admit.waiting, sm->admit.limit, sm->model->max_batch_rows,
       sm->model->batch_delay_us, (unsigned long long)sm->batches,
       (unsigned long long)sm->batched_calls);
  }
  Splitlearn__Comm__ServiceInfoResponse r = SPLITLEARN__COMM__SERVICE_INFO_RESPONSE__INIT;
  r.service_name = "splitserve";
  r.version = SS_VERSION;
  r.device = "cpu";
  r.has_uptime_seconds = 1;
  r.uptime_seconds = (float)uptime_s(s);
  r.has_total_requests = 1;
  r.total_requests = (int64_t)gs.requests;
  r.n_custom_info = l->n;
  r.custom_info = l->p;
  ss_call_reply(call, &r.base, 0, NULL, 0, SS_NOT_OWNED);
  free(keys);
  free(l);
}

/* ------------------------------------------------------------ streaming --- */

typedef ss_watch stream_state;

static void stream_cancel(ss_call *call) {
  stream_state *st = ss_call_state(call);
  ss_tq_cancel(&st->svc->tq, &st->tick);
}

static void stream_free(ss_call *call) {
  stream_state *st = ss_call_state(call);
  ss_metrics_observe(st->svc, "", st->watch ? "grpc.health.v1.Health/Watch" : "StreamMonitoring",
                     ss_call_status(call), -1, -1,
                     (double)(uv_hrtime() - ss_call_start_ns(call)) / 1e9);
  ss_tq_cancel(&st->svc->tq, &st->tick);
  if (st->watch) { /* off the service's list */
    if (st->prev)
      st->prev->next = st->next;
    else
      st->svc->watches = st->next;
    if (st->next) st->next->prev = st->prev;
  }
}

static void monitoring_tick(ss_tq_entry *e) {
  stream_state *st = ss_container_of(e, stream_state, tick);
  ss_call *call = st->call;
  if (ss_call_answered(call)) return;
  Splitlearn__Comm__MonitoringSnapshot snap;
  splitlearn__comm__monitoring_snapshot__init(&snap);
  ss_monitor_sample(&st->svc->mon); /* fresh numbers at the client's own interval */
  ss_fill_snapshot(st->svc, &snap);
  Splitlearn__Comm__MonitoringSnapshotResponse r =
      SPLITLEARN__COMM__MONITORING_SNAPSHOT_RESPONSE__INIT;
  r.snapshot = &snap;
  ss_call_send(call, &r.base);
  if (ss_tq_arm(&st->svc->tq, &st->tick, uv_hrtime() + (uint64_t)(st->interval_s * 1e9),
                monitoring_tick) != 0)
    ss_call_end(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory for the stream's timer");
}

static stream_state *stream_new(ss_call *call, ss_service *svc) {
  stream_state *st = ss_call_state(call);
  memset(st, 0, sizeof *st);
  st->call = call;
  st->svc = svc;
  ss_call_set_hooks(call, stream_cancel, stream_free);
  return st;
}

void ss_h_stream_monitoring(ss_call *call, void *app) {
  if (ss_access_authenticate(app, call) == -1) return;
  size_t len;
  const uint8_t *buf = ss_call_request(call, &len);
  Splitlearn__Comm__MonitoringStreamRequest *req =
      splitlearn__comm__monitoring_stream_request__unpack(NULL, len, buf);
  if (!req) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "request is not a valid splitlearn.comm.MonitoringStreamRequest protobuf");
    return;
  }
  double iv = req->has_sampling_interval ? req->sampling_interval : 1.0;
  splitlearn__comm__monitoring_stream_request__free_unpacked(req, NULL);
  if (!(iv >= 0.1)) iv = 0.1; /* also catches NaN */
  if (iv > 5.0) iv = 5.0;
  stream_state *st = stream_new(call, app);
  st->interval_s = iv;
  monitoring_tick(&st->tick);
}

static int health_status(const ss_service *s) {
  return s->draining ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                     : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

/* Known service names: "" (the whole server) and the two services it serves. */
static int known_service(const char *name) {
  return !name || !*name || strcmp(name, "splitlearn.comm.ComputeService") == 0 ||
         strcmp(name, "grpc.health.v1.Health") == 0;
}

static Grpc__Health__V1__HealthCheckRequest *health_req(ss_call *call) {
  size_t len;
  const uint8_t *buf = ss_call_request(call, &len);
  Grpc__Health__V1__HealthCheckRequest *req =
      grpc__health__v1__health_check_request__unpack(NULL, len, buf);
  if (!req)
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "request is not a valid grpc.health.v1.HealthCheckRequest protobuf");
  return req;
}

void ss_h_grpc_health_check(ss_call *call, void *app) {
  info_begin(call, app, "grpc.health.v1.Health/Check");
  Grpc__Health__V1__HealthCheckRequest *req = health_req(call);
  if (!req) return;
  if (!known_service(req->service)) {
    ss_call_fail(call, SS_GRPC_NOT_FOUND,
                 "unknown service '%s' (known: '', splitlearn.comm.ComputeService, "
                 "grpc.health.v1.Health)",
                 req->service);
  } else {
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.has_status = 1;
    r.status = health_status(app);
    ss_call_reply(call, &r.base, 0, NULL, 0, SS_NOT_OWNED);
  }
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
}

static void watch_send(ss_call *call, int status) {
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.has_status = 1;
  r.status = status;
  ss_call_send(call, &r.base);
}

void ss_h_grpc_health_watch(ss_call *call, void *app) {
  ss_service *svc = app;
  Grpc__Health__V1__HealthCheckRequest *req = health_req(call);
  if (!req) return;
  int known = known_service(req->service);
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
  stream_state *st = stream_new(call, svc);
  st->watch = 1;
  st->next = svc->watches;
  if (svc->watches) svc->watches->prev = st;
  svc->watches = st;
  /* The Watch contract: an unknown service is reported as SERVICE_UNKNOWN, not an error. */
  st->last_status = known
                        ? health_status(svc)
                        : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  watch_send(call, st->last_status);
}

void ss_info_on_drain(ss_service *s) {
  for (ss_watch *w = s->watches; w; w = w->next) {
    if (!ss_call_answered(w->call) &&
        w->last_status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING) {
      w->last_status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
      watch_send(w->call, w->last_status);
    }
  }
}
