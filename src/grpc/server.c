/*
 * server.c — the gRPC server's life: the listener, the per-iteration write flush, the call
 * deadlines' timer queue, and graceful drain. It serves a method table (grpc.h) and holds no
 * application state. With --io-threads N each loop has its own server object (a shard: made,
 * drained, closed and freed by the ss_grpc_shard_* functions here); what passes between the
 * loops is shard.c, the connection limits they share limits.c.
 *
 * Thread: each shard's own loop thread (ss_grpc_server_new binds on the calling thread before
 * the loop runs).
 *
 * Drain (ss_grpc_server_drain): the listener closes, every connection gets the two-step GOAWAY
 * of RFC 9113 6.8: a shutdown notice (GOAWAY with the largest stream id) and a PING, then, when
 * the PING comes back (at the latest after SS_NOTICE_MS), the final GOAWAY with the last stream
 * processed. Streams the peer opened before it saw the notice are served as usual, so a proxy
 * reusing a pooled connection at that moment loses nothing; after the final GOAWAY nghttp2
 * ignores new streams (the peer knows from the last stream id that they were not processed and
 * may retry them elsewhere). hooks.drain_started runs at once; unary calls run to completion up
 * to the drain timeout; once every connection has its final GOAWAY and no unary call is left,
 * hooks.drained runs, streaming calls end with OK, the last bytes are flushed, connections
 * close (once hooks.busy says so) and hooks.closed runs.
 * A second drain call with now != 0, or the drain timeout, answers what is left with UNAVAILABLE.
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/macros.h"
#include "grpc/grpc_int.h"
#include "grpc/h2mem.h"

int ss_grpc_server_port(const ss_grpc_server *g) { return g->port; }
const char *ss_grpc_server_host(const ss_grpc_server *g) { return g->host; }

void ss_grpc_server_stats(const ss_grpc_server *g, ss_grpc_stats *out) {
  memset(out, 0, sizeof *out);
  size_t n = g->nshards ? g->nshards : 1;
  for (size_t i = 0; i < n; i++) {
    const ss_grpc_server *k = g->nshards ? g->shards[i] : g;
    out->requests += SS_STAT_GET(k->stats.requests);
    out->served += SS_STAT_GET(k->stats.served);
    out->failed += SS_STAT_GET(k->stats.failed);
    out->rejected += SS_STAT_GET(k->stats.rejected);
    out->cancelled += SS_STAT_GET(k->stats.cancelled);
    out->connections_refused += SS_STAT_GET(k->stats.connections_refused);
    out->connections_cut += SS_STAT_GET(k->stats.connections_cut);
    size_t nc = SS_STAT_GET(k->nconns);
    out->connections += nc;
    out->live += SS_STAT_GET(k->nlive);
    if (i < SS_GRPC_MAX_IO) out->io_connections[i] = nc;
  }
  out->io_threads = n;
}

/* ------------------------------------------------------------------ drain --- */

/* Drain: how long a connection's PING may take to come back after the shutdown notice. A
 * connection with calls open is being read by its client, which answers at once; an idle one
 * may belong to a client that reads only while it has calls (grpcio), or to a proxy's pool
 * (nginx closes it on the notice): it gets its final GOAWAY sooner. */
#define SS_NOTICE_MS 1000
#define SS_NOTICE_IDLE_MS 200

static int drained(ss_grpc_server *s) {
  for (ss_call *c = s->live; c; c = c->live_next)
    if (!c->is_drain_exempt) return 0;
  for (ss_conn *c = s->conns; c; c = c->next)
    if (!c->goaway_sent && !c->closing) return 0; /* new calls may still come */
  return 1;
}

/* The notice had its time: the final GOAWAY to connections whose PING did not come back. */
static uint64_t notice_due(const ss_grpc_server *s, double ms) {
  double cap = s->cfg.drain_timeout_s * 1000.0;
  return s->drain_ns + (uint64_t)((ms < cap ? ms : cap) * 1e6);
}

