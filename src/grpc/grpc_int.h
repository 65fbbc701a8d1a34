/*
 * grpc_int.h — the transport's private structures, shared by the files of src/grpc (server,
 * connections, calls). Nothing outside src/grpc includes this; services see only grpc.h.
 *
 * Thread: everything here is owned by and touched only on the loop thread.
 *
 * Object lives:
 *   ss_grpc_server — ss_grpc_server_new .. ss_grpc_server_free.
 *   ss_conn        — accept .. both the socket is closed and its nghttp2 session deleted.
 *   ss_call        — one gRPC call (one HTTP/2 stream). Reference-counted (grpc.h): the stream
 *                    holds one reference until nghttp2 closes it (or the connection dies).
 *                    The call's response goes out only while call->conn != NULL.
 */
#ifndef SS_GRPC_GRPC_INT_H
#define SS_GRPC_GRPC_INT_H

#include <nghttp2/nghttp2.h>
#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "grpc/grpc.h"
#include "grpc/grpc_frame.h"
#include "grpc/tls.h"
#include "loop/timerq.h"

typedef struct ss_conn ss_conn;

/* Open connections of one client IP address (the server's per-peer table). */
typedef struct ss_peer {
  struct ss_peer *next;       /* bucket chain */
  size_t n;                   /* open connections */
  uint8_t len;                /* 4 (IPv4, also v4-mapped IPv6) or 16 */
  uint8_t addr[16];
} ss_peer;
#define SS_PEER_BUCKETS 1024

#define SS_CALL_CACHE 1024 /* finished calls kept for reuse */
#define SS_KEPT_INLINE 256 /* kept header bytes stored inside the call (no malloc) */

typedef enum {
  SS_CALL_RECV = 0, /* headers seen, request message arriving */
  SS_CALL_ACTIVE,   /* handler running / waiting / computing */
  SS_CALL_DONE      /* status decided, trailers queued or sent */
} ss_call_phase;

struct ss_call {
  ss_grpc_server *srv;
  ss_conn *conn;              /* NULL once the stream is closed */
  int32_t stream_id;
  int refs;
  ss_call_phase state;
  const ss_method *method;
  int is_drain_exempt;        /* streaming calls do not hold the drain open */
  ss_call *conn_prev, *conn_next; /* the connection's calls */
  ss_call *live_prev, *live_next; /* the server's calls that still owe an answer */
  int live;

  /* request */
  ss_msg_reader reader;
  uint8_t *req;               /* the request message (owned; tensor views point into it) */
  size_t req_len;
  int nmsgs;
  int refused;                /* answered before the request was complete: discard its data */
  int have_ctype;             /* a content-type header was sent */
  int have_te;                /* te: trailers was sent (nghttp2 checks its value) */
  int bad_method;             /* :method other than POST */
  int headers_complete;       /* END_HEADERS of the request seen */
  int h2_reset;               /* nghttp2 resets this stream itself: no second RST_STREAM */
  size_t hdr_bytes;           /* decoded header bytes so far (name + value + 32 per field) */
  size_t in_held;             /* request bytes received, counted in conn->in_held */
  size_t stream_debt;         /* received bytes not yet given back to the stream's window */
  uint64_t last_rx_ms;        /* uv_now() of the last DATA (request body timeout) */
  size_t out_acct;            /* response bytes queued and not yet sent (conn->out_pending) */
  char *bad_path;             /* :path that routed nowhere (for the UNIMPLEMENTED message) */
  char *encoding;             /* grpc-encoding when not identity */
  int accept_enc;             /* from grpc-accept-encoding: SS_ENC_GZIP/DEFLATE or identity (0) */
  int resp_enc;               /* the response message is compressed with this (0: identity) */
  int64_t timeout_ns;         /* from grpc-timeout; 0 = none */
  uint64_t start_ns;
  /* kept request headers (cfg.kept_headers), values NUL-terminated one after another in kept:
   * kept_inline for the common case, a heap buffer when they outgrow it */
  uint16_t kept_off[SS_GRPC_MAX_KEPT_HEADERS]; /* 1 + offset of header i's value; 0: not sent */
  int kept_bad;               /* 1 + index of a kept header refused (too long, or sent twice) */
  size_t kept_bad_len;        /* its length (0 when it came twice) */
  char *kept;                 /* NULL (nothing kept yet), kept_inline or malloc'd */
  size_t kept_len, kept_cap;
  char kept_inline[SS_KEPT_INLINE];
  ss_tq_entry deadline;       /* receiving: request body timeout; then: grpc-timeout */

