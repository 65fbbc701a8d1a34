/*
 * client.c — the gRPC client: one HTTP/2 cleartext connection (prior knowledge) carrying any
 * number of concurrent unary calls, plus a blocking wrapper (ss_client_unary). It knows no
 * service: the ComputeService helpers are in src/client/compute_client.c.
 *
 * Thread: everything runs on the libuv loop the caller owns (ss_aclient) or on the private loop
 * of an ss_client, driven by the calling thread inside ss_client_* calls. No locks, no threads.
 *
 * Wire path of a call: ss_aclient_call() copies "5-byte prefix + message" into the call and
 * submits HEADERS + a data provider to nghttp2 at once (even before the TCP connect finishes:
 * nghttp2 just queues). The provider hands DATA with NGHTTP2_DATA_FLAG_NO_COPY, and
 * send_data_callback copies the payload straight into the write buffer (one copy).
 *
 * Writes are batched: anything that makes nghttp2 want to write only starts a uv_prepare
 * handle; its callback (once per loop iteration, just before the loop polls) runs
 * nghttp2_session_send(), which appends every pending frame into one buffer, and issues a
 * single uv_write. While that write is in flight nothing else is written; its completion
 * flushes again. The buffer is capped (SS_CLIENT_WBUF_CAP) so a huge tensor goes out in slices.
 *
 * Responses: DATA goes through an ss_msg_reader; the status comes from the trailers
 * (grpc-status, grpc-message percent-decoded) or from the headers of a trailers-only
 * response; an HTTP status other than 200 without grpc-status maps per the gRPC spec
 * (doc/http-grpc-status-mapping.md). A call completes in on_stream_close, on its local
 * deadline (RST_STREAM CANCEL: the stream is unfinished), on connection loss (UNAVAILABLE)
 * or on ss_aclient_close(). Finished streams are never reset.
 *
 * Refused streams: a stream closed with REFUSED_STREAM before any response byte (the server's
 * RST_STREAM, or nghttp2 closing the streams above a GOAWAY's last stream id) was never
 * processed (RFC 9113 8.7). Its call keeps its struct and is queued (resubmit) to go out again
 * on a new stream at the next flush, while the connection can start streams and the call has
 * retries left; else it completes UNAVAILABLE with ss_call_result.refused, and the blocking
 * wrapper sends it again on a new connection (client_reconnect).
 *
 * Cleartext against a TLS port: the server's first bytes are a TLS record header (our server
 * sends a protocol_version alert), never a SETTINGS frame; the client says so (looks_like_tls).
 *
 * TLS (ss_aclient_new_tls): the same, with OpenSSL on memory BIOs between the socket and
 * nghttp2: the handshake starts when TCP connects and runs in the read path; the client counts
 * as connected once it completes (h2 negotiated by ALPN, the server's certificate verified
 * against the CA for the host name or IP address). Frames gathered in wbuf are sealed into
 * tbuf, which is what gets written.
 *
 * Extra request headers (ss_aclient_set_header, e.g. authorization): the client keeps its own
 * copies and puts them in every call's HEADERS after the fixed ones; "authorization" goes out
 * HPACK never-indexed. The copies are zeroed before they are freed (a value may be a secret).
 *
 * Lifetimes: a call struct lives until nghttp2 closes its stream (nghttp2 may still read its
 * body) or the session is deleted, even after its callback fired ("done"). The client itself
 * is freed when its three handles (tcp, prepare, timer) have closed; nghttp2 callbacks that
 * run after ss_aclient_close() (same mem_recv) see c->closing and do nothing harmful.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "grpc/grpc_frame.h"
#include "grpc/tls.h"
#include "splitserve.h"

#define SS_CLIENT_WINDOW (16 << 20)       /* per-stream receive window */
#define SS_CLIENT_CONN_WINDOW (64 << 20)  /* connection receive window */
#define SS_CLIENT_WBUF_CAP (4u << 20)     /* bytes gathered per uv_write (soft cap) */
#define SS_CLIENT_MAX_RESPONSE (1u << 30) /* largest response message accepted */
#define SS_CLIENT_READ_BUF (256 << 10)

enum { ST_CONNECTING, ST_CONNECTED, ST_FAILED };

/* A request header of ss_aclient_set_header (both strings owned). */
typedef struct extra_header {
  char *name, *value;
  size_t name_len, value_len;
} extra_header;

typedef struct ss_call ss_call;
struct ss_call {
  ss_call *prev, *next; /* in c->calls (all structs alive, done or not) */
  ss_aclient *c;
  int32_t stream_id;
  uint8_t *req;                   /* prefix + message, then the path NUL-terminated (owned) */
  size_t req_len, req_sent;       /* req_len: prefix + message only */
  uint64_t start_ns, deadline_ns; /* deadline 0: none */
  ss_call_cb cb;
  void *user;
  ss_msg_reader reader;
  uint8_t *resp; /* first response message (owned) */
  size_t resp_len;
  int have_resp;
  int http_status;
  int grpc_status;  /* -1: not received */
  char *message;    /* decoded grpc-message (owned) or NULL */
  int local_status; /* -1, or a status decided locally (too large, bad framing) */
  char local_msg[160];
  int done;          /* callback fired */
  int stream_closed; /* nghttp2 no longer references this struct */
  int retries;       /* times its stream was refused and the call sent again */
  int resubmit;      /* refused: to be sent again on a new stream by the next flush */
  int refused;       /* never processed by the server (ss_call_result.refused) */
};