static void on_notice_timeout(ss_tq_entry *e) {
  ss_grpc_server *s = ss_container_of(e, ss_grpc_server, notice_tmo);
  int all = uv_hrtime() >= notice_due(s, SS_NOTICE_MS), left = 0;
  for (ss_conn *c = s->conns; c; c = c->next) {
    if (all || !c->calls) ss_conn_goaway(c);
    left |= !c->goaway_sent;
  }
  if (left &&
      ss_tq_arm(&s->tq, &s->notice_tmo, notice_due(s, SS_NOTICE_MS), on_notice_timeout) != 0)
    for (ss_conn *c = s->conns; c; c = c->next) ss_conn_goaway(c);
  ss_grpc_wake_flush(s); /* the flush check finishes the drain if nothing is left */
}

/* End the streaming calls (the server is stopping): their handlers are told, then OK. */
static void end_streams(ss_grpc_server *s) {
  ss_call *c = s->live;
  while (c) {
    ss_call *next = c->live_next;
    if (c->is_drain_exempt) {
      ss_call_cancel_hook(c, SS_GRPC_OK);
      ss_call_end_local(c, SS_GRPC_OK, NULL); /* settles c: unlinks it from the live list */
    }
    c = next;
  }
}

/* All unary calls are answered (or the drain gave up): end streams, flush, close. */
static void finish_drain(ss_grpc_server *s, int graceful) {
  if (s->stopped) return;
  s->stopped = 1;
  uv_timer_stop(&s->drain_timer);
  ss_tq_cancel(&s->tq, &s->notice_tmo);
  ss_shard_drained(s, graceful); /* the owner's drained hook runs once every shard is here */
  end_streams(s);
  for (ss_conn *c = s->conns; c; c = c->next) {
    ss_conn_goaway(c);
    ss_conn_mark_dirty(c);
  }
  ss_grpc_wake_flush(s); /* the flush check closes connections once their bytes are written */
}

static void abandon_live(ss_grpc_server *s, const char *why) {
  while (s->live) {
    ss_call *call = s->live;
    if (call->state != SS_CALL_DONE) {
      ss_call_cancel_hook(call, SS_GRPC_UNAVAILABLE);
      ss_call_failf(call, SS_GRPC_UNAVAILABLE, "%s", why);
    }
    if (s->live == call) ss_grpc_call_settled(s, call); /* not answerable: drop it */
  }
}

void ss_grpc_call_settled(ss_grpc_server *s, ss_call *call) {
  if (!call->live) return;
  call->live = 0;
  if (call->live_prev)
    call->live_prev->live_next = call->live_next;
  else
    s->live = call->live_next;
  if (call->live_next) call->live_next->live_prev = call->live_prev;
  call->live_prev = call->live_next = NULL;
  assert(s->nlive > 0);
  SS_STAT_ADD(s->nlive, (size_t)-1);
  if (s->draining && !s->stopped && drained(s)) finish_drain(s, 1);
}

static void on_drain_timeout(uv_timer_t *t) {
  ss_grpc_server *s = t->data;
  SS_LOGW("drain timeout (%.1f s): answering %zu unfinished calls with UNAVAILABLE",
          s->cfg.drain_timeout_s, s->nlive);
  char why[128];
  snprintf(why, sizeof why, "server shutting down: drain timeout of %.1f s exceeded",
           s->cfg.drain_timeout_s);
  abandon_live(s, why);
  finish_drain(s, 0);
}

void ss_grpc_server_drain(ss_grpc_server *s, int now) {
  ss_grpc_shard_drain(s, now);
  for (size_t i = 1; i < s->nshards; i++) ss_shard_post_drain(s->shards[i], now);
}

void ss_grpc_shard_drain(ss_grpc_server *s, int now) {
  if (!s->draining) {
    s->draining = 1;
    SS_LOGI("draining: %zu calls in flight, %zu connections (timeout %.1f s)", s->nlive, s->nconns,
            s->cfg.drain_timeout_s);
    if (s->listener_open) {
      s->listener_open = 0;
      uv_close((uv_handle_t *)&s->listener, NULL);
    }
    if (s->hooks.drain_started) s->hooks.drain_started(s->hooks.app);
    for (ss_conn *c = s->conns; c; c = c->next) ss_conn_goaway_notice(c);
    s->drain_ns = uv_hrtime();
    if (ss_tq_arm(&s->tq, &s->notice_tmo, notice_due(s, SS_NOTICE_IDLE_MS), on_notice_timeout) != 0)
      for (ss_conn *c = s->conns; c; c = c->next) ss_conn_goaway(c);
    uv_timer_start(&s->drain_timer, on_drain_timeout, (uint64_t)(s->cfg.drain_timeout_s * 1000.0),
                   0);
    if (drained(s)) finish_drain(s, 1);
  }
  if (now && !s->stopped) {
    SS_LOGW("second stop request: stopping now");
    abandon_live(s, "server stopped");
    finish_drain(s, 0);
  }
}

