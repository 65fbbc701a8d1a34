/*
 * server.c — the server's life: configuration, models, the listener, the worker pool, the
 * per-iteration write flush, the monitor timer, and graceful drain.
 *
 * Threads: ss_server_new / _run / _free on the thread that runs the loop (the loop thread);
 * ss_server_stop from any thread or a signal handler (an atomic counter + uv_async_send,
 * which is async-signal-safe). Worker threads belong to the pool (exec/pool.c).
 *
 * Drain (first stop): health turns NOT_SERVING (Watch streams are told), the listener
 * closes, every connection gets GOAWAY (new streams are refused: UNAVAILABLE to clients),
 * in-flight unary calls run to completion up to --drain-timeout, then streaming calls end,
 * the last bytes are flushed, connections close and ss_server_run returns. A second stop, or
 * the drain timeout, answers what is left with UNAVAILABLE at once.
 */
#include <cblas.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "net/server_int.h"
#include "service/sessions.h"

uint64_t ss_now_ns(void) { return uv_hrtime(); }

void ss_server_config_init(ss_server_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->listen_host = "127.0.0.1";
  cfg->listen_port = 50051;
  cfg->workers = -1;
  cfg->intra_op_threads = 1;
  cfg->max_inflight = 0;
  cfg->max_queue = 10000;
  cfg->max_message_bytes = 104857600;
  cfg->drain_timeout_s = 5.0;
  cfg->session_max_bytes = (size_t)1 << 30;
  cfg->session_ttl_s = 600.0;
  cfg->activation_max_bytes = (size_t)2 << 30;
  cfg->activation_ttl_s = 300.0;
  cfg->log_level = SS_LOG_INFO;
}

int ss_server_port(const ss_server *s) { return s->port; }

void ss_server_get_stats(const ss_server *s, ss_server_stats *out) { *out = s->stats; }

/* ------------------------------------------------------------------ drain --- */

static void close_handles(ss_server *s);

static int drained(ss_server *s) {
  for (ss_call *c = s->live; c; c = c->live_next)
    if (!c->is_drain_exempt) return 0;
  return 1;
}

/* All unary calls are answered (or the drain gave up): end streams, flush, close. */
static void finish_drain(ss_server *s) {
  if (s->stopped) return;
  s->stopped = 1;
  uv_timer_stop(&s->drain_timer);
  if (atomic_load(&s->stop_requests) < 2) ss_models_save_all(s, "drain");
  ss_service_end_streams(s);
  for (ss_conn *c = s->conns; c; c = c->next) {
    ss_conn_goaway(c);
    ss_conn_mark_dirty(c);
  }
  /* The flush check closes connections once their last bytes are written. */
}

static void abandon_live(ss_server *s, const char *why) {
  while (s->live) {
    ss_call *call = s->live;
    if (call->svc_cancel) call->svc_cancel(call);
    if (call->state != SS_CALL_DONE) ss_call_fail(call, SS_GRPC_UNAVAILABLE, "%s", why);
    if (s->live == call) ss_server_call_settled(s, call); /* not answerable: drop it */
  }
}

void ss_server_call_settled(ss_server *s, ss_call *call) {
  if (!call->live) return;
  call->live = 0;
  if (call->live_prev) call->live_prev->live_next = call->live_next;
  else s->live = call->live_next;
  if (call->live_next) call->live_next->live_prev = call->live_prev;
  call->live_prev = call->live_next = NULL;
  s->nlive--;
  if (s->draining && !s->stopped && drained(s)) finish_drain(s);
}

static void on_drain_timeout(uv_timer_t *t) {
  ss_server *s = t->data;
  SS_LOGW("drain timeout (%.1f s): answering %zu unfinished calls with UNAVAILABLE",
          s->cfg.drain_timeout_s, s->nlive);
  char why[128];
  snprintf(why, sizeof why, "server shutting down: drain timeout of %.1f s exceeded",
           s->cfg.drain_timeout_s);
  abandon_live(s, why);
  finish_drain(s);
}

