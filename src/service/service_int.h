/*
 * service_int.h — the service's private structures, shared by the files of src/service:
 * the service object, the served model set, the RPC handlers behind the method table (and the
 * states of info.c's; compute_int.h and train_int.h hold the others), and each file's functions
 * under the file's name.
 *
 * Thread: loop thread, except what a worker job reads from its own call's state.
 *
 * Lifetimes: a served model is reference-counted (ss_served_ref/unref): the model set holds one
 * reference, every call that uses it one more; a model removed by a reload is retired (no new
 * calls) and freed with its last reference.
 */
#ifndef SS_SERVICE_SERVICE_INT_H
#define SS_SERVICE_SERVICE_INT_H

#include <stdint.h>
#include <uv.h>

#include "core/kcache.h"
#include "grpc/grpc.h"
#include "loop/admission.h"
#include "loop/pool.h"
#include "loop/timerq.h"
#include "models/model.h"
#include "service/metrics.h"
#include "service/service.h"
#include "splitserve.h"

/* A served model: the model plus its admission state. */
typedef struct ss_served_model {
  ss_model *model;
  char *spec;                    /* the spec it was built from (reload keeps unchanged ones) */
  int conf_inflight, conf_queue; /* per-model limits as configured (-1 = server default) */
  ss_admit admit;
  ss_admit train_admit; /* backward calls: one at a time, arrival order (train.c) */
  int accum;            /* backward calls since the last optimizer step */
  uint64_t calls, errors;
  int refs;
  int retired;
  struct ss_batch *open_batch; /* dynamic batching: the batch taking calls (batch.c) */
  uint64_t batches, batched_calls;
  int regather_n;          /* batch.c: the sequences a decode batch just answered ... */
  uint64_t regather_until; /* ... and until when a new decode batch waits for them (ns) */
} ss_served_model;

/* A resource-usage snapshot, sampled on a timer (not per request). */
typedef struct ss_monitor {
  double timestamp;     /* unix seconds */
  float cpu_percent;    /* process CPU over the last interval, 100 = one core */
  float memory_mb;      /* RSS */
  float memory_percent; /* RSS / MemTotal */
  uint64_t last_cpu_ticks;
  uint64_t last_ns;
  double mem_total_mb;
} ss_monitor;

/* The states of info.c's handlers, kept inside the call (ss_call_state); the method table
 * (service.c) sizes them. The unary info handlers keep only what their metrics need. */
typedef struct info_state {
  ss_service *svc;
  const char *method;
} info_state;

/* A streaming call (StreamMonitoring, health Watch). Watch streams are also on the service's
 * list, so the drain can tell them NOT_SERVING. */
typedef struct ss_watch ss_watch;
struct ss_watch {
  ss_tq_entry tick;
  ss_call *call;
  ss_service *svc;
  double interval_s;
  int watch; /* grpc.health.v1 Watch (else StreamMonitoring) */
  int last_status;
  ss_watch *prev, *next; /* the service's Watch streams */
};

struct ss_service {
  ss_server_config cfg;
  uv_loop_t *loop;
  ss_pool *pool;
  ss_grpc_server *grpc; /* counters for GetServiceInfo (set by ss_service_attach) */
  ss_timerq tq;         /* sleep waits and monitoring streams */
  uv_timer_t monitor_timer;
  int handles_open;
  ss_monitor mon;
  uint64_t start_ns;
  int ncpu;
  int draining;

  struct ss_sessions *sessions; /* server-side decode sessions (sessions.c) */
  struct ss_kcache *acts;       /* training forwards awaiting backward (train.c) */
  struct ss_implicit *implicit; /* untagged forwards of implicit_training models (train.c) */
  uint64_t forward_seq;
  int saving;               /* checkpoint jobs running */
  int save_failed;          /* a checkpoint failed */
  ss_served_model **models; /* models[0] is the default (models.c) */
  size_t nmodels;
  int reloading;                    /* a SIGHUP reload job is running */
  int reload_again;                 /* a SIGHUP came during the reload: run another after it */
  ss_watch *watches;                /* open health Watch streams */
  struct ss_series *series;         /* request metrics (metrics.c) */
  uv_check_t batch_check;           /* closes sub-millisecond batches after each iteration's I/O */
  struct ss_auth *auth;             /* --auth-tokens (auth.c); NULL: no authentication */
  uv_mutex_t auth_mu;               /* guards `auth` against a swap while an I/O loop's precheck
                                     * reads it (the app loop's own reads need no lock) */
  uint8_t owner_key[SS_KCACHE_TAG]; /* --auth-tokens: the key of owner tags (auth.h), at start */
};

/* ---- access (access.c, on the token table auth.c) ---- */
#define SS_AUTH_OFF (-2)
/* The call's token index; SS_AUTH_OFF when the server has no --auth-tokens; -1 after failing
 * the call UNAUTHENTICATED (no or unknown bearer token). */
int ss_access_authenticate(ss_service *s, ss_call *call);
/* The transport's early check (ss_method.precheck) of the methods that need a token: a call
 * without a valid one is refused at END_HEADERS, before its body is buffered, inflated or
 * decoded. Runs on any I/O loop: the table is read under auth_mu (a SIGHUP reload swaps it). */
int ss_access_precheck(const ss_call *call, void *app, char *msg, size_t msglen);
/* 0 when token tok (from ss_access_authenticate) may use model; else -1 after failing the
 * call PERMISSION_DENIED. */
