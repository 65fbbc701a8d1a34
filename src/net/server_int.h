/*
 * server_int.h — the server's private structures, shared by src/net (connections, calls,
 * lifecycle) and src/service (the RPC handlers). Nothing here is public.
 *
 * Thread: everything in this header is owned by and touched only on the loop thread, except
 * the fields marked (atomic) and what a worker job reads from its own call (see compute.c).
 *
 * Object lives:
 *   ss_server  — ss_server_new .. ss_server_free.
 *   ss_conn    — accept .. both the socket is closed and its nghttp2 session deleted.
 *   ss_call    — one gRPC call (one HTTP/2 stream). Reference-counted: the stream holds one
 *                reference until nghttp2 closes it (or the connection dies); a worker job holds
 *                one while it runs. The call's response goes out only while call->conn != NULL.
 */
#ifndef SS_NET_SERVER_INT_H
#define SS_NET_SERVER_INT_H

#include <nghttp2/nghttp2.h>
#include <protobuf-c/protobuf-c.h>
#include <stdatomic.h>
#include <uv.h>

#include "exec/admission.h"
#include "exec/pool.h"
#include "models/model.h"
#include "net/grpc_frame.h"
#include "net/timerq.h"
#include "splitserve.h"

typedef struct ss_conn ss_conn;
typedef struct ss_call ss_call;

/* A borrowed run of response bytes (see ss_call_reply_segs). */
typedef struct ss_seg {
  const uint8_t *p;
  size_t len;
} ss_seg;

#define SS_SVC_SPACE 3072      /* bytes of per-call handler state kept inside the call */
#define SS_CALL_CACHE 1024     /* finished calls kept for reuse */
typedef struct ss_server ss_server;

/* A served model: the model plus its admission state. Calls hold a reference (refs) while they
 * use it; a model removed by a reload is "retired" (no new calls) and freed at refs == 0. */
typedef struct ss_served_model {
  ss_model *model;
  char *spec;                 /* the spec it was built from (reload keeps unchanged ones) */
  int conf_inflight, conf_queue; /* per-model limits as configured (-1 = server default) */
  ss_admit admit;
  ss_admit train_admit;       /* backward calls: one at a time, arrival order (service/train.c) */
  int accum;                  /* backward calls since the last optimizer step */
  uint64_t calls, errors;
  int refs;
  int retired;
} ss_served_model;

/* One RPC method: path, streaming flag, handler (loop thread, request message complete). */
typedef struct ss_method {
  const char *path;
  int server_streaming;
  void (*handler)(ss_call *call);
} ss_method;

/* A resource-usage snapshot, sampled on a loop timer (not per request). */
typedef struct ss_monitor {
  double timestamp;      /* unix seconds */
  float cpu_percent;     /* process CPU over the last interval, 100 = one core */
  float memory_mb;       /* RSS */
  float memory_percent;  /* RSS / MemTotal */
  uint64_t last_cpu_ticks;
  uint64_t last_ns;
  double mem_total_mb;
} ss_monitor;

typedef enum {
  SS_CALL_RECV = 0,   /* headers seen, request message arriving */
  SS_CALL_ACTIVE,     /* handler running / waiting / computing */
  SS_CALL_DONE        /* status decided, trailers queued or sent */
} ss_call_state;

struct ss_call {
  ss_server *srv;
  ss_conn *conn;              /* NULL once the stream is closed */
  int32_t stream_id;
  int refs;
  ss_call_state state;
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
  int have_ctype;              /* a content-type header was sent */
  char *bad_path;             /* :path that routed nowhere (for the UNIMPLEMENTED message) */
  char *encoding;             /* grpc-encoding when not identity */
  int64_t timeout_ns;         /* from grpc-timeout; 0 = none */
  uint64_t start_ns;
  ss_tq_entry deadline;

  /* response: out[] bytes first, then the borrowed tail (tensor bytes), then trailers */
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

  /* handler state: svc usually points into svc_space (no malloc per call) */
  _Alignas(16) unsigned char svc_space[SS_SVC_SPACE];
  void *svc;
  void (*svc_cancel)(ss_call *call); /* the client went away or the deadline passed */
  void (*svc_free)(ss_call *call);
};

struct ss_conn {
  ss_server *srv;
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
  int goaway_sent;
};

struct ss_server {
  ss_server_config cfg;
  char *listen_host;
  int port;
  uv_loop_t loop;
  uv_tcp_t listener;
  int listener_open;
  uv_check_t flush_check;     /* writes are gathered and flushed once per loop iteration */
  uv_idle_t flush_idle;       /* active while connections are dirty: the poll must not block */
  int handles_closed;
  uv_async_t stop_async;
  uv_signal_t sigint, sigterm;
  uv_timer_t monitor_timer;
  uv_timer_t drain_timer;
  ss_timerq tq;
  ss_pool *pool;
  int pool_busy;              /* workers still computing when the loop ended (abandoned calls) */
  nghttp2_session_callbacks *h2cb;
  nghttp2_option *h2opt;