/* ------------------------------------------------------------- loop glue --- */

static void on_close_noop(uv_handle_t *h) { (void)h; }

void ss_grpc_shard_close(ss_grpc_server *s) {
  if (!s->handles_open) return;
  s->handles_open = 0;
  if (s->listener_open) {
    s->listener_open = 0;
    uv_close((uv_handle_t *)&s->listener, NULL);
  }
  ss_mbox_close(s);
  uv_check_stop(&s->flush_check);
  uv_close((uv_handle_t *)&s->flush_check, on_close_noop);
  uv_close((uv_handle_t *)&s->flush_idle, on_close_noop);
  uv_close((uv_handle_t *)&s->drain_timer, on_close_noop);
  ss_tq_close(&s->tq);
}

/* Once per loop iteration, after I/O: gather and write every dirty connection's frames. */
static void on_flush_check(uv_check_t *h) {
  ss_grpc_server *s = h->data;
  /* Draining: the last call answered, or the last final GOAWAY queued (PING ack, notice
   * timeout, a connection closed), makes it drained. */
  if (s->draining && !s->stopped && drained(s)) finish_drain(s, 1);
  int inflating = s->inflating ? ss_conn_inflate_some(s) : 0;
  ss_conn_flush_all(s);
  /* Shard 0 closes once every shard has drained (the owner's drained hook has run) and the
   * owner is not busy; the other shards close as soon as their own drain is done. */
  int may_close =
      s->stopped && !s->closed_told &&
      (s->index != 0 || (s->drained_told && !(s->hooks.busy && s->hooks.busy(s->hooks.app))));
  if (may_close) {
    /* Close connections whose output is fully written. */
    ss_conn *c = s->conns;
    while (c) {
      ss_conn *next = c->next;
      /* (a TLS connection still in its handshake has nothing to flush: its frames wait) */
      if (!c->writing && ((c->wlen == 0 && !nghttp2_session_want_write(c->h2)) ||
                          (c->tls && !ss_tls_ready(c->tls))))
        ss_conn_close(c);
      c = next;
    }
    if (!s->conns && (s->index != 0 || ss_shards_closed(s))) {
      s->closed_told = 1;
      ss_grpc_shard_close(s);
      if (s->hooks.closed) s->hooks.closed(s->hooks.app);
      return;
    }
  }
  if (!s->dirty && !inflating) uv_idle_stop(&s->flush_idle);
}

static void on_idle(uv_idle_t *h) { (void)h; }

void ss_grpc_note_limit(ss_grpc_server *s, const char *fmt, ...) {
  s->note_count++;
  uint64_t now = uv_now(s->loop);
  if (s->note_ms != 0 && now - s->note_ms < 1000) return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  SS_LOGW("%s (%llu such events in the last %.1f s)", msg, (unsigned long long)s->note_count,
          s->note_ms ? (double)(now - s->note_ms) / 1000.0 : 0.0);
  s->note_ms = now ? now : 1;
  s->note_count = 0;
}

void ss_grpc_wake_flush(ss_grpc_server *s) {
  if (s->handles_open) uv_idle_start(&s->flush_idle, on_idle);
}

static void on_connection(uv_stream_t *server, int status) {
  ss_grpc_server *s = server->data;
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

/* --io-threads: the port must be free of anyone else's sockets before our loops share it with
 * SO_REUSEPORT (which would also let a second server of the same user bind it and take half the
 * connections, where one loop gets "address already in use"). A plain bind, without
 * SO_REUSEPORT, fails on any socket bound there; port 0 picks the free port here. Returns the
 * port, or < 0 with err set. (The port is free again between this probe and the loops' binds.) */
static int probe_port(const struct sockaddr *sa, const char *host, int port, char *err,
                      size_t errlen) {
  socklen_t salen =
      sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(err, errlen, SS_EIO, "socket: %s", strerror(errno));
  int one = 1; /* as libuv's bind: a connection in TIME_WAIT owns no port */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(fd, sa, salen) != 0) {
    int e = errno;
    close(fd);
    return fail(err, errlen, SS_EIO, "cannot listen on %s:%d: %s", host, port, strerror(e));
  }
  struct sockaddr_storage b;
  socklen_t bl = sizeof b;
  int rv = getsockname(fd, (struct sockaddr *)&b, &bl);
  close(fd);
  if (rv != 0) return fail(err, errlen, SS_EIO, "getsockname: %s", strerror(errno));
  return ntohs(b.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&b)->sin6_port
                                       : ((struct sockaddr_in *)&b)->sin_port);
}

