/*
 * call.c — one gRPC call: composing its response (HEADERS, length-prefixed messages, trailers
 * with grpc-status / percent-encoded grpc-message, or a trailers-only answer for errors),
 * its deadline, its reference count and its end.
 *
 * Thread: the loop of the call's shard; the public answering functions on the app loop, which
 * for a call handed over from another shard post the answer there (shard.c).
 *
 * Copies of tensor bytes on the way out: none here. ss_call_reply() packs the small protobuf
 * part into call->out and appends the tensor bytes as a borrowed tail; the data provider in
 * conn.c copies both straight into the connection's write buffer (NGHTTP2_DATA_FLAG_NO_COPY),
 * which is the one copy the codec forces before write(2).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <assert.h>

#include "core/log.h"
#include "core/macros.h"
#include "grpc/compress.h"
#include "grpc/grpc_int.h"

#define SS_ACCEPT_ENC "identity,deflate,gzip" /* request encodings we inflate (conn.c) */

static int out_reserve(ss_call *call, size_t more) {
  if (call->out_off == call->out_len) call->out_off = call->out_len = 0; /* all sent: rewind */
  if (call->out_len + more <= call->out_cap) return 0;
  size_t cap = call->out_cap ? call->out_cap : 256;
  while (cap < call->out_len + more) cap *= 2;
  uint8_t *p = realloc(call->out, cap);
  if (!p) return SS_ENOMEM;
  call->out = p;
  call->out_cap = cap;
  return 0;
}

static size_t varint_put(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static ssize_t data_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data);

static void status_str(int code, char out[4]) { /* 0..99: no printf on the hot path */
  if (code >= 10) {
    out[0] = (char)('0' + code / 10 % 10);
    out[1] = (char)('0' + code % 10);
    out[2] = 0;
  } else {
    out[0] = (char)('0' + (code < 0 ? 2 : code));
    out[1] = 0;
  }
}

static int submit_trailers(ss_call *call) {
  char code[4];
  status_str(call->status, code);
  char msg[1024];
  size_t mlen = 0;
  if (call->status_msg && *call->status_msg)
    mlen = ss_pct_encode(call->status_msg, strlen(call->status_msg), msg, sizeof msg);
  nghttp2_nv nv[2] = {
      {(uint8_t *)"grpc-status", (uint8_t *)code, 11, strlen(code), NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"grpc-message", (uint8_t *)msg, 12, mlen, NGHTTP2_NV_FLAG_NONE},
  };
  int rv = nghttp2_submit_trailer(call->conn->h2, call->stream_id, nv, mlen ? 2 : 1);
  if (rv != 0) SS_LOGW("stream %d: trailers: %s", call->stream_id, nghttp2_strerror(rv));
  return rv;
}

static ssize_t data_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data) {
  (void)session, (void)stream_id, (void)buf, (void)user_data;
  ss_call *call = source->ptr;
  size_t avail = (call->out_len - call->out_off) + call->segs_left;
  if (avail == 0 && !call->finished) {
    call->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  size_t n = avail < length ? avail : length;
  if (n > 0) *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n == avail && call->finished) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (submit_trailers(call) != 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets it */
  }
  return (ssize_t)n;
}

void ss_call_take_output(ss_call *call, uint8_t *dst, size_t n) {
  size_t acct = n < call->out_acct ? n : call->out_acct;
  call->out_acct -= acct;
  if (call->conn) {
    call->conn->out_pending -= acct;
    call->conn->out_progress_ms = uv_now(call->srv->loop); /* the peer is reading */
  }
  size_t a = call->out_len - call->out_off;
  if (a > n) a = n;
  memcpy(dst, call->out + call->out_off, a);
  call->out_off += a;
  n -= a;
  dst += a;
  while (n > 0 && call->seg_i < call->nsegs) {
    const ss_seg *s = &call->segs[call->seg_i];
    size_t k = s->len - call->seg_off;
    if (k > n) k = n;
    memcpy(dst, s->p + call->seg_off, k);
    dst += k;
    n -= k;
    call->seg_off += k;
    call->segs_left -= k;
    if (call->seg_off == s->len) {
      call->seg_i++;
      call->seg_off = 0;
    }
  }
}

