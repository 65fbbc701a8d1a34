/*
 * conn.c — one accepted TCP connection carrying one nghttp2 server session (h2c with prior
 * knowledge, as gRPC clients speak it), and the mapping of HTTP/2 streams to gRPC calls.
 *
 * Thread: loop thread only.
 *
 * Reading: libuv reads into the server's one 64 KiB buffer (shared: reads are processed one at
 * a time and consumed at once, so an idle connection holds no buffer); nghttp2_session_mem_recv
 * parses it and calls back: request headers are checked as they come (:method, :path routed,
 * the headers named in cfg.kept_headers copied into the call for ss_call_header,
 * content-type, grpc-timeout, grpc-encoding), DATA chunks feed the call's message reader
 * (the one copy of request bytes the codec forces: frames -> one contiguous message), and
 * END_STREAM hands the complete request to the method's handler.
 *
 * Writing: nothing is written from inside a callback. A connection with output is put on the
 * server's dirty list; once per loop iteration (uv_check) every dirty connection runs
 * nghttp2_session_send, which gathers all pending frames into one buffer, and issues one
 * uv_write. DATA payloads are copied from the call's output straight into that buffer
 * (NGHTTP2_DATA_FLAG_NO_COPY + send_data_callback). While a write is in flight and the next
 * buffer is over SS_WBUF_HIGH, nghttp2 is told WOULDBLOCK, which back-pressures the streams.
 *
 * TLS (--tls-cert/--tls-key, tls.c): the same path with a record layer on memory BIOs. A read
 * is fed to OpenSSL (the handshake runs there until it completes) and the plaintext goes to
 * nghttp2; wbuf gathers plaintext frames as above, and when a write starts they are sealed and
 * the ciphertext is written from inflight_buf. The handshake timeout covers the TLS handshake
 * (a connection that does not complete it is closed without a GOAWAY). A graceful close (the
 * FIN after a GOAWAY, or the drain's close) first sends a close_notify alert, best effort.
 *
 * Bounds (what one client can make the server hold; each a setting of ss_grpc_config):
 *   connections   total and per client IP: over either, the socket gets SETTINGS + GOAWAY
 *                 (ENHANCE_YOUR_CALM, reason in the debug data) and is closed at once.
 *   streams       SETTINGS_MAX_CONCURRENT_STREAMS; nghttp2 refuses streams beyond it.
 *   headers       SETTINGS_MAX_HEADER_LIST_SIZE, enforced here on the decoded size (name +
 *                 value + 32 per field, HPACK references counted in full) as fields arrive,
 *                 trailers included: over it the stream is reset with ENHANCE_YOUR_CALM
 *                 (RESOURCE_EXHAUSTED in gRPC clients) and nghttp2 decodes the rest of the
 *                 block without calling us (so an HPACK amplification costs little); the 16th
 *                 time, GOAWAY.
 *   inbound bytes nghttp2 sends no WINDOW_UPDATE itself. Request bytes held by open streams
 *                 are counted per connection; while under the buffer budget they are
 *                 acknowledged at once (connection and stream), over it a stream's window is
 *                 refilled only for the oldest incomplete request (so one message larger than
 *                 the budget still arrives) and only while the completed requests waiting for
 *                 compute or for their client to read stay within the budget. Stream windows
 *                 are budget / max streams (64 KiB .. 8 MiB), so a connection holds at most
 *                 about budget + streams x window + one message. A compressed message counts
 *                 inflated: it may inflate only as far as the budget has room once everything
 *                 else the connection holds is counted (else RESOURCE_EXHAUSTED), so a 93 KB
 *                 gzip request cannot become 98 MB held.
 *   inflation     never in one go on the loop: the flush check gives up to SS_INFLATE_CALLS
 *                 calls SS_INFLATE_SLICE bytes each per iteration, and only after the method's
 *                 precheck (credentials) passed at END_HEADERS; a call is dispatched once its
 *                 message is whole.
 *   outbound bytes responses queued and not yet written are counted per connection; a reply
 *                 that would take them over the budget is answered RESOURCE_EXHAUSTED instead
 *                 (a streamed message: the stream is reset), so a client that never opens its
 *                 window holds at most the budget.
 *   time          one timer-queue entry per connection: the preface + SETTINGS must come
 *                 within the handshake timeout; a connection with no open stream that
 *                 received nothing (PINGs count) for the idle timeout gets GOAWAY; a doomed
 *                 connection lingers at most SS_LINGER_MS for its peer to read the GOAWAY.
 *                 Per call, the same entry as its deadline: headers must complete and body
 *                 bytes keep coming within the request body timeout. Response bytes queued and
 *                 not taken by the peer for the same timeout end the connection (GOAWAY).
 *                 TLS: after the peer's close_notify nothing more is read; the connection
 *                 closes once its calls are answered.
 *   protocol      :method must be POST (else HTTP 405), te: trailers is required (else
 *                 INVALID_ARGUMENT); nghttp2 refuses NUL/CR/LF in header values and :path.
 *   per method    ss_method.max_request_bytes lowers the message limit (health checks: 1 KiB)
 *                 and ss_method.precheck may refuse the call from its headers at END_HEADERS.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/macros.h"
#include "grpc/compress.h"
#include "grpc/grpc_int.h"
#include "grpc/h2mem.h"

#define SS_WBUF_HIGH (1u << 20)
#define SS_WBUF_KEEP (256u << 10) /* larger write buffers are freed once written */
#define SS_LINGER_MS 2000         /* a doomed connection's last bytes: time for the peer to read */
#define SS_MAX_HDR_OVERFLOWS 16   /* header lists over the limit before GOAWAY */
#define SS_DRAIN_PING "ssdrain!"  /* opaque data of the drain's PING (8 bytes) */

static ss_call *stream_call(ss_conn *c, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(c->h2, stream_id);
}

static int wbuf_reserve(ss_conn *c, size_t more) {
  if (c->wlen + more <= c->wcap) return 0;
  size_t cap = c->wcap ? c->wcap : 4096; /* idle connections stay small */
  while (cap < c->wlen + more) cap *= 2;
  uint8_t *p = realloc(c->wbuf, cap);
  if (!p) return SS_ENOMEM;
  c->wbuf = p;
  c->wcap = cap;
  return 0;
}