/* Bind and listen on host:s->cfg.port (0: any free port, learned into s->port). With reuseport
 * the socket gets SO_REUSEPORT first, so every shard can listen on the same port. */
int ss_grpc_bind_shard(ss_grpc_server *s, const char *host, int reuseport, char *err,
                       size_t errlen) {
  if (!host || !*host) host = "127.0.0.1";
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(host, s->cfg.port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, s->cfg.port, (struct sockaddr_in6 *)&ss) != 0)
    return fail(err, errlen, SS_EINVAL, "--listen: '%s' is not a numeric IPv4/IPv6 address", host);
  if (reuseport && s->index == 0) { /* the first loop's bind decides the port for all */
    int port = probe_port((const struct sockaddr *)&ss, host, s->cfg.port, err, errlen);
    if (port < 0) return port;
    s->cfg.port = port;
    if (ss.ss_family == AF_INET6)
      ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
    else
      ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
  }
  int rv = uv_tcp_init_ex(s->loop, &s->listener, ss.ss_family);
  if (rv != 0) return fail(err, errlen, SS_EIO, "socket: %s", uv_strerror(rv));
  s->listener.data = s;
  s->listener_open = 1;
  if (reuseport) {
    uv_os_fd_t fd;
    int one = 1;
    rv = uv_fileno((uv_handle_t *)&s->listener, &fd);
    if (rv == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) rv = -errno;
    if (rv != 0)
      return fail(err, errlen, SS_EIO, "--io-threads: SO_REUSEPORT refused: %s", uv_strerror(rv));
  }
  rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
  if (rv == 0) rv = uv_listen((uv_stream_t *)&s->listener, 4096, on_connection);
  if (rv != 0)
    return fail(err, errlen, SS_EIO, "cannot listen on %s:%d: %s", host, s->cfg.port,
                uv_strerror(rv));
  struct sockaddr_storage bound;
  int len = sizeof bound;
  rv = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
  if (rv != 0) return fail(err, errlen, SS_EIO, "getsockname: %s", uv_strerror(rv));
  s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
  s->host = strdup(host);
  if (!s->host) return fail(err, errlen, SS_ENOMEM, "out of memory");
  return 0;
}

/* Fill shard s (zeroed): settings from cfg (normalised), handles on loop, nghttp2 callbacks
 * and options, its own TLS context. The listener is bound separately. */