static void begin_drain(ss_server *s) {
  if (s->draining) return;
  s->draining = 1;
  SS_LOGI("draining: %zu calls in flight, %zu connections (timeout %.1f s)", s->nlive, s->nconns,
          s->cfg.drain_timeout_s);
  if (s->listener_open) {
    s->listener_open = 0;
    uv_close((uv_handle_t *)&s->listener, NULL);
  }
  ss_service_on_drain(s);
  for (ss_conn *c = s->conns; c; c = c->next) ss_conn_goaway(c);
  uv_timer_start(&s->drain_timer, on_drain_timeout, (uint64_t)(s->cfg.drain_timeout_s * 1000.0), 0);
  if (drained(s)) finish_drain(s);
}

static void handle_stop(ss_server *s) {
  int n = atomic_load(&s->stop_requests);
  if (n <= 0) return;
  if (!s->draining) begin_drain(s);
  if (n >= 2 && !s->stopped) {
    SS_LOGW("second stop request: stopping now");
    abandon_live(s, "server stopped");
    finish_drain(s);
  }
}

void ss_server_stop(ss_server *s) {
  atomic_fetch_add(&s->stop_requests, 1);
  uv_async_send(&s->stop_async);
}

static void on_stop_async(uv_async_t *h) { handle_stop(h->data); }

static void on_sigusr1(uv_signal_t *h, int signum) {
  (void)signum;
  ss_models_save_all(h->data, "SIGUSR1");
}

static void on_sighup(uv_signal_t *h, int signum) {
  (void)signum;
  ss_server *s = h->data;
  if (!s->cfg.config_path) {
    SS_LOGW("SIGHUP: no --config file to reload; ignored");
    return;
  }
  if (s->draining) return;
  ss_models_reload(s);
}

static void on_signal(uv_signal_t *h, int signum) {
  ss_server *s = h->data;
  SS_LOGI("signal %d (%s)", signum, signum == SIGINT ? "SIGINT" : "SIGTERM");
  atomic_fetch_add(&s->stop_requests, 1);
  handle_stop(s);
}

/* ------------------------------------------------------------- loop glue --- */

static void on_close_noop(uv_handle_t *h) { (void)h; }

static void close_handles(ss_server *s) {
  uv_check_stop(&s->flush_check);
  uv_close((uv_handle_t *)&s->flush_check, on_close_noop);
  uv_close((uv_handle_t *)&s->flush_idle, on_close_noop);
  uv_close((uv_handle_t *)&s->stop_async, on_close_noop);
  uv_close((uv_handle_t *)&s->monitor_timer, on_close_noop);
  uv_close((uv_handle_t *)&s->drain_timer, on_close_noop);
  if (s->cfg.handle_signals) {
    uv_close((uv_handle_t *)&s->sigint, on_close_noop);
    uv_close((uv_handle_t *)&s->sigterm, on_close_noop);
    uv_close((uv_handle_t *)&s->sighup, on_close_noop);
    uv_close((uv_handle_t *)&s->sigusr1, on_close_noop);
  }
  ss_tq_close(&s->tq);
  s->pool_busy = ss_pool_shutdown(s->pool);
}

/* Once per loop iteration, after I/O: gather and write every dirty connection's frames. */
static void on_flush_check(uv_check_t *h) {
  ss_server *s = h->data;
  ss_conn_flush_all(s);
  if (s->stopped && !s->handles_closed && !s->saving) {
    /* Close connections whose output is fully written. */
    ss_conn *c = s->conns;
    while (c) {
      ss_conn *next = c->next;
      if (!c->writing && c->wlen == 0 && !nghttp2_session_want_write(c->h2)) ss_conn_close(c);
      c = next;
    }
    if (!s->conns) {
      s->handles_closed = 1;
      close_handles(s);
    }
  }
  if (!s->dirty) uv_idle_stop(&s->flush_idle);
}

