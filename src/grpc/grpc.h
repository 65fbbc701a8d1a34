/*
 * grpc.h — the seam between the gRPC-over-HTTP/2 transport and whatever serves calls on it.
 *
 * The transport (src/grpc/) accepts connections, speaks HTTP/2 (nghttp2), reassembles gRPC
 * messages, routes a call by its :path through the method table it was given, enforces
 * deadlines (grpc-timeout) and drains. It knows no model and no service: a handler receives an
 * opaque ss_call and answers through the functions below. This header is the only transport
 * header a service includes.
 *
 * Threads: everything here runs on the loop thread that owns the server (handlers are called
 * there, and every ss_call_* function must be called there), whatever io_threads is: calls
 * received on the transport's other loops are handed to this one. ss_grpc_server_new binds the
 * listeners on the calling thread before the loop runs.
 *
 * Lifetimes (one rule, reference counts): a call is created when its HEADERS arrive and holds one
 * reference for its stream; a handler that keeps the call past its return (a queued job, a
 * timer) takes a reference with ss_call_ref and drops it with ss_call_unref. When the last
 * reference goes, the handler state's release hook runs and the call is recycled.
 * A call is "answered" once a status is decided (reply, fail, end) or its client went away
 * (RST_STREAM, closed connection, deadline): from then on replies are ignored, and the cancel
 * hook has run if the client left first.
 */
#ifndef SS_GRPC_GRPC_H
#define SS_GRPC_GRPC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "splitserve.h"

typedef struct ss_call ss_call;
typedef struct ss_grpc_server ss_grpc_server;

/* A borrowed run of response bytes (see ss_call_reply_segs). */
typedef struct ss_seg {
  const uint8_t *p;
  size_t len;
} ss_seg;

/* One RPC method. handler runs on the loop thread once the call's request message is complete
 * (unary request; streaming requests are not supported). state_size: bytes of handler state
 * kept inside the call (ss_call_state), so a call costs no allocation; the transport sizes its
 * call objects from the largest entry of the table.
 *
 * Checks before the body (both optional), so a refused request costs neither buffering nor
 * inflating:
 *   max_request_bytes  the largest request message of this method, inflated (0: the server's
 *                      max_message_bytes; a larger value is capped by it). Over it the call is
 *                      refused with RESOURCE_EXHAUSTED as soon as the message prefix says so.
 *   precheck           runs once the request headers are complete (END_HEADERS), before any of
 *                      the body is read, on the I/O loop that owns the connection: with
 *                      io_threads > 1 on any of them, so it must be thread-safe and read only
 *                      the call's headers (ss_call_header). It returns 0 to go on, or a gRPC
 *                      status code with a message in msg[msglen] (no secrets: it goes to the
 *                      client) to refuse the call at once. The handler still runs its own checks;
 *                      this one only decides early. */
typedef struct ss_method {
  const char *path;     /* "/package.Service/Method" */
  int server_streaming; /* streaming responses: does not hold a drain open */
  size_t state_size;
  void (*handler)(ss_call *call, void *app); /* app: the server's method_app */
  size_t max_request_bytes;
  int (*precheck)(const ss_call *call, void *app, char *msg, size_t msglen);
} ss_method;

/* What the transport tells its owner (all on the loop thread; any may be NULL). */
typedef struct ss_grpc_hooks {
  void *app;                                /* passed to every hook */
  void (*drain_started)(void *app);         /* new calls are now refused (health: NOT_SERVING) */
  void (*drained)(void *app, int graceful); /* every unary call is answered (graceful: not cut
                                             * short by a second stop or the drain timeout) */
  int (*busy)(void *app);                   /* nonzero: keep connections open a while longer
                                             * after the drain (e.g. a checkpoint is writing) */
  void (*closed)(void *app);                /* every connection is closed: the owner may close
                                             * its own handles and let the loop end */
} ss_grpc_hooks;