static void kick(ss_call *call) {
  if (!call->conn) return;
  if (!call->headers_submitted) {
    nghttp2_nv hdr[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"grpc-accept-encoding", (uint8_t *)SS_ACCEPT_ENC, 20, sizeof SS_ACCEPT_ENC - 1,
         NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"grpc-encoding", (uint8_t *)ss_grpc_encoding_name(call->resp_enc), 13,
         strlen(ss_grpc_encoding_name(call->resp_enc)), NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider prd;
    prd.source.ptr = call;
    prd.read_callback = data_read_cb;
    call->headers_submitted = 1;
    int rv =
        nghttp2_submit_response(call->conn->h2, call->stream_id, hdr, call->resp_enc ? 4 : 3, &prd);
    if (rv != 0) SS_LOGW("stream %d: submit_response: %s", call->stream_id, nghttp2_strerror(rv));
  } else if (call->deferred) {
    call->deferred = 0;
    int rv = nghttp2_session_resume_data(call->conn->h2, call->stream_id);
    if (rv != 0) SS_LOGD("stream %d: resume: %s", call->stream_id, nghttp2_strerror(rv));
  }
  ss_conn_mark_dirty(call->conn);
}

/* Response bytes about to be queued on call's connection: 0, or SS_EBUSY when they would take
 * the connection's unsent bytes over its budget (one response is always allowed). */
static int out_admit(ss_call *call, size_t n) {
  ss_conn *c = call->conn;
  if (!c) return 0;
  if (c->out_pending > 0 && c->out_pending + n > call->srv->cfg.max_connection_buffer_bytes) {
    ss_grpc_note_limit(call->srv,
                       "responses refused: a client is not reading (%zu bytes unsent "
                       "on its connection)",
                       c->out_pending);
    return SS_EBUSY;
  }
  c->out_pending += n;
  call->out_acct += n;
  return 0;
}

/* A response of n bytes was refused by out_admit: the call ends RESOURCE_EXHAUSTED. */
static void refuse_unread(ss_call *call, size_t n) {
  ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED,
                "response of %zu bytes refused: the connection already holds %zu bytes of "
                "responses its client has not read (--max-connection-buffer-mb %zu)",
                n, call->conn->out_pending, call->srv->cfg.max_connection_buffer_bytes >> 20);
}

static void count_status(ss_grpc_server *s, int code) {
  switch (code) {
    case SS_GRPC_OK: SS_STAT_INC(s->stats.served); break;
    case SS_GRPC_RESOURCE_EXHAUSTED:
    case SS_GRPC_UNAVAILABLE: SS_STAT_INC(s->stats.rejected); break;
    case SS_GRPC_DEADLINE_EXCEEDED:
    case SS_GRPC_CANCELLED: SS_STAT_INC(s->stats.cancelled); break;
    default: SS_STAT_INC(s->stats.failed); break;
  }
}

static void set_status(ss_call *call, int code, const char *msg) {
  call->state = SS_CALL_DONE;
  call->finished = 1;
  call->status = code;
  free(call->status_msg);
  call->status_msg = msg && *msg ? strdup(msg) : NULL;
  ss_tq_cancel(&call->srv->tq, &call->deadline);
  count_status(call->srv, code);
  ss_grpc_call_settled(call->srv, call);
}

static size_t field_header(uint8_t *buf, uint32_t field, size_t len) {
  size_t n = varint_put(buf, (uint64_t)field << 3 | 2);
  return n + varint_put(buf + n, len);
}

/* --compress-responses and the client accepts gzip/deflate: the message (packed + segs) is
 * compressed into a buffer that becomes call->out (one message, compressed flag set); the
 * borrowed segments are no longer needed. On a compression failure the reply goes identity. */
static void reply_core(ss_call *call, const ProtobufCMessage *msg, const uint8_t *packed,
                       size_t plen, const ss_seg *segs, size_t nsegs, ss_owned owner);