static int shard_init(ss_grpc_server *s, uv_loop_t *loop, const ss_grpc_config *cfg,
                      const ss_method *methods, size_t n, void *method_app, char *err,
                      size_t errlen) {
  s->cfg = *cfg;
  s->cfg.host = NULL; /* borrowed for this call only; s->host is our copy */
  s->cfg.tls_cert = s->cfg.tls_key = s->cfg.tls_client_ca = NULL; /* likewise: see s->tls_* */
  if (s->cfg.max_message_bytes == 0) s->cfg.max_message_bytes = 104857600;
  if (s->cfg.max_connections == 0) s->cfg.max_connections = 10000;
  if (s->cfg.max_connections_per_peer == 0) s->cfg.max_connections_per_peer = 1000;
  if (s->cfg.max_concurrent_streams == 0) s->cfg.max_concurrent_streams = 256;
  if (s->cfg.max_header_list_bytes == 0) s->cfg.max_header_list_bytes = 16384;
  if (s->cfg.max_connection_buffer_bytes == 0)
    s->cfg.max_connection_buffer_bytes = (size_t)64 << 20;
  if (s->cfg.max_kept_header_bytes == 0) s->cfg.max_kept_header_bytes = 1024;
  if (s->cfg.max_kept_header_bytes > 4096) s->cfg.max_kept_header_bytes = 4096; /* uint16 offsets */
  if (s->cfg.max_connection_buffer_bytes > INT32_MAX)
    s->cfg.max_connection_buffer_bytes = INT32_MAX;
  s->loop = loop;
  s->methods = methods;
  s->nmethods = n;
  s->method_app = method_app;
  for (size_t i = 0; i < n; i++)
    if (methods[i].state_size > s->state_size) s->state_size = methods[i].state_size;
  s->state_size = (s->state_size + 15) & ~(size_t)15;
  atomic_init(&s->returned, NULL);
  uv_check_init(loop, &s->flush_check);
  s->flush_check.data = s;
  uv_idle_init(loop, &s->flush_idle);
  uv_timer_init(loop, &s->drain_timer);
  s->drain_timer.data = s;
  ss_tq_init(loop, &s->tq);
  s->handles_open = 1;
  int rv = ss_conn_callbacks_new(&s->h2cb);
  if (rv == 0 && nghttp2_option_new(&s->h2opt) == 0) {
    /* Clients must not be able to grow our memory through HPACK or pending frames. */
    nghttp2_option_set_max_deflate_dynamic_table_size(s->h2opt, 4096);
    /* Flow control is ours: request bytes are acknowledged (WINDOW_UPDATE) only as far as the
     * connection's buffer budget allows (conn.c). */
    nghttp2_option_set_no_auto_window_update(s->h2opt, 1);
    /* nghttp2's defaults, stated: SETTINGS entries per frame, queued SETTINGS/PING ACKs
     * (a PING or SETTINGS flood that does not read its ACKs ends the connection),
     * CONTINUATION frames per header block, incoming RST_STREAM rate (rapid reset). */
    nghttp2_option_set_max_settings(s->h2opt, 32);
    nghttp2_option_set_max_outbound_ack(s->h2opt, 1000);
    nghttp2_option_set_max_continuations(s->h2opt, 8);
    nghttp2_option_set_stream_reset_rate_limit(s->h2opt, 1000, 33);
  } else if (rv == 0) {
    rv = fail(err, errlen, SS_ENOMEM, "out of memory");
  }
  if (rv == 0 && (cfg->tls_cert || cfg->tls_key)) {
    if (!cfg->tls_cert || !cfg->tls_key || !*cfg->tls_cert || !*cfg->tls_key) {
      rv = fail(err, errlen, SS_EINVAL, "TLS needs both --tls-cert and --tls-key");
    } else {
      s->tls_cert = strdup(cfg->tls_cert);
      s->tls_key = strdup(cfg->tls_key);
      s->tls_client_ca =
          cfg->tls_client_ca && *cfg->tls_client_ca ? strdup(cfg->tls_client_ca) : NULL;
      if (!s->tls_cert || !s->tls_key ||
          (cfg->tls_client_ca && *cfg->tls_client_ca && !s->tls_client_ca))
        rv = fail(err, errlen, SS_ENOMEM, "out of memory");
      else
        rv = ss_tls_ctx_new(s->tls_cert, s->tls_key, s->tls_client_ca, &s->tls, err, errlen);
    }
  } else if (rv == 0 && cfg->tls_client_ca && *cfg->tls_client_ca) {
    rv = fail(err, errlen, SS_EINVAL, "--tls-client-ca needs --tls-cert and --tls-key");
  }
  return rv;
}

int ss_grpc_shard_new(ss_grpc_server *app, int index, uv_loop_t *loop, ss_grpc_server **out,
                      char *err, size_t errlen) {
  *out = NULL;
  ss_grpc_server *s = calloc(1, sizeof *s);
  if (!s) return fail(err, errlen, SS_ENOMEM, "out of memory");
  ss_grpc_config cfg = app->cfg;
  cfg.tls_cert = app->tls_cert;
  cfg.tls_key = app->tls_key;
  cfg.tls_client_ca = app->tls_client_ca;
  int rv = shard_init(s, loop, &cfg, app->methods, app->nmethods, app->method_app, err, errlen);
  s->index = index;
  s->app = app;
  s->shared = app->shared;
  s->cfg.port = app->port;
  if (rv == 0) rv = ss_grpc_bind_shard(s, app->host, 1, err, errlen);
  if (rv != 0) { /* its handles live on loop: closed there before the memory goes */
    ss_grpc_shard_close(s);
    uv_run(loop, UV_RUN_NOWAIT);
    ss_grpc_shard_free(s);
    return rv;
  }
  *out = s;
  return 0;
}