typedef struct ss_grpc_config {
  const char *host;         /* numeric IPv4/IPv6 or "localhost" */
  int port;                 /* 0 picks a free port */
  size_t max_message_bytes; /* largest request message accepted */
  double drain_timeout_s;   /* unary calls get this long to finish once a drain starts */
  /* Bounds on what a peer can make the transport hold (limits: 0 = the default in
   * parentheses; timeouts: 0 = off). */
  size_t max_connections;             /* open connections (10000) */
  size_t max_connections_per_peer;    /* open connections per client IP address (1000) */
  uint32_t max_concurrent_streams;    /* SETTINGS_MAX_CONCURRENT_STREAMS, enforced (256) */
  size_t max_header_list_bytes;       /* decoded header bytes per stream, +32 per field (16 KiB) */
  size_t max_connection_buffer_bytes; /* request bytes held (inflated bytes counted as they
                                       * are made) and response bytes unsent per connection, each
                                       * direction (64 MiB) */
  double handshake_timeout_s;         /* preface + SETTINGS (10) */
  double idle_timeout_s;              /* no stream open, nothing received (300) */
  double request_body_timeout_s;      /* headers / body of a request stop arriving, or response
                                       * bytes stop being taken by the peer (30) */
  /* Request headers kept for the handler (ss_call_header): lowercase names, borrowed (must
   * outlive the server), at most SS_GRPC_MAX_KEPT_HEADERS. The transport does not know what
   * they mean; a value longer than max_kept_header_bytes (0 = 1024) refuses the call with
   * INVALID_ARGUMENT (naming the header, never quoting it), and so does a kept header sent
   * twice. */
  const char *const *kept_headers;
  size_t n_kept_headers;
  size_t max_kept_header_bytes;
  /* TLS (tls.c): with tls_cert + tls_key every connection is TLS 1.2+ with ALPN h2; with
   * tls_client_ca too, clients must present a certificate that CA signed. NULL: plaintext h2c.
   * Paths are copied; the files are re-read by ss_grpc_server_reload_tls. */
  const char *tls_cert, *tls_key, *tls_client_ca;
  /* Compress responses with the first of gzip/deflate the client lists in grpc-accept-encoding
   * (compressed requests are always accepted). Off by default: it costs loop time. */
  int compress_responses;
  /* I/O loops (0 or 1: one, the owner's). With N > 1 the transport starts N - 1 threads, each
   * running its own loop with its own listener on the same port (SO_REUSEPORT: the kernel
   * spreads connections over them), connections, HTTP/2 sessions, framing and deadlines.
   * Handlers and hooks still run on the owner's loop only: a request complete on another loop
   * is handed over, and its answer travels back (shard.c). */
  int io_threads;
} ss_grpc_config;

#define SS_GRPC_MAX_KEPT_HEADERS 8

/* Counters by outcome (the exit summary) and by connection. */
typedef struct ss_grpc_stats {
  uint64_t requests;                            /* calls whose headers arrived */
  uint64_t served, failed, rejected, cancelled; /* as ss_server_stats */
  size_t connections;                           /* open now */
  size_t live;                                  /* calls that still owe an answer */
  uint64_t connections_refused; /* over --max-connections / --max-connections-per-peer */
  uint64_t connections_cut;     /* ended by a limit or timeout (GOAWAY with a reason) */
  size_t io_threads;            /* I/O loops */
  size_t io_connections[64];    /* open connections per I/O loop (the first 64) */
} ss_grpc_stats;

/* ---- server ---- */

/* Bind host:port on loop and serve methods[n] (borrowed; must outlive the server); handlers
 * get method_app. hooks is copied (NULL: none). On failure returns <0 with a message in err.
 * *out: free with ss_grpc_server_free. */
int ss_grpc_server_new(uv_loop_t *loop, const ss_grpc_config *cfg, const ss_method *methods,
                       size_t n, void *method_app, const ss_grpc_hooks *hooks, ss_grpc_server **out,
                       char *err, size_t errlen);
int ss_grpc_server_port(const ss_grpc_server *g);
const char *ss_grpc_server_host(const ss_grpc_server *g);
void ss_grpc_server_stats(const ss_grpc_server *g, ss_grpc_stats *out);
/* Start draining: stop accepting, GOAWAY every connection, refuse new calls with UNAVAILABLE,
 * let unary calls finish up to the drain timeout. now != 0 (a second stop): answer what is left
 * with UNAVAILABLE at once. Then streams end, output is flushed, connections close, hooks run. */
