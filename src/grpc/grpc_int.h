/*
 * grpc_int.h — the transport's private structures, shared by the files of src/grpc (server,
 * connections, calls). Nothing outside src/grpc includes this; services see only grpc.h.
 *
 * Threads: with --io-threads N the server is N shards (struct ss_grpc_server), each with its own
 * loop, listener (SO_REUSEPORT), connections, timers and call cache; shard 0 runs on the owner's
 * ("app") loop, which also runs every handler and hook. A shard's objects are touched only on
 * its loop thread, with these exceptions: the mailboxes (mutex, shard.c), the shared connection
 * limits (mutex, limits.c), the stats counters (single writer, relaxed atomics), the call's
 * reference count (atomic), and a call handed to the app loop (see "Calls across loops" in
 * shard.c for which fields each side owns).
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
#include <stdatomic.h>
#include <uv.h>

#include "grpc/grpc.h"
#include "grpc/grpc_frame.h"
#include "grpc/tls.h"
#include "loop/timerq.h"

typedef struct ss_conn ss_conn;

/* Open connections of one client IP address (the server's per-peer table). */
typedef struct ss_peer {
  struct ss_peer *next; /* bucket chain */
  size_t n;             /* open connections */
  uint8_t len;          /* 4 (IPv4, also v4-mapped IPv6) or 16 */
  uint8_t addr[16];
} ss_peer;
#define SS_PEER_BUCKETS 1024

/* What the shards of one server share: the connection limits count across every loop. */
typedef struct ss_grpc_shared {
  uv_mutex_t mu;
  size_t nconns;                   /* open connections, all shards */
  ss_peer *peers[SS_PEER_BUCKETS]; /* open connections by client address */
} ss_grpc_shared;

/* A message between loops (shard.c). The ones a call can have in flight at most once (dispatch
 * then release, cancel, the final answer) live inside the call; the others are allocated. */
typedef struct ss_op ss_op;
struct ss_op {
  ss_op *next;
  int kind;
  int code;             /* status / drain now / drained graceful / closed loop index */
  int embedded;         /* inside the call: not freed */
  struct ss_call *call; /* holds a reference (not RELEASE: the last one went) */
  uint8_t *bytes;       /* REPLY, SEND: the packed message; FAIL, END: status text or NULL */
  size_t len;
  int bytes_inline;          /* bytes points to small[] */
  const struct ss_seg *segs; /* REPLY: borrowed until the call is freed */
  size_t nsegs;
  ss_owned owner;         /* REPLY: released with the call */
  struct ss_tls_ctx *tls; /* TLS */
  uint8_t small[96];      /* a small packed reply (the message without its tensor bytes) */
};

/* A loop's inbox: ops posted from other threads, run on the owner loop in one async callback. */
typedef struct ss_mbox {
  uv_async_t async;
  uv_mutex_t mu;
  ss_op *head, *tail;
  int closed; /* async closed: posts are refused (the poster discards) */
  int open;   /* initialised */
} ss_mbox;

#define SS_GRPC_MAX_IO 64

#define SS_CALL_CACHE 1024 /* finished calls kept for reuse */
#define SS_KEPT_INLINE 256 /* kept header bytes stored inside the call (no malloc) */

typedef enum {
  SS_CALL_RECV = 0, /* headers seen, request message arriving */
  SS_CALL_ACTIVE,   /* handler running / waiting / computing */
  SS_CALL_DONE      /* status decided, trailers queued or sent */
} ss_call_phase;

struct ss_call {
  ss_grpc_server *srv; /* the shard whose loop owns the stream */
  ss_conn *conn;       /* NULL once the stream is closed */
  int32_t stream_id;
  atomic_int refs;
  /* A call of shard k != 0 is handed to the app loop when its request is complete; from then
   * on the app side answers through ops (shard.c) and keeps its own view of the outcome. */
  int handed;      /* io side: dispatched to the app loop */
  int app_done;    /* app side: answered, or told the client went away */
  int app_status;  /* app side: the status of that answer */
  ss_op op_in;     /* io -> app: dispatch, later release (never both in flight) */
  ss_op op_cancel; /* io -> app: cancel (at most once) */
  ss_op op_answer; /* app -> io: reply / fail / end (at most once) */
  ss_call_phase state;
  const ss_method *method;
  int is_drain_exempt;            /* streaming calls do not hold the drain open */
  ss_call *conn_prev, *conn_next; /* the connection's calls */
  ss_call *live_prev, *live_next; /* the server's calls that still owe an answer */
  int live;