  struct ss_sessions *sessions; /* server-side decode sessions (service/sessions.c) */
  struct ss_kcache *acts;     /* training forwards awaiting backward (service/train.c) */
  uint64_t forward_seq;
  int saving;                 /* checkpoint jobs running */
  uv_signal_t sigusr1;
  ss_served_model **models;   /* models[0] is the default (service/models.c) */
  size_t nmodels;
  int reloading;              /* a SIGHUP reload job is running */
  uv_signal_t sighup;

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
  ss_monitor mon;
  uint64_t start_ns;
  atomic_int stop_requests;   /* (atomic) ss_server_stop calls */
  int draining;
  int stopped;
  uint64_t total_requests;
  ss_server_stats stats;
  int ncpu;
};

/* ---- calls (net/call.c) — loop thread ---- */

/* Finish a unary call with a response message: packs msg after the 5-byte prefix; when tail
 * is non-NULL, it is appended as protobuf field `tail_field` (bytes) without copying (the
 * bytes must stay valid until the call is freed; tail_owner, if non-NULL, is freed then).
 * msg must not itself set that field. Status OK. */
void ss_call_reply(ss_call *call, const ProtobufCMessage *msg, uint32_t tail_field,
                   const void *tail, size_t tail_len, void *tail_owner);
/* The general form: msg packed, then segs[] sent verbatim after it — together they must be
 * the encoding of further fields of the same message (e.g. a bytes field as a tag+length segment
 * and a data segment). segs and the bytes they point to are borrowed until the call is freed
 * (owner, if non-NULL, is freed with free() then). No byte of a segment is copied before the
 * connection's write buffer. Status OK. */
void ss_call_reply_segs(ss_call *call, const ProtobufCMessage *msg, const ss_seg *segs,
                        size_t nsegs, void *owner);
/* Append the protobuf encoding of a length-delimited field header (tag + length) to buf;
 * returns bytes written (<= 15). */
size_t ss_pb_field_header(uint8_t *buf, uint32_t field, size_t len);
/* Append varint v; returns bytes written (<= 10). */
size_t ss_pb_varint(uint8_t *buf, uint64_t v);
/* Queue one message on a server-streaming call (not finished). */
void ss_call_send(ss_call *call, const ProtobufCMessage *msg);
/* Finish with a status (trailers-only when nothing was sent yet). fmt: the grpc-message. */
void ss_call_fail(ss_call *call, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Finish a streaming call with OK or a status after its messages. */
void ss_call_end(ss_call *call, int code, const char *msg);
/* A zeroed call (recycled when possible). NULL when out of memory. */
ss_call *ss_call_new(ss_server *s);
/* Free the recycled calls (server teardown). */
void ss_call_cache_free(ss_server *s);
void ss_call_ref(ss_call *call);
void ss_call_unref(ss_call *call);
/* Arm the call's deadline (from grpc-timeout) if any. */
void ss_call_arm_deadline(ss_call *call);

/* ---- connections (net/conn.c) ---- */
void ss_conn_accept(ss_server *s);
void ss_conn_mark_dirty(ss_conn *c);
void ss_conn_flush_all(ss_server *s);
void ss_conn_goaway(ss_conn *c);
void ss_conn_close(ss_conn *c);
int ss_conn_callbacks_new(nghttp2_session_callbacks **out);

/* ---- services (src/service) ---- */
const ss_method *ss_route(const char *path, size_t len);
/* Drain started: health watchers get NOT_SERVING. */
void ss_service_on_drain(ss_server *s);
/* Streaming calls still open: end them (server is stopping). */
void ss_service_end_streams(ss_server *s);
/* Sample the monitor (loop timer). */
void ss_monitor_sample(ss_monitor *m);
/* Live thread count of this process (from /proc/self/status), or -1. */
int ss_thread_count(void);
/* ---- the served model set (service/models.c) — loop thread ---- */
ss_served_model *ss_server_find_model(ss_server *s, const char *id);
/* Load the models of cfg (+ built-ins) at start-up (main thread, before the loop runs). */
int ss_models_load(ss_server *s, char *err, size_t errlen);
/* Re-read cfg.config_path on a worker and swap the model set on the loop (SIGHUP). */
void ss_models_reload(ss_server *s);
/* A call stops using sm (frees a retired model at its last reference). */
void ss_served_unref(ss_served_model *sm);
void ss_models_free(ss_server *s);
/* Write every model with a save path (spec save=PATH, --save-weights) on a worker. */
void ss_models_save_all(ss_server *s, const char *why);
/* ---- training (service/train.c) — loop thread ---- */
int ss_train_init(ss_server *s);
void ss_train_free(ss_server *s);
void ss_train_sweep(ss_server *s);
int ss_train_forward_id(ss_server *s, const char *client_id, char *out, size_t outlen, char *err,
                        size_t errlen);
int ss_train_store(ss_server *s, const char *forward_id, ss_served_model *sm, void *saved,
                   size_t saved_bytes, const ss_tensor *in, const int64_t *out_shape, int out_ndim);
/* "mlp, identity, ..." into buf (for NOT_FOUND messages). */
void ss_models_list(ss_server *s, char *buf, size_t len);

/* ---- server (net/server.c) ---- */
/* A call has its answer (or lost its client): drop it from the drain set. */
void ss_server_call_settled(ss_server *s, ss_call *call);
uint64_t ss_now_ns(void);
/* Make sure the flush runs this iteration (poll does not block while output is pending). */
void ss_server_wake_flush(ss_server *s);

#endif