/* ------------------------------------------------------------ nghttp2 callbacks --- */

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data) {
  (void)session, (void)flags;
  ss_conn *c = user_data;
  if (c->writing && c->wlen >= SS_WBUF_HIGH) return NGHTTP2_ERR_WOULDBLOCK;
  if (wbuf_reserve(c, length) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(c->wbuf + c->wlen, data, length);
  c->wlen += length;
  return (ssize_t)length;
}

static int on_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user_data) {
  (void)session;
  ss_conn *c = user_data;
  ss_call *call = source->ptr;
  if (c->writing && c->wlen >= SS_WBUF_HIGH) return NGHTTP2_ERR_WOULDBLOCK;
  size_t pad = frame->data.padlen;
  if (wbuf_reserve(c, 9 + length + pad) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(c->wbuf + c->wlen, framehd, 9);
  c->wlen += 9;
  if (pad) c->wbuf[c->wlen++] = (uint8_t)(pad - 1);
  ss_call_take_output(call, c->wbuf + c->wlen, length);
  c->wlen += length;
  if (pad > 1) {
    memset(c->wbuf + c->wlen, 0, pad - 1);
    c->wlen += pad - 1;
  }
  return 0;
}

static void call_link(ss_conn *c, ss_call *call) {
  call->conn_prev = NULL;
  call->conn_next = c->calls;
  if (c->calls) c->calls->conn_prev = call;
  c->calls = call;
}

static void call_unlink(ss_conn *c, ss_call *call) {
  if (call->conn_prev)
    call->conn_prev->conn_next = call->conn_next;
  else
    c->calls = call->conn_next;
  if (call->conn_next) call->conn_next->conn_prev = call->conn_prev;
  call->conn_prev = call->conn_next = NULL;
}

static void on_recv_timeout(ss_tq_entry *e);
static void on_conn_timer(ss_tq_entry *e);
static void in_rebalance(ss_conn *c);

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  ss_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  ss_call *call = ss_call_new(c->srv);
  if (!call) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  call->srv = c->srv;
  call->conn = c;
  call->stream_id = frame->hd.stream_id;
  atomic_store_explicit(&call->refs, 1, memory_order_relaxed); /* the stream's reference */
  call->start_ns = uv_hrtime();
  call->conn_id = c->id;
  call->status = -1;
  ss_msg_reader_init(&call->reader, c->srv->cfg.max_message_bytes);
  call_link(c, call);
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call);
  double t = c->srv->cfg.request_body_timeout_s;
  if (t > 0 && ss_tq_arm(&c->srv->tq, &call->deadline, call->start_ns + (uint64_t)(t * 1e9),
                         on_recv_timeout) != 0)
    SS_LOGD("stream %d: no memory for the request timeout", call->stream_id);
  return 0;
}

/* Header checks are recorded in the call and acted on at END_HEADERS. */
typedef struct {
  int bad_method, bad_ctype, compressed_unsupported;
  char ctype[64];
  char encoding[32];
} hdr_state;

/* A stream's header list went over the limit: reset it with ENHANCE_YOUR_CALM (gRPC clients
 * report RESOURCE_EXHAUSTED; a response cannot go first: nghttp2 drops what is queued for a
 * stream it resets) and let nghttp2 skip the rest of the block without calling us. A
 * connection that keeps doing it is cut. */
static int header_overflow(ss_conn *c, ss_call *call) {
  ss_grpc_server *s = c->srv;
  call->h2_reset = 1;
  if (call->state != SS_CALL_DONE) { /* no handler has seen it yet */
    call->refused = 1;
    call->state = SS_CALL_DONE;
    call->finished = 1;
    ss_tq_cancel(&s->tq, &call->deadline);
    SS_STAT_INC(s->stats.rejected);
    ss_grpc_call_settled(s, call);
  }
  int rv = nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                     NGHTTP2_ENHANCE_YOUR_CALM);
  if (rv != 0) SS_LOGD("stream %d: rst_stream: %s", call->stream_id, nghttp2_strerror(rv));
  ss_grpc_note_limit(s,
                     "stream reset: request header list over %zu bytes (--max-header-list-bytes)",
                     s->cfg.max_header_list_bytes);
  if (++c->hdr_overflows >= SS_MAX_HDR_OVERFLOWS)
    ss_conn_kill(c, NGHTTP2_ENHANCE_YOUR_CALM,
                 "%u header lists over the limit of %zu bytes (--max-header-list-bytes)",
                 c->hdr_overflows, s->cfg.max_header_list_bytes);
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)session, (void)flags;
  ss_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  ss_call *call = stream_call(c, frame->hd.stream_id);
  if (!call) return 0;
  /* Every field counts in full, indexed or not, trailers too: the decoded size is the cost. */
  call->hdr_bytes += namelen + valuelen + 32;
  if (call->hdr_bytes > c->srv->cfg.max_header_list_bytes) return header_overflow(c, call);
  if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
    call->method = ss_grpc_route(c->srv, (const char *)value, valuelen);
    if (!call->method) {
      free(call->bad_path);
      call->bad_path = strndup((const char *)value, valuelen > 200 ? 200 : valuelen);
    }
  } else if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
    call->bad_method = !(valuelen == 4 && memcmp(value, "POST", 4) == 0);
  } else if (namelen == 2 && memcmp(name, "te", 2) == 0) {
    call->have_te = 1; /* nghttp2 accepts no other value than "trailers" */
  } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
    call->have_ctype = 1;
    /* application/grpc, application/grpc+proto, application/grpc;charset=... */
    int ok = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
             (valuelen == 16 || value[16] == '+' || value[16] == ';');
    if (!ok) call->refused = 415;
  } else if (namelen == 12 && memcmp(name, "grpc-timeout", 12) == 0) {
    int64_t ns;
    if (ss_grpc_timeout_parse((const char *)value, valuelen, &ns) == 0)
      call->timeout_ns = ns > 0 ? ns : 1;
    else
      call->refused = 400;
  } else if (namelen == 13 && memcmp(name, "grpc-encoding", 13) == 0) {
    if (!(valuelen == 8 && memcmp(value, "identity", 8) == 0)) {
      free(call->encoding);
      call->encoding = strndup((const char *)value, valuelen > 40 ? 40 : valuelen);
    }
  } else if (namelen == 20 && memcmp(name, "grpc-accept-encoding", 20) == 0) {
    call->accept_enc = ss_grpc_accept_encoding_pick((const char *)value, valuelen);
  } else if (name[0] != ':') {
    ss_call_keep_header(call, name, namelen, value, valuelen); /* the ones the handler reads */
  }
  return 0;
}

