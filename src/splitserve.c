/*
 * splitserve.c — the composition root: the public ss_server_* API (include/splitserve.h) built
 * from one libuv loop, the worker pool, the compute service and the gRPC server, and the
 * signals routed between them:
 *
 *     SIGINT / SIGTERM / ss_server_stop -> ss_grpc_server_drain (a second one: now)
 *     SIGHUP                            -> ss_grpc_server_reload_tls (re-read the certificate)
 *                                          + ss_service_reload  (re-read --auth-tokens, --config)
 *     SIGUSR1                           -> ss_service_save_all (checkpoints)
 *     transport closed every connection -> service timers, signals, pool closed: the loop ends
 *
 * Threads: ss_server_new / _run / _free on the thread that runs the loop; ss_server_stop from
 * any thread or a signal handler (an atomic counter + uv_async_send, which is async-signal-safe).
 * Workers belong to the pool; the compute engine sizes each worker's intra-op team when it
 * starts (ss_compute_thread_init). The transport runs io_threads - 1 more I/O loops
 * (--io-threads). The process has N + W x T threads.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "grpc/grpc.h"
#include "http/metrics_http.h"
#include "loop/pool.h"
#include "models/model.h"
#include "service/service.h"
#include "splitserve.h"

struct ss_server {
  ss_server_config cfg;
  uv_loop_t loop;
  uv_async_t stop_async;
  uv_signal_t sigint, sigterm, sighup, sigusr1;
  int handles_open;
  ss_pool *pool;
  int pool_busy; /* workers still computing when the loop ended (abandoned calls) */
  ss_service *svc;
  ss_grpc_server *grpc;
  ss_metrics_http *metrics; /* NULL unless --metrics-listen */
  atomic_int stop_requests; /* ss_server_stop calls and signals */
  int ncpu;
  ss_server_stats stats; /* filled when the loop ends */
};

int ss_server_port(const ss_server *s) { return ss_grpc_server_port(s->grpc); }

void ss_server_get_stats(const ss_server *s, ss_server_stats *out) { *out = s->stats; }

/* ------------------------------------------------------------------ signals --- */

static void handle_stop(ss_server *s) {
  int n = atomic_load(&s->stop_requests);
  if (n > 0) ss_grpc_server_drain(s->grpc, n >= 2);
}

void ss_server_stop(ss_server *s) {
  atomic_fetch_add(&s->stop_requests, 1);
  uv_async_send(&s->stop_async);
}

static void on_stop_async(uv_async_t *h) { handle_stop(h->data); }

static void on_signal(uv_signal_t *h, int signum) {
  ss_server *s = h->data;
  switch (signum) {
    case SIGHUP: {
      char err[512];
      if (ss_grpc_server_reload_tls(s->grpc, err, sizeof err) != 0)
        SS_LOGE("SIGHUP: TLS certificate not reloaded, keeping the old one: %s", err);
      else if (s->cfg.tls_cert)
        SS_LOGI("SIGHUP: TLS certificate reloaded from %s", s->cfg.tls_cert);
      ss_service_reload(s->svc);
      break;
    }
    case SIGUSR1: ss_service_save_all(s->svc, "SIGUSR1"); break;
    default:
      SS_LOGI("signal %d (%s)", signum, signum == SIGINT ? "SIGINT" : "SIGTERM");
      atomic_fetch_add(&s->stop_requests, 1);
      handle_stop(s);
  }
}

/* ------------------------------------------------------------------ closing --- */

static void close_handles(ss_server *s) {
  if (!s->handles_open) return;
  s->handles_open = 0;
  uv_close((uv_handle_t *)&s->stop_async, NULL);
  if (s->cfg.handle_signals) {
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
    uv_close((uv_handle_t *)&s->sigusr1, NULL);
  }
  if (s->svc) ss_service_close(s->svc);
  if (s->metrics) ss_metrics_http_close(s->metrics);
  if (s->pool) s->pool_busy = ss_pool_shutdown(s->pool);
}

/* A Prometheus scrape: the service's metrics (they include the transport's counters). */
static void render_metrics(void *app, ss_strbuf *out) {
  ss_service_metrics(((ss_server *)app)->svc, out);
}