struct ss_aclient {
  uv_loop_t *loop;
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_prepare_t flush;
  uv_timer_t timer;
  uv_write_t wreq;
  nghttp2_session *ng;
  int state;
  int closing;
  int open_handles;
  int writing;
  int goaway;
  uint8_t *wbuf;
  size_t wlen, wcap;
  uint8_t *rbuf;
  ss_call *calls;
  size_t inflight;
  uint64_t timer_due_ns; /* 0: timer not armed */
  char authority[300];
  char fail_msg[256];
  ss_client *owner;    /* non-NULL for the blocking wrapper */
  int tcp_up;          /* TCP connected (with TLS, the handshake may still be running) */
  ss_tls_ctx *tls_ctx; /* NULL: cleartext h2c */
  ss_tls_conn *tls;
  uint8_t *tbuf; /* ciphertext being written (TLS) */
  size_t tcap;
  extra_header hdrs[SS_CLIENT_MAX_HEADERS]; /* sent with every call (ss_aclient_set_header) */
  size_t nhdrs;
  uint8_t head[3]; /* cleartext: the server's first bytes (looks_like_tls) */
  size_t nhead;
  int resubmits; /* calls with resubmit set */
};

/* ------------------------------------------------------------------ helpers ---- */

static void on_prepare(uv_prepare_t *h);
static void on_timer(uv_timer_t *t);

static void schedule_flush(ss_aclient *c) {
  if (!c->closing && c->state != ST_FAILED) uv_prepare_start(&c->flush, on_prepare);
}

static void call_unlink(ss_aclient *c, ss_call *k) {
  if (k->prev)
    k->prev->next = k->next;
  else
    c->calls = k->next;
  if (k->next) k->next->prev = k->prev;
  k->prev = k->next = NULL;
}

static void call_free(ss_call *k) {
  ss_msg_reader_free(&k->reader);
  free(k->req);
  free(k->resp);
  free(k->message);
  free(k);
}

/* Fire the callback once with the given status; the struct stays until the stream closes. */
static void call_complete(ss_call *k, int status, const char *msg) {
  ss_aclient *c = k->c;
  if (k->done) return;
  k->done = 1;
  c->inflight--;
  ss_call_result r;
  r.grpc_status = status;
  r.message = msg ? msg : "";
  r.body = status == SS_GRPC_OK ? k->resp : NULL;
  r.body_len = status == SS_GRPC_OK ? k->resp_len : 0;
  r.latency_s = (double)(uv_hrtime() - k->start_ns) / 1e9;
  r.refused = k->refused;
  if (status == SS_GRPC_OK && !k->have_resp) {
    r.grpc_status = SS_GRPC_INTERNAL;
    r.message = "server returned OK without a response message";
  }
  k->cb(k->user, &r);
}

/* Complete every call not yet done (connection loss or close). Safe against callbacks that
 * start calls (refused: the client is failed/closing) or close the client. */
static void fail_all(ss_aclient *c, int status, const char *msg) {
  for (;;) {
    ss_call *k = c->calls;
    while (k && k->done) k = k->next;
    if (!k) break;
    call_complete(k, status, msg);
  }
}

static int map_http_status(int http) {
  switch (http) {
    case 400: return SS_GRPC_INTERNAL;
    case 401: return SS_GRPC_UNAUTHENTICATED;
    case 403: return SS_GRPC_PERMISSION_DENIED;
    case 404: return SS_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504: return SS_GRPC_UNAVAILABLE;
    default: return SS_GRPC_UNKNOWN;
  }
}

static void conn_fail(ss_aclient *c, const char *fmt, const char *detail) {
  if (c->state == ST_FAILED) return;
  c->state = ST_FAILED;
  snprintf(c->fail_msg, sizeof c->fail_msg, fmt, c->authority, detail ? detail : "");
  uv_prepare_stop(&c->flush);
  uv_timer_stop(&c->timer);
  if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_read_stop((uv_stream_t *)&c->tcp);
  fail_all(c, SS_GRPC_UNAVAILABLE, c->fail_msg);
}

/* ------------------------------------------------------------------ writing ---- */