static void refuse_http(ss_call *call, const char *status, const char *text) {
  /* A non-gRPC answer (the gRPC spec: 415 for a wrong content-type; 405 for a method other
   * than POST, with allow: POST). */
  nghttp2_nv nv[] = {
      {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"allow", (uint8_t *)"POST", 5, 4, NGHTTP2_NV_FLAG_NONE},
  };
  call->headers_submitted = 1;
  call->state = SS_CALL_DONE;
  call->finished = 1;
  if (!call->refused) call->refused = 1; /* discard and stop its upload */
  ss_tq_cancel(&call->srv->tq, &call->deadline);
  (void)text;
  int rv = nghttp2_submit_response(call->conn->h2, call->stream_id, nv,
                                   strcmp(status, "405") == 0 ? 3 : 2, NULL);
  if (rv != 0) SS_LOGW("stream %d: submit_response: %s", call->stream_id, nghttp2_strerror(rv));
  SS_STAT_INC(call->srv->stats.failed);
  ss_conn_mark_dirty(call->conn);
}

/* Length of "/pkg.Service" in method i's path, or 0 when an earlier method has the same service. */
static size_t new_service(const ss_grpc_server *s, size_t i) {
  const char *p = s->methods[i].path;
  size_t pl = (size_t)(strrchr(p, '/') - p);
  for (size_t j = 0; j < i; j++)
    if (strncmp(s->methods[j].path, p, pl + 1) == 0) return 0;
  return pl;
}

/* The services of the method table as "/pkg.A/<any> and /pkg.B/<any>", in table order. */
static const char *services_list(const ss_grpc_server *s, char *buf, size_t len) {
  size_t off = 0, nsvc = 0, total = 0;
  for (size_t i = 0; i < s->nmethods; i++) total += new_service(s, i) > 0;
  buf[0] = 0;
  for (size_t i = 0; i < s->nmethods; i++) {
    size_t pl = new_service(s, i);
    if (pl == 0) continue;
    nsvc++;
    const char *sep = nsvc == 1 ? "" : nsvc == total ? " and " : ", ";
    int n = snprintf(buf + off, len - off, "%s%.*s/*", sep, (int)pl, s->methods[i].path);
    if (n < 0 || (size_t)n >= len - off) break;
    off += (size_t)n;
  }
  return buf;
}

const ss_method *ss_grpc_route(const ss_grpc_server *s, const char *path, size_t len) {
  for (size_t i = 0; i < s->nmethods; i++)
    if (strlen(s->methods[i].path) == len && memcmp(s->methods[i].path, path, len) == 0)
      return &s->methods[i];
  return NULL;
}

/* Request headers complete: route, refuse early what cannot be served. */
static void headers_done(ss_conn *c, ss_call *call) {
  ss_grpc_server *s = c->srv;
  SS_STAT_INC(s->stats.requests);
  call->headers_complete = 1;
  if (call->state == SS_CALL_DONE) return; /* already answered */
  if (call->bad_method) {
    refuse_http(call, "405", "method not allowed: gRPC is POST only");
    return;
  }
  if (call->refused == 415 || !call->have_ctype) {
    refuse_http(call, "415", "unsupported content-type");
    return;
  }
  /* From here on the call owes a gRPC answer: it joins the drain set. */
  call->live = 1;
  call->live_prev = NULL;
  call->live_next = s->live;
  if (s->live) s->live->live_prev = call;
  s->live = call;
  SS_STAT_INC(s->nlive);
  if (call->refused == 400) {
    ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout header");
    return;
  }
  if (call->kept_bad) {
    const char *h = s->cfg.kept_headers[call->kept_bad - 1];
    call->refused = 1;
    if (call->kept_bad_len)
      ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT,
                    "request header '%s' is %zu bytes long; at most "
                    "%zu",
                    h, call->kept_bad_len, s->cfg.max_kept_header_bytes);
    else
      ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT, "request header '%s' was sent more than once",
                    h);
    return;
  }
  if (!call->have_te) {
    call->refused = 1;
    ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT,
                  "missing header 'te: trailers' (required by gRPC over HTTP/2)");
    return;
  }
  if (!call->method) {
    char known[256];
    call->refused = 1;
    ss_call_failf(call, SS_GRPC_UNIMPLEMENTED, "unknown method %s (this server implements %s)",
                  call->bad_path ? call->bad_path : "(no :path)",
                  services_list(s, known, sizeof known));
    return;
  }
  if (c->goaway_sent) { /* after the final GOAWAY (during the notice they are still served) */
    call->refused = 1;
    ss_call_failf(call, SS_GRPC_UNAVAILABLE, "server is shutting down");
    return;
  }
  call->is_drain_exempt = call->method->server_streaming;
  const ss_method *m = call->method;
  if (m->max_request_bytes && m->max_request_bytes < call->reader.max_len)
    call->reader.max_len = m->max_request_bytes; /* the prefix and the inflated size both */
  if (m->precheck) { /* e.g. credentials: refused before any body byte is buffered or inflated */
    char msg[256] = "";
    int code = m->precheck(call, s->method_app, msg, sizeof msg);
    if (code != 0) {
      call->refused = 1;
      ss_call_failf(call, code, "%s", msg);
    }
  }
}

static void dispatch(ss_call *call) {
  if (call->state != SS_CALL_RECV || call->refused) return;
  if (call->zin) { /* still inflating: dispatched once the message is whole */
    call->end_seen = 1;
    return;
  }
  call->state = SS_CALL_ACTIVE;
  if (call->nmsgs == 0 && !ss_msg_reader_idle(&call->reader)) {
    ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT,
                  "request ended inside a message (%zu of %zu bytes)", call->reader.have,
                  call->reader.len);
    return;
  }
  if (call->nmsgs == 0) {
    ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT, "request stream ended without a message");
    return;
  }
  if (call->nmsgs > 1) {
    ss_call_failf(call, SS_GRPC_INVALID_ARGUMENT, "unary request carried %d messages, expected 1",
                  call->nmsgs);
    return;
  }
  ss_tq_cancel(&call->srv->tq, &call->deadline); /* the request body timeout */
  ss_call_arm_deadline(call);
  if (call->srv->index != 0)
    ss_shard_dispatch(call); /* handlers run on the app loop */
  else
    call->method->handler(call, call->srv->method_app);
}