/* The transport's hooks, routed to the service; the last one is ours. */
static void on_drain_started(void *app) { ss_service_drain_started(((ss_server *)app)->svc); }
static void on_drained(void *app, int graceful) {
  ss_service_drained(((ss_server *)app)->svc, graceful);
}
static int on_busy(void *app) { return ss_service_busy(((ss_server *)app)->svc); }
/* The transport closed its last connection: nothing else keeps the loop alive. */
static void on_transport_closed(void *app) { close_handles(app); }

/* ------------------------------------------------------------------ lifecycle --- */

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
    SS_LOGI("raised RLIMIT_NOFILE from %llu to %llu (connections are file descriptors)",
            (unsigned long long)old, (unsigned long long)rl.rlim_cur);
}

/* Every connection is a file descriptor: --max-connections must fit the open-file limit (after
 * raise_nofile) with room for the process's own files, so that a flood of sockets meets our
 * limit and its GOAWAY rather than EMFILE. If it does not fit, it is lowered (and logged). */
#define SS_FD_RESERVE 256
static void fit_fd_limit(ss_server *s) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
  if ((rlim_t)s->cfg.max_connections + SS_FD_RESERVE <= rl.rlim_cur) return;
  int fit =
      rl.rlim_cur > 2 * SS_FD_RESERVE ? (int)(rl.rlim_cur - SS_FD_RESERVE) : (int)rl.rlim_cur / 2;
  SS_LOGW("--max-connections %d does not fit the open-file limit (%llu): using %d",
          s->cfg.max_connections, (unsigned long long)rl.rlim_cur, fit);
  s->cfg.max_connections = fit;
}

static int check_threads(ss_server *s, char *err, size_t errlen) {
  int w = s->cfg.workers > 0 ? s->cfg.workers : 1;
  if ((long)w * s->cfg.intra_op_threads > s->ncpu && !s->cfg.oversubscribe) {
    snprintf(err, errlen,
             "--workers %d x --intra-op-threads %d = %d compute threads exceeds the %d online "
             "cores; lower them or pass --oversubscribe",
             w, s->cfg.intra_op_threads, w * s->cfg.intra_op_threads, s->ncpu);
    return SS_EINVAL;
  }
  return 0;
}

static void thread_init(void *arg) { ss_compute_thread_init(*(int *)arg); }