static int wbuf_reserve(ss_aclient *c, size_t more) {
  if (c->wlen + more <= c->wcap) return 0;
  size_t cap = c->wcap ? c->wcap : 64 << 10;
  while (cap < c->wlen + more) cap *= 2;
  uint8_t *b = realloc(c->wbuf, cap);
  if (!b) return -1;
  c->wbuf = b;
  c->wcap = cap;
  return 0;
}

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u) {
  (void)s;
  (void)flags;
  ss_aclient *c = u;
  if (c->wlen > 0 && c->wlen + len > SS_CLIENT_WBUF_CAP) return NGHTTP2_ERR_WOULDBLOCK;
  if (wbuf_reserve(c, len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(c->wbuf + c->wlen, data, len);
  c->wlen += len;
  return (ssize_t)len;
}

static int on_send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *u) {
  (void)s;
  ss_aclient *c = u;
  ss_call *k = source->ptr;
  size_t pad = frame->data.padlen;
  size_t need = 9 + length + pad;
  if (c->wlen > 0 && c->wlen + need > SS_CLIENT_WBUF_CAP) return NGHTTP2_ERR_WOULDBLOCK;
  if (wbuf_reserve(c, need)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  uint8_t *p = c->wbuf + c->wlen;
  memcpy(p, framehd, 9);
  p += 9;
  if (pad > 0) *p++ = (uint8_t)(pad - 1);
  memcpy(p, k->req + k->req_sent, length);
  p += length;
  if (pad > 1) {
    memset(p, 0, pad - 1);
    p += pad - 1;
  }
  k->req_sent += length;
  c->wlen = (size_t)(p - c->wbuf);
  return 0;
}

static ssize_t on_data_read(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *u) {
  (void)s;
  (void)stream_id;
  (void)buf;
  (void)u;
  ss_call *k = source->ptr;
  size_t left = k->req_len - k->req_sent;
  size_t n = left < length ? left : length;
  *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n == left) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static ssize_t on_read_length(nghttp2_session *s, uint8_t type, int32_t stream_id,
                              int32_t conn_window, int32_t stream_window, uint32_t max_frame,
                              void *u) {
  (void)s;
  (void)type;
  (void)stream_id;
  (void)u;
  int64_t n = max_frame;
  if (conn_window < n) n = conn_window;
  if (stream_window < n) n = stream_window;
  return (ssize_t)(n > 0 ? n : 1);
}

static void on_write(uv_write_t *req, int status);

/* TLS: seal the gathered frames and write all pending ciphertext from tbuf. */
static void tls_flush(ss_aclient *c) {
  if (c->writing) return; /* one write at a time (wreq); its completion flushes again */
  if (c->wlen > 0 && ss_tls_ready(c->tls)) {
    if (ss_tls_seal(c->tls, c->wbuf, c->wlen) != 0) {
      conn_fail(c, "connection to %s failed: TLS write%s", "");
      return;
    }
    c->wlen = 0;
  }
  size_t n = ss_tls_pending(c->tls);
  if (n == 0) return;
  if (n > c->tcap) {
    uint8_t *p = realloc(c->tbuf, n);
    if (!p) {
      conn_fail(c, "connection to %s failed: %s", "out of memory");
      return;
    }
    c->tbuf = p;
    c->tcap = n;
  }
  n = ss_tls_take(c->tls, c->tbuf, n);
  uv_buf_t b = uv_buf_init((char *)c->tbuf, (unsigned)n);
  c->writing = 1;
  int rv = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rv < 0) {
    c->writing = 0;
    conn_fail(c, "connection to %s failed: write: %s", uv_strerror(rv));
  }
}

static void resubmit_refused(ss_aclient *c);

static void do_flush(ss_aclient *c) {
  if (c->resubmits > 0 && !c->closing && c->state != ST_FAILED) resubmit_refused(c);
  if (c->state == ST_FAILED || !c->tcp_up || c->writing || c->closing) return;
  if (c->tls && !ss_tls_ready(c->tls)) { /* handshake records only */
    tls_flush(c);
    return;
  }
  int rv = nghttp2_session_send(c->ng);
  if (rv != 0) {
    conn_fail(c, "connection to %s failed: HTTP/2 error: %s", nghttp2_strerror(rv));
    return;
  }
  if (c->tls && (c->wlen > 0 || ss_tls_pending(c->tls) > 0)) {
    tls_flush(c);
  } else if (c->wlen > 0) {
    uv_buf_t b = uv_buf_init((char *)c->wbuf, (unsigned)c->wlen);
    c->writing = 1;
    rv = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rv < 0) {
      c->writing = 0;
      conn_fail(c, "connection to %s failed: write: %s", uv_strerror(rv));
    }
  } else if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
    conn_fail(c, "connection to %s closed by the server%s", "");
  }
}

static void on_write(uv_write_t *req, int status) {
  ss_aclient *c = req->data;
  c->writing = 0;
  c->wlen = 0;
  if (c->closing) return;
  if (status < 0) {
    conn_fail(c, "connection to %s failed: write: %s", uv_strerror(status));
    return;
  }
  do_flush(c);
}

static void on_prepare(uv_prepare_t *h) {
  ss_aclient *c = h->data;
  uv_prepare_stop(h);
  do_flush(c);
}

/* ------------------------------------------------------------------ reading ---- */

static ss_call *stream_call(nghttp2_session *s, int32_t id) {
  return nghttp2_session_get_stream_user_data(s, id);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *u) {
  (void)flags;
  (void)u;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  ss_call *k = stream_call(s, frame->hd.stream_id);
  if (!k) return 0;
  if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
    int v = 0;
    for (size_t i = 0; i < valuelen && i < 4; i++) v = v * 10 + (value[i] - '0');
    k->http_status = v;
  } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
    int v = 0, ok = valuelen > 0 && valuelen < 4;
    for (size_t i = 0; ok && i < valuelen; i++) {
      if (value[i] < '0' || value[i] > '9')
        ok = 0;
      else
        v = v * 10 + (value[i] - '0');
    }
    k->grpc_status = ok ? v : SS_GRPC_UNKNOWN;
  } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
    free(k->message);
    k->message = malloc(valuelen + 1);
    if (k->message) ss_pct_decode((const char *)value, valuelen, k->message, valuelen + 1);
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *u) {
  (void)flags;
  (void)u;
  ss_call *k = stream_call(s, stream_id);
  if (!k || k->done || k->local_status >= 0) return 0;
  while (len > 0) {
    size_t used = 0;
    int rc = ss_msg_reader_feed(&k->reader, data, len, &used);
    data += used;
    len -= used;
    if (rc == SS_MSG_COMPLETE) {
      uint8_t *msg;
      size_t mlen;
      int comp;
      ss_msg_reader_take(&k->reader, &msg, &mlen, &comp);
      if (comp) {
        free(msg);
        k->local_status = SS_GRPC_INTERNAL;
        snprintf(k->local_msg, sizeof k->local_msg,
                 "compressed response message but no grpc-encoding was negotiated");
      } else if (k->have_resp) {
        free(msg);
        k->local_status = SS_GRPC_INTERNAL;
        snprintf(k->local_msg, sizeof k->local_msg,
                 "more than one response message for a unary call");
      } else {
        k->resp = msg;
        k->resp_len = mlen;
        k->have_resp = 1;
      }
    } else if (rc == SS_MSG_TOO_LARGE) {
      k->local_status = SS_GRPC_RESOURCE_EXHAUSTED;
      snprintf(k->local_msg, sizeof k->local_msg,
               "response message of %zu bytes exceeds the client limit of %u bytes", k->reader.len,
               SS_CLIENT_MAX_RESPONSE);
    } else if (rc == SS_MSG_NOMEM) {
      k->local_status = SS_GRPC_RESOURCE_EXHAUSTED;
      snprintf(k->local_msg, sizeof k->local_msg, "out of memory for a %zu-byte response",
               k->reader.len);
    }
    if (k->local_status >= 0) {
      /* The stream is unfinished: resetting it is the right thing here. */
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
      call_complete(k, k->local_status, k->local_msg);
      break;
    }
  }
  return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *u) {
  (void)s;
  ss_aclient *c = u;
  if (frame->hd.type == NGHTTP2_GOAWAY) c->goaway = 1;
  return 0;
}

