/*
 * conn.c — one accepted TCP connection carrying one nghttp2 server session (h2c with prior
 * knowledge, as gRPC clients speak it), and the mapping of HTTP/2 streams to gRPC calls.
 *
 * Thread: loop thread only.
 *
 * Reading: libuv reads into the server's one 64 KiB buffer (shared: reads are processed one at
 * a time and consumed at once, so an idle connection holds no buffer); nghttp2_session_mem_recv
 * parses it and calls back: request headers are checked as they come (:method, :path routed,
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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "grpc/h2mem.h"
#include "grpc/grpc_int.h"

#define SS_WBUF_HIGH (1u << 20)
#define SS_WBUF_KEEP (256u << 10) /* larger write buffers are freed once written */

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
  if (call->conn_prev) call->conn_prev->conn_next = call->conn_next;
  else c->calls = call->conn_next;
  if (call->conn_next) call->conn_next->conn_prev = call->conn_prev;
  call->conn_prev = call->conn_next = NULL;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  ss_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  ss_call *call = ss_call_new(c->srv);
  if (!call) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  call->srv = c->srv;
  call->conn = c;
  call->stream_id = frame->hd.stream_id;
  call->refs = 1; /* the stream's reference */
  call->start_ns = uv_hrtime();
  call->status = -1;
  ss_msg_reader_init(&call->reader, c->srv->cfg.max_message_bytes);
  call_link(c, call);
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call);
  return 0;
}

/* Header checks are recorded in the call and acted on at END_HEADERS. */
typedef struct {
  int bad_method, bad_ctype, compressed_unsupported;
  char ctype[64];
  char encoding[32];
} hdr_state;

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)session, (void)flags;
  ss_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  ss_call *call = stream_call(c, frame->hd.stream_id);
  if (!call) return 0;
  if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
    call->method = ss_grpc_route(c->srv, (const char *)value, valuelen);
    if (!call->method) {
      free(call->bad_path);
      call->bad_path = strndup((const char *)value, valuelen > 200 ? 200 : valuelen);
    }
  } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
    call->have_ctype = 1;
    /* application/grpc, application/grpc+proto, application/grpc;charset=... */
    int ok = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
             (valuelen == 16 || value[16] == '+' || value[16] == ';');
    if (!ok) call->refused = 415;
  } else if (namelen == 12 && memcmp(name, "grpc-timeout", 12) == 0) {
    int64_t ns;
    if (ss_grpc_timeout_parse((const char *)value, valuelen, &ns) == 0) call->timeout_ns = ns > 0 ? ns : 1;
    else call->refused = 400;
  } else if (namelen == 13 && memcmp(name, "grpc-encoding", 13) == 0) {
    if (!(valuelen == 8 && memcmp(value, "identity", 8) == 0)) {
      free(call->encoding);
      call->encoding = strndup((const char *)value, valuelen > 40 ? 40 : valuelen);
    }
  }
  return 0;
}

static void refuse_http(ss_call *call, const char *status, const char *text) {
  /* A non-gRPC answer (the gRPC spec: 415 for a wrong content-type). */
  nghttp2_nv nv[] = {
      {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
  };
  call->headers_submitted = 1;
  call->state = SS_CALL_DONE;
  call->finished = 1;
  (void)text;
  int rv = nghttp2_submit_response(call->conn->h2, call->stream_id, nv, 2, NULL);
  if (rv != 0) SS_LOGW("stream %d: submit_response: %s", call->stream_id, nghttp2_strerror(rv));
  call->srv->stats.failed++;
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
  s->stats.requests++;
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
  s->nlive++;
  if (call->refused == 400) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout header");
    return;
  }
  if (!call->method) {
    char known[256];
    call->refused = 1;
    ss_call_fail(call, SS_GRPC_UNIMPLEMENTED, "unknown method %s (this server implements %s)",
                 call->bad_path ? call->bad_path : "(no :path)", services_list(s, known, sizeof known));
    return;
  }
  if (s->draining) {
    call->refused = 1;
    ss_call_fail(call, SS_GRPC_UNAVAILABLE, "server is shutting down");
    return;
  }
  call->is_drain_exempt = call->method->server_streaming;
}