static void reply_compressed(ss_call *call, const ProtobufCMessage *msg, const uint8_t *packed,
                             size_t plen, const ss_seg *segs, size_t nsegs, ss_owned owner) {
  uint8_t *pk = msg ? malloc(plen ? plen : 1) : NULL;
  ss_zpart *parts = malloc((1 + nsegs) * sizeof *parts);
  size_t np = 0;
  uint8_t *z = NULL;
  size_t zlen = 0;
  int rv = (pk || !msg) && parts ? 0 : SS_ENOMEM;
  if (rv == 0) {
    if (msg) protobuf_c_message_pack(msg, pk);
    parts[np++] = (ss_zpart){msg ? pk : packed, plen};
    for (size_t i = 0; i < nsegs; i++) parts[np++] = (ss_zpart){segs[i].p, segs[i].len};
    rv = ss_grpc_deflate(call->accept_enc, parts, np, 5, &z, &zlen);
  }
  free(pk);
  free(parts);
  if (rv != 0 || zlen - 5 > UINT32_MAX) {
    free(z);
    int enc = call->accept_enc;
    call->accept_enc = 0; /* identity this time */
    reply_core(call, msg, packed, plen, segs, nsegs, owner);
    call->accept_enc = enc;
    return;
  }
  ss_owned_release(owner); /* the segments were copied into z */
  if (out_admit(call, zlen) != 0) {
    free(z);
    refuse_unread(call, zlen);
    return;
  }
  ss_msg_prefix(z, (uint32_t)(zlen - 5));
  z[0] = 1; /* compressed */
  free(call->out);
  call->out = z;
  call->out_cap = zlen;
  call->out_len = zlen;
  call->out_off = 0;
  call->segs = NULL;
  call->nsegs = call->seg_i = call->seg_off = call->segs_left = 0;
  call->resp_enc = call->accept_enc;
  set_status(call, SS_GRPC_OK, NULL);
  kick(call);
}

/* The reply on the call's own loop: msg packed here, or (msg NULL) packed[plen] already. */
static void reply_core(ss_call *call, const ProtobufCMessage *msg, const uint8_t *packed,
                       size_t plen, const ss_seg *segs, size_t nsegs, ss_owned owner) {
  if (call->state == SS_CALL_DONE) {
    ss_owned_release(owner);
    return;
  }
  if (msg) plen = protobuf_c_message_get_packed_size(msg);
  size_t extra = 0;
  for (size_t i = 0; i < nsegs; i++) extra += segs[i].len;
  size_t total = plen + extra;
  if (call->accept_enc && call->srv->cfg.compress_responses && !call->headers_submitted &&
      call->out_off == call->out_len && total <= UINT32_MAX) {
    reply_compressed(call, msg, packed, plen, segs, nsegs, owner);
    return;
  }
  if (total > UINT32_MAX || out_reserve(call, 5 + plen) != 0) {
    ss_owned_release(owner);
    ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED, "response of %zu bytes cannot be sent", total);
    return;
  }
  if (out_admit(call, 5 + total) != 0) {
    ss_owned_release(owner);
    refuse_unread(call, total);
    return;
  }
  uint8_t *p = call->out + call->out_len;
  ss_msg_prefix(p, (uint32_t)total);
  if (msg)
    protobuf_c_message_pack(msg, p + 5);
  else
    memcpy(p + 5, packed, plen);
  call->out_len += 5 + plen;
  call->segs = segs;
  call->nsegs = nsegs;
  call->seg_i = call->seg_off = 0;
  call->segs_left = extra;
  ss_owned_release(call->tail_owner);
  call->tail_owner = owner;
  set_status(call, SS_GRPC_OK, NULL);
  kick(call);
}

void ss_call_reply_packed(ss_call *call, const uint8_t *packed, size_t plen, const ss_seg *segs,
                          size_t nsegs, ss_owned owner) {
  reply_core(call, NULL, packed, plen, segs, nsegs, owner);
}

void ss_call_reply_segs(ss_call *call, const ProtobufCMessage *msg, const ss_seg *segs,
                        size_t nsegs, ss_owned owner) {
  if (call->handed) { /* a call of another loop: the answer travels there */
    ss_shard_post_reply(call, msg, segs, nsegs, owner);
    return;
  }
  reply_core(call, msg, NULL, 0, segs, nsegs, owner);
}

void ss_call_reply(ss_call *call, const ProtobufCMessage *msg, uint32_t tail_field,
                   const void *tail, size_t tail_len, ss_owned tail_owner) {
  if (!tail) {
    ss_call_reply_segs(call, msg, NULL, 0, tail_owner);
    return;
  }
  /* The bytes field's tag and length go in the call's small header store; the data is borrowed. */
  call->seg_hdr_len = field_header(call->seg_hdr, tail_field, tail_len);
  call->seg2[0] = (ss_seg){call->seg_hdr, call->seg_hdr_len};
  call->seg2[1] = (ss_seg){tail, tail_len};
  ss_call_reply_segs(call, msg, call->seg2, 2, tail_owner);
}