/* A stream refused before the server processed anything (RFC 9113 8.7: REFUSED_STREAM, and
 * nghttp2 closes streams above a GOAWAY's last stream id with it): no response byte came. */
static int never_processed(const ss_call *k, uint32_t error_code) {
  return error_code == NGHTTP2_REFUSED_STREAM && k->http_status == 0 && k->grpc_status < 0 &&
         k->local_status < 0 && !k->have_resp && ss_msg_reader_idle(&k->reader);
}

/* Queue a refused call to be sent again on a new stream of this connection (by the next flush),
 * while the connection can start streams and the call has retries left. 1 if queued. */
static int call_retry(ss_aclient *c, ss_call *k) {
  if (c->goaway || c->closing || c->state == ST_FAILED || k->retries >= SS_CLIENT_REFUSED_RETRIES)
    return 0;
  k->retries++;
  k->resubmit = 1;
  k->stream_closed = 1; /* until call_submit gives it a new stream */
  k->req_sent = 0;
  k->stream_id = 0;
  c->resubmits++;
  schedule_flush(c);
  return 1;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *u) {
  ss_aclient *c = u;
  ss_call *k = stream_call(s, stream_id);
  if (!k) return 0;
  if (!k->done && !c->closing && c->state != ST_FAILED && never_processed(k, error_code)) {
    nghttp2_session_set_stream_user_data(s, stream_id, NULL);
    if (call_retry(c, k)) return 0; /* k lives on, on a new stream */
    k->refused = 1;
    call_complete(k, SS_GRPC_UNAVAILABLE,
                  c->goaway ? "stream refused: the server is going away (GOAWAY) and never "
                              "processed the call; safe to retry on a new connection"
                            : "stream refused by the server (REFUSED_STREAM) before processing, "
                              "too many times");
  }
  if (!k->done && !c->closing && c->state != ST_FAILED) {
    char msg[200];
    if (k->local_status >= 0) {
      call_complete(k, k->local_status, k->local_msg);
    } else if (k->grpc_status >= 0) {
      call_complete(k, k->grpc_status, k->message ? k->message : "");
    } else if (k->http_status != 0 && k->http_status != 200) {
      snprintf(msg, sizeof msg, "HTTP status %d without grpc-status", k->http_status);
      call_complete(k, map_http_status(k->http_status), msg);
    } else if (error_code != NGHTTP2_NO_ERROR) {
      int st = error_code == NGHTTP2_REFUSED_STREAM      ? SS_GRPC_UNAVAILABLE
               : error_code == NGHTTP2_CANCEL            ? SS_GRPC_CANCELLED
               : error_code == NGHTTP2_ENHANCE_YOUR_CALM ? SS_GRPC_RESOURCE_EXHAUSTED
                                                         : SS_GRPC_INTERNAL;
      snprintf(msg, sizeof msg, "stream reset by the server: %s",
               nghttp2_http2_strerror(error_code));
      call_complete(k, st, msg);
    } else if (!ss_msg_reader_idle(&k->reader)) {
      call_complete(k, SS_GRPC_INTERNAL, "stream ended inside a response message");
    } else {
      call_complete(k, SS_GRPC_UNKNOWN, "stream ended without grpc-status");
    }
  }
  k->stream_closed = 1;
  nghttp2_session_set_stream_user_data(s, stream_id, NULL);
  if (!c->closing) {
    call_unlink(c, k);
    call_free(k);
  }
  return 0;
}

static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *frame, int err, void *u) {
  (void)s;
  ss_aclient *c = u;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  for (ss_call *k = c->calls; k; k = k->next) {
    if (k->stream_id == frame->hd.stream_id && !k->done) {
      char msg[160];
      snprintf(msg, sizeof msg, "request not sent: %s%s", nghttp2_strerror(err),
               c->goaway ? " (server is going away)" : "");
      k->refused = 1; /* never left this client */
      call_complete(k, SS_GRPC_UNAVAILABLE, msg);
      break;
    }
  }
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  ss_aclient *c = h->data;
  *buf = uv_buf_init((char *)c->rbuf, SS_CLIENT_READ_BUF);
}

static int tls_deliver(void *arg, const uint8_t *p, size_t len) {
  ss_aclient *c = arg;
  if (c->closing || c->state == ST_FAILED) return 0;
  ssize_t rv = nghttp2_session_mem_recv(c->ng, p, len);
  return rv < 0 ? (int)rv : 0;
}

/* Cleartext only: keep the server's first 3 bytes and say whether they are a TLS record header
 * (content type 20..23: change_cipher_spec, alert, handshake, application data; version 3.x),
 * which an HTTP/2 server's first frame (SETTINGS: a 24-bit length well under 0x140000, then
 * type 4) never is. A TLS server answers an h2c preface with an alert, or says nothing. */