void ss_grpc_server_drain(ss_grpc_server *g, int now);
/* Re-read the TLS certificate, key and client CA (SIGHUP). New connections use the new
 * context, open ones keep theirs. On error the old context stays, <0 is returned and err says
 * why. 0 without doing anything when the server is not using TLS. */
int ss_grpc_server_reload_tls(ss_grpc_server *g, char *err, size_t errlen);
/* Free (loop not running, or after `closed`). Closes whatever is still open. NULL is fine. */
void ss_grpc_server_free(ss_grpc_server *g);

/* ---- calls: reading ---- */

/* The request message (protobuf bytes, no prefix). Owned by the call; the handler may modify it
 * in place (e.g. realign a tensor); valid until the call is freed. */
uint8_t *ss_call_request(ss_call *call, size_t *len);
/* The call's handler state: method->state_size bytes, not zeroed, aligned for any type. */
void *ss_call_state(ss_call *call);
/* Hooks for the handler state: cancel runs when the client goes away or the deadline passes
 * before the call was answered (stop work, leave queues); release runs when the last reference
 * goes (free what the state holds). Either may be NULL. */
void ss_call_set_hooks(ss_call *call, void (*cancel)(ss_call *call),
                       void (*release)(ss_call *call));
/* Nonzero once a status is decided or the client went away (further answers are ignored). */
int ss_call_answered(const ss_call *call);
/* The status the call ended with (a gRPC code), CANCELLED when its client went away first, or
 * -1 while it is still open. */
int ss_call_status(const ss_call *call);
/* The value of request header name (one of ss_grpc_config.kept_headers, matched without
 * regard to case), NUL-terminated; NULL when the client did not send it or the server does not
 * keep it. Owned by the call: valid until the call is freed. */
const char *ss_call_header(const ss_call *call, const char *name);
/* uv_hrtime() when the call's headers arrived. */
uint64_t ss_call_start_ns(const ss_call *call);
/* The id of the connection that carried the call: nonzero, unique among the server's
 * connections for its life (whatever I/O loop they live on), the same for every call of one
 * connection. Any thread that may read the call. */
uint64_t ss_call_conn_id(const ss_call *call);
/* The server the call belongs to (for counters). */
ss_grpc_server *ss_call_server(ss_call *call);

/* ---- calls: answering (each ends the call except ss_call_send) ---- */

/* Memory a reply borrows, with how to give it back: release(ptr) runs when the call is freed
 * (on the loop that frees it), or at once when the reply is refused or copied. Whoever made the
 * memory says how it goes: a compute backend's buffers carry its release, plain heap memory
 * carries free; SS_NOT_OWNED: nothing to give back. */
typedef struct ss_owned {
  void *ptr;
  void (*release)(void *ptr);
} ss_owned;
#define SS_NOT_OWNED ((ss_owned){NULL, NULL})
static inline void ss_owned_release(ss_owned o) {
  if (o.ptr != NULL && o.release != NULL) o.release(o.ptr);
}

/* Reply with msg; when tail is non-NULL it is appended as protobuf bytes field tail_field
 * without being copied (borrowed until the call is freed, then tail_owner is released). msg
 * must not itself set that field. Status OK. */
void ss_call_reply(ss_call *call, const ProtobufCMessage *msg, uint32_t tail_field,
                   const void *tail, size_t tail_len, ss_owned tail_owner);
/* The general form: msg packed, then segs[] sent verbatim after it; together they must encode
 * one message (further fields of msg's type). segs and their bytes are borrowed until the call
 * is freed (then owner is released). Status OK. */
void ss_call_reply_segs(ss_call *call, const ProtobufCMessage *msg, const ss_seg *segs,
                        size_t nsegs, ss_owned owner);
/* Queue one message on a server-streaming call (the call stays open). */
void ss_call_send(ss_call *call, const ProtobufCMessage *msg);
/* Answer with a status and a message (fmt; percent-encoded into grpc-message). */
void ss_call_fail(ss_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* End a streaming call with a status after its messages. */
void ss_call_end(ss_call *call, int code, const char *msg);

void ss_call_ref(ss_call *call);
void ss_call_unref(ss_call *call);

#endif