static void on_idle(uv_idle_t *h) { (void)h; }

void ss_server_wake_flush(ss_server *s) { uv_idle_start(&s->flush_idle, on_idle); }

static void on_monitor(uv_timer_t *t) {
  ss_server *s = t->data;
  ss_monitor_sample(&s->mon);
  ss_sessions_sweep(s->sessions);
  ss_train_sweep(s);
}

static void on_connection(uv_stream_t *server, int status) {
  ss_server *s = server->data;
  if (status < 0) {
    SS_LOGW("accept: %s", uv_strerror(status));
    return;
  }
  ss_conn_accept(s);
}

/* ------------------------------------------------------------- lifecycle --- */

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
    SS_LOGI("raised RLIMIT_NOFILE from %llu to %llu (connections are file descriptors)",
            (unsigned long long)old, (unsigned long long)rl.rlim_cur);
}

static int bind_listener(ss_server *s, char *err, size_t errlen) {
  const char *host = s->cfg.listen_host && *s->cfg.listen_host ? s->cfg.listen_host : "127.0.0.1";
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(host, s->cfg.listen_port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, s->cfg.listen_port, (struct sockaddr_in6 *)&ss) != 0)
    return fail(err, errlen, SS_EINVAL, "--listen: '%s' is not a numeric IPv4/IPv6 address", host);
  uv_tcp_init(&s->loop, &s->listener);
  s->listener.data = s;
  s->listener_open = 1;
  int rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
  if (rv == 0) rv = uv_listen((uv_stream_t *)&s->listener, 4096, on_connection);
  if (rv != 0)
    return fail(err, errlen, SS_EIO, "cannot listen on %s:%d: %s", host, s->cfg.listen_port,
                uv_strerror(rv));
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
  s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                               : ((struct sockaddr_in *)&bound)->sin_port);
  s->listen_host = strdup(host);
  return 0;
}

int ss_server_new(const ss_server_config *cfg, ss_server **out, char *err, size_t errlen) {
  /* A peer that closes its socket while we write must cost an EPIPE, not the process: libuv
   * writes sockets with write(2)/writev(2), which raise SIGPIPE. Ignored process-wide (only
   * when still at its default, so an embedding application's own handler stays). */
  struct sigaction pipe_sa;
  if (sigaction(SIGPIPE, NULL, &pipe_sa) == 0 && !(pipe_sa.sa_flags & SA_SIGINFO) &&
      pipe_sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  ss_server *s = calloc(1, sizeof *s);
  if (!s) return fail(err, errlen, SS_ENOMEM, "out of memory");
  s->cfg = *cfg;
  ss_log_set_level(cfg->log_level);
  s->start_ns = ss_now_ns();
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  s->ncpu = ncpu > 0 ? (int)ncpu : 1;
  if (s->cfg.workers < 0) s->cfg.workers = s->ncpu;
  if (s->cfg.intra_op_threads < 1) s->cfg.intra_op_threads = 1;
  if (s->cfg.max_message_bytes == 0) s->cfg.max_message_bytes = 104857600;
  int w = s->cfg.workers > 0 ? s->cfg.workers : 1;
  if ((long)w * s->cfg.intra_op_threads > s->ncpu && !s->cfg.oversubscribe) {
    int rv = fail(err, errlen, SS_EINVAL,
                  "--workers %d x --intra-op-threads %d = %d compute threads exceeds the %d online "
                  "cores; lower them or pass --oversubscribe",
                  w, s->cfg.intra_op_threads, w * s->cfg.intra_op_threads, s->ncpu);
    free(s);
    return rv;
  }
  uv_loop_init(&s->loop);
  /* Flush and monitor handles exist from the start so ss_server_free can always close them. */
  uv_check_init(&s->loop, &s->flush_check);
  s->flush_check.data = s;
  uv_idle_init(&s->loop, &s->flush_idle);
  uv_async_init(&s->loop, &s->stop_async, on_stop_async);
  s->stop_async.data = s;
  uv_timer_init(&s->loop, &s->monitor_timer);
  s->monitor_timer.data = s;
  uv_timer_init(&s->loop, &s->drain_timer);
  s->drain_timer.data = s;
  ss_tq_init(&s->loop, &s->tq);
  if (s->cfg.handle_signals) {
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sighup);
    uv_signal_init(&s->loop, &s->sigusr1);
    s->sigint.data = s->sigterm.data = s->sighup.data = s->sigusr1.data = s;
  }
  int rv = ss_conn_callbacks_new(&s->h2cb);
  if (rv == 0 && nghttp2_option_new(&s->h2opt) == 0) {
    /* Clients must not be able to grow our memory through HPACK or pending frames. */
    nghttp2_option_set_max_deflate_dynamic_table_size(s->h2opt, 4096);
  }
  char e[512] = "";
  if (rv == 0) rv = ss_sessions_new(s->cfg.session_max_bytes, s->cfg.session_ttl_s, &s->sessions);
  if (rv == 0) rv = ss_train_init(s);
  if (rv == 0) rv = ss_models_load(s, e, sizeof e);
  if (rv == 0) rv = bind_listener(s, e, sizeof e);
  if (rv == 0) {
    openblas_set_num_threads(s->cfg.intra_op_threads);
    rv = ss_pool_new(&s->loop, s->cfg.workers, s->cfg.intra_op_threads, &s->pool);
    if (rv != 0) snprintf(e, sizeof e, "cannot start %d workers", s->cfg.workers);
  }
  if (rv != 0) {
    fail(err, errlen, rv, "%s", e);
    s->handles_closed = 0;
    ss_server_free(s);
    return rv;
  }
  raise_nofile();
  ss_monitor_sample(&s->mon);
  *out = s;
  return 0;
}