static int looks_like_tls(ss_aclient *c, const uint8_t *p, size_t n) {
  while (c->nhead < sizeof c->head && n > 0) c->head[c->nhead++] = *p++, n--;
  return c->nhead == sizeof c->head && c->head[0] >= 20 && c->head[0] <= 23 && c->head[1] == 3 &&
         c->head[2] <= 4;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  ss_aclient *c = st->data;
  if (c->closing || c->state == ST_FAILED) return;
  if (nread < 0) {
    conn_fail(c, "connection to %s lost: %s",
              nread == UV_EOF ? (c->state == ST_CONNECTING ? "closed by the server during the TLS "
                                                             "handshake"
                                 : !c->tls && c->nhead == 0
                                     ? "closed by the server before it sent anything (if it "
                                       "serves TLS, use --tls-ca / a TLS channel: "
                                       "ss_client_connect_tls)"
                                     : "closed by the server")
                              : uv_strerror((int)nread));
    return;
  }
  if (nread == 0) return;
  ssize_t rv;
  if (c->tls) {
    char why[300];
    /* The ciphertext is copied into the TLS input first: rbuf then receives the plaintext. */
    int tr = ss_tls_feed(c->tls, (const uint8_t *)buf->base, (size_t)nread, c->rbuf,
                         SS_CLIENT_READ_BUF, tls_deliver, c, why, sizeof why);
    if (tr == SS_EPROTO || tr == SS_ENOMEM) {
      tls_flush(c); /* our alert, best effort */
      conn_fail(c, "TLS connection to %s failed: %s", why);
      return;
    }
    if (c->state == ST_CONNECTING && ss_tls_ready(c->tls)) c->state = ST_CONNECTED;
    rv = tr;
  } else {
    if (c->nhead < sizeof c->head && looks_like_tls(c, (const uint8_t *)buf->base, (size_t)nread)) {
      conn_fail(c, "connection to %s failed: %s",
                "the server speaks TLS (its first bytes are a TLS record) and this client "
                "cleartext HTTP/2; use --tls-ca / a TLS channel (ss_client_connect_tls)");
      return;
    }
    rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)buf->base, (size_t)nread);
  }
  if (c->closing) return;
  if (rv < 0) {
    conn_fail(c, "connection to %s failed: HTTP/2 error: %s", nghttp2_strerror((int)rv));
    return;
  }
  schedule_flush(c);
}

static void on_connect(uv_connect_t *req, int status) {
  ss_aclient *c = req->data;
  if (c->closing || status == UV_ECANCELED) return;
  if (status < 0) {
    conn_fail(c, "cannot connect to %s: %s", uv_strerror(status));
    return;
  }
  c->tcp_up = 1;
  uv_tcp_nodelay(&c->tcp, 1);
  if (c->tls) {
    char why[300];
    if (ss_tls_connect(c->tls, why, sizeof why) != 0) {
      conn_fail(c, "TLS connection to %s failed: %s", why);
      return;
    }
  } else {
    c->state = ST_CONNECTED;
  }
  int rv = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rv < 0) {
    conn_fail(c, "connection to %s failed: read: %s", uv_strerror(rv));
    return;
  }
  schedule_flush(c);
}

/* ------------------------------------------------------------------ deadlines -- */

static void arm_timer(ss_aclient *c, uint64_t due_ns) {
  uint64_t now = uv_hrtime();
  uint64_t ms = due_ns > now ? (due_ns - now + 999999) / 1000000 : 0;
  c->timer_due_ns = due_ns;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t) {
  ss_aclient *c = t->data;
  c->timer_due_ns = 0;
  if (c->closing || c->state == ST_FAILED) return;
  uint64_t now = uv_hrtime(), next = 0;
  int again = 1;
  while (again) { /* restart the scan after a callback: it may have changed the list */
    again = 0;
    for (ss_call *k = c->calls; k; k = k->next) {
      if (k->done || k->deadline_ns == 0) continue;
      if (k->deadline_ns <= now) {
        if (!k->stream_closed && !k->resubmit)
          nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, k->stream_id, NGHTTP2_CANCEL);
        call_complete(k, SS_GRPC_DEADLINE_EXCEEDED, "deadline exceeded (client side)");
        if (c->closing || c->state == ST_FAILED) return;
        again = 1;
        break;
      }
    }
  }
  for (ss_call *k = c->calls; k; k = k->next)
    if (!k->done && k->deadline_ns && (next == 0 || k->deadline_ns < next)) next = k->deadline_ns;
  if (next) arm_timer(c, next);
  schedule_flush(c);
}

/* ------------------------------------------------------------------ headers ---- */

/* Zero a string's bytes, then free it (the compiler may not drop the stores: volatile). */
static void wipe_free(char *p, size_t n) {
  if (!p) return;
  volatile char *v = p;
  while (n--) *v++ = 0;
  free(p);
}

/* A name the application may set: a lowercase HTTP token (RFC 9110 5.6.2; HTTP/2 wants lowercase)
 * that the client does not write itself and that is not connection-specific (RFC 9113 8.2.2). */
static int header_name_ok(const char *name) {
  static const char *const reserved[] = {
      "content-type", "te",         "user-agent",       "host",
      "connection",   "keep-alive", "proxy-connection", "transfer-encoding",
      "upgrade"};
  if (!*name || strncmp(name, "grpc-", 5) == 0) return 0;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("!#$%&'*+-.^_`|~", *p)))
      return 0;
  for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
    if (strcmp(name, reserved[i]) == 0) return 0;
  return 1;
}