  /* request */
  ss_msg_reader reader;
  uint8_t *req; /* the request message (owned; tensor views point into it) */
  size_t req_len;
  size_t req_map; /* req is an anonymous mapping of this length (an inflated
                   * message, compress.h), freed with ss_grpc_inflated_free */
  int nmsgs;
  int refused;                  /* answered before the request was complete: discard its data */
  int have_ctype;               /* a content-type header was sent */
  int have_te;                  /* te: trailers was sent (nghttp2 checks its value) */
  int bad_method;               /* :method other than POST */
  int headers_complete;         /* END_HEADERS of the request seen */
  int h2_reset;                 /* nghttp2 resets this stream itself: no second RST_STREAM */
  size_t hdr_bytes;             /* decoded header bytes so far (name + value + 32 per field) */
  size_t in_held;               /* request bytes received, counted in conn->in_held */
  size_t stream_debt;           /* received bytes not yet given back to the stream's window */
  uint64_t last_rx_ms;          /* uv_now() of the last DATA (request body timeout) */
  size_t out_acct;              /* response bytes queued and not yet sent (conn->out_pending) */
  char *bad_path;               /* :path that routed nowhere (for the UNIMPLEMENTED message) */
  char *encoding;               /* grpc-encoding when not identity */
  struct ss_inflater *zin;      /* inflating the request in slices (conn.c), or NULL */
  int zin_enc;                  /* its encoding */
  size_t zin_acct;              /* inflated bytes counted in in_held so far */
  int end_seen;                 /* END_STREAM arrived while inflating: dispatch when done */
  ss_call *zin_prev, *zin_next; /* the shard's inflating calls */
  int accept_enc;               /* from grpc-accept-encoding: SS_ENC_GZIP/DEFLATE or identity (0) */
  int resp_enc;                 /* the response message is compressed with this (0: identity) */
  int64_t timeout_ns;           /* from grpc-timeout; 0 = none */
  uint64_t start_ns;
  uint64_t conn_id; /* its connection's ss_conn.id (kept after the stream closes) */
  /* kept request headers (cfg.kept_headers), values NUL-terminated one after another in kept:
   * kept_inline for the common case, a heap buffer when they outgrow it */
  uint16_t kept_off[SS_GRPC_MAX_KEPT_HEADERS]; /* 1 + offset of header i's value; 0: not sent */
  int kept_bad;        /* 1 + index of a kept header refused (too long, or sent twice) */
  size_t kept_bad_len; /* its length (0 when it came twice) */
  char *kept;          /* NULL (nothing kept yet), kept_inline or malloc'd */
  size_t kept_len, kept_cap;
  char kept_inline[SS_KEPT_INLINE];
  ss_tq_entry deadline; /* receiving: request body timeout; then: grpc-timeout */

  /* response: out[] bytes first, then the borrowed segments (tensor bytes), then trailers */
  int headers_submitted;
  int deferred; /* the data provider returned DEFERRED */
  uint8_t *out;
  size_t out_len, out_cap, out_off;
  const ss_seg *segs; /* borrowed runs sent after out[] (tensor bytes, KV caches) */
  size_t nsegs, seg_i, seg_off, segs_left;
  ss_seg seg2[2]; /* storage for the one-tail case: field header + data */
  uint8_t seg_hdr[16];
  size_t seg_hdr_len;
  ss_owned tail_owner; /* released when the call dies */
  int finished;        /* status set: send trailers after the data */
  int status;
  char *status_msg;

  /* handler hooks and state (state: srv->state_size bytes, inside the call) */
  void (*on_cancel)(ss_call *call);
  void (*on_release)(ss_call *call);
  _Alignas(16) unsigned char hstate[]; /* handler state */
};

struct ss_conn {
  ss_grpc_server *srv;
  uint64_t id; /* unique in the process for the server's life (ss_call_conn_id) */
  uv_tcp_t tcp;
  nghttp2_session *h2;
  ss_conn *prev, *next; /* server's connection list */
  ss_conn *dirty_next;  /* on the flush list */
  int dirty;
  int closing;
  ss_call *calls; /* calls whose stream is open */
  uint8_t *wbuf;  /* bytes being gathered for the next write */
  size_t wlen, wcap;
  uint8_t *inflight_buf; /* bytes handed to uv_write (the previous wbuf, swapped) */
  size_t inflight_cap;
  uv_write_t wreq;
  int writing;
  int goaway_sent; /* the final GOAWAY is queued: no new stream is served */
  int notice_sent; /* drain: shutdown notice (GOAWAY 2^31-1) + PING queued */
  /* limits (see conn.c "Bounds") */
  ss_peer *peer;       /* counted in the server's per-peer table */
  ss_tq_entry tmo;     /* handshake, idle, or linger timeout */
  uint64_t last_rx_ms; /* uv_now() of the last read */
  int handshaken;      /* the client's SETTINGS arrived */
  int doomed;          /* GOAWAY queued: input discarded, closed once written */
  int shut;            /* write side shut down (lingering for the peer's EOF) */
  int peer_done;       /* TLS close_notify received: no more input; close once idle */
  uv_shutdown_t shutreq;
  unsigned hdr_overflows;   /* streams refused for their header size */
  size_t in_held;           /* request bytes held by this connection's open streams */
  size_t nstream_debtors;   /* calls with stream_debt > 0 */
  size_t out_pending;       /* response bytes queued and not yet written */
  ss_tq_entry stall;        /* out_pending > 0: the peer must take some within the timeout */
  uint64_t out_progress_ms; /* uv_now() when the stall watch started or output last moved */
  ss_tls_conn *tls;         /* NULL: plaintext. wbuf then gathers plaintext, which is sealed
                             * into inflight_buf when a write starts (conn.c flush) */
};