void ss_grpc_start_flush(ss_grpc_server *s) { uv_check_start(&s->flush_check, on_flush_check); }

int ss_grpc_server_new(uv_loop_t *loop, const ss_grpc_config *cfg, const ss_method *methods,
                       size_t n, void *method_app, const ss_grpc_hooks *hooks, ss_grpc_server **out,
                       char *err, size_t errlen) {
  *out = NULL;
  if (cfg->n_kept_headers > SS_GRPC_MAX_KEPT_HEADERS)
    return fail(err, errlen, SS_EINVAL, "at most %d kept request headers",
                SS_GRPC_MAX_KEPT_HEADERS);
  int nio = cfg->io_threads > 1 ? cfg->io_threads : 1;
  if (nio > SS_GRPC_MAX_IO)
    return fail(err, errlen, SS_EINVAL, "--io-threads expects 1..%d, got %d", SS_GRPC_MAX_IO, nio);
  ss_grpc_server *s = calloc(1, sizeof *s);
  if (!s) return fail(err, errlen, SS_ENOMEM, "out of memory");
  s->app = s;
  s->shared = ss_limits_new();
  s->shards = calloc((size_t)nio, sizeof *s->shards);
  if (!s->shared || !s->shards) {
    ss_limits_free(s->shared);
    free(s->shards);
    free(s);
    return fail(err, errlen, SS_ENOMEM, "out of memory");
  }
  s->shards[0] = s;
  s->nshards = 1;
  if (hooks) s->hooks = *hooks;
  int rv = shard_init(s, loop, cfg, methods, n, method_app, err, errlen);
  if (rv == 0) rv = ss_grpc_bind_shard(s, cfg->host, nio > 1, err, errlen);
  if (rv == 0 && nio > 1) rv = ss_shards_new(s, (size_t)nio, err, errlen);
  if (rv == 0 && nio > 1) rv = ss_shards_start(s, err, errlen);
  if (rv != 0) {
    ss_grpc_server_free(s);
    return rv;
  }
  ss_grpc_start_flush(s);
  *out = s;
  return 0;
}

int ss_grpc_server_reload_tls(ss_grpc_server *s, char *err, size_t errlen) {
  if (!s->tls) return 0;
  ss_tls_ctx *fresh[SS_GRPC_MAX_IO] = {0};
  int rv = 0;
  for (size_t i = 0; i < s->nshards && rv == 0; i++) /* one context per loop */
    rv = ss_tls_ctx_new(s->tls_cert, s->tls_key, s->tls_client_ca, &fresh[i], err, errlen);
  if (rv != 0) {
    for (size_t i = 0; i < s->nshards; i++) ss_tls_ctx_free(fresh[i]);
    return rv;
  }
  ss_tls_ctx_free(s->tls); /* open connections hold their own reference to the old one */
  s->tls = fresh[0];
  for (size_t i = 1; i < s->nshards; i++) ss_shard_post_tls(s->shards[i], fresh[i]);
  return 0;
}

void ss_grpc_shard_free(ss_grpc_server *s) {
  ss_call_cache_free(s);
  ss_mbox_destroy(s);
  if (s->h2cb) nghttp2_session_callbacks_del(s->h2cb);
  if (s->h2opt) nghttp2_option_del(s->h2opt);
  ss_tls_ctx_free(s->tls);
  free(s->tls_cert);
  free(s->tls_key);
  free(s->tls_client_ca);
  free(s->host);
  free(s);
}

void ss_grpc_server_free(ss_grpc_server *s) {
  if (!s) return;
  ss_shards_free(s); /* the other loops first: what they leave for this one runs here */
  while (s->conns) ss_conn_close(s->conns);
  ss_grpc_shard_close(s);
  /* Closing handles finish on the owner's loop: run it until they have. */
  uv_run(s->loop, UV_RUN_NOWAIT);
  ss_limits_free(s->shared);
  free(s->shards);
  ss_grpc_shard_free(s);
}