/* Printable ASCII, with spaces and tabs inside but not at either end (RFC 9113 8.2.1). */
static int header_value_ok(const char *v) {
  size_t n = strlen(v);
  if (n > 0 && (v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t')) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((v[i] >= 0x20 && v[i] <= 0x7e) || v[i] == '\t')) return 0;
  return 1;
}

static void header_drop(ss_aclient *c, size_t i) {
  free(c->hdrs[i].name);
  wipe_free(c->hdrs[i].value, c->hdrs[i].value_len);
  c->hdrs[i] = c->hdrs[--c->nhdrs];
}

int ss_aclient_set_header(ss_aclient *c, const char *name, const char *value) {
  if (!c || !name || !header_name_ok(name) || (value && !header_value_ok(value))) return SS_EINVAL;
  if (c->closing) return SS_ECLOSED;
  size_t i = 0;
  while (i < c->nhdrs && strcmp(c->hdrs[i].name, name) != 0) i++;
  if (!value) {
    if (i < c->nhdrs) header_drop(c, i);
    return 0;
  }
  int fresh = i == c->nhdrs;
  if (fresh && c->nhdrs == SS_CLIENT_MAX_HEADERS) return SS_ERANGE;
  size_t vl = strlen(value);
  char *v = malloc(vl + 1), *n = fresh ? strdup(name) : NULL;
  if (!v || (fresh && !n)) {
    free(v);
    free(n);
    return SS_ENOMEM;
  }
  memcpy(v, value, vl + 1);
  if (fresh) {
    c->hdrs[i].name = n;
    c->hdrs[i].name_len = strlen(n);
    c->nhdrs++;
  } else {
    wipe_free(c->hdrs[i].value, c->hdrs[i].value_len);
  }
  c->hdrs[i].value = v;
  c->hdrs[i].value_len = vl;
  return 0;
}

/* ------------------------------------------------------------------ public ----- */

static void on_handle_closed(uv_handle_t *h) {
  ss_aclient *c = h->data;
  if (--c->open_handles > 0) return;
  nghttp2_session_del(c->ng);
  while (c->calls) {
    ss_call *k = c->calls;
    call_unlink(c, k);
    call_free(k);
  }
  free(c->wbuf);
  free(c->rbuf);
  free(c->tbuf);
  while (c->nhdrs > 0) header_drop(c, c->nhdrs - 1);
  ss_tls_conn_free(c->tls);
  ss_tls_ctx_free(c->tls_ctx);
  free(c);
}

int ss_aclient_new(void *uv_loop, const char *host, int port, ss_aclient **out) {
  return ss_aclient_new_tls(uv_loop, host, port, NULL, out, NULL, 0);
}

int ss_aclient_new_tls(void *uv_loop, const char *host, int port, const ss_client_tls *tls,
                       ss_aclient **out, char *err, size_t errlen) {
  *out = NULL;
  char dummy[8];
  if (!err || !errlen) err = dummy, errlen = sizeof dummy;
  err[0] = 0;
  if (!uv_loop || !host || port <= 0 || port > 65535) return SS_EINVAL;
  struct sockaddr_storage addr;
  char h[256];
  size_t hl = strlen(host);
  if (hl >= sizeof h) return SS_EINVAL;
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    memcpy(h, host + 1, hl - 2);
    h[hl - 2] = '\0';
  } else {
    memcpy(h, host, hl + 1);
  }
  char name[256];
  snprintf(name, sizeof name, "%s",
           tls && tls->server_name && *tls->server_name ? tls->server_name : h);
  if (strcmp(h, "localhost") == 0) strcpy(h, "127.0.0.1");
  if (uv_ip4_addr(h, port, (struct sockaddr_in *)&addr) != 0 &&
      uv_ip6_addr(h, port, (struct sockaddr_in6 *)&addr) != 0)
    return SS_EINVAL;

  ss_aclient *c = calloc(1, sizeof *c);
  if (!c) return SS_ENOMEM;
  c->rbuf = malloc(SS_CLIENT_READ_BUF);
  if (!c->rbuf) {
    free(c);
    return SS_ENOMEM;
  }
  c->loop = uv_loop;
  if (tls) {
    int trv = ss_tls_client_ctx_new(tls->ca_file, tls->cert_file, tls->key_file, &c->tls_ctx, err,
                                    errlen);
    if (trv == 0 && !(c->tls = ss_tls_client_conn_new(c->tls_ctx, name))) {
      snprintf(err, errlen, "TLS: cannot verify the name '%s'", name);
      trv = SS_EINVAL;
    }
    if (trv != 0) {
      ss_tls_ctx_free(c->tls_ctx);
      free(c->rbuf);
      free(c);
      return trv;
    }
  }
  if (strchr(h, ':'))
    snprintf(c->authority, sizeof c->authority, "[%s]:%d", h, port);
  else
    snprintf(c->authority, sizeof c->authority, "%s:%d", h, port);

  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) {
    ss_tls_conn_free(c->tls);
    ss_tls_ctx_free(c->tls_ctx);
    free(c->rbuf);
    free(c);
    return SS_ENOMEM;
  }
  nghttp2_session_callbacks_set_send_callback(cbs, on_send);
  nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cbs, on_read_length);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
  int rv = nghttp2_session_client_new(&c->ng, cbs, c);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    ss_tls_conn_free(c->tls);
    ss_tls_ctx_free(c->tls_ctx);
    free(c->rbuf);
    free(c);
    return SS_ENOMEM;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, SS_CLIENT_WINDOW},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, SS_CLIENT_CONN_WINDOW);

  uv_tcp_init(c->loop, &c->tcp);
  uv_prepare_init(c->loop, &c->flush);
  uv_timer_init(c->loop, &c->timer);
  c->tcp.data = c->flush.data = c->timer.data = c->connect_req.data = c->wreq.data = c;
  c->open_handles = 3;
  c->state = ST_CONNECTING;
  rv = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&addr, on_connect);
  if (rv < 0) conn_fail(c, "cannot connect to %s: %s", uv_strerror(rv));
  *out = c;
  return 0;
}

/* Submit call k's HEADERS and body on a new stream (its path follows the message in k->req;
 * grpc-timeout is what is left of its deadline). Returns the stream id, or <0 (nghttp2). */