static void handshake_done(ss_conn *c);

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)session;
  ss_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) {
    if (frame->hd.type == NGHTTP2_SETTINGS && !c->handshaken) handshake_done(c);
    if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) && c->notice_sent &&
        memcmp(frame->ping.opaque_data, SS_DRAIN_PING, 8) == 0)
      ss_conn_goaway(c); /* the peer has seen the shutdown notice */
    return 0;
  }
  ss_call *call = stream_call(c, frame->hd.stream_id);
  if (!call) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
      (frame->hd.flags & NGHTTP2_FLAG_END_HEADERS))
    headers_done(c, call);
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
    dispatch(call);
    if (c->nstream_debtors) in_rebalance(c); /* the oldest incomplete request may change */
  }
  return 0;
}

/* ---- inbound budget: WINDOW_UPDATE only as far as the connection's budget allows ---- */

static void consume_log(int rv, int32_t stream_id) {
  if (rv != 0) SS_LOGD("stream %d: consume: %s", stream_id, nghttp2_strerror(rv));
}

/* Bytes nobody keeps (refused or finished streams): acknowledge at once. */
static void in_discard(ss_conn *c, int32_t stream_id, size_t len) {
  int rv = nghttp2_session_consume(c->h2, stream_id, len);
  if (rv == NGHTTP2_ERR_INVALID_ARGUMENT) rv = nghttp2_session_consume_connection(c->h2, len);
  consume_log(rv, stream_id);
}

/* The oldest incomplete request (the one a budget-sized wait must never block), and the bytes
 * held by requests that are complete (waiting for compute or for their client to read). */
static ss_call *in_head(ss_conn *c, size_t *held_done) {
  ss_call *head = NULL;
  size_t done = 0;
  for (ss_call *x = c->calls; x; x = x->conn_next) { /* newest first */
    if (x->state == SS_CALL_RECV && !x->refused && x->headers_complete)
      head = x;
    else
      done += x->in_held;
  }
  *held_done = done;
  return head;
}

static void stream_repay(ss_conn *c, ss_call *call) {
  if (!call->stream_debt) return;
  consume_log(nghttp2_session_consume_stream(c->h2, call->stream_id, call->stream_debt),
              call->stream_id);
  call->stream_debt = 0;
  c->nstream_debtors--;
}

/* Give streams their deferred window back as far as the budget allows. */
static void in_rebalance(ss_conn *c) {
  size_t budget = c->srv->cfg.max_connection_buffer_bytes;
  if (c->in_held <= budget) {
    for (ss_call *x = c->calls; x && c->nstream_debtors; x = x->conn_next) stream_repay(c, x);
    return;
  }
  size_t done;
  ss_call *head = in_head(c, &done);
  if (head && done <= budget) stream_repay(c, head);
}

static void in_account(ss_conn *c, ss_call *call, size_t len) {
  size_t budget = c->srv->cfg.max_connection_buffer_bytes;
  call->in_held += len;
  c->in_held += len;
  /* The connection window is always given back: the stream windows do the bounding. */
  consume_log(nghttp2_session_consume_connection(c->h2, len), 0);
  if (c->in_held > budget) {
    size_t done;
    if (in_head(c, &done) != call || done > budget) {
      if (!call->stream_debt) c->nstream_debtors++;
      call->stream_debt += len;
      return;
    }
  }
  if (call->stream_debt) { /* the budget has room again, or this became the oldest */
    call->stream_debt += len;
    stream_repay(c, call);
    return;
  }
  consume_log(nghttp2_session_consume_stream(c->h2, call->stream_id, len), call->stream_id);
}

/* ---- compressed requests: inflated a slice per loop iteration, within the budget ---- */

#define SS_INFLATE_SLICE (1u << 20) /* output (and input) bytes per call per iteration */
#define SS_INFLATE_CALLS 4          /* calls given a slice per iteration (~ 4 x 3 ms) */

static void zin_unlink(ss_grpc_server *s, ss_call *call) {
  if (call->zin_prev)
    call->zin_prev->zin_next = call->zin_next;
  else
    s->inflating = call->zin_next;
  if (call->zin_next)
    call->zin_next->zin_prev = call->zin_prev;
  else
    s->inflating_tail = call->zin_prev;
  call->zin_prev = call->zin_next = NULL;
}

static void zin_append(ss_grpc_server *s, ss_call *call) {
  call->zin_next = NULL;
  call->zin_prev = s->inflating_tail;
  if (s->inflating_tail)
    s->inflating_tail->zin_next = call;
  else
    s->inflating = call;
  s->inflating_tail = call;
}

/* Stop inflating call (finished, refused or gone): its partial output is freed. */
static void zin_stop(ss_call *call) {
  if (!call->zin) return;
  zin_unlink(call->srv, call);
  ss_inflater_free(call->zin);
  call->zin = NULL;
}

/* The inflated size a request may reach now: --max-message-bytes (or the method's bound), and
 * what the connection's buffer budget has left once everything else it holds is counted (the
 * request's own compressed bytes included), so a small compressed message cannot make the
 * server hold more than the budget. *by_budget: the budget is the smaller of the two. */
static size_t zin_limit(ss_call *call, int *by_budget) {
  ss_conn *c = call->conn;
  size_t max = call->reader.max_len, budget = c->srv->cfg.max_connection_buffer_bytes;
  size_t held = c->in_held - call->zin_acct; /* all but this call's inflated bytes */
  size_t room = budget > held ? budget - held : 0;
  *by_budget = room < max;
  return room < max ? room : max;
}

static void dispatch(ss_call *call);

/* The request message has the compressed flag: start inflating it (grpc-encoding gzip or
 * deflate); the loop's flush check does the work a slice at a time (ss_conn_inflate_some).
 * 0, or -1 when the call was answered. */
static int inflate_request(ss_call *call) {
  const char *name = call->encoding;
  int enc = name ? ss_grpc_encoding_parse(name, strlen(name)) : -1;
  if (enc <= SS_ENC_IDENTITY) {
    call->refused = 1;
    ss_call_failf(call, SS_GRPC_UNIMPLEMENTED,
                  "compressed message with grpc-encoding %s; this server accepts identity, deflate "
                  "and gzip",
                  name ? name : "(none declared)");
    return -1;
  }
  if (ss_inflater_new(enc, &call->zin) != 0) {
    call->refused = 1;
    ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory inflating a %zu-byte message",
                  call->req_len);
    return -1;
  }
  call->zin_enc = enc;
  zin_append(call->srv, call);
  ss_grpc_wake_flush(call->srv);
  return 0;
}