/* Queue one message (msg packed here, or packed[plen] already) on the call's own loop. */
static void send_core(ss_call *call, const ProtobufCMessage *msg, const uint8_t *packed,
                      size_t plen) {
  if (call->state == SS_CALL_DONE || !call->conn) return;
  if (msg) plen = protobuf_c_message_get_packed_size(msg);
  if (out_admit(call, 5 + plen) != 0) {
    /* The client does not read its stream: end it (the cancel hook runs at the close). */
    int rv = nghttp2_submit_rst_stream(call->conn->h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                       NGHTTP2_ENHANCE_YOUR_CALM);
    if (rv != 0) SS_LOGD("stream %d: rst_stream: %s", call->stream_id, nghttp2_strerror(rv));
    ss_conn_mark_dirty(call->conn);
    return;
  }
  if (out_reserve(call, 5 + plen) != 0) {
    call->out_acct -= 5 + plen;
    call->conn->out_pending -= 5 + plen;
    return;
  }
  uint8_t *p = call->out + call->out_len;
  ss_msg_prefix(p, (uint32_t)plen);
  if (msg)
    protobuf_c_message_pack(msg, p + 5);
  else
    memcpy(p + 5, packed, plen);
  call->out_len += 5 + plen;
  kick(call);
}

void ss_call_send_packed(ss_call *call, const uint8_t *packed, size_t plen) {
  send_core(call, NULL, packed, plen);
}

void ss_call_send(ss_call *call, const ProtobufCMessage *msg) {
  if (call->handed) {
    ss_shard_post_send(call, msg);
    return;
  }
  send_core(call, msg, NULL, 0);
}

void ss_call_end_local(ss_call *call, int code, const char *msg) {
  if (call->state == SS_CALL_DONE) return;
  set_status(call, code, msg);
  if (!call->headers_submitted && code != SS_GRPC_OK) {
    ss_call_failf(call, code, "%s", msg ? msg : "");
    return;
  }
  kick(call);
}

void ss_call_end(ss_call *call, int code, const char *msg) {
  if (call->handed)
    ss_shard_post_fail(call, 1, code, msg);
  else
    ss_call_end_local(call, code, msg);
}

static void fail_core(ss_call *call, int code, const char *msg) {
  if (call->state != SS_CALL_DONE)
    set_status(call, code, msg);
  else if (call->headers_submitted)
    return;
  if (!call->conn) return;
  SS_LOGD("stream %d: %s: %s", call->stream_id, ss_grpc_code_name(code), msg);
  if (call->headers_submitted) { /* messages went out already: status in the trailers */
    kick(call);
    return;
  }
  /* Trailers-only response: one HEADERS frame with END_STREAM. */
  char codestr[4], enc[1024];
  status_str(code, codestr);
  size_t elen = ss_pct_encode(msg, strlen(msg), enc, sizeof enc);
  nghttp2_nv nv[] = {
      {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"grpc-accept-encoding", (uint8_t *)SS_ACCEPT_ENC, 20, sizeof SS_ACCEPT_ENC - 1,
       NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"grpc-status", (uint8_t *)codestr, 11, strlen(codestr), NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"grpc-message", (uint8_t *)enc, 12, elen, NGHTTP2_NV_FLAG_NONE},
  };
  call->headers_submitted = 1;
  int rv = nghttp2_submit_response(call->conn->h2, call->stream_id, nv, elen ? 5 : 4, NULL);
  if (rv != 0) {
    SS_LOGW("stream %d: submit_response: %s", call->stream_id, nghttp2_strerror(rv));
    rv = nghttp2_submit_rst_stream(call->conn->h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                   NGHTTP2_INTERNAL_ERROR);
    if (rv != 0) SS_LOGW("stream %d: rst_stream: %s", call->stream_id, nghttp2_strerror(rv));
  }
  ss_conn_mark_dirty(call->conn);
}

void ss_call_failf(ss_call *call, int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fail_core(call, code, msg);
}