static int32_t call_submit(ss_aclient *c, ss_call *k) {
  const char *path = (const char *)k->req + k->req_len;
  char tmo[16];
  nghttp2_nv nv[8 + SS_CLIENT_MAX_HEADERS];
  size_t n = 0;
#define SS_NV(N, V, VL)                                                                     \
  nv[n].name = (uint8_t *)(N), nv[n].namelen = sizeof(N) - 1, nv[n].value = (uint8_t *)(V), \
  nv[n].valuelen = (VL), nv[n].flags = NGHTTP2_NV_FLAG_NONE, n++
  SS_NV(":method", "POST", 4);
  if (c->tls)
    SS_NV(":scheme", "https", 5);
  else
    SS_NV(":scheme", "http", 4);
  SS_NV(":path", path, strlen(path));
  SS_NV(":authority", c->authority, strlen(c->authority));
  SS_NV("content-type", "application/grpc", 16);
  SS_NV("te", "trailers", 8);
  SS_NV("user-agent", "splitserve-client/" SS_VERSION, sizeof("splitserve-client/" SS_VERSION) - 1);
  if (k->deadline_ns) {
    uint64_t now = uv_hrtime();
    uint64_t left = k->deadline_ns > now ? k->deadline_ns - now : 1;
    ss_grpc_timeout_format(left > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)left, tmo);
    SS_NV("grpc-timeout", tmo, strlen(tmo));
  }
#undef SS_NV
  for (size_t i = 0; i < c->nhdrs; i++, n++) { /* ss_aclient_set_header */
    const extra_header *h = &c->hdrs[i];
    nv[n].name = (uint8_t *)h->name;
    nv[n].namelen = h->name_len;
    nv[n].value = (uint8_t *)h->value;
    nv[n].valuelen = h->value_len;
    nv[n].flags =
        strcmp(h->name, "authorization") == 0 ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
  }
  nghttp2_data_provider prd;
  prd.source.ptr = k;
  prd.read_callback = on_data_read;
  int32_t id = nghttp2_submit_request(c->ng, NULL, nv, n, &prd, k);
  if (id > 0) {
    k->stream_id = id;
    k->stream_closed = 0;
  }
  return id;
}

/* Send the refused calls again (do_flush, before nghttp2 writes): each on a new stream; a call
 * whose deadline fired meanwhile (done) is freed, one that cannot get a stream completes. */
static void resubmit_refused(ss_aclient *c) {
  ss_call *k = c->calls;
  while (k && c->resubmits > 0) {
    ss_call *next = k->next;
    if (k->resubmit) {
      k->resubmit = 0;
      c->resubmits--;
      if (k->done) {
        call_unlink(c, k);
        call_free(k);
      } else {
        ss_msg_reader_free(&k->reader);
        ss_msg_reader_init(&k->reader, SS_CLIENT_MAX_RESPONSE);
        if (call_submit(c, k) < 0) {
          k->refused = 1;
          k->stream_closed = 1;
          call_complete(k, SS_GRPC_UNAVAILABLE, "stream refused and no new stream available");
          if (c->closing || c->state == ST_FAILED) return;
          call_unlink(c, k); /* no stream will close it */
          call_free(k);
        }
      }
    }
    k = next;
  }
}

int ss_aclient_call(ss_aclient *c, const char *path, const void *msg, size_t len, double timeout_s,
                    ss_call_cb cb, void *user) {
  if (!c || !path || path[0] != '/' || !cb || (len > 0 && !msg)) return SS_EINVAL;
  if (len > UINT32_MAX) return SS_ERANGE;
  if (c->closing || c->state == ST_FAILED || c->goaway) return SS_ECLOSED;
  ss_call *k = calloc(1, sizeof *k);
  if (!k) return SS_ENOMEM;
  size_t plen = strlen(path);
  k->req = malloc(len + 5 + plen + 1);
  if (!k->req) {
    free(k);
    return SS_ENOMEM;
  }
  ss_msg_prefix(k->req, (uint32_t)len);
  if (len) memcpy(k->req + 5, msg, len);
  k->req_len = len + 5;
  memcpy(k->req + k->req_len, path, plen + 1);
  k->c = c;
  k->cb = cb;
  k->user = user;
  k->grpc_status = -1;
  k->local_status = -1;
  k->start_ns = uv_hrtime();
  ss_msg_reader_init(&k->reader, SS_CLIENT_MAX_RESPONSE);
  if (timeout_s > 0) {
    double ns = ceil(timeout_s * 1e9);
    k->deadline_ns = k->start_ns + (ns > 9.2e18 ? (uint64_t)INT64_MAX : (uint64_t)ns);
  }

  int32_t id = call_submit(c, k);
  if (id < 0) {
    call_free(k);
    return id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE ? SS_ECLOSED : SS_EIO;
  }
  k->next = c->calls;
  if (c->calls) c->calls->prev = k;
  c->calls = k;
  c->inflight++;
  if (k->deadline_ns && (c->timer_due_ns == 0 || k->deadline_ns < c->timer_due_ns))
    arm_timer(c, k->deadline_ns);
  schedule_flush(c);
  return 0;
}

size_t ss_aclient_inflight(const ss_aclient *c) { return c ? c->inflight : 0; }