/* One slice of call's inflation. 1 while work is left, else 0 (done, or the call answered). */
static int inflate_slice(ss_call *call) {
  ss_conn *c = call->conn;
  const char *name = ss_grpc_encoding_name(call->zin_enc);
  int by_budget;
  size_t limit = zin_limit(call, &by_budget);
  uint8_t *out;
  size_t outlen, out_map;
  int rv = ss_inflater_step(call->zin, call->req, call->req_len, limit, SS_INFLATE_SLICE, &out,
                            &outlen, &out_map);
  size_t have = rv == SS_INFLATE_MORE ? ss_inflater_held(call->zin) : rv == 0 ? outlen : 0;
  /* The inflated bytes count against the budget as they are made. */
  c->in_held = c->in_held - call->zin_acct + have;
  call->in_held = call->in_held - call->zin_acct + have;
  call->zin_acct = have;
  if (rv == SS_INFLATE_MORE) return 1;
  zin_stop(call);
  if (rv != 0) {
    call->refused = 1;
    if (rv == SS_ERANGE && by_budget)
      ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED,
                    "request message inflates (%s) to more than the %zu bytes left of this "
                    "connection's buffer budget of %zu MiB (--max-connection-buffer-mb)",
                    name, limit, c->srv->cfg.max_connection_buffer_bytes >> 20);
    else if (rv == SS_ERANGE)
      ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED,
                    "request message inflates (%s) to more than the limit of %zu bytes "
                    "(--max-message-bytes)",
                    name, limit);
    else if (rv == SS_ENOMEM)
      ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory inflating a %zu-byte message",
                    call->req_len);
    else
      ss_call_failf(call, SS_GRPC_INTERNAL, "request message is not valid %s data", name);
    return 0;
  }
  ss_grpc_inflated_free(call->req, call->req_map);
  call->req = out;
  call->req_len = outlen;
  call->req_map = out_map;
  if (call->end_seen) {
    dispatch(call);
    if (c->nstream_debtors) in_rebalance(c);
  }
  return 0;
}

int ss_conn_inflate_some(ss_grpc_server *s) {
  for (int i = 0; i < SS_INFLATE_CALLS && s->inflating; i++) {
    ss_call *call = s->inflating;
    if (!call->conn || call->refused || call->state != SS_CALL_RECV) { /* answered meanwhile */
      zin_stop(call);
      continue;
    }
    if (inflate_slice(call) && call == s->inflating) { /* round robin: to the back */
      zin_unlink(s, call);
      zin_append(s, call);
    }
  }
  return s->inflating != NULL;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)session, (void)flags;
  ss_conn *c = user_data;
  ss_call *call = stream_call(c, stream_id);
  if (!call || call->refused || call->state != SS_CALL_RECV) {
    in_discard(c, stream_id, len);
    return 0;
  }
  call->last_rx_ms = uv_now(c->srv->loop);
  in_account(c, call, len);
  while (len > 0) {
    size_t used = 0;
    int rv = ss_msg_reader_feed(&call->reader, data, len, &used);
    data += used;
    len -= used;
    if (rv == SS_MSG_COMPLETE) {
      uint8_t *msg;
      size_t mlen;
      int compressed;
      ss_msg_reader_take(&call->reader, &msg, &mlen, &compressed);
      call->nmsgs++;
      if (call->nmsgs > 1) {
        free(msg);
        continue;
      }
      call->req = msg;
      call->req_len = mlen;
      if (compressed && inflate_request(call) != 0) return 0;
    } else if (rv == SS_MSG_TOO_LARGE) {
      call->refused = 1;
      if (call->reader.max_len < c->srv->cfg.max_message_bytes)
        ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED,
                      "request message of %zu bytes exceeds the limit of %zu bytes for %s",
                      call->reader.len, call->reader.max_len, call->method->path);
      else
        ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED,
                      "request message of %zu bytes exceeds the limit of %zu bytes "
                      "(--max-message-bytes)",
                      call->reader.len, call->reader.max_len);
      return 0;
    } else if (rv == SS_MSG_NOMEM) {
      call->refused = 1;
      ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte message",
                    call->reader.len);
      return 0;
    }
  }
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  /* We answered before the client finished sending (refused call): stop its upload. */
  ss_call *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (call && call->refused && !call->h2_reset && call->state != SS_CALL_ACTIVE &&
      !nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id))
    if (nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR) != 0)
      SS_LOGD("stream %d: cannot reset the refused upload", frame->hd.stream_id);
  return 0;
}

/* The stream is gone (answered, reset by the client, or the session ends). */
static void stream_gone(ss_conn *c, ss_call *call) {
  zin_stop(call);
  c->in_held -= call->in_held;
  call->in_held = 0;
  if (call->stream_debt) {
    call->stream_debt = 0;
    c->nstream_debtors--;
  }
  c->out_pending -= call->out_acct;
  call->out_acct = 0;
  call_unlink(c, call);
  call->conn = NULL;
  ss_call_abandon(call);
  ss_call_drop(call);
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)error_code;
  ss_conn *c = user_data;
  ss_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!call) return 0;
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  stream_gone(c, call);
  if (c->nstream_debtors) {
    in_rebalance(c);
    ss_conn_mark_dirty(c);
  }
  return 0;
}

int ss_conn_callbacks_new(nghttp2_session_callbacks **out) {
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb) != 0) return SS_ENOMEM;
  nghttp2_session_callbacks_set_send_callback(cb, on_send);
  nghttp2_session_callbacks_set_send_data_callback(cb, on_send_data);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  *out = cb;
  return 0;
}

/* ------------------------------------------------------------ socket I/O --- */

static void on_closed(uv_handle_t *h) {
  ss_conn *c = h->data;
  ss_tls_conn_free(c->tls);
  free(c->wbuf);
  free(c->inflight_buf);
  free(c);
}

/* ---- timeouts ---- */

/* "Now" for deciding whether a timer-queue entry is still early: the queue fires everything due
 * up to uv_hrtime() + 0.5 ms, which can be past the loop's cached uv_now(); an entry re-armed
 * for a time the queue already counts as due would fire again at once, forever. */
