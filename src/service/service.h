/*
 * service.h — the compute service as the composition root sees it: splitlearn.comm.ComputeService
 * and grpc.health.v1.Health over the gRPC seam (grpc/grpc.h), with the model set, decode
 * sessions, training activations and the resource monitor it owns.
 *
 * Thread: the loop thread, except ss_service_new (the thread that builds the server, before the
 * loop runs) and ss_service_free (after the loop has ended).
 */
#ifndef SS_SERVICE_SERVICE_H
#define SS_SERVICE_SERVICE_H

#include <stddef.h>
#include <uv.h>

#include "grpc/grpc.h"
#include "loop/pool.h"
#include "splitserve.h"

typedef struct ss_service ss_service;

/* Load the models of cfg (borrowed for the call; the strings it points to must outlive the
 * service) and set up sessions, activations and the monitor on loop; compute jobs go to pool
 * (borrowed). On failure returns <0 with a message in err. *out: free with ss_service_free. */
int ss_service_new(uv_loop_t *loop, ss_pool *pool, const ss_server_config *cfg, ss_service **out,
                   char *err, size_t errlen);
/* The method table to serve (static); handlers take the service as their app argument. */
const ss_method *ss_service_methods(size_t *n);
/* The request headers the handlers read (ss_call_header; for ss_grpc_config.kept_headers):
 * authorization (--auth-tokens), x-session-id and x-forward-id (proxy affinity keys). */
const char *const *ss_service_headers(size_t *n);
/* The transport's drain, routed here: new calls are refused (health turns NOT_SERVING) ... */
void ss_service_drain_started(ss_service *svc);
/* ... every unary call is answered (graceful: write the checkpoints) ... */
void ss_service_drained(ss_service *svc, int graceful);
/* ... and connections may close once nothing is busy (a checkpoint is being written). */
int ss_service_busy(const ss_service *svc);
/* The gRPC server it is served by (for connection and status counters in GetServiceInfo). */
void ss_service_attach(ss_service *svc, ss_grpc_server *g);
/* Log the thread budget and the served models (start-up). */
void ss_service_log_start(const ss_service *svc);
/* SIGHUP: re-read the --auth-tokens file (a bad one keeps the old tokens) and the --config
 * file (on a worker, then swap the model set). */
void ss_service_reload(ss_service *svc);
/* SIGUSR1 (and the drain): write every model that has a save path, on a worker. */
void ss_service_save_all(ss_service *svc, const char *why);
/* Nonzero when a checkpoint failed since start (the daemon's exit status says so). */
int ss_service_save_failed(const ss_service *svc);
/* Append the Prometheus text exposition of the service's metrics to out (metrics.c). */
struct ss_strbuf;
void ss_service_metrics(ss_service *svc, struct ss_strbuf *out);
/* Stop the service's timers (the loop may end). */
void ss_service_close(ss_service *svc);
void ss_service_free(ss_service *svc);

#endif