void ss_aclient_close(ss_aclient *c) {
  if (!c || c->closing) return;
  /* Complete pending calls first (their callbacks may still look at the client). */
  if (c->state != ST_FAILED) fail_all(c, SS_GRPC_UNAVAILABLE, "client closed");
  if (c->closing) return; /* a callback closed us already */
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->flush, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* ================================================================== blocking ==== */

struct ss_client {
  uv_loop_t loop;
  ss_aclient *ac;
  /* what a new connection needs (a refused call is sent again on one): */
  char host[256];
  int port;
  int use_tls;
  char *tls_str[4]; /* owned copies of ca_file, cert_file, key_file, server_name (or NULL) */
};

static void client_free(ss_client *c) {
  for (int i = 0; i < 4; i++) free(c->tls_str[i]);
  free(c);
}

/* Replace the client's connection by a new one to the same server, with the same request
 * headers (moved over). The old one is closed; it has no call in flight (one at a time). */
static int client_reconnect(ss_client *c) {
  ss_client_tls tls = {c->tls_str[0], c->tls_str[1], c->tls_str[2], c->tls_str[3]};
  ss_aclient *n;
  int rv = ss_aclient_new_tls(&c->loop, c->host, c->port, c->use_tls ? &tls : NULL, &n, NULL, 0);
  if (rv < 0) return rv;
  n->owner = c;
  memcpy(n->hdrs, c->ac->hdrs, sizeof n->hdrs);
  n->nhdrs = c->ac->nhdrs;
  c->ac->nhdrs = 0;
  ss_aclient_close(c->ac);
  c->ac = n;
  return 0;
}

/* The blocking call's outcome while it runs (nomem: the body could not be copied). */
typedef struct sync_result {
  int done;
  int nomem;
  int refused; /* ss_call_result.refused */
  ss_unary_result *out;
} sync_result;

static void on_sync_done(void *user, const ss_call_result *r) {
  sync_result *s = user;
  ss_unary_result *o = s->out;
  s->done = 1;
  s->refused = r->refused;
  o->grpc_status = r->grpc_status;
  snprintf(o->message, sizeof o->message, "%s", r->message ? r->message : "");
  o->latency_s = r->latency_s;
  if (r->body_len > 0) {
    o->body = malloc(r->body_len);
    if (o->body) {
      memcpy(o->body, r->body, r->body_len);
      o->body_len = r->body_len;
    } else {
      s->nomem = 1;
    }
  }
}

static void on_connect_timeout(uv_timer_t *t) { *(int *)t->data = 1; }

int ss_client_connect(const char *host, int port, double timeout_s, ss_client **out) {
  return ss_client_connect_tls(host, port, timeout_s, NULL, out, NULL, 0);
}

int ss_client_connect_tls(const char *host, int port, double timeout_s, const ss_client_tls *tls,
                          ss_client **out, char *err, size_t errlen) {
  *out = NULL;
  if (err && errlen) err[0] = 0;
  ss_client *c = calloc(1, sizeof *c);
  if (!c) return SS_ENOMEM;
  if (!host || strlen(host) >= sizeof c->host) {
    free(c);
    return SS_EINVAL;
  }
  snprintf(c->host, sizeof c->host, "%s", host);
  c->port = port;
  if (tls) {
    const char *t[4] = {tls->ca_file, tls->cert_file, tls->key_file, tls->server_name};
    c->use_tls = 1;
    for (int i = 0; i < 4; i++)
      if (t[i] && !(c->tls_str[i] = strdup(t[i]))) {
        client_free(c);
        return SS_ENOMEM;
      }
  }
  if (uv_loop_init(&c->loop) != 0) {
    client_free(c);
    return SS_EIO;
  }
  int rv = ss_aclient_new_tls(&c->loop, host, port, tls, &c->ac, err, errlen);
  if (rv < 0) {
    uv_loop_close(&c->loop);
    client_free(c);
    return rv;
  }
  c->ac->owner = c;
  uv_timer_t t;
  int timed_out = 0;
  uv_timer_init(&c->loop, &t);
  t.data = &timed_out;
  if (timeout_s > 0) uv_timer_start(&t, on_connect_timeout, (uint64_t)ceil(timeout_s * 1000), 0);
  while (c->ac->state == ST_CONNECTING && !timed_out) uv_run(&c->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&c->loop, UV_RUN_NOWAIT);
  if (c->ac->state != ST_CONNECTED) {
    rv = c->ac->state == ST_FAILED ? SS_EIO : SS_ETIMEDOUT;
    if (err && errlen)
      snprintf(err, errlen, "%s",
               c->ac->state == ST_FAILED ? c->ac->fail_msg : "connect timed out");
    ss_client_close(c);
    return rv;
  }
  *out = c;
  return 0;
}

void ss_client_close(ss_client *c) {
  if (!c) return;
  ss_aclient_close(c->ac);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  uv_loop_close(&c->loop);
  client_free(c);
}

int ss_client_set_header(ss_client *c, const char *name, const char *value) {
  return c ? ss_aclient_set_header(c->ac, name, value) : SS_EINVAL;
}

int ss_client_unary(ss_client *c, const char *path, const void *msg, size_t len, double timeout_s,
                    ss_unary_result *out) {
  memset(out, 0, sizeof *out);
  if (!c || !path) return SS_EINVAL;
  uint64_t deadline = timeout_s > 0 ? uv_hrtime() + (uint64_t)ceil(timeout_s * 1e9) : 0;
  for (int attempt = 0;; attempt++) {
    sync_result res = {0, 0, 0, out};
    /* A connection that is going away (GOAWAY) or gone (a proxy closes it after its GOAWAY,
     * a server restarted) takes no new call: a new one does, as a grpcio channel would. */
    if ((c->ac->goaway || c->ac->state == ST_FAILED) && attempt <= SS_CLIENT_REFUSED_RETRIES) {
      int rc = client_reconnect(c);
      if (rc < 0) return rc;
    }
    double left = timeout_s;
    if (deadline) {
      uint64_t now = uv_hrtime();
      left = now < deadline ? (double)(deadline - now) / 1e9 : 1e-9;
    }
    int rv = ss_aclient_call(c->ac, path, msg, len, left, on_sync_done, &res);
    if (rv < 0) {
      if (rv != SS_ECLOSED) return rv;
      res.done = 1; /* the connection is gone: report it like the async path would */
      out->grpc_status = SS_GRPC_UNAVAILABLE;
      snprintf(out->message, sizeof out->message, "%s",
               c->ac->fail_msg[0] ? c->ac->fail_msg : "connection closed");
    }
    while (!res.done) uv_run(&c->loop, UV_RUN_ONCE);
    if (res.nomem) {
      free(out->body);
      out->body = NULL;
      return SS_ENOMEM;
    }
    /* Never processed (refused after a GOAWAY): send it again on a new connection. */
    if (!res.refused || attempt >= SS_CLIENT_REFUSED_RETRIES) return 0;
    free(out->body);
    memset(out, 0, sizeof *out);
    int rc = client_reconnect(c);
    if (rc < 0) return rc;
  }
}