struct ss_grpc_server {
  ss_grpc_config cfg;
  char *host;
  int port;
  uv_loop_t *loop; /* shard 0: borrowed (the owner runs it); others: their own */
  /* shards (shard.c) */
  int index;                   /* 0: the app shard (the handle the owner holds) */
  uint64_t conn_seq;           /* connections accepted by this shard (their ids) */
  ss_grpc_server *app;         /* shard 0 */
  ss_grpc_server **shards;     /* shard 0 only: all shards, [0] = itself */
  size_t nshards;              /* shard 0 only */
  ss_grpc_shared *shared;      /* owned by shard 0 */
  ss_mbox mbox;                /* ops for this loop (only when nshards > 1) */
  uv_thread_t thread;          /* shards != 0: runs own_loop */
  int thread_started;          /* running or not joined yet */
  int loop_ended;              /* its loop ended and its thread was joined */
  _Atomic(ss_call *) returned; /* calls freed on the app loop, back for reuse (pushed there) */
  size_t shards_drained;       /* shard 0: shards whose unary calls are all answered */
  size_t shards_closed;        /* shard 0: shards != 0 whose loops ended */
  int drain_cut;               /* shard 0: some shard's drain was cut short */
  int drained_told;            /* shard 0: hooks.drained has run */
  const ss_method *methods;    /* borrowed table */
  size_t nmethods;
  void *method_app;  /* handlers' second argument */
  size_t state_size; /* largest method state: every call object carries this much */
  ss_grpc_hooks hooks;
  uv_tcp_t listener;
  int listener_open;
  uv_check_t flush_check; /* writes are gathered and flushed once per loop iteration */
  uv_idle_t flush_idle;   /* active while connections are dirty: the poll must not block */
  uv_timer_t drain_timer;
  ss_tq_entry notice_tmo; /* drain: the final GOAWAYs go out at the latest then */
  uint64_t drain_ns;      /* uv_hrtime() when the drain started */
  ss_timerq tq;           /* call deadlines */
  int handles_open;       /* flush/idle/drain timer/tq: closed once everything is closed */
  nghttp2_session_callbacks *h2cb;
  nghttp2_option *h2opt;

  ss_conn *conns;
  size_t nconns;
  ss_conn *dirty;
  ss_call *inflating, *inflating_tail; /* calls whose request is being inflated (a slice per
                                        * iteration, round robin) */
  ss_call *live;                       /* calls owing an answer (drain waits for these) */
  size_t nlive;
  ss_call *free_calls; /* recycled call objects (linked through conn_next) */
  size_t nfree_calls;

  /* One read buffer for every connection: the loop reads one socket at a time and nghttp2
   * consumes each read completely before the next, so 10k idle connections cost no buffers. */
  char rbuf[65536];
  int draining;
  int stopped;     /* drain finished: streams ended, connections closing */
  int closed_told; /* hooks.closed has run */
  ss_grpc_stats stats;
  uint64_t note_ms;    /* last limit log line (at most one a second) */
  uint64_t note_count; /* limit events since */
  ss_tls_ctx *tls;     /* NULL: plaintext; replaced by ss_grpc_server_reload_tls */
  char *tls_cert, *tls_key, *tls_client_ca; /* our copies of the paths */
};

/* Counters read from other threads (stats): one writer (the shard's loop), relaxed atomics. */
#define SS_STAT_ADD(field, n) \
  __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define SS_STAT_INC(field) SS_STAT_ADD(field, 1)
#define SS_STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

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
/* The transport's own answers, on the shard's loop (the public ss_call_fail/_end post to the
 * owning loop when called from the app loop for a handed call; these never do). */