void ss_call_fail(ss_call *call, int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (call->handed)
    ss_shard_post_fail(call, 0, code, msg);
  else
    fail_core(call, code, msg);
}

static void on_deadline(ss_tq_entry *e) {
  ss_call *call = ss_container_of(e, ss_call, deadline);
  if (call->state == SS_CALL_DONE) return;
  ss_call_cancel_hook(call, SS_GRPC_DEADLINE_EXCEEDED);
  ss_call_failf(call, SS_GRPC_DEADLINE_EXCEEDED, "deadline of %.3f s exceeded",
                (double)call->timeout_ns / 1e9);
}

void ss_call_arm_deadline(ss_call *call) {
  if (call->timeout_ns <= 0) return;
  if (ss_tq_arm(&call->srv->tq, &call->deadline, call->start_ns + (uint64_t)call->timeout_ns,
                on_deadline) != 0)
    ss_call_failf(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory for the call's deadline");
}

void ss_call_abandon(ss_call *call) {
  if (call->state == SS_CALL_DONE) return;
  call->state = SS_CALL_DONE;
  call->finished = 1;
  ss_tq_cancel(&call->srv->tq, &call->deadline);
  ss_call_cancel_hook(call, SS_GRPC_CANCELLED);
  SS_STAT_INC(call->srv->stats.cancelled);
  ss_grpc_call_settled(call->srv, call);
}

/* ------------------------------------------------------------ accessors --- */

uint8_t *ss_call_request(ss_call *call, size_t *len) {
  *len = call->req_len;
  return call->req;
}

void *ss_call_state(ss_call *call) { return call->hstate; }

void ss_call_set_hooks(ss_call *call, void (*cancel)(ss_call *call),
                       void (*release)(ss_call *call)) {
  call->on_cancel = cancel;
  call->on_release = release;
}

void ss_call_cancel_hook(ss_call *call, int code) {
  if (call->handed)
    ss_shard_post_cancel(call, code);
  else if (call->on_cancel)
    call->on_cancel(call);
}

int ss_call_answered(const ss_call *call) {
  return call->handed ? call->app_done : call->state == SS_CALL_DONE;
}

int ss_call_status(const ss_call *call) {
  if (call->handed) return call->app_done ? call->app_status : -1;
  if (call->state != SS_CALL_DONE) return -1;
  return call->status >= 0 ? call->status : SS_GRPC_CANCELLED;
}

uint64_t ss_call_start_ns(const ss_call *call) { return call->start_ns; }

uint64_t ss_call_conn_id(const ss_call *call) { return call->conn_id; }

/* ------------------------------------------------------------ kept headers --- */

void ss_call_keep_header(ss_call *call, const uint8_t *name, size_t namelen, const uint8_t *value,
                         size_t valuelen) {
  const ss_grpc_config *cfg = &call->srv->cfg;
  size_t i = 0;
  while (i < cfg->n_kept_headers && !(strlen(cfg->kept_headers[i]) == namelen &&
                                      memcmp(cfg->kept_headers[i], name, namelen) == 0))
    i++;
  if (i == cfg->n_kept_headers || call->kept_bad) return;
  if (call->kept_off[i] || valuelen > cfg->max_kept_header_bytes) {
    call->kept_bad = (int)i + 1;
    call->kept_bad_len = call->kept_off[i] ? 0 : valuelen;
    return;
  }
  if (!call->kept) {
    call->kept = call->kept_inline;
    call->kept_cap = sizeof call->kept_inline;
  }
  if (call->kept_len + valuelen + 1 > call->kept_cap) { /* rare: long values */
    size_t cap = call->kept_cap * 2;
    while (cap < call->kept_len + valuelen + 1) cap *= 2;
    char *p = malloc(cap);
    if (!p) {
      call->kept_bad = (int)i + 1;
      call->kept_bad_len = valuelen;
      return;
    }
    memcpy(p, call->kept, call->kept_len);
    if (call->kept != call->kept_inline) free(call->kept);
    call->kept = p;
    call->kept_cap = cap;
  }
  memcpy(call->kept + call->kept_len, value, valuelen);
  call->kept[call->kept_len + valuelen] = 0;
  call->kept_off[i] = (uint16_t)(call->kept_len + 1);
  call->kept_len += valuelen + 1;
}

const char *ss_call_header(const ss_call *call, const char *name) {
  const ss_grpc_config *cfg = &call->srv->cfg;
  for (size_t i = 0; i < cfg->n_kept_headers; i++)
    if (strcasecmp(cfg->kept_headers[i], name) == 0)
      return call->kept_off[i] ? call->kept + call->kept_off[i] - 1 : NULL;
  return NULL;
}

ss_grpc_server *ss_call_server(ss_call *call) { return call->srv; }

/* ------------------------------------------------------------ lifetime --- */

void ss_call_ref(ss_call *call) {
  int was = atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
  assert(was > 0);
  (void)was;
}

ss_call *ss_call_new(ss_grpc_server *s) {
  if (!s->free_calls) /* calls finished on the app loop come back here */
    s->free_calls = atomic_exchange_explicit(&s->returned, NULL, memory_order_acquire);
  ss_call *call = s->free_calls;
  if (!call) return calloc(1, sizeof *call + s->state_size);
  s->free_calls = call->conn_next;
  if (s->nfree_calls) s->nfree_calls--;
  /* Keep the output buffer; zero the header (not the handler state: handlers set it up). */
  uint8_t *out = call->out;
  size_t cap = call->out_cap;
  memset(call, 0, offsetof(ss_call, hstate));
  call->out = out;
  call->out_cap = cap;
  return call;
}

void ss_call_cache_free(ss_grpc_server *s) {
  ss_call *back = atomic_exchange(&s->returned, NULL);
  while (back) {
    ss_call *next = back->conn_next;
    free(back->out);
    free(back);
    back = next;
  }
  while (s->free_calls) {
    ss_call *next = s->free_calls->conn_next;
    free(s->free_calls->out);
    free(s->free_calls);
    s->free_calls = next;
  }
  s->nfree_calls = 0;
}

static void free_parts(ss_call *call) {
  ss_msg_reader_free(&call->reader);
  ss_grpc_inflated_free(call->req, call->req_map);
  ss_owned_release(call->tail_owner);
  free(call->status_msg);
  free(call->bad_path);
  free(call->encoding);
  if (call->kept != call->kept_inline) free(call->kept);
}

void ss_call_finalize_local(ss_call *call) {
  ss_grpc_server *s = call->srv;
  ss_tq_cancel(&s->tq, &call->deadline);
  if (call->on_release) call->on_release(call);
  free_parts(call);
  if (s->nfree_calls < SS_CALL_CACHE && call->out_cap <= 65536) {
    call->conn_next = s->free_calls;
    s->free_calls = call;
    s->nfree_calls++;
    return;
  }
  free(call->out);
  free(call);
}

/* A handed call's last reference, on the app loop: the stream is closed (its loop settled the
 * call before dropping the stream's reference), so its outcome is final and the object is no
 * longer touched there; the husk goes back to its shard's cache (a lock-free stack the shard
 * takes whole when its own cache is empty). */
void ss_call_finalize_app(ss_call *call) {
  ss_grpc_server *s = call->srv;
  assert(!ss_tq_armed(&call->deadline));
  call->app_done = 1;
  call->app_status = call->status >= 0 ? call->status : SS_GRPC_CANCELLED;
  if (call->on_release) call->on_release(call);
  free_parts(call);
  if (call->out_cap > 65536) {
    free(call->out);
    free(call);
    return;
  }
  ss_call *head = atomic_load_explicit(&s->returned, memory_order_relaxed);
  do call->conn_next = head;
  while (!atomic_compare_exchange_weak_explicit(&s->returned, &head, call, memory_order_release,
                                                memory_order_relaxed));
}

void ss_call_unref(ss_call *call) {
  int was = atomic_fetch_sub_explicit(&call->refs, 1, memory_order_acq_rel);
  assert(was > 0);
  if (was > 1) return;
  if (call->handed)
    ss_call_finalize_app(call);
  else
    ss_call_finalize_local(call);
}

void ss_call_drop(ss_call *call) {
  int was = atomic_fetch_sub_explicit(&call->refs, 1, memory_order_acq_rel);
  assert(was > 0);
  if (was > 1) return;
  if (call->handed && call->on_release)
    ss_shard_post_release(call); /* hooks run on the app loop */
  else
    ss_call_finalize_local(call);
}