static uint64_t tq_now_ms(void) { return (uv_hrtime() + 500000) / 1000000; }

static void conn_arm(ss_conn *c, uint64_t when_ms) {
  if (ss_tq_arm(&c->srv->tq, &c->tmo, when_ms * 1000000u, on_conn_timer) != 0)
    SS_LOGD("connection: no memory for its timer");
}

static void handshake_done(ss_conn *c) {
  c->handshaken = 1;
  if (c->srv->cfg.idle_timeout_s > 0)
    conn_arm(c, uv_now(c->srv->loop) + (uint64_t)(c->srv->cfg.idle_timeout_s * 1000.0));
  else
    ss_tq_cancel(&c->srv->tq, &c->tmo);
}

static void on_conn_timer(ss_tq_entry *e) {
  ss_conn *c = ss_container_of(e, ss_conn, tmo);
  ss_grpc_server *s = c->srv;
  if (c->closing) return;
  if (c->doomed) { /* the peer had its time to read the GOAWAY */
    ss_conn_close(c);
    return;
  }
  if (c->tls && !ss_tls_ready(c->tls)) { /* no GOAWAY can go out before the TLS handshake */
    SS_STAT_INC(s->stats.connections_cut);
    ss_grpc_note_limit(s, "connection closed: no TLS handshake within %.1f s (--handshake-timeout)",
                       s->cfg.handshake_timeout_s);
    ss_conn_close(c);
    return;
  }
  if (!c->handshaken) {
    ss_conn_kill(c, NGHTTP2_SETTINGS_TIMEOUT,
                 "no HTTP/2 client preface and SETTINGS within %.1f s (--handshake-timeout)",
                 s->cfg.handshake_timeout_s);
    return;
  }
  uint64_t idle_ms = (uint64_t)(s->cfg.idle_timeout_s * 1000.0), now = tq_now_ms();
  if (idle_ms == 0) return;
  if (c->calls || c->last_rx_ms + idle_ms > now) { /* busy, or heard from lately */
    conn_arm(c, (c->calls ? now : c->last_rx_ms) + idle_ms);
    return;
  }
  ss_conn_kill(c, NGHTTP2_NO_ERROR, "idle for %.1f s with no open stream (--idle-timeout)",
               s->cfg.idle_timeout_s);
}

/* A request's headers or body stopped arriving (the call's deadline entry while receiving). */
static void on_recv_timeout(ss_tq_entry *e) {
  ss_call *call = ss_container_of(e, ss_call, deadline);
  ss_conn *c = call->conn;
  if (!c || call->state != SS_CALL_RECV) return;
  double t = c->srv->cfg.request_body_timeout_s;
  if (!call->headers_complete) { /* a header block is connection state: the connection goes */
    ss_conn_kill(c, NGHTTP2_ENHANCE_YOUR_CALM,
                 "request headers not complete within %.1f s (--request-body-timeout)", t);
    return;
  }
  uint64_t due_ms = call->last_rx_ms + (uint64_t)(t * 1000.0);
  if (call->last_rx_ms && due_ms > tq_now_ms()) {
    if (ss_tq_arm(&c->srv->tq, &call->deadline, due_ms * 1000000u, on_recv_timeout) != 0)
      SS_LOGD("stream %d: no memory for the request timeout", call->stream_id);
    return;
  }
  call->refused = 1;
  ss_grpc_note_limit(c->srv, "request body stalled: stream answered DEADLINE_EXCEEDED");
  ss_call_failf(call, SS_GRPC_DEADLINE_EXCEEDED,
                "request body stopped arriving: nothing for %.1f s (--request-body-timeout)", t);
}

/* Responses queued and not taken by the peer (its flow-control window stays shut, or it does
 * not read the socket) for the request body timeout: the connection goes, and with it what its
 * calls hold (up to the budget each way), instead of holding it as long as the peer likes. */
static void on_stall_timer(ss_tq_entry *e) {
  ss_conn *c = ss_container_of(e, ss_conn, stall);
  double t = c->srv->cfg.request_body_timeout_s;
  if (c->closing || c->doomed || c->out_pending == 0 || t <= 0) return;
  uint64_t due_ms = c->out_progress_ms + (uint64_t)(t * 1000.0);
  if (due_ms > tq_now_ms()) {
    if (ss_tq_arm(&c->srv->tq, &c->stall, due_ms * 1000000u, on_stall_timer) != 0)
      SS_LOGD("connection: no memory for its stall timer");
    return;
  }
  ss_conn_kill(c, NGHTTP2_ENHANCE_YOUR_CALM,
               "%zu response bytes not read for %.1f s (--request-body-timeout)", c->out_pending,
               t);
}

static void stall_watch(ss_conn *c) {
  double t = c->srv->cfg.request_body_timeout_s;
  if (c->out_pending == 0 || t <= 0 || ss_tq_armed(&c->stall) || c->doomed) return;
  c->out_progress_ms = uv_now(c->srv->loop);
  if (ss_tq_arm(&c->srv->tq, &c->stall, (c->out_progress_ms + (uint64_t)(t * 1000.0)) * 1000000u,
                on_stall_timer) != 0)
    SS_LOGD("connection: no memory for its stall timer");
}

/* TLS: a close_notify alert just before the FIN or the close, so the peer can tell a clean end
 * from a truncation. Best effort and bounded: written only when nothing else is waiting and the
 * socket takes it at once (uv_try_write keeps the order: it refuses while a write is queued);
 * the peer's close_notify is never awaited. */