int ss_server_new(const ss_server_config *cfg, ss_server **out, char *err, size_t errlen) {
  char e[1024] = "";
  *out = NULL;
  /* A peer that closes its socket while we write must cost an EPIPE, not the process: libuv
   * writes sockets with write(2)/writev(2), which raise SIGPIPE. Ignored process-wide (only
   * when still at its default, so an embedding application's own handler stays). */
  struct sigaction pipe_sa;
  if (sigaction(SIGPIPE, NULL, &pipe_sa) == 0 && !(pipe_sa.sa_flags & SA_SIGINFO) &&
      pipe_sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  ss_server *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  s->cfg = *cfg;
  ss_log_set_level(cfg->log_level);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  s->ncpu = ncpu > 0 ? (int)ncpu : 1;
  if (s->cfg.workers < 0) s->cfg.workers = s->ncpu;
  if (s->cfg.intra_op_threads < 1) s->cfg.intra_op_threads = 1;
  if (s->cfg.io_threads < 1) s->cfg.io_threads = 1;
  if (s->cfg.max_message_bytes == 0) s->cfg.max_message_bytes = 104857600;
  if (s->cfg.max_connections <= 0) s->cfg.max_connections = 10000;
  raise_nofile();
  fit_fd_limit(s);
  int rv = check_threads(s, e, sizeof e);
  if (rv != 0) {
    snprintf(err, errlen, "%s", e);
    free(s);
    return rv;
  }
  int compute = (s->cfg.workers > 0 ? s->cfg.workers : 0) * s->cfg.intra_op_threads;
  if (s->cfg.io_threads > 1 && s->cfg.io_threads + compute > s->ncpu)
    SS_LOGW(
        "--io-threads %d + %d compute threads = %d threads on %d cores: the I/O loops will "
        "share cores with compute (fewer I/O loops or workers avoid it)",
        s->cfg.io_threads, compute, s->cfg.io_threads + compute, s->ncpu);
  uv_loop_init(&s->loop);
  uv_async_init(&s->loop, &s->stop_async, on_stop_async);
  s->stop_async.data = s;
  if (s->cfg.handle_signals) {
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sighup);
    uv_signal_init(&s->loop, &s->sigusr1);
    s->sigint.data = s->sigterm.data = s->sighup.data = s->sigusr1.data = s;
  }
  s->handles_open = 1;
  ss_compute_thread_init(s->cfg.intra_op_threads); /* this thread: loads, --workers 0 */
  rv = ss_pool_new(&s->loop, s->cfg.workers, thread_init, &s->cfg.intra_op_threads, &s->pool);
  if (rv != 0) snprintf(e, sizeof e, "cannot start %d workers", s->cfg.workers);
  if (rv == 0) rv = ss_service_new(&s->loop, s->pool, &s->cfg, &s->svc, e, sizeof e);
  if (rv == 0) {
    size_t nm;
    const ss_method *methods = ss_service_methods(&nm);
    ss_grpc_hooks hooks = {s, on_drain_started, on_drained, on_busy, on_transport_closed};
    ss_grpc_config gc = {.host = s->cfg.listen_host,
                         .port = s->cfg.listen_port,
                         .max_message_bytes = s->cfg.max_message_bytes,
                         .drain_timeout_s = s->cfg.drain_timeout_s};
    gc.max_connections = (size_t)s->cfg.max_connections;
    gc.max_connections_per_peer = (size_t)s->cfg.max_connections_per_peer;
    gc.max_concurrent_streams = (uint32_t)s->cfg.max_concurrent_streams;
    gc.max_header_list_bytes = s->cfg.max_header_list_bytes;
    gc.max_connection_buffer_bytes = s->cfg.max_connection_buffer_bytes;
    gc.handshake_timeout_s = s->cfg.handshake_timeout_s;
    gc.idle_timeout_s = s->cfg.idle_timeout_s;
    gc.request_body_timeout_s = s->cfg.request_body_timeout_s;
    gc.kept_headers = ss_service_headers(&gc.n_kept_headers); /* read by the handlers */
    gc.tls_cert = s->cfg.tls_cert;
    gc.tls_key = s->cfg.tls_key;
    gc.tls_client_ca = s->cfg.tls_client_ca;
    gc.compress_responses = s->cfg.compress_responses;
    gc.io_threads = s->cfg.io_threads;
    rv = ss_grpc_server_new(&s->loop, &gc, methods, nm, s->svc, &hooks, &s->grpc, e, sizeof e);
  }
  if (rv == 0 && s->cfg.metrics_port >= 0)
    rv = ss_metrics_http_new(&s->loop, s->cfg.metrics_host, s->cfg.metrics_port, render_metrics, s,
                             &s->metrics, e, sizeof e);
  if (rv != 0) {
    snprintf(err, errlen, "%s", e);
    ss_server_free(s);
    return rv;
  }
  ss_service_attach(s->svc, s->grpc);
  *out = s;
  return 0;
}

int ss_server_run(ss_server *s) {
  if (s->cfg.handle_signals) {
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sighup, on_signal, SIGHUP);
    uv_signal_start(&s->sigusr1, on_signal, SIGUSR1);
  }
  ss_service_log_start(s->svc);
  if (s->metrics)
    fprintf(stderr, "metrics on http://%s:%d/metrics\n",
            s->cfg.metrics_host ? s->cfg.metrics_host : "127.0.0.1",
            ss_metrics_http_port(s->metrics));
  fprintf(stderr, "listening on %s:%d\n", ss_grpc_server_host(s->grpc),
          ss_grpc_server_port(s->grpc));
  fflush(stderr);
  handle_stop(s); /* a stop that came before run */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  ss_grpc_stats gs;
  ss_grpc_server_stats(s->grpc, &gs);
  s->stats.served = gs.served;
  s->stats.failed = gs.failed;
  s->stats.rejected = gs.rejected;
  s->stats.cancelled = gs.cancelled;
  s->stats.checkpoint_failed = ss_service_save_failed(s->svc);
  if (s->pool_busy) {
    SS_LOGW("%d worker(s) still computing abandoned calls; ss_server_free waits for them",
            s->pool_busy);
    return SS_EBUSY;
  }
  return 0;
}

void ss_server_free(ss_server *s) {
  if (!s) return;
  close_handles(s);
  if (s->grpc) ss_grpc_server_free(s->grpc); /* closes connections and its handles */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  ss_pool_free(s->pool); /* joins the workers */
  ss_service_free(s->svc);
  ss_metrics_http_free(s->metrics);
  if (uv_loop_close(&s->loop) != 0) SS_LOGW("loop closed with handles still open");
  free(s);
}