int ss_server_run(ss_server *s) {
  uv_check_start(&s->flush_check, on_flush_check);
  uv_timer_start(&s->monitor_timer, on_monitor, 1000, 1000);
  uv_unref((uv_handle_t *)&s->monitor_timer);
  if (s->cfg.handle_signals) {
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sighup, on_sighup, SIGHUP);
    uv_signal_start(&s->sigusr1, on_sigusr1, SIGUSR1);
  }
  SS_LOGI("splitserve %s: %d workers x %d intra-op threads, %zu models (default '%s'), "
          "threads now %d",
          SS_VERSION, s->cfg.workers, s->cfg.intra_op_threads, s->nmodels, s->models[0]->model->id,
          ss_thread_count());
  for (size_t i = 0; i < s->nmodels; i++)
    SS_LOGI("model %-10s %s", s->models[i]->model->id, s->models[i]->model->describe);
  fprintf(stderr, "listening on %s:%d\n", s->listen_host, s->port);
  fflush(stderr);
  handle_stop(s); /* a stop that came before run */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  if (s->pool_busy) {
    SS_LOGW("%d worker(s) still computing abandoned calls; ss_server_free waits for them",
            s->pool_busy);
    return SS_EBUSY;
  }
  return 0;
}

void ss_server_free(ss_server *s) {
  if (!s) return;
  if (!s->handles_closed) {
    /* Never ran (or failed in new): close what exists and let the loop reap it. */
    while (s->conns) ss_conn_close(s->conns);
    if (s->listener_open) uv_close((uv_handle_t *)&s->listener, NULL);
    s->handles_closed = 1;
    close_handles(s);
  } else if (s->listener_open) {
    uv_close((uv_handle_t *)&s->listener, NULL);
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  ss_pool_free(s->pool);
  ss_call_cache_free(s);
  if (s->acts) ss_train_free(s);
  ss_sessions_free(s->sessions);
  uv_loop_close(&s->loop);
  ss_models_free(s);
  if (s->h2cb) nghttp2_session_callbacks_del(s->h2cb);
  if (s->h2opt) nghttp2_option_del(s->h2opt);
  free(s->listen_host);
  free(s);
}