static void tls_close_notify(ss_conn *c) {
  uint8_t alert[256]; /* one alert record: 24 (TLS 1.3) to ~100 bytes (TLS 1.2 CBC) */
  if (!c->tls || c->shut || ss_tls_pending(c->tls) > 0 || !ss_tls_close_notify(c->tls)) return;
  size_t n = ss_tls_pending(c->tls);
  if (n > sizeof alert) return;
  n = ss_tls_take(c->tls, alert, n);
  uv_buf_t b = uv_buf_init((char *)alert, (unsigned)n);
  (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
}

void ss_conn_close(ss_conn *c) {
  if (c->closing) return;
  tls_close_notify(c);
  c->closing = 1;
  ss_grpc_server *s = c->srv;
  ss_tq_cancel(&s->tq, &c->tmo);
  ss_tq_cancel(&s->tq, &c->stall);
  /* nghttp2_session_del does not report stream closes: settle the calls ourselves. */
  while (c->calls) {
    ss_call *call = c->calls;
    nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
    stream_gone(c, call);
  }
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
  ss_limits_release(s, c->peer);
  c->peer = NULL;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  SS_STAT_ADD(s->nconns, (size_t)-1);
  if (c->dirty) { /* unlink from the dirty list */
    ss_conn **pp = &s->dirty;
    while (*pp && *pp != c) pp = &(*pp)->dirty_next;
    if (*pp) *pp = c->dirty_next;
    c->dirty = 0;
  }
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* Input is discarded from now on; the output still queued goes out, then the connection
 * closes (after a linger for the peer's EOF, at most SS_LINGER_MS). */
static void conn_doom(ss_conn *c) {
  if (c->doomed || c->closing) return;
  c->doomed = 1;
  conn_arm(c, uv_now(c->srv->loop) + SS_LINGER_MS);
  ss_conn_mark_dirty(c);
}

void ss_conn_kill(ss_conn *c, uint32_t error_code, const char *fmt, ...) {
  if (c->doomed || c->closing) return;
  char why[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  size_t len = n < 0 ? 0 : (size_t)n < sizeof why ? (size_t)n : sizeof why - 1;
  ss_grpc_server *s = c->srv;
  SS_STAT_INC(s->stats.connections_cut);
  ss_grpc_note_limit(s, "connection closed with GOAWAY: %s", why);
  c->goaway_sent = 1;
  int rv = nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                 nghttp2_session_get_last_proc_stream_id(c->h2), error_code,
                                 (const uint8_t *)why, len);
  if (rv != 0) SS_LOGD("goaway: %s", nghttp2_strerror(rv));
  conn_doom(c);
}

static void on_shutdown(uv_shutdown_t *req, int status) { (void)req, (void)status; }

static void flush(ss_conn *c);

static void on_write(uv_write_t *req, int status) {
  ss_conn *c = req->data;
  c->writing = 0;
  if (c->closing) return;
  if (status < 0) {
    SS_LOGD("write: %s", uv_strerror(status));
    ss_conn_close(c);
    return;
  }
  if (c->inflight_cap > SS_WBUF_KEEP || (c->wlen == 0 && !nghttp2_session_want_write(c->h2))) {
    /* A burst's big buffer is not kept, and an idle connection keeps no write buffer at all
     * (10k idle connections would otherwise hold 2 x 4 KiB each). */
    free(c->inflight_buf);
    c->inflight_buf = NULL;
    c->inflight_cap = 0;
  }
  ss_conn_mark_dirty(c);
}

/* TLS: seal the gathered plaintext and write every ciphertext byte waiting (handshake records,
 * alerts, data) from inflight_buf. 0, or -1 when the connection was closed. */
static int tls_write(ss_conn *c) {
  if (c->wlen > 0 && ss_tls_ready(c->tls)) {
    if (ss_tls_seal(c->tls, c->wbuf, c->wlen) != 0) {
      SS_LOGD("connection: TLS write failed");
      ss_conn_close(c);
      return -1;
    }
    c->wlen = 0;
  }
  size_t n = ss_tls_pending(c->tls);
  if (n == 0) return 0;
  if (n > c->inflight_cap) {
    uint8_t *p = realloc(c->inflight_buf, n);
    if (!p) {
      ss_conn_close(c);
      return -1;
    }
    c->inflight_buf = p;
    c->inflight_cap = n;
  }
  n = ss_tls_take(c->tls, c->inflight_buf, n);
  uv_buf_t b = uv_buf_init((char *)c->inflight_buf, (unsigned)n);
  c->wreq.data = c;
  c->writing = 1;
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
    c->writing = 0;
    ss_conn_close(c);
    return -1;
  }
  return 0;
}

static void flush(ss_conn *c) {
  if (c->closing) return;
  /* During a TLS handshake only its records go out; HTTP/2 frames wait for it. */
  int h2_on = !c->tls || ss_tls_ready(c->tls);
  if (h2_on) {
    int rv = nghttp2_session_send(c->h2);
    if (rv != 0) {
      SS_LOGD("nghttp2_session_send: %s", nghttp2_strerror(rv));
      ss_conn_close(c);
      return;
    }
    stall_watch(c);
  }
  if (c->tls) {
    if (!c->writing && tls_write(c) != 0) return;
  } else if (c->wlen > 0 && !c->writing) {
    /* Swap buffers: the gathered one goes to the kernel, the old one is reused. */
    uint8_t *buf = c->wbuf;
    size_t len = c->wlen, cap = c->wcap;
    c->wbuf = c->inflight_buf;
    c->wcap = c->inflight_cap;
    c->wlen = 0;
    c->inflight_buf = buf;
    c->inflight_cap = cap;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    c->wreq.data = c;
    c->writing = 1;
    int wr = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (wr < 0) {
      c->writing = 0;
      ss_conn_close(c);
      return;
    }
  }
  if (c->writing || (h2_on && (c->wlen > 0 || nghttp2_session_want_write(c->h2)))) return;
  if (c->doomed) {
    /* Everything is written: send FIN and wait (bounded) for the peer's, so that a close with
     * unread input (which makes the kernel send RST) does not destroy our GOAWAY. */
    if (!c->shut) {
      tls_close_notify(c);
      c->shut = 1;
      if (uv_shutdown(&c->shutreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) ss_conn_close(c);
    }
    return;
  }
  if (h2_on && !nghttp2_session_want_read(c->h2)) conn_doom(c);
  if (c->peer_done && !c->calls) conn_doom(c); /* after its close_notify: answered, so close */
}

void ss_conn_mark_dirty(ss_conn *c) {
  if (c->dirty || c->closing) return;
  c->dirty = 1;
  c->dirty_next = c->srv->dirty;
  c->srv->dirty = c;
  ss_grpc_wake_flush(c->srv);
}

void ss_conn_flush_all(ss_grpc_server *s) {
  while (s->dirty) {
    ss_conn *c = s->dirty;
    s->dirty = c->dirty_next;
    c->dirty = 0;
    flush(c);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  ss_conn *c = h->data;
  *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

/* Decrypted bytes from the TLS layer go to nghttp2 (input after a GOAWAY is dropped). */
static int tls_deliver(void *arg, const uint8_t *p, size_t len) {
  ss_conn *c = arg;
  if (c->doomed || c->closing) return 0;
  ssize_t rv = nghttp2_session_mem_recv(c->h2, p, len);
  return rv < 0 ? (int)rv : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  ss_conn *c = stream->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread != UV_EOF) SS_LOGD("read: %s", uv_strerror((int)nread));
    ss_conn_close(c);
    return;
  }
  if (c->doomed) return; /* GOAWAY sent: what the peer still sends is dropped */
  c->last_rx_ms = uv_now(c->srv->loop);
  ssize_t rv;
  if (c->tls) {
    /* The ciphertext is copied into the TLS input first, so the shared read buffer is free to
     * receive the plaintext (the handshake runs here too, until it completes). */
    char why[256];
    int tr = ss_tls_feed(c->tls, (const uint8_t *)buf->base, (size_t)nread, (uint8_t *)c->srv->rbuf,
                         sizeof c->srv->rbuf, tls_deliver, c, why, sizeof why);
    if (tr == SS_EPROTO || tr == SS_ENOMEM) {
      ss_grpc_note_limit(c->srv, "connection refused: %s", why);
      SS_STAT_INC(c->srv->stats.connections_refused);
      conn_doom(c); /* the alert goes out, then the close */
      return;
    }
    if (tr == SS_TLS_CLOSED) { /* the peer is done sending: answer what is open, then close */
      if (!c->peer_done) {
        c->peer_done = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
      }
      tr = 0;
    }
    rv = tr;
  } else {
    rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)buf->base, (size_t)nread);
  }
  if (rv < 0) {
    SS_LOGD("connection: HTTP/2 error: %s", nghttp2_strerror((int)rv));
    /* nghttp2 queued a GOAWAY for protocol errors: send it, then close. */
    conn_doom(c);
    return;
  }
  ss_conn_mark_dirty(c);
}

void ss_conn_goaway(ss_conn *c) {
  if (c->closing || c->goaway_sent) return;
  c->goaway_sent = 1;
  int rv = nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                 nghttp2_session_get_last_proc_stream_id(c->h2), NGHTTP2_NO_ERROR,
                                 NULL, 0);
  if (rv != 0) SS_LOGD("goaway: %s", nghttp2_strerror(rv));
  ss_conn_mark_dirty(c);
}