int ss_access_authorize(ss_service *s, ss_call *call, int tok, const char *model);
/* With --auth-tokens, records (training forwards, decode sessions) belong to the token of the
 * call that created them: their cache entry's tag (core/kcache.h) is the owner tag of that
 * token (auth.h: a keyed hash, never the token). Without, every tag is zero: one owner.
 * The owner tag of the call's bearer token into tag (all zero without --auth-tokens). */
void ss_access_owner(const ss_service *s, ss_call *call, uint8_t tag[SS_KCACHE_TAG]);
/* 0 when a record tagged rec_tag may be used by owner (the calling token; always without
 * --auth-tokens); else fails the call PERMISSION_DENIED ("<what> '<id>' belongs to another
 * token", naming neither token) and returns -1. */
int ss_access_check_owner(const ss_service *s, ss_call *call, const uint8_t *owner,
                          const uint8_t *rec_tag, const char *what, const char *id);
/* (Re)load the --auth-tokens file into s->auth (swapped under auth_mu; a failure keeps the old
 * table). why prefixes the log line. 0, or <0 with a message in err. */
int ss_access_load(ss_service *s, const char *why, char *err, size_t errlen);

/* ---- handlers (loop thread, request message complete) ---- */
/* The fixed thread budget: I/O loops + workers x intra-op threads (workers 0: compute inline). */
int ss_service_thread_budget(const ss_service *s);

void ss_h_compute(ss_call *call, void *app);           /* compute.c */
void ss_h_backward(ss_call *call, void *app);          /* train.c */
void ss_h_health_check(ss_call *call, void *app);      /* info.c: ComputeService.HealthCheck */
void ss_h_service_info(ss_call *call, void *app);      /* info.c */
void ss_h_stream_monitoring(ss_call *call, void *app); /* info.c */
void ss_h_grpc_health_check(ss_call *call, void *app); /* info.c: grpc.health.v1.Health/Check */
void ss_h_grpc_health_watch(ss_call *call, void *app); /* info.c: grpc.health.v1.Health/Watch */

/* Drain started: health watchers get NOT_SERVING (info.c). */
void ss_info_on_drain(ss_service *s);

/* ---- monitor (monitor.c) ---- */
void ss_monitor_sample(ss_monitor *m);
/* Fill a MonitoringSnapshot from the last sample. */
struct Splitlearn__Comm__MonitoringSnapshot;
void ss_fill_snapshot(const ss_service *s, struct Splitlearn__Comm__MonitoringSnapshot *snap);
/* Live thread count of this process (from /proc/self/status), or -1. */
int ss_thread_count(void);

/* ---- the served model set (models.c) ---- */
ss_served_model *ss_service_find_model(ss_service *s, const char *id);
/* Load the models of cfg (+ built-ins) at start-up (before the loop runs). */
int ss_models_load(ss_service *s, char *err, size_t errlen);
void ss_models_reload(ss_service *s);
void ss_served_ref(ss_served_model *sm);
/* A user stops using sm (frees a retired model at its last reference). */
void ss_served_unref(ss_served_model *sm);
void ss_models_free(ss_service *s);
void ss_models_save_all(ss_service *s, const char *why);
/* 1 when id names a built-in test model (scale, sleep, spin) that is off because the server
 * runs without --enable-test-models (for the NOT_FOUND message). */
int ss_models_test_disabled(const ss_service *s, const char *id);
/* "mlp, identity, ..." into buf (for NOT_FOUND messages). */
void ss_models_list(const ss_service *s, char *buf, size_t len);
/* Log a warning for each model id of the --auth-tokens file that is not served (a typo): at
 * start once the models are loaded, on SIGHUP, and after a --config reload. */
void ss_models_check_auth(ss_service *s);

/* ---- dynamic batching (batch.c) ---- */
/* Close every open batch (the service is stopping: their timers will not fire). */
void ss_batch_flush_all(ss_service *s);
/* The check handle's callback (batch_check). */
void ss_batch_on_check(uv_check_t *h);

/* ---- training (train.c) ---- */
int ss_train_init(ss_service *s);
void ss_train_free(ss_service *s);
void ss_train_sweep(ss_service *s);
/* The forward_id of a training Compute call: client_id (refused when it holds a record that
 * has not had its backward: INVALID_ARGUMENT, or PERMISSION_DENIED when another token's) or a
 * fresh one, into out. 0, or -1 after failing the call. */
int ss_train_forward_id(ss_service *s, ss_call *call, const uint8_t *owner, const char *client_id,
                        char *out, size_t outlen);
/* Would a training forward keeping saved_bytes (its model's estimate, ops->train_bytes) fit in
 * the activation budget on its own, counting the record and its id? 0, or SS_EBUSY with a
 * message naming the sizes and --activation-memory-mb. */
int ss_train_check_budget(ss_service *s, const char *forward_id, size_t saved_bytes, char *err,
                          size_t errlen);
struct ss_wire_enc;
/* enc: how the forward's tensors travelled; its gradients travel the same way. owner: the
 * record's tag (ss_access_owner of the forward's call). */
int ss_train_store(ss_service *s, const char *forward_id, const uint8_t *owner, ss_served_model *sm,
                   void *saved, size_t saved_bytes, const ss_tensor *in, const int64_t *out_shape,
                   int out_ndim, const struct ss_wire_enc *enc);
/* Remember forward_id (stored with ss_train_store) as the untagged training forward of an
 * implicit_training model on connection conn. 0 or SS_ENOMEM. */
int ss_train_implicit_add(ss_service *s, const char *forward_id, uint64_t conn);

#endif