void ss_call_failf(ss_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ss_call_end_local(ss_call *call, int code, const char *msg);
/* Reply / send with a message already packed (packed: the message bytes, no prefix). */
void ss_call_reply_packed(ss_call *call, const uint8_t *packed, size_t plen, const ss_seg *segs,
                          size_t nsegs, ss_owned owner);
void ss_call_send_packed(ss_call *call, const uint8_t *packed, size_t plen);
/* Run the handler state's cancel hook (on the app loop: posted there for a handed call). */
void ss_call_cancel_hook(ss_call *call, int code);
/* Drop a reference on the call's own loop (the stream's, an op's). */
void ss_call_drop(ss_call *call);
/* The last reference went on the app loop (call of another shard) / on its own loop. */
void ss_call_finalize_app(ss_call *call);
void ss_call_finalize_local(ss_call *call);

/* ---- connections (conn.c) ---- */
void ss_conn_accept(ss_grpc_server *s);
void ss_conn_mark_dirty(ss_conn *c);
void ss_conn_flush_all(ss_grpc_server *s);
/* One slice of work for each call whose request is being inflated (once per loop iteration,
 * from the flush check); nonzero while some are left. */
int ss_conn_inflate_some(ss_grpc_server *s);
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

/* ---- shards (shard.c) ---- */
/* Make the server's shards 1..n-1 (shard 0 is s) and bind their listeners; threads start with
 * ss_shards_start. */
int ss_shards_new(ss_grpc_server *s, size_t n, char *err, size_t errlen);
int ss_shards_start(ss_grpc_server *s, char *err, size_t errlen);
/* Stop (drain now if needed), join and free shards 1..n-1; run what they left for the app. */
void ss_shards_free(ss_grpc_server *s);
int ss_mbox_init(ss_grpc_server *s);
void ss_mbox_close(ss_grpc_server *s);
void ss_mbox_destroy(ss_grpc_server *s);
/* Hand a complete request to the app loop (shard != 0). */
void ss_shard_dispatch(ss_call *call);
/* Shard k's drain reached its end (all unary calls answered): tell shard 0. */
void ss_shard_drained(ss_grpc_server *s, int graceful);
/* App side of a handed call: post an answer to its loop. */
void ss_shard_post_reply(ss_call *call, const ProtobufCMessage *msg, const ss_seg *segs,
                         size_t nsegs, ss_owned owner);
void ss_shard_post_send(ss_call *call, const ProtobufCMessage *msg);
void ss_shard_post_fail(ss_call *call, int end, int code, const char *msg);
/* Io side of a handed call: its client went away (code: why) / its last reference went. */
void ss_shard_post_cancel(ss_call *call, int code);
void ss_shard_post_release(ss_call *call);
/* Shard 0 to shard k: drain (now: a second stop); use this TLS context for new connections. */
void ss_shard_post_drain(ss_grpc_server *k, int now);
void ss_shard_post_tls(ss_grpc_server *k, ss_tls_ctx *ctx);
/* Shard 0: every shard 1..n-1 has closed its connections and ended its loop. */
int ss_shards_closed(const ss_grpc_server *s);

/* ---- connection limits (limits.c), shared by the shards ---- */
/* The shared table (NULL when out of memory); free it once every connection has closed. */
ss_grpc_shared *ss_limits_new(void);
void ss_limits_free(ss_grpc_shared *sh);
/* Admit a connection (0, *peer set: may be NULL when the address is unknown) or refuse it (-1,
 * why filled; empty when out of memory); release at close. */
int ss_limits_admit(ss_grpc_server *s, uv_tcp_t *tcp, ss_peer **peer, char *why, size_t whylen);
void ss_limits_release(ss_grpc_server *s, ss_peer *peer);

/* ---- server (server.c) ---- */
/* One shard's server object (one per I/O loop; shard 0 is the server itself): ss_grpc_shard_*
 * is its life in server.c, ss_shard_* / ss_shards_* the traffic between loops (shard.c). */
/* Make shard index (>= 1) of app on loop: settings, handles, TLS, listener on app's port. */
int ss_grpc_shard_new(ss_grpc_server *app, int index, uv_loop_t *loop, ss_grpc_server **out,
                      char *err, size_t errlen);
/* The shard's own drain (ss_grpc_server_drain runs it on shard 0 and posts it to the others). */
void ss_grpc_shard_drain(ss_grpc_server *s, int now);
/* Close the shard's handles; its loop can end. */
void ss_grpc_shard_close(ss_grpc_server *s);
/* Free a shard's own memory once its loop is done. */
void ss_grpc_shard_free(ss_grpc_server *s);
int ss_grpc_bind_shard(ss_grpc_server *s, const char *host, int reuseport, char *err,
                       size_t errlen);
void ss_grpc_start_flush(ss_grpc_server *s);
/* A call has its answer (or lost its client): drop it from the drain set. */
void ss_grpc_call_settled(ss_grpc_server *s, ss_call *call);
/* Count a call's final status (the exit summary). */
void ss_grpc_count_status(ss_grpc_server *s, int code);
/* A limit was hit: log it, at most one line a second (with the count since the last one). */
void ss_grpc_note_limit(ss_grpc_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Make sure the flush runs this iteration (poll does not block while output is pending). */
void ss_grpc_wake_flush(ss_grpc_server *s);

#endif