  /* response: out[] bytes first, then the borrowed segments (tensor bytes), then trailers */
  int headers_submitted;
  int deferred;               /* the data provider returned DEFERRED */
  uint8_t *out;
  size_t out_len, out_cap, out_off;
  const ss_seg *segs;         /* borrowed runs sent after out[] (tensor bytes, KV caches) */
  size_t nsegs, seg_i, seg_off, segs_left;
  ss_seg seg2[2];             /* storage for the one-tail case: field header + data */
  uint8_t seg_hdr[16];
  size_t seg_hdr_len;
  void *tail_owner;           /* freed with free() when the call dies (may be NULL) */
  int finished;               /* status set: send trailers after the data */
  int status;
  char *status_msg;

  /* handler hooks and state (state: srv->state_size bytes, inside the call) */
  void (*on_cancel)(ss_call *call);
  void (*on_release)(ss_call *call);
  _Alignas(16) unsigned char hstate[]; /* handler state */
};

struct ss_conn {
  ss_grpc_server *srv;
  uv_tcp_t tcp;
  nghttp2_session *h2;
  ss_conn *prev, *next;       /* server's connection list */
  ss_conn *dirty_next;        /* on the flush list */
  int dirty;
  int closing;
  ss_call *calls;             /* calls whose stream is open */
  uint8_t *wbuf;              /* bytes being gathered for the next write */
  size_t wlen, wcap;
  uint8_t *inflight_buf;      /* bytes handed to uv_write (the previous wbuf, swapped) */
  size_t inflight_cap;
  uv_write_t wreq;
  int writing;
  int goaway_sent;            /* the final GOAWAY is queued: no new stream is served */
  int notice_sent;            /* drain: shutdown notice (GOAWAY 2^31-1) + PING queued */
  /* limits (see conn.c "Bounds") */
  ss_peer *peer;              /* counted in the server's per-peer table */
  ss_tq_entry tmo;            /* handshake, idle, or linger timeout */
  uint64_t last_rx_ms;        /* uv_now() of the last read */
  int handshaken;             /* the client's SETTINGS arrived */
  int doomed;                 /* GOAWAY queued: input discarded, closed once written */
  int shut;                   /* write side shut down (lingering for the peer's EOF) */
  uv_shutdown_t shutreq;
  unsigned hdr_overflows;     /* streams refused for their header size */
  size_t in_held;             /* request bytes held by this connection's open streams */
  size_t nstream_debtors;     /* calls with stream_debt > 0 */
  size_t out_pending;         /* response bytes queued and not yet written */
  ss_tls_conn *tls;           /* NULL: plaintext. wbuf then gathers plaintext, which is sealed
                               * into inflight_buf when a write starts (conn.c flush) */
};

struct ss_grpc_server {
  ss_grpc_config cfg;
  char *host;
  int port;
  uv_loop_t *loop;            /* borrowed: the owner runs it */
  const ss_method *methods;   /* borrowed table */
  size_t nmethods;
  void *method_app;           /* handlers' second argument */
  size_t state_size;          /* largest method state: every call object carries this much */
  ss_grpc_hooks hooks;
  uv_tcp_t listener;
  int listener_open;
  uv_check_t flush_check;     /* writes are gathered and flushed once per loop iteration */
  uv_idle_t flush_idle;       /* active while connections are dirty: the poll must not block */
  uv_timer_t drain_timer;
  ss_tq_entry notice_tmo;     /* drain: the final GOAWAYs go out at the latest then */
  uint64_t drain_ns;          /* uv_hrtime() when the drain started */
  ss_timerq tq;               /* call deadlines */
  int handles_open;           /* flush/idle/drain timer/tq: closed once everything is closed */
  nghttp2_session_callbacks *h2cb;
  nghttp2_option *h2opt;