void ss_conn_goaway_notice(ss_conn *c) {
  if (c->closing || c->goaway_sent || c->notice_sent) return;
  c->notice_sent = 1;
  int rv = nghttp2_submit_shutdown_notice(c->h2);
  if (rv == 0) rv = nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, (const uint8_t *)SS_DRAIN_PING);
  if (rv != 0) {
    SS_LOGD("shutdown notice: %s", nghttp2_strerror(rv));
    ss_conn_goaway(c);
    return;
  }
  ss_conn_mark_dirty(c);
}

/* Over a connection limit: a SETTINGS + GOAWAY(ENHANCE_YOUR_CALM, why) written straight to the
 * new socket, which is then closed (no session, no buffers, no linger: a flood costs nothing). */
static void refuse_conn(ss_conn *c, const char *why) {
  ss_grpc_server *s = c->srv;
  SS_STAT_INC(s->stats.connections_refused);
  ss_grpc_note_limit(s, "connection refused: %s", why);
  uint8_t f[9 + 9 + 8 + 200];
  size_t dlen = strlen(why);
  if (dlen > 200) dlen = 200;
  static const uint8_t settings[9] = {0, 0, 0, NGHTTP2_SETTINGS, 0, 0, 0, 0, 0};
  memcpy(f, settings, 9);
  uint8_t *g = f + 9;
  size_t plen = 8 + dlen;
  const uint8_t hd[17] = {(uint8_t)(plen >> 16),
                          (uint8_t)(plen >> 8),
                          (uint8_t)plen,
                          NGHTTP2_GOAWAY,
                          0,
                          0,
                          0,
                          0,
                          0, /* stream 0 */
                          0,
                          0,
                          0,
                          0, /* last stream id */
                          0,
                          0,
                          0,
                          NGHTTP2_ENHANCE_YOUR_CALM};
  memcpy(g, hd, 17);
  memcpy(g + 17, why, dlen);
  uv_buf_t b = uv_buf_init((char *)f, (unsigned)(9 + 17 + dlen));
  (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* best effort: the close is the answer */
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

void ss_conn_accept(ss_grpc_server *s) {
  ss_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  c->id = ((uint64_t)(s->index + 1) << 48) | ++s->conn_seq; /* shard in the top bits */
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  char why[160];
  if (ss_limits_admit(s, &c->tcp, &c->peer, why, sizeof why) != 0) {
    if (why[0])
      refuse_conn(c, why);
    else
      uv_close((uv_handle_t *)&c->tcp, on_closed); /* out of memory */
    return;
  }
  if (uv_tcp_nodelay(&c->tcp, 1) != 0) SS_LOGD("TCP_NODELAY refused");
  if (s->tls && !(c->tls = ss_tls_conn_new(s->tls))) {
    ss_limits_release(s, c->peer);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  if (nghttp2_session_server_new3(&c->h2, s->h2cb, c, s->h2opt, ss_h2mem()) != 0) {
    ss_limits_release(s, c->peer);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  /* Flow control: the connection window is the buffer budget; stream windows share it
   * (budget / max streams, 64 KiB .. 8 MiB), so big tensors stream without stalls while what
   * a connection can make us hold stays bounded (see "Bounds" above). */
  size_t budget = s->cfg.max_connection_buffer_bytes;
  size_t sw = budget / s->cfg.max_concurrent_streams;
  if (sw < (64u << 10)) sw = 64u << 10;
  if (sw > (8u << 20)) sw = 8u << 20;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->cfg.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)sw},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, 1u << 16},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 4096},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)s->cfg.max_header_list_bytes},
  };
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
      nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                            (int32_t)(budget > 65535 ? budget : 65535)) != 0) {
    nghttp2_session_del(c->h2);
    ss_limits_release(s, c->peer);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  SS_STAT_INC(s->nconns);
  c->last_rx_ms = uv_now(s->loop);
  if (s->cfg.handshake_timeout_s > 0)
    conn_arm(c, c->last_rx_ms + (uint64_t)(s->cfg.handshake_timeout_s * 1000.0));
  if (s->draining) ss_conn_goaway(c);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    ss_conn_close(c);
    return;
  }
  ss_conn_mark_dirty(c);
}