static void dispatch(ss_call *call) {
  if (call->state != SS_CALL_RECV || call->refused) return;
  call->state = SS_CALL_ACTIVE;
  if (call->nmsgs == 0 && !ss_msg_reader_idle(&call->reader)) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "request ended inside a message (%zu of %zu bytes)",
                 call->reader.have, call->reader.len);
    return;
  }
  if (call->nmsgs == 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "request stream ended without a message");
    return;
  }
  if (call->nmsgs > 1) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "unary request carried %d messages, expected 1",
                 call->nmsgs);
    return;
  }
  ss_call_arm_deadline(call);
  call->method->handler(call, call->srv->method_app);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)session;
  ss_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  ss_call *call = stream_call(c, frame->hd.stream_id);
  if (!call) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
      (frame->hd.flags & NGHTTP2_FLAG_END_HEADERS))
    headers_done(c, call);
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) dispatch(call);
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)session, (void)flags;
  ss_conn *c = user_data;
  ss_call *call = stream_call(c, stream_id);
  if (!call || call->refused || call->state != SS_CALL_RECV) return 0;
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
      if (compressed) {
        const char *enc = call->encoding ? call->encoding : "(none declared)";
        call->refused = 1;
        ss_call_fail(call, SS_GRPC_UNIMPLEMENTED,
                     "compressed messages are not supported (grpc-encoding %s); send uncompressed "
                     "(grpc-accept-encoding: identity)", enc);
        return 0;
      }
    } else if (rv == SS_MSG_TOO_LARGE) {
      call->refused = 1;
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED,
                   "request message of %zu bytes exceeds the limit of %zu bytes (--max-message-bytes)",
                   call->reader.len, call->reader.max_len);
      return 0;
    } else if (rv == SS_MSG_NOMEM) {
      call->refused = 1;
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte message",
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
  if (call && call->refused && call->state != SS_CALL_ACTIVE &&
      !nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id))
    if (nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR) != 0)
      SS_LOGD("stream %d: cannot reset the refused upload", frame->hd.stream_id);
  return 0;
}

/* The stream is gone (answered, reset by the client, or the session ends). */
static void stream_gone(ss_conn *c, ss_call *call) {
  call_unlink(c, call);
  call->conn = NULL;
  ss_call_abandon(call);
  ss_call_unref(call);
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)error_code;
  ss_conn *c = user_data;
  ss_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!call) return 0;
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  stream_gone(c, call);
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
  free(c->wbuf);
  free(c->inflight_buf);
  free(c);
}

void ss_conn_close(ss_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  ss_grpc_server *s = c->srv;
  /* nghttp2_session_del does not report stream closes: settle the calls ourselves. */
  while (c->calls) {
    ss_call *call = c->calls;
    nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
    stream_gone(c, call);
  }
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  if (c->dirty) { /* unlink from the dirty list */
    ss_conn **pp = &s->dirty;
    while (*pp && *pp != c) pp = &(*pp)->dirty_next;
    if (*pp) *pp = c->dirty_next;
    c->dirty = 0;
  }
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

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

static void flush(ss_conn *c) {
  if (c->closing) return;
  int rv = nghttp2_session_send(c->h2);
  if (rv != 0) {
    SS_LOGD("nghttp2_session_send: %s", nghttp2_strerror(rv));
    ss_conn_close(c);
    return;
  }
  if (c->wlen > 0 && !c->writing) {
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
  if (!c->writing && c->wlen == 0 && !nghttp2_session_want_read(c->h2) &&
      !nghttp2_session_want_write(c->h2))
    ss_conn_close(c);
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

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  ss_conn *c = stream->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread != UV_EOF) SS_LOGD("read: %s", uv_strerror((int)nread));
    ss_conn_close(c);
    return;
  }
  ssize_t rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)buf->base, (size_t)nread);
  if (rv < 0) {
    SS_LOGD("connection: HTTP/2 error: %s", nghttp2_strerror((int)rv));
    /* nghttp2 queued a GOAWAY for protocol errors: try to send it, then close. */
    flush(c);
    ss_conn_close(c);
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

void ss_conn_accept(ss_grpc_server *s) {
  ss_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  if (uv_tcp_nodelay(&c->tcp, 1) != 0) SS_LOGD("TCP_NODELAY refused");
  if (nghttp2_session_server_new3(&c->h2, s->h2cb, c, s->h2opt, ss_h2mem()) != 0) {
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  /* Large windows so big tensors stream without stalls; the message size limit bounds memory. */
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100000},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 8u << 20},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, 1u << 16},
  };
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
      nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 64 << 20) != 0) {
    nghttp2_session_del(c->h2);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    return;
  }
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  if (s->draining) ss_conn_goaway(c);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    ss_conn_close(c);
    return;
  }
  ss_conn_mark_dirty(c);
}