  ss_conn *conns;
  size_t nconns;
  ss_conn *dirty;
  ss_call *live;              /* calls owing an answer (drain waits for these) */
  size_t nlive;
  ss_call *free_calls;        /* recycled call objects (linked through conn_next) */
  size_t nfree_calls;

  /* One read buffer for every connection: the loop reads one socket at a time and nghttp2
   * consumes each read completely before the next, so 10k idle connections cost no buffers. */
  char rbuf[65536];
  int draining;
  int stopped;                /* drain finished: streams ended, connections closing */
  int closed_told;            /* hooks.closed has run */
  ss_grpc_stats stats;
  ss_peer *peers[SS_PEER_BUCKETS]; /* open connections by client address */
  uint64_t note_ms;           /* last limit log line (at most one a second) */
  uint64_t note_count;        /* limit events since */
  ss_tls_ctx *tls;            /* NULL: plaintext; replaced by ss_grpc_server_reload_tls */
  char *tls_cert, *tls_key, *tls_client_ca; /* our copies of the paths */
};

/* ---- calls (call.c) ---- */
/* A call for stream_id on c (recycled when possible); NULL when out of memory. */
ss_call *ss_call_new(ss_grpc_server *s);
void ss_call_cache_free(ss_grpc_server *s);
/* Arm the call's deadline (from grpc-timeout) if any. */
void ss_call_arm_deadline(ss_call *call);
/* Copy n bytes of pending output to dst (the connection's send_data callback). */
void ss_call_take_output(ss_call *call, uint8_t *dst, size_t n);
/* A request header arrived (conn.c on_header): keep it when cfg.kept_headers names it. */
void ss_call_keep_header(ss_call *call, const uint8_t *name, size_t namelen, const uint8_t *value,
                         size_t valuelen);
/* The client went away before the call was answered: cancel hook, counters, drain set. */
void ss_call_abandon(ss_call *call);

/* ---- connections (conn.c) ---- */
void ss_conn_accept(ss_grpc_server *s);
void ss_conn_mark_dirty(ss_conn *c);
void ss_conn_flush_all(ss_grpc_server *s);
/* The final GOAWAY (last stream id = the last one processed). */
void ss_conn_goaway(ss_conn *c);
/* Drain, first step: GOAWAY with the largest stream id (no new streams, please) and a PING;
 * the final GOAWAY follows when the PING comes back (or the server's notice timeout), so a
 * stream the peer sent before it saw the notice is still served, never silently dropped. */
void ss_conn_goaway_notice(ss_conn *c);
void ss_conn_close(ss_conn *c);
/* GOAWAY with error_code and a reason (also the debug data), then close once it is written. */
void ss_conn_kill(ss_conn *c, uint32_t error_code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int ss_conn_callbacks_new(nghttp2_session_callbacks **out);
/* Route a :path through the method table; NULL when unknown. */
const ss_method *ss_grpc_route(const ss_grpc_server *s, const char *path, size_t len);

/* ---- server (server.c) ---- */
/* A call has its answer (or lost its client): drop it from the drain set. */
void ss_grpc_call_settled(ss_grpc_server *s, ss_call *call);
/* Count a call's final status (the exit summary). */
void ss_grpc_count_status(ss_grpc_server *s, int code);
/* A limit was hit: log it, at most one line a second (with the count since the last one). */
void ss_grpc_note_limit(ss_grpc_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Make sure the flush runs this iteration (poll does not block while output is pending). */
void ss_grpc_wake_flush(ss_grpc_server *s);

#endif
