/*
 * splitserve_bench.c — splitserve-bench, the load generator: latency and QPS against the
 * number of concurrent calls (closed loop) or against an offered rate (open loop), for any
 * splitlearn.comm.ComputeService server (splitserve, the Python peers, the seeds' servers).
 *
 * Thread: one. Everything runs on one libuv loop owned by main(): K ss_aclient connections
 * (include/splitserve.h), a 100 ms "tick" timer (progress line, /proc sampling, reconnects),
 * a phase timer (warmup -> measure -> drain) and, in open loop, a 1 ms send timer.
 *
 * Closed loop (--concurrency N[,N...]): N "slots" each keep one call in flight; a slot's
 * completion callback starts its next call at once. Slot i uses connection i % K with
 * K = --connections or ceil(N / 100) (no connection carries more than 100 streams).
 *
 * Open loop (--rate R[,R...]): request i of a level is due at t0 + i/R. Every timer tick sends
 * everything due, stamped with its *intended* time, so latency includes any time it waited
 * to be sent (no coordinated omission). Requests that are due but cannot be sent (the in-flight
 * cap --max-inflight is reached) form the backlog; the level is reported as "cannot keep up"
 * when the completion rate is below 95 % of R or a backlog remained.
 *
 * A slot whose call failed with UNAVAILABLE (or could not start) is parked and retried by the
 * next 100 ms tick on a fresh connection, so a server restart costs errors, not a hot loop.
 * A call the server refused before processing it (ss_call_result.refused: a proxy such as
 * nginx ends a connection after keepalive_requests calls with a GOAWAY, and the streams beyond
 * its last stream id were never processed) is sent again at once on a fresh connection, its
 * latency counted from its first send, and is no error (grpcio does the same). A connection
 * that is going away keeps its calls below that id until they complete (it is "retired"),
 * then closes.
 *
 * Per level: warmup (not counted), then the measured window: a call counts when it completes
 * inside the window. OK calls whose response decodes to the expected shape go into a
 * log-linear histogram (core/hist.h, nanoseconds); everything else is counted by gRPC status
 * name (plus BAD_SHAPE / BAD_RESPONSE for an OK reply that fails the check) and never enters
 * the latency numbers. Then the loop drains the calls still in flight before the next level.
 *
 * KV cache (--past N --kv-layers L --kv-heads H --kv-head-dim D [--use-cache]): every request
 * carries L random float32 past_key_values entries [batch, H, N, D] (the client-side cache of
 * the wire contract, as a decoding client at a fixed past length sends it); with --use-cache the
 * response carries present_key_values (ignored by the shape check, counted in the bytes).
 * Server-side sessions (--session-decode P [--session-reset N], closed loop only): each slot owns
 * a session (metadata session=ID): a prefill call [batch, P, width] first, then one-token steps
 * (--shape [batch, 1, width]); the N-th step also sends session_end=1 and the slot starts over
 * with a new id. Steps are the measured calls (histogram, QPS); prefills are counted apart.
 * Bytes per call: request and response message sizes (no 5-byte prefix, no HTTP/2 framing) of
 * the OK calls in the window; with sessions, all bytes (prefills included) per step.
 *
 * Credentials (--token / --token-file, token.c): every connection is given the header
 * `authorization: Bearer TOKEN` (ss_aclient_set_header) when it is made, so every call carries
 * it; the token is never printed, and a --token argument is wiped from argv once read.
 *
 * Costs per call, on the generator's side: the request is encoded once (prefix excluded) and
 * borrowed by every call (sessions: the per-slot session metadata is appended to a copy); the
 * response check is a zero-allocation protobuf walk (fields 1 and 2 only); the slot structs are
 * preallocated. The only per-call allocations are ss_aclient's.
 */
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <uv.h>

#include "compute_service.pb-c.h"
#include "hist.h"
#include "splitserve.h"
#include "token.h"

#define MAX_META 64
#define MAX_LEVELS 256
#define N_STATUS 17
#define ST_BAD_SHAPE N_STATUS          /* OK, but the response shape/size is not the expected one */
#define ST_BAD_RESPONSE (N_STATUS + 1) /* OK, but the body is not a ComputeResponse */
#define ST_START_FAIL (N_STATUS + 2)   /* ss_aclient_call refused locally */
#define N_ERRKINDS (N_STATUS + 3)
#define STREAMS_PER_CONN 100
#define SLOT_CHUNK 4096
#define COMPUTE_PATH "/splitlearn.comm.ComputeService/Compute"

enum { PH_IDLE, PH_WARMUP, PH_MEASURE, PH_DRAIN };

typedef struct bench bench;

typedef struct slot {
  bench *b;
  struct slot *next_free; /* open loop free list / closed loop parked list */
  uint64_t t0;            /* send time (closed) or intended send time (open), ns */
  int conn;
  int busy;
  int kind;       /* the call in flight: CK_PLAIN, CK_PREFILL, CK_STEP */
  long sess_step; /* sessions: 0 = next call is the prefill, then 1..N steps */
  uint64_t sess_id;
  size_t sent_len; /* request message bytes of the call in flight */
  int resends;     /* times its current call was refused and sent again */
} slot;

enum { CK_PLAIN, CK_PREFILL, CK_STEP };

typedef struct level_result {
  int open;
  double target_rate;
  long concurrency; /* N (closed) or peak in flight (open) */
  int connections;
  double window_s;
  uint64_t ok, errors, errs[N_ERRKINDS];
  double qps, mean_ms, p50_ms, p90_ms, p99_ms, max_ms, min_ms;
  int threads;      /* -1: not sampled */
  double srv_cpu_s; /* -1: not sampled */
  double srv_cpu_per_1k;
  double cli_cpu_s;
  uint64_t backlog_max, backlog_end, sent;
  int saturated;
  double req_bytes, resp_bytes; /* mean message sizes of the counted calls (sessions: steps) */
  double bytes_per_call;        /* (sent + received) / counted calls; sessions: all bytes / steps */
  uint64_t prefills;            /* sessions: prefill calls completed OK in the window */
  double prefill_bytes;         /* sessions: mean sent + received bytes of a prefill call */
  double prefill_mean_ms;
} level_result;

struct bench {
  uv_loop_t loop;
  uv_timer_t tick, phase_timer, send_timer;
  uv_signal_t sigint;
  /* options */
  char host[256];
  int port;
  ss_client_tls tls; /* --tls-ca: every connection is TLS */
  int use_tls;
  char auth[TOOL_TOKEN_MAX + 8]; /* "Bearer TOKEN" (--token / --token-file), or "" */
  const char *model, *label, *csv_path, *json_path;
  int64_t shape[SS_MAX_DIMS], expect[SS_MAX_DIMS];
  int ndim, expect_ndim;
  ss_dtype dtype;
  const char *meta[2 * MAX_META];
  size_t n_meta;
  long levels[MAX_LEVELS];
  double rates[MAX_LEVELS];
  int n_levels, open;
  int opt_conns;
  double duration_s, warmup_s, timeout_s;
  long max_inflight;
  int server_pid;
  int fail_on_error, progress, quiet;
  /* workload */
  uint8_t *req;
  size_t req_len;
  size_t expect_bytes;
  /* KV cache and sessions */
  long kv_past, sess_prefill, sess_reset;
  int kv_layers, kv_heads, kv_head_dim, use_cache;
  uint8_t *req_prefill; /* sessions: the prefill request, without the session metadata */
  size_t req_prefill_len, prefill_expect_bytes;
  int64_t prefill_shape[SS_MAX_DIMS];
  uint8_t *scratch;
  size_t scratch_cap;
  uint64_t sess_gen;
  uint64_t bytes_sent, bytes_recv, n_steps; /* counted calls (sessions: steps) */
  uint64_t pf_bytes_sent, pf_bytes_recv, n_prefills, prefill_ns; /* sessions: prefills */
  /* connections */
  ss_aclient **conns;
  int n_conns, cap_conns, use_conns; /* open, allocated, used by this level */
  ss_aclient **retired;              /* going away, calls still in flight (conn_drop) */
  int n_retired, cap_retired;
  uint64_t refused_resent; /* calls refused before processing and sent again */
  int rr;
  /* slots */
  slot *closed_slots;
  long n_closed_slots;
  slot **chunks;
  int n_chunks;
  slot *free_slots;
  slot *parked; /* closed loop: slots whose start failed; retried by the tick */
  /* level state */
  int phase;
  int level_done;
  int interrupted;
  int in_send;
  long n_level;
  double rate;
  uint64_t inflight, peak_inflight;
  uint64_t t_level0, t_meas0, t_meas1;
  uint64_t sent, due_total, backlog_max;
  uint64_t ok, errs[N_ERRKINDS];
  char errmsg[N_ERRKINDS][160];
  ss_hist hist;
  int thr_max;
  double srv_cpu0, cli_cpu0;
  uint64_t last_progress_ns, last_ok;
  long clk_tck;
};

/* ------------------------------------------------------------------ utilities -- */

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "splitserve-bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

static const char *errkind_name(int k) {
  if (k < N_STATUS) return ss_grpc_code_name(k);
  if (k == ST_BAD_SHAPE) return "BAD_SHAPE";
  if (k == ST_BAD_RESPONSE) return "BAD_RESPONSE";
  return "START_FAILED";
}

static double self_cpu_s(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of pid in seconds, or -1. */
static double proc_cpu_s(int pid, long tck) {
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p++;
  /* fields after ')': 3 state, 4 ppid, ... 14 utime, 15 stime */
  unsigned long long ut = 0, st = 0;
  int field = 2;
  char *save = NULL;
  for (char *t = strtok_r(p, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
    field++;
    if (field == 14) ut = strtoull(t, NULL, 10);
    if (field == 15) {
      st = strtoull(t, NULL, 10);
      break;
    }
  }
  if (field < 15) return -1;
  return (double)(ut + st) / (double)tck;
}

static int proc_threads(int pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int n = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "Threads:", 8) == 0) {
      n = atoi(line + 8);
      break;
    }
  fclose(f);
  return n;
}

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
    fprintf(stderr, "splitserve-bench: raised RLIMIT_NOFILE from %llu to %llu\n",
            (unsigned long long)old, (unsigned long long)rl.rlim_max);
}

/* ----------------------------------------------------------- response check ---- */

static int pb_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v) {
  const uint8_t *p = *pp;
  uint64_t x = 0;
  for (int sh = 0; sh < 64 && p < end; sh += 7) {
    uint8_t c = *p++;
    x |= (uint64_t)(c & 0x7f) << sh;
    if (!(c & 0x80)) {
      *v = x;
      *pp = p;
      return 0;
    }
  }
  return -1;
}

/* Walk a ComputeResponse without allocating: returns 0 when its shape (field 2, packed or not)
 * equals the expected one and its data (field 1) has the expected size; ST_BAD_SHAPE when
 * they differ; ST_BAD_RESPONSE when the bytes are not a valid message. */
static int check_response_as(const int64_t *expect, int expect_ndim, size_t expect_bytes,
                             const uint8_t *p, size_t len) {
  const uint8_t *end = p + len;
  int nd = 0, shape_ok = 1;
  uint64_t data_len = 0;
  while (p < end) {
    uint64_t key, v;
    if (pb_varint(&p, end, &key)) return ST_BAD_RESPONSE;
    uint32_t field = (uint32_t)(key >> 3), wt = (uint32_t)(key & 7);
    if (field == 2 && wt == 0) { /* unpacked int32 */
      if (pb_varint(&p, end, &v)) return ST_BAD_RESPONSE;
      if (nd >= expect_ndim || (int32_t)v != expect[nd]) shape_ok = 0;
      nd++;
      continue;
    }
    switch (wt) {
      case 0:
        if (pb_varint(&p, end, &v)) return ST_BAD_RESPONSE;
        break;
      case 1:
        if (end - p < 8) return ST_BAD_RESPONSE;
        p += 8;
        break;
      case 5:
        if (end - p < 4) return ST_BAD_RESPONSE;
        p += 4;
        break;
      case 2: {
        if (pb_varint(&p, end, &v) || v > (uint64_t)(end - p)) return ST_BAD_RESPONSE;
        const uint8_t *q = p, *qe = p + v;
        p = qe;
        if (field == 1) data_len = v;
        if (field == 2) { /* packed int32 */
          while (q < qe) {
            uint64_t d;
            if (pb_varint(&q, qe, &d)) return ST_BAD_RESPONSE;
            if (nd >= expect_ndim || (int32_t)d != expect[nd]) shape_ok = 0;
            nd++;
          }
        }
        break;
      }
      default: return ST_BAD_RESPONSE;
    }
  }
  if (!shape_ok || nd != expect_ndim || data_len != expect_bytes) return ST_BAD_SHAPE;
  return 0;
}

/* Fields other than 1 and 2 (present_key_values, monitoring data, ...) are skipped. */
static int check_response(const bench *b, const uint8_t *p, size_t len) {
  return check_response_as(b->expect, b->expect_ndim, b->expect_bytes, p, len);
}

static int check_prefill_response(const bench *b, const uint8_t *p, size_t len) {
  return check_response_as(b->prefill_shape, b->expect_ndim, b->prefill_expect_bytes, p, len);
}

/* ------------------------------------------------------------ connections ------ */

static ss_aclient *conn_get(bench *b, int i) {
  if (i >= b->cap_conns) {
    int cap = b->cap_conns ? b->cap_conns : 16;
    while (cap <= i) cap *= 2;
    ss_aclient **n = realloc(b->conns, (size_t)cap * sizeof *n);
    if (!n) die("out of memory");
    memset(n + b->cap_conns, 0, (size_t)(cap - b->cap_conns) * sizeof *n);
    b->conns = n;
    b->cap_conns = cap;
  }
  if (!b->conns[i]) {
    char err[400] = "";
    int rv = ss_aclient_new_tls(&b->loop, b->host, b->port, b->use_tls ? &b->tls : NULL,
                                &b->conns[i], err, sizeof err);
    if (rv < 0)
      die("cannot create a client for %s:%d: %s", b->host, b->port, err[0] ? err : ss_strerror(rv));
    if (b->auth[0] && (rv = ss_aclient_set_header(b->conns[i], "authorization", b->auth)) < 0)
      die("cannot send the token: %s", ss_strerror(rv));
    if (i >= b->n_conns) b->n_conns = i + 1;
  }
  return b->conns[i];
}

/* A connection that refuses calls (lost, GOAWAY) is replaced on next use. One that still
 * carries calls (a GOAWAY lets those below its last stream id finish) is retired, and closed
 * by the tick once they completed; force closes it at once (its calls complete UNAVAILABLE). */
static void conn_drop_how(bench *b, int i, int force) {
  ss_aclient *c = b->conns[i];
  if (!c) return;
  b->conns[i] = NULL;
  if (force || ss_aclient_inflight(c) == 0) {
    ss_aclient_close(c);
    return;
  }
  if (b->n_retired == b->cap_retired) {
    int cap = b->cap_retired ? b->cap_retired * 2 : 8;
    ss_aclient **n = realloc(b->retired, (size_t)cap * sizeof *n);
    if (!n) die("out of memory");
    b->retired = n;
    b->cap_retired = cap;
  }
  b->retired[b->n_retired++] = c;
}

static void conn_drop(bench *b, int i) { conn_drop_how(b, i, 0); }

/* Close the retired connections whose calls all completed (all of them with force). */
static void conn_reap(bench *b, int force) {
  int k = 0;
  for (int i = 0; i < b->n_retired; i++) {
    ss_aclient *c = b->retired[i];
    if (force || ss_aclient_inflight(c) == 0)
      ss_aclient_close(c);
    else
      b->retired[k++] = c;
  }
  b->n_retired = k;
}

/* ------------------------------------------------------------------ calls ------ */

static void on_done(void *user, const ss_call_result *r);
static void level_maybe_finished(bench *b);

/* Append a ComputeRequest.metadata map entry (field 4: {1: key, 2: value}) at p. */
static size_t put_meta(uint8_t *p, const char *k, const char *v) {
  size_t kl = strlen(k), vl = strlen(v); /* both < 128: one-byte lengths */
  p[0] = 0x22;
  p[1] = (uint8_t)(2 + kl + 2 + vl);
  p[2] = 0x0a;
  p[3] = (uint8_t)kl;
  memcpy(p + 4, k, kl);
  p[4 + kl] = 0x12;
  p[5 + kl] = (uint8_t)vl;
  memcpy(p + 6 + kl, v, vl);
  return 6 + kl + vl;
}

/* The request of slot s's next call. Sessions: prefill or step, plus metadata session=ID (and
 * session_end=1 on the last step), appended to a copy of the encoded message (a protobuf
 * message's fields may come in any order; map entries are repeated fields). */
static const uint8_t *slot_request(bench *b, slot *s, size_t *len) {
  if (b->sess_prefill <= 0) {
    s->kind = CK_PLAIN;
    *len = b->req_len;
    return b->req;
  }
  if (s->sess_step == 0) s->sess_id = ++b->sess_gen;
  const uint8_t *base = s->sess_step == 0 ? b->req_prefill : b->req;
  size_t blen = s->sess_step == 0 ? b->req_prefill_len : b->req_len;
  s->kind = s->sess_step == 0 ? CK_PREFILL : CK_STEP;
  size_t need = blen + 128;
  if (need > b->scratch_cap) {
    free(b->scratch);
    b->scratch = malloc(need);
    if (!b->scratch) die("out of memory");
    b->scratch_cap = need;
  }
  memcpy(b->scratch, base, blen);
  char id[64];
  snprintf(id, sizeof id, "bench-%ld-%llu", (long)getpid(), (unsigned long long)s->sess_id);
  size_t n = blen + put_meta(b->scratch + blen, "session", id);
  if (s->sess_step >= b->sess_reset) n += put_meta(b->scratch + n, "session_end", "1");
  *len = n;
  return b->scratch;
}

/* Start the call of slot s on its connection. Returns 0, or <0 (slot not in flight). */
static int issue(bench *b, slot *s) {
  size_t mlen;
  const uint8_t *msg = slot_request(b, s, &mlen);
  s->sent_len = mlen;
  for (int attempt = 0; attempt < 2; attempt++) {
    ss_aclient *c = conn_get(b, s->conn);
    int rv = ss_aclient_call(c, COMPUTE_PATH, msg, mlen, b->timeout_s, on_done, s);
    if (rv == 0) {
      s->busy = 1;
      b->inflight++;
      if (b->inflight > b->peak_inflight) b->peak_inflight = b->inflight;
      return 0;
    }
    if (rv != SS_ECLOSED) {
      if (b->phase == PH_MEASURE) b->errs[ST_START_FAIL]++;
      return rv;
    }
    conn_drop(b, s->conn); /* may complete other calls; then retry on a fresh connection */
  }
  if (b->phase == PH_MEASURE) b->errs[ST_START_FAIL]++;
  return SS_ECLOSED;
}

static void account(bench *b, slot *s, const ss_call_result *r, uint64_t now) {
  int kind;
  if (r->grpc_status == SS_GRPC_OK) {
    kind = s->kind == CK_PREFILL ? check_prefill_response(b, r->body, r->body_len)
                                 : check_response(b, r->body, r->body_len);
    if (kind == 0) {
      uint64_t dt = now > s->t0 ? now - s->t0 : 0;
      if (s->kind == CK_PREFILL) { /* counted apart: the steps are what is measured */
        b->pf_bytes_sent += s->sent_len;
        b->pf_bytes_recv += r->body_len;
        b->n_prefills++;
        b->prefill_ns += dt;
        return;
      }
      b->bytes_sent += s->sent_len;
      b->bytes_recv += r->body_len;
      b->n_steps++;
      b->ok++;
      ss_hist_record(&b->hist, dt);
      return;
    }
  } else {
    kind = r->grpc_status >= 0 && r->grpc_status < N_STATUS ? r->grpc_status : SS_GRPC_UNKNOWN;
  }
  if (b->errs[kind]++ == 0) {
    if (kind == ST_BAD_SHAPE)
      snprintf(b->errmsg[kind], sizeof b->errmsg[kind],
               "response shape or size differs from the expected one");
    else if (kind == ST_BAD_RESPONSE)
      snprintf(b->errmsg[kind], sizeof b->errmsg[kind], "response is not a ComputeResponse");
    else
      snprintf(b->errmsg[kind], sizeof b->errmsg[kind], "%s", r->message ? r->message : "");
  }
}

static slot *slot_alloc(bench *b) {
  if (!b->free_slots) {
    slot *chunk = calloc(SLOT_CHUNK, sizeof *chunk);
    slot **cs = realloc(b->chunks, (size_t)(b->n_chunks + 1) * sizeof *cs);
    if (!chunk || !cs) die("out of memory");
    b->chunks = cs;
    b->chunks[b->n_chunks++] = chunk;
    for (int i = SLOT_CHUNK - 1; i >= 0; i--) {
      chunk[i].b = b;
      chunk[i].next_free = b->free_slots;
      b->free_slots = &chunk[i];
    }
  }
  slot *s = b->free_slots;
  b->free_slots = s->next_free;
  return s;
}

static void slot_release(bench *b, slot *s) {
  s->busy = 0;
  s->next_free = b->free_slots;
  b->free_slots = s;
}

/* Open loop: the connection for the next call: round robin over --connections K, or (default)
 * the first of the used ones carrying fewer than STREAMS_PER_CONN calls, opening one more
 * when all are full. */
static int open_pick_conn(bench *b) {
  if (b->opt_conns > 0) {
    int i = b->rr++ % b->opt_conns;
    return i;
  }
  for (int k = 0; k < b->use_conns; k++) {
    int i = (b->rr + k) % b->use_conns;
    if (b->conns[i] && ss_aclient_inflight(b->conns[i]) < STREAMS_PER_CONN) {
      b->rr = i;
      return i;
    }
    if (!b->conns[i]) return i;
  }
  return b->use_conns++;
}

/* Send everything due up to now (open loop). */
static void open_send_due(bench *b, uint64_t now) {
  /* not re-entered: a dropped connection completes calls (on_done) from inside issue() */
  if (b->phase == PH_DRAIN || b->phase == PH_IDLE || b->in_send) return;
  b->in_send = 1;
  double el = (double)(now - b->t_level0) / 1e9;
  uint64_t due = (uint64_t)(el * b->rate) + 1;
  if (due > b->due_total) b->due_total = due;
  while (b->sent < b->due_total) {
    if ((long)b->inflight >= b->max_inflight) break;
    slot *s = slot_alloc(b);
    s->t0 = b->t_level0 + (uint64_t)((double)b->sent * 1e9 / b->rate);
    s->conn = open_pick_conn(b);
    b->sent++;
    if (issue(b, s) < 0) slot_release(b, s);
  }
  uint64_t backlog = b->due_total - b->sent;
  if (b->phase == PH_MEASURE && backlog > b->backlog_max) b->backlog_max = backlog;
  b->in_send = 0;
}

static void on_done(void *user, const ss_call_result *r) {
  slot *s = user;
  bench *b = s->b;
  uint64_t now = uv_hrtime();
  b->inflight--;
  s->busy = 0;
  /* Never processed (a GOAWAY's refused streams): send it again, not an error. t0 stays. */
  if (r->refused && b->phase != PH_IDLE && s->resends < 8 && issue(b, s) == 0) {
    s->resends++;
    b->refused_resent++;
    return;
  }
  s->resends = 0;
  if (b->phase == PH_MEASURE) account(b, s, r, now);
  if (b->sess_prefill > 0) { /* next step of this session, or a new one after the end / a failure */
    if (r->grpc_status == SS_GRPC_OK && s->sess_step < b->sess_reset)
      s->sess_step++;
    else
      s->sess_step = 0;
  }
  if (b->open) {
    slot_release(b, s);
    if (b->sent < b->due_total || b->inflight + 1 >= (uint64_t)b->max_inflight)
      open_send_due(b, now); /* a freed slot or a due call: send without waiting for the tick */
  } else if (b->phase == PH_WARMUP || b->phase == PH_MEASURE) {
    s->t0 = now;
    /* UNAVAILABLE (connection lost or refused): retry on the next tick, not in a hot loop */
    if (r->grpc_status == SS_GRPC_UNAVAILABLE || issue(b, s) < 0) {
      s->next_free = b->parked;
      b->parked = s;
    }
  }
  if (b->phase == PH_DRAIN) level_maybe_finished(b);
}

/* ------------------------------------------------------------------ levels ----- */

static void progress_clear(bench *b) {
  if (b->progress) fprintf(stderr, "\r\033[K");
}

static void progress_show(bench *b, uint64_t now) {
  if (!b->progress || now - b->last_progress_ns < 500000000ull) return;
  double dt = (double)(now - b->last_progress_ns) / 1e9;
  double qps = b->last_progress_ns ? (double)(b->ok - b->last_ok) / dt : 0;
  b->last_progress_ns = now;
  b->last_ok = b->ok;
  uint64_t err = 0;
  for (int k = 0; k < N_ERRKINDS; k++) err += b->errs[k];
  double t = (double)(now - b->t_level0) / 1e9;
  const char *ph = b->phase == PH_WARMUP ? "warmup" : b->phase == PH_MEASURE ? "measure" : "drain";
  if (b->open)
    fprintf(
        stderr,
        "\r\033[K  rate %.0f/s %s %.1f/%.1fs ok %llu err %llu ~%.0f/s in flight %llu backlog %llu",
        b->rate, ph, t, b->warmup_s + b->duration_s, (unsigned long long)b->ok,
        (unsigned long long)err, b->phase == PH_MEASURE ? qps : 0, (unsigned long long)b->inflight,
        (unsigned long long)(b->due_total - b->sent));
  else
    fprintf(stderr, "\r\033[K  N=%ld %s %.1f/%.1fs ok %llu err %llu ~%.0f/s", b->n_level, ph, t,
            b->warmup_s + b->duration_s, (unsigned long long)b->ok, (unsigned long long)err,
            b->phase == PH_MEASURE ? qps : 0);
  fflush(stderr);
}

static void on_tick(uv_timer_t *t) {
  bench *b = t->data;
  uint64_t now = uv_hrtime();
  if (b->phase == PH_MEASURE && b->server_pid > 0) {
    int n = proc_threads(b->server_pid);
    if (n > b->thr_max) b->thr_max = n;
  }
  conn_reap(b, 0);
  /* retry parked closed-loop slots (their start failed: connection lost) */
  if (!b->open && (b->phase == PH_WARMUP || b->phase == PH_MEASURE)) {
    slot *p = b->parked;
    b->parked = NULL;
    while (p) {
      slot *nx = p->next_free;
      p->t0 = now;
      if (issue(b, p) < 0) {
        p->next_free = b->parked;
        b->parked = p;
      }
      p = nx;
    }
  }
  progress_show(b, now);
}

static void on_send_timer(uv_timer_t *t) {
  bench *b = t->data;
  open_send_due(b, uv_hrtime());
}

static void level_maybe_finished(bench *b) {
  if (b->phase != PH_DRAIN || b->level_done) return;
  if (b->inflight == 0) {
    b->level_done = 1;
    uv_timer_stop(&b->phase_timer);
    uv_stop(&b->loop);
  }
}

static void on_drain_timeout(uv_timer_t *t) {
  bench *b = t->data;
  fprintf(stderr,
          "splitserve-bench: %llu calls still in flight after the drain timeout; "
          "closing their connections\n",
          (unsigned long long)b->inflight);
  for (int i = 0; i < b->n_conns; i++) conn_drop_how(b, i, 1);
  conn_reap(b, 1);
  level_maybe_finished(b);
}

static void start_drain(bench *b) {
  b->t_meas1 = uv_hrtime();
  b->phase = PH_DRAIN;
  uv_timer_stop(&b->send_timer);
  b->parked = NULL;
  double tmo = 10 + (b->timeout_s > 0 ? b->timeout_s : 0);
  uv_timer_start(&b->phase_timer, on_drain_timeout, (uint64_t)(tmo * 1000), 0);
  level_maybe_finished(b);
}

static void start_measure(bench *b) {
  b->phase = PH_MEASURE;
  b->ok = 0;
  b->bytes_sent = b->bytes_recv = b->n_steps = 0;
  b->pf_bytes_sent = b->pf_bytes_recv = b->n_prefills = b->prefill_ns = 0;
  memset(b->errs, 0, sizeof b->errs);
  memset(b->errmsg, 0, sizeof b->errmsg);
  ss_hist_reset(&b->hist);
  b->backlog_max = 0;
  b->thr_max = b->server_pid > 0 ? proc_threads(b->server_pid) : -1;
  b->srv_cpu0 = b->server_pid > 0 ? proc_cpu_s(b->server_pid, b->clk_tck) : -1;
  b->cli_cpu0 = self_cpu_s();
  b->t_meas0 = uv_hrtime();
  b->last_ok = 0;
  b->last_progress_ns = b->t_meas0;
}

static void on_phase(uv_timer_t *t) {
  bench *b = t->data;
  if (b->phase == PH_WARMUP) {
    start_measure(b);
    uv_timer_start(&b->phase_timer, on_phase, (uint64_t)(b->duration_s * 1000), 0);
  } else if (b->phase == PH_MEASURE) {
    if (b->open) open_send_due(b, uv_hrtime()); /* count the backlog at the window's end */
    start_drain(b);
  }
}

static void on_sigint(uv_signal_t *h, int signum) {
  (void)signum;
  bench *b = h->data;
  if (b->interrupted) exit(130);
  b->interrupted = 1;
  progress_clear(b);
  fprintf(stderr, "splitserve-bench: interrupted; finishing this level (again to quit)\n");
  if (b->phase == PH_WARMUP) start_measure(b);
  if (b->phase == PH_MEASURE) start_drain(b);
}

static void run_level(bench *b, int li, level_result *res) {
  memset(res, 0, sizeof *res);
  b->open = b->rates[li] > 0;
  b->n_level = b->open ? 0 : b->levels[li];
  b->rate = b->open ? b->rates[li] : 0;
  b->inflight = b->peak_inflight = 0;
  b->sent = b->due_total = 0;
  b->level_done = 0;
  b->parked = NULL;
  b->last_progress_ns = 0;
  b->rr = 0;
  b->ok = 0;
  memset(b->errs, 0, sizeof b->errs);
  b->t_level0 = uv_hrtime();
  b->phase = PH_WARMUP;
  if (b->warmup_s <= 0) start_measure(b);
  uv_timer_start(&b->phase_timer, on_phase,
                 (uint64_t)((b->phase == PH_WARMUP ? b->warmup_s : b->duration_s) * 1000), 0);
  uv_timer_start(&b->tick, on_tick, 100, 100);

  if (b->open) {
    b->use_conns = b->opt_conns > 0 ? b->opt_conns : 1;
    for (int i = 0; i < b->use_conns; i++) conn_get(b, i);
    uv_timer_start(&b->send_timer, on_send_timer, 1, 1);
    open_send_due(b, uv_hrtime());
  } else {
    long n = b->n_level;
    int k = b->opt_conns > 0 ? b->opt_conns : (int)((n + STREAMS_PER_CONN - 1) / STREAMS_PER_CONN);
    if (k < 1) k = 1;
    if (k > n) k = (int)n;
    b->use_conns = k;
    if (n > b->n_closed_slots) {
      free(b->closed_slots);
      b->closed_slots = calloc((size_t)n, sizeof *b->closed_slots);
      if (!b->closed_slots) die("out of memory");
      b->n_closed_slots = n;
    }
    for (long i = 0; i < n; i++) {
      slot *s = &b->closed_slots[i];
      memset(s, 0, sizeof *s);
      s->b = b;
      s->conn = (int)(i % k);
    }
    for (long i = 0; i < n && b->phase != PH_DRAIN; i++) {
      slot *s = &b->closed_slots[i];
      s->t0 = uv_hrtime();
      if (issue(b, s) < 0) {
        s->next_free = b->parked;
        b->parked = s;
      }
    }
  }
  if (!b->level_done) uv_run(&b->loop, UV_RUN_DEFAULT);
  uv_timer_stop(&b->tick);
  uv_timer_stop(&b->send_timer);
  uv_timer_stop(&b->phase_timer);
  progress_clear(b);

  double win = (double)(b->t_meas1 - b->t_meas0) / 1e9;
  if (win <= 0) win = 1e-9;
  res->open = b->open;
  res->target_rate = b->rate;
  res->concurrency = b->open ? (long)b->peak_inflight : b->n_level;
  res->connections = b->use_conns;
  res->window_s = win;
  res->ok = b->ok;
  memcpy(res->errs, b->errs, sizeof res->errs);
  for (int k = 0; k < N_ERRKINDS; k++) res->errors += b->errs[k];
  res->qps = (double)b->ok / win;
  res->mean_ms = ss_hist_mean(&b->hist) / 1e6;
  res->min_ms = (double)ss_hist_percentile(&b->hist, 0) / 1e6;
  res->p50_ms = (double)ss_hist_percentile(&b->hist, 50) / 1e6;
  res->p90_ms = (double)ss_hist_percentile(&b->hist, 90) / 1e6;
  res->p99_ms = (double)ss_hist_percentile(&b->hist, 99) / 1e6;
  res->max_ms = (double)ss_hist_percentile(&b->hist, 100) / 1e6;
  res->cli_cpu_s = self_cpu_s() - b->cli_cpu0;
  res->threads = b->thr_max;
  res->srv_cpu_s = -1;
  res->srv_cpu_per_1k = -1;
  if (b->server_pid > 0 && b->srv_cpu0 >= 0) {
    double c1 = proc_cpu_s(b->server_pid, b->clk_tck);
    if (c1 >= 0) {
      res->srv_cpu_s = c1 - b->srv_cpu0;
      uint64_t n = res->ok + res->errors;
      res->srv_cpu_per_1k = n ? res->srv_cpu_s / (double)n * 1000 : 0;
    }
  }
  res->prefills = b->n_prefills;
  res->prefill_bytes =
      b->n_prefills ? (double)(b->pf_bytes_sent + b->pf_bytes_recv) / (double)b->n_prefills : 0;
  res->prefill_mean_ms = b->n_prefills ? (double)b->prefill_ns / (double)b->n_prefills / 1e6 : 0;
  if (b->n_steps) { /* per counted call; with sessions the prefills' bytes are spread over the steps
                     */
    double n = (double)b->n_steps;
    res->req_bytes = (double)b->bytes_sent / n;
    res->resp_bytes = (double)b->bytes_recv / n;
    res->bytes_per_call =
        (double)(b->bytes_sent + b->bytes_recv + b->pf_bytes_sent + b->pf_bytes_recv) / n;
  }
  res->sent = b->sent;
  res->backlog_max = b->backlog_max;
  res->backlog_end = b->due_total - b->sent;
  if (b->open) {
    double achieved = (double)(res->ok + res->errors) / win;
    res->saturated = achieved < 0.95 * b->rate || res->backlog_end > 0;
  }
  b->phase = PH_IDLE;
}

/* ------------------------------------------------------------------ reports ---- */

static void print_level(bench *b, const level_result *r) {
  const char *lb = b->label ? b->label : "";
  printf("%s%s", lb, *lb ? ": " : "");
  if (r->open)
    printf("rate %.0f/s (open loop), peak in flight %ld, %d connections, %.2f s\n", r->target_rate,
           r->concurrency, r->connections, r->window_s);
  else
    printf("%ld in flight (closed loop), %d connections, %.2f s\n", r->concurrency, r->connections,
           r->window_s);
  printf("  requests %llu  ok %llu  errors %llu", (unsigned long long)(r->ok + r->errors),
         (unsigned long long)r->ok, (unsigned long long)r->errors);
  for (int k = 0; k < N_ERRKINDS; k++)
    if (r->errs[k]) printf("  %s=%llu", errkind_name(k), (unsigned long long)r->errs[k]);
  printf("  QPS %.1f\n", r->qps);
  for (int k = 0; k < N_ERRKINDS; k++)
    if (r->errs[k] && b->errmsg[k][0]) printf("  first %s: %s\n", errkind_name(k), b->errmsg[k]);
  printf("  latency ms: mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", r->mean_ms, r->p50_ms,
         r->p90_ms, r->p99_ms, r->max_ms);
  if (b->sess_prefill > 0) {
    printf(
        "  session steps (the calls above): request %.0f B, response %.0f B (mean); "
        "prefills (counted apart) %llu, mean %.3f ms, %.0f B each\n",
        r->req_bytes, r->resp_bytes, (unsigned long long)r->prefills, r->prefill_mean_ms,
        r->prefill_bytes);
    printf("  bytes per step (sent + received, prefills included): %.0f\n", r->bytes_per_call);
  } else {
    printf("  bytes per call: request %.0f, response %.0f (mean), sent + received %.0f\n",
           r->req_bytes, r->resp_bytes, r->bytes_per_call);
  }
  if (r->threads >= 0 || r->srv_cpu_s >= 0)
    printf(
        "  server: threads %d (max sampled), cpu %.3f s = %.4f s per 1000 requests (%.1f us/req)\n",
        r->threads, r->srv_cpu_s, r->srv_cpu_per_1k, r->srv_cpu_per_1k * 1000);
  printf("  client cpu %.3f s (%.0f%% of one core)%s\n", r->cli_cpu_s,
         r->cli_cpu_s / r->window_s * 100,
         r->cli_cpu_s / r->window_s > 0.9 ? "  <- the load generator may be the bottleneck" : "");
  if (r->open) {
    double achieved = (double)(r->ok + r->errors) / r->window_s;
    printf("  achieved %.1f/s of %.0f/s (%.1f%%), backlog max %llu, at end %llu%s\n", achieved,
           r->target_rate, achieved / r->target_rate * 100, (unsigned long long)r->backlog_max,
           (unsigned long long)r->backlog_end, r->saturated ? "  -> CANNOT KEEP UP" : "");
    printf("%.0f rate. Latency: %.4f, QPS: %.4f\n", r->target_rate, r->mean_ms / 1e3, r->qps);
  } else {
    printf("%ld concurrent. Latency: %.4f, QPS: %.4f\n", r->concurrency, r->mean_ms / 1e3, r->qps);
  }
  fflush(stdout);
}

static void write_csv(bench *b, const level_result *r) {
  FILE *f = fopen(b->csv_path, "a");
  if (!f) {
    fprintf(stderr, "splitserve-bench: cannot open %s: %s\n", b->csv_path, strerror(errno));
    return;
  }
  fseek(f, 0, SEEK_END);
  if (ftell(f) == 0)
    fprintf(f,
            "label,concurrency,requests,errors,qps,mean_ms,p50_ms,p90_ms,p99_ms,max_ms,threads,"
            "cpu_s_per_1k,bytes_per_call\n");
  char thr[32] = "", cpu[32] = "";
  if (r->threads >= 0) snprintf(thr, sizeof thr, "%d", r->threads);
  if (r->srv_cpu_per_1k >= 0) snprintf(cpu, sizeof cpu, "%.5f", r->srv_cpu_per_1k);
  /* The label is quoted (RFC 4180): it may hold commas. */
  fputc('"', f);
  for (const char *p = b->label ? b->label : ""; *p; p++) {
    if (*p == '"') fputc('"', f);
    fputc(*p, f);
  }
  fputc('"', f);
  fprintf(f, ",%ld,%llu,%llu,%.2f,%.4f,%.4f,%.4f,%.4f,%.4f,%s,%s,%.0f\n", r->concurrency,
          (unsigned long long)(r->ok + r->errors), (unsigned long long)r->errors, r->qps,
          r->mean_ms, r->p50_ms, r->p90_ms, r->p99_ms, r->max_ms, thr, cpu, r->bytes_per_call);
  fclose(f);
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* One JSON object per line (JSON Lines), appended. */
static void write_json(bench *b, const level_result *r) {
  FILE *f = fopen(b->json_path, "a");
  if (!f) {
    fprintf(stderr, "splitserve-bench: cannot open %s: %s\n", b->json_path, strerror(errno));
    return;
  }
  char shp[128];
  ss_shape_str(b->shape, b->ndim, shp, sizeof shp);
  fprintf(f, "{\"label\":");
  json_str(f, b->label ? b->label : "");
  fprintf(f, ",\"mode\":\"%s\",\"model\":", r->open ? "open" : "closed");
  json_str(f, b->model ? b->model : "");
  fprintf(f, ",\"shape\":\"%s\",\"dtype\":\"%s\"", shp, ss_dtype_name(b->dtype));
  if (r->open) fprintf(f, ",\"target_rate\":%.3f", r->target_rate);
  fprintf(f,
          ",\"concurrency\":%ld,\"connections\":%d,\"window_s\":%.4f,\"requests\":%llu,"
          "\"ok\":%llu,\"errors\":%llu,\"errors_by_status\":{",
          r->concurrency, r->connections, r->window_s, (unsigned long long)(r->ok + r->errors),
          (unsigned long long)r->ok, (unsigned long long)r->errors);
  int first = 1;
  for (int k = 0; k < N_ERRKINDS; k++)
    if (r->errs[k]) {
      fprintf(f, "%s\"%s\":%llu", first ? "" : ",", errkind_name(k),
              (unsigned long long)r->errs[k]);
      first = 0;
    }
  fprintf(f,
          "},\"qps\":%.3f,\"latency_ms\":{\"mean\":%.4f,\"min\":%.4f,\"p50\":%.4f,\"p90\":%.4f,"
          "\"p99\":%.4f,\"max\":%.4f}",
          r->qps, r->mean_ms, r->min_ms, r->p50_ms, r->p90_ms, r->p99_ms, r->max_ms);
  if (r->threads >= 0) fprintf(f, ",\"server_threads\":%d", r->threads);
  if (r->srv_cpu_s >= 0)
    fprintf(f, ",\"server_cpu_s\":%.4f,\"server_cpu_s_per_1k\":%.5f", r->srv_cpu_s,
            r->srv_cpu_per_1k);
  fprintf(f, ",\"client_cpu_s\":%.4f", r->cli_cpu_s);
  fprintf(f, ",\"request_bytes\":%.1f,\"response_bytes_mean\":%.1f,\"bytes_per_call\":%.1f",
          r->req_bytes, r->resp_bytes, r->bytes_per_call);
  if (b->kv_past > 0)
    fprintf(f, ",\"past\":%ld,\"kv_layers\":%d,\"kv_heads\":%d,\"kv_head_dim\":%d", b->kv_past,
            b->kv_layers, b->kv_heads, b->kv_head_dim);
  if (b->use_cache) fprintf(f, ",\"use_cache\":true");
  if (b->sess_prefill > 0)
    fprintf(f,
            ",\"session_prefill\":%ld,\"session_reset\":%ld,\"prefills\":%llu,"
            "\"prefill_mean_ms\":%.4f,\"prefill_bytes\":%.1f",
            b->sess_prefill, b->sess_reset, (unsigned long long)r->prefills, r->prefill_mean_ms,
            r->prefill_bytes);
  if (r->open)
    fprintf(f, ",\"backlog_max\":%llu,\"backlog_end\":%llu,\"saturated\":%s",
            (unsigned long long)r->backlog_max, (unsigned long long)r->backlog_end,
            r->saturated ? "true" : "false");
  fprintf(f, "}\n");
  fclose(f);
}

/* ------------------------------------------------------------------ options ---- */

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: splitserve-bench [options]\n"
      "\n"
      "Load generator for splitlearn.comm.ComputeService/Compute (one process, one thread).\n"
      "\n"
      "target and workload:\n"
      "  --addr HOST:PORT        server (default 127.0.0.1:50051; numeric IPv4, [IPv6], "
      "localhost)\n"
      "  --tls-ca FILE           TLS: verify the server against this PEM CA (every connection)\n"
      "  --token TOKEN           send 'authorization: Bearer TOKEN' with every call (servers with\n"
      "                          --auth-tokens); other users may see a command line: prefer\n"
      "                          --token-file\n"
      "  --token-file FILE       the same, the token read from FILE's first line (its newline\n"
      "                          stripped)\n"
      "  --model ID              model_id (default: the server's default model)\n"
      "  --shape 1,10,768        input shape (default 1)\n"
      "  --dtype T               float32 | float16 | bfloat16 (default float32; sent as metadata "
      "dtype)\n"
      "  --metadata K=V          request metadata (repeatable), e.g. ms=100\n"
      "  --expect-shape 1,10     expected output shape (default: the input shape)\n"
      "  --timeout S             per-call deadline sent as grpc-timeout (default none)\n"
      "KV cache (wire contract: past_key_values / use_cache / present_key_values):\n"
      "  --past N                attach random float32 past_key_values [batch, H, N, D] x L to\n"
      "                          every request (batch = --shape[0])\n"
      "  --kv-layers L           cache entries (default 8: the GPT-2 trunk 2..10)\n"
      "  --kv-heads H            heads (default 12)\n"
      "  --kv-head-dim D         head size (default 64)\n"
      "  --use-cache             use_cache=true: the response carries present_key_values (not\n"
      "                          shape-checked, counted in the response bytes)\n"
      "  --session-decode P      server-side decode sessions (closed loop): each slot sends a\n"
      "                          prefill [batch, P, width] with metadata session=ID, then "
      "one-token\n"
      "                          steps (--shape must be [batch, 1, width]); steps are measured,\n"
      "                          prefills counted apart; bytes per step include the prefills\n"
      "  --session-reset N       steps per session; the N-th sends session_end=1 (default 128)\n"
      "load:\n"
      "  --concurrency LIST      closed loop: calls in flight per level, e.g. 1,2,4,...,512,4096\n"
      "                          ('...' continues the ratio of the two numbers before it)\n"
      "                          (default 1,2,4,...,512)\n"
      "  --rate LIST             open loop instead: requests/s per level at a fixed schedule;\n"
      "                          latency counts from the intended send time\n"
      "  --connections K         HTTP/2 connections (default: ceil(N/100) in closed loop; in open\n"
      "                          loop one more whenever all carry 100 calls)\n"
      "  --max-inflight M        open loop: cap on calls in flight (default 100000); due calls\n"
      "                          beyond it wait as backlog\n"
      "  --duration S            measured seconds per level (default 5)\n"
      "  --warmup S              unmeasured seconds before each level (default 1)\n"
      "report:\n"
      "  --server-pid P          sample the server's threads and CPU time from /proc/P\n"
      "  --label NAME            label for the report, CSV and JSON rows\n"
      "  --csv FILE              append one row per level (header when the file is new):\n"
      "                          label,concurrency,requests,errors,qps,mean_ms,p50_ms,p90_ms,\n"
      "                          p99_ms,max_ms,threads,cpu_s_per_1k,bytes_per_call (open loop:\n"
      "                          concurrency = peak in flight; threads/cpu empty without\n"
      "                          --server-pid; bytes_per_call = request + response message bytes,\n"
      "                          with sessions all bytes per step)\n"
      "  --json FILE             append one JSON object per level (JSON Lines)\n"
      "  --no-progress           no progress line (default: shown when stderr is a terminal)\n"
      "  --fail-on-error         exit 1 when any call failed\n"
      "\n"
      "Each level prints requests, errors by gRPC status (BAD_SHAPE / BAD_RESPONSE: an OK reply\n"
      "failing the shape check), QPS (OK calls per second), latency from a histogram (errors\n"
      "excluded), the server's threads and CPU per 1000 requests, the generator's own CPU, and a\n"
      "line in the seeds' form: 'N concurrent. Latency: <mean s>, QPS: <qps>'.\n");
}

static int parse_shape(const char *s, int64_t *out, int *ndim) {
  int n = 0;
  const char *p = s;
  while (*p) {
    if (n >= SS_MAX_DIMS) return -1;
    char *e;
    errno = 0;
    long long v = strtoll(p, &e, 10);
    if (e == p || errno || v < 0 || v > INT32_MAX) return -1;
    out[n++] = v;
    if (*e == ',')
      e++;
    else if (*e)
      return -1;
    p = e;
  }
  if (n == 0) return -1;
  *ndim = n;
  return 0;
}

/* "1,2,4,...,512" -> 1 2 4 8 ... 512. Values as doubles (rates may be fractional). */
static int parse_list(const char *s, double *out, int max) {
  int n = 0, pending_dots = 0;
  char *dup = strdup(s), *save = NULL;
  if (!dup) return -1;
  for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (strcmp(t, "...") == 0) {
      if (n < 2 || pending_dots) goto bad;
      pending_dots = 1;
      continue;
    }
    char *e;
    double v = strtod(t, &e);
    if (e == t || *e || !(v > 0)) goto bad;
    if (pending_dots) {
      double a = out[n - 2], b = out[n - 1];
      if (b > a) {
        double ratio = b / a, x = b * ratio;
        while (x < v * (1 - 1e-9)) {
          if (n >= max) goto bad;
          out[n++] = round(x);
          x *= ratio;
        }
      }
      pending_dots = 0;
    }
    if (n >= max) goto bad;
    out[n++] = v;
  }
  free(dup);
  return pending_dots ? -1 : n;
bad:
  free(dup);
  return -1;
}

static void parse_addr(bench *b, const char *a) {
  const char *colon = strrchr(a, ':');
  if (!colon || colon == a) die("--addr wants HOST:PORT, got '%s'", a);
  size_t hl = (size_t)(colon - a);
  if (hl >= sizeof b->host) die("--addr host too long");
  memcpy(b->host, a, hl);
  b->host[hl] = '\0';
  char *e;
  long p = strtol(colon + 1, &e, 10);
  if (*e || p <= 0 || p > 65535) die("bad port in --addr '%s'", a);
  b->port = (int)p;
}

static double parse_pos(const char *opt, const char *v, int allow_zero) {
  char *e;
  double x = strtod(v, &e);
  if (e == v || *e || x < 0 || (!allow_zero && x == 0) || !isfinite(x))
    die("%s wants a %s number, got '%s'", opt, allow_zero ? "non-negative" : "positive", v);
  return x;
}

static void parse_args(bench *b, int argc, char **argv) {
  snprintf(b->host, sizeof b->host, "127.0.0.1");
  b->port = 50051;
  b->shape[0] = 1;
  b->ndim = 1;
  b->dtype = SS_DTYPE_F32;
  b->duration_s = 5;
  b->warmup_s = 1;
  b->max_inflight = 100000;
  b->progress = isatty(2);
  const char *conc = "1,2,4,...,512", *rate = NULL;
  char *token_arg = NULL;
  const char *token_file = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                         \
  do {                                  \
    if (!v) die("%s needs a value", a); \
    i++;                                \
  } while (0)
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      exit(0);
    } else if (!strcmp(a, "--addr")) {
      NEEDV();
      parse_addr(b, v);
    } else if (!strcmp(a, "--tls-ca")) {
      NEEDV();
      b->tls.ca_file = v;
      b->use_tls = 1;
    } else if (!strcmp(a, "--token")) {
      NEEDV();
      token_arg = argv[i];
    } else if (!strcmp(a, "--token-file")) {
      NEEDV();
      token_file = v;
    } else if (!strcmp(a, "--model")) {
      NEEDV();
      b->model = v;
    } else if (!strcmp(a, "--shape")) {
      NEEDV();
      if (parse_shape(v, b->shape, &b->ndim)) die("bad --shape '%s'", v);
    } else if (!strcmp(a, "--expect-shape")) {
      NEEDV();
      if (parse_shape(v, b->expect, &b->expect_ndim)) die("bad --expect-shape '%s'", v);
    } else if (!strcmp(a, "--dtype")) {
      NEEDV();
      if (ss_dtype_parse(v, &b->dtype)) die("bad --dtype '%s'", v);
    } else if (!strcmp(a, "--metadata")) {
      NEEDV();
      const char *eq = strchr(v, '=');
      if (!eq || eq == v) die("--metadata wants K=V, got '%s'", v);
      if (b->n_meta >= MAX_META) die("too many --metadata");
      b->meta[2 * b->n_meta] = strndup(v, (size_t)(eq - v));
      b->meta[2 * b->n_meta + 1] = eq + 1;
      b->n_meta++;
    } else if (!strcmp(a, "--timeout")) {
      NEEDV();
      b->timeout_s = parse_pos(a, v, 1);
    } else if (!strcmp(a, "--concurrency") || !strcmp(a, "-c")) {
      NEEDV();
      conc = v;
    } else if (!strcmp(a, "--rate")) {
      NEEDV();
      rate = v;
    } else if (!strcmp(a, "--connections")) {
      NEEDV();
      b->opt_conns = (int)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--max-inflight")) {
      NEEDV();
      b->max_inflight = (long)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--duration")) {
      NEEDV();
      b->duration_s = parse_pos(a, v, 0);
    } else if (!strcmp(a, "--warmup")) {
      NEEDV();
      b->warmup_s = parse_pos(a, v, 1);
    } else if (!strcmp(a, "--server-pid")) {
      NEEDV();
      b->server_pid = (int)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--label")) {
      NEEDV();
      b->label = v;
    } else if (!strcmp(a, "--csv")) {
      NEEDV();
      b->csv_path = v;
    } else if (!strcmp(a, "--json")) {
      NEEDV();
      b->json_path = v;
    } else if (!strcmp(a, "--past")) {
      NEEDV();
      b->kv_past = (long)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--kv-layers")) {
      NEEDV();
      b->kv_layers = (int)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--kv-heads")) {
      NEEDV();
      b->kv_heads = (int)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--kv-head-dim")) {
      NEEDV();
      b->kv_head_dim = (int)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--use-cache")) {
      b->use_cache = 1;
    } else if (!strcmp(a, "--session-decode")) {
      NEEDV();
      b->sess_prefill = (long)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--session-reset")) {
      NEEDV();
      b->sess_reset = (long)parse_pos(a, v, 0);
    } else if (!strcmp(a, "--no-progress")) {
      b->progress = 0;
    } else if (!strcmp(a, "--progress")) {
      b->progress = 1;
    } else if (!strcmp(a, "--fail-on-error")) {
      b->fail_on_error = 1;
    } else {
      usage(stderr);
      die("unknown option '%s'", a);
    }
#undef NEEDV
  }
  char terr[256];
  int trv = tool_token_header(token_arg, token_file, b->auth, sizeof b->auth, terr, sizeof terr);
  if (token_arg) tool_token_wipe(token_arg, strlen(token_arg)); /* out of ps and /proc */
  if (trv != 0) die("%s", terr);
  double vals[MAX_LEVELS];
  int n = parse_list(rate ? rate : conc, vals, MAX_LEVELS);
  if (n <= 0) die("bad %s list '%s'", rate ? "--rate" : "--concurrency", rate ? rate : conc);
  b->n_levels = n;
  for (int i = 0; i < n; i++) {
    if (rate)
      b->rates[i] = vals[i];
    else {
      if (vals[i] != floor(vals[i]) || vals[i] > 10000000) die("bad concurrency %g", vals[i]);
      b->levels[i] = (long)vals[i];
    }
  }
  if (b->expect_ndim == 0) {
    memcpy(b->expect, b->shape, sizeof b->shape);
    b->expect_ndim = b->ndim;
  }
  if (b->kv_layers == 0) b->kv_layers = 8;
  if (b->kv_heads == 0) b->kv_heads = 12;
  if (b->kv_head_dim == 0) b->kv_head_dim = 64;
  if (b->sess_reset == 0) b->sess_reset = 128;
  if (b->kv_past > 0 && b->kv_past > INT32_MAX) die("--past too large");
  if (b->sess_prefill > 0) {
    if (rate) die("--session-decode needs the closed loop (--concurrency), not --rate");
    if (b->kv_past > 0) die("--session-decode keeps the cache on the server: no --past");
    if (b->ndim < 2 || b->shape[1] != 1 || b->expect_ndim < 2)
      die("--session-decode: --shape must be [batch, 1, width] (one token per step)");
    if (b->sess_prefill > INT32_MAX) die("--session-decode too large");
    for (size_t i = 0; i < b->n_meta; i++)
      if (!strcmp(b->meta[2 * i], "session") || !strcmp(b->meta[2 * i], "session_end"))
        die("--session-decode sets metadata session itself");
  }
  if (b->server_pid > 0 && proc_threads(b->server_pid) < 0)
    die("--server-pid %d: cannot read /proc/%d/status", b->server_pid, b->server_pid);
}

/* Pseudo-random values in [-1, 1) (xorshift64, continuing from *x). */
static void fill_random(float *f, size_t n, uint64_t *x) {
  for (size_t i = 0; i < n; i++) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    f[i] = (float)((double)(*x >> 11) / 9007199254740992.0 * 2 - 1);
  }
}

/* Encode a ComputeRequest: pseudo-random input of shape (ndim dims) in b->dtype, the metadata,
 * and (with --past) the random past_key_values and use_cache. Returns the malloc'd message. */
static uint8_t *encode_request(bench *b, const int64_t *shp, int ndim, int with_past, size_t *len) {
  size_t numel = 1;
  for (int i = 0; i < ndim; i++) numel *= (size_t)shp[i];
  size_t es = ss_dtype_size(b->dtype);
  size_t nbytes = numel * es;
  float *f = malloc((numel ? numel : 1) * sizeof *f);
  void *data = malloc(nbytes ? nbytes : 1);
  if (!f || !data) die("out of memory for a %zu-element input", numel);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  fill_random(f, numel, &x);
  ss_from_f32(b->dtype, f, data, numel);
  free(f);

  Splitlearn__Comm__ComputeRequest req = SPLITLEARN__COMM__COMPUTE_REQUEST__INIT;
  int32_t shape[SS_MAX_DIMS];
  for (int i = 0; i < ndim; i++) shape[i] = (int32_t)shp[i];
  req.has_data = 1;
  req.data.data = data;
  req.data.len = nbytes;
  req.n_shape = (size_t)ndim;
  req.shape = shape;
  req.model_id = (char *)(b->model ? b->model : "");
  int add_dtype = b->dtype != SS_DTYPE_F32;
  for (size_t i = 0; i < b->n_meta; i++)
    if (!strcmp(b->meta[2 * i], "dtype")) add_dtype = 0;
  size_t nm = b->n_meta + (size_t)add_dtype;
  Splitlearn__Comm__ComputeRequest__MetadataEntry ents[MAX_META + 1], *eptr[MAX_META + 1];
  for (size_t i = 0; i < nm; i++) {
    Splitlearn__Comm__ComputeRequest__MetadataEntry init =
        SPLITLEARN__COMM__COMPUTE_REQUEST__METADATA_ENTRY__INIT;
    ents[i] = init;
    ents[i].key = (char *)(i < b->n_meta ? b->meta[2 * i] : "dtype");
    ents[i].value = (char *)(i < b->n_meta ? b->meta[2 * i + 1] : ss_dtype_name(b->dtype));
    eptr[i] = &ents[i];
  }
  req.n_metadata = nm;
  req.metadata = eptr;
  if (b->use_cache) {
    req.has_use_cache = 1;
    req.use_cache = 1;
  }
  /* past_key_values: L entries [batch, H, past, D] float32, keys and values random (one buffer
   * per layer and kind: the sizes are what matters, not the values) */
  Splitlearn__Comm__KVCacheEntry *kv = NULL, **kvp = NULL;
  float **kvbuf = NULL;
  int32_t kshape[4] = {(int32_t)shp[0], b->kv_heads, (int32_t)b->kv_past, b->kv_head_dim};
  int L = with_past && b->kv_past > 0 ? b->kv_layers : 0;
  if (L > 0) {
    size_t kn = (size_t)shp[0] * (size_t)b->kv_heads * (size_t)b->kv_past * (size_t)b->kv_head_dim;
    kv = calloc((size_t)L, sizeof *kv);
    kvp = calloc((size_t)L, sizeof *kvp);
    kvbuf = calloc(2 * (size_t)L, sizeof *kvbuf);
    if (!kv || !kvp || !kvbuf) die("out of memory");
    for (int l = 0; l < L; l++) {
      splitlearn__comm__kvcache_entry__init(&kv[l]);
      for (int j = 0; j < 2; j++) {
        kvbuf[2 * l + j] = malloc((kn ? kn : 1) * sizeof(float));
        if (!kvbuf[2 * l + j]) die("out of memory for a %zu-element cache", kn);
        fill_random(kvbuf[2 * l + j], kn, &x);
      }
      kv[l].has_key_data = kv[l].has_value_data = 1;
      kv[l].key_data = (ProtobufCBinaryData){kn * sizeof(float), (uint8_t *)kvbuf[2 * l]};
      kv[l].value_data = (ProtobufCBinaryData){kn * sizeof(float), (uint8_t *)kvbuf[2 * l + 1]};
      kv[l].n_key_shape = kv[l].n_value_shape = 4;
      kv[l].key_shape = kv[l].value_shape = kshape;
      kvp[l] = &kv[l];
    }
    req.n_past_key_values = (size_t)L;
    req.past_key_values = kvp;
  }
  *len = splitlearn__comm__compute_request__get_packed_size(&req);
  uint8_t *msg = malloc(*len ? *len : 1);
  if (!msg) die("out of memory");
  splitlearn__comm__compute_request__pack(&req, msg);
  free(data);
  for (int i = 0; i < 2 * L; i++) free(kvbuf[i]);
  free(kvbuf);
  free(kvp);
  free(kv);
  return msg;
}

/* Encode the request(s) once: the one every call borrows (sessions: the step) and, with
 * --session-decode, the prefill [batch, P, width...]. */
static void build_request(bench *b) {
  size_t es = ss_dtype_size(b->dtype);
  size_t out_numel = 1;
  for (int i = 0; i < b->expect_ndim; i++) out_numel *= (size_t)b->expect[i];
  b->expect_bytes = out_numel * es;
  b->req = encode_request(b, b->shape, b->ndim, 1, &b->req_len);
  if (b->sess_prefill > 0) {
    int64_t ps[SS_MAX_DIMS];
    memcpy(ps, b->shape, sizeof ps);
    ps[1] = b->sess_prefill;
    memcpy(b->prefill_shape, b->expect, sizeof b->prefill_shape);
    b->prefill_shape[1] = b->sess_prefill;
    size_t pn = 1;
    for (int i = 0; i < b->expect_ndim; i++) pn *= (size_t)b->prefill_shape[i];
    b->prefill_expect_bytes = pn * es;
    b->req_prefill = encode_request(b, ps, b->ndim, 0, &b->req_prefill_len);
  }
}

/* ------------------------------------------------------------------ probe ------ */

typedef struct probe {
  int done, status, check;
  char msg[256];
} probe;

static void on_probe(void *user, const ss_call_result *r) {
  probe *p = user;
  p->done = 1;
  p->status = r->grpc_status;
  snprintf(p->msg, sizeof p->msg, "%s", r->message ? r->message : "");
  p->check = r->grpc_status == SS_GRPC_OK ? -1 : 0;
}

typedef struct probe_ctx {
  probe p;
  bench *b;
} probe_ctx;

static void on_probe_ctx(void *user, const ss_call_result *r) {
  probe_ctx *pc = user;
  on_probe(&pc->p, r);
  if (r->grpc_status == SS_GRPC_OK) pc->p.check = check_response(pc->b, r->body, r->body_len);
}

static void on_probe_timeout(uv_timer_t *t) { *(int *)t->data = 1; }

/* One call before the sweep: the server is reachable, the model exists, the shape checks. */
static void run_probe(bench *b) {
  probe_ctx pc;
  memset(&pc, 0, sizeof pc);
  pc.b = b;
  ss_aclient *c = conn_get(b, 0);
  int rv = ss_aclient_call(c, COMPUTE_PATH, b->req, b->req_len,
                           b->timeout_s > 0 ? b->timeout_s : 30, on_probe_ctx, &pc);
  if (rv < 0) die("cannot start a call: %s", ss_strerror(rv));
  uv_timer_t t;
  int timed_out = 0;
  uv_timer_init(&b->loop, &t);
  t.data = &timed_out;
  uv_timer_start(&t, on_probe_timeout, 35000, 0);
  while (!pc.p.done && !timed_out) uv_run(&b->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&b->loop, UV_RUN_NOWAIT);
  if (!pc.p.done) die("probe call to %s:%d did not complete", b->host, b->port);
  /* Misconfiguration (no server, no such model, bad input) stops here; load-dependent
   * outcomes (deadline, admission) are only reported: they are what the sweep measures. */
  int st = pc.p.status;
  if (st == SS_GRPC_UNAVAILABLE || st == SS_GRPC_UNIMPLEMENTED || st == SS_GRPC_NOT_FOUND ||
      st == SS_GRPC_INVALID_ARGUMENT || st == SS_GRPC_UNAUTHENTICATED ||
      st == SS_GRPC_PERMISSION_DENIED || st == SS_GRPC_INTERNAL || st == SS_GRPC_UNKNOWN)
    die("probe call failed: %s: %s", ss_grpc_code_name(st), pc.p.msg);
  if (st != SS_GRPC_OK)
    fprintf(stderr, "splitserve-bench: warning: probe call: %s: %s\n", ss_grpc_code_name(st),
            pc.p.msg);
  if (pc.p.check == ST_BAD_SHAPE) {
    char e[128];
    ss_shape_str(b->expect, b->expect_ndim, e, sizeof e);
    die("probe call: the response is not shaped %s x %s (use --expect-shape)", e,
        ss_dtype_name(b->dtype));
  }
  if (pc.p.check == ST_BAD_RESPONSE) die("probe call: the response is not a ComputeResponse");
}

/* ------------------------------------------------------------------ main ------- */

int main(int argc, char **argv) {
  static bench B;
  bench *b = &B;
  signal(SIGPIPE, SIG_IGN);
#ifdef __GLIBC__
  /* Per call, ss_aclient allocates the request copy and the response (30 KB each for a
   * 1x10x768 tensor). With glibc's defaults the heap top is trimmed and regrown (and large
   * blocks mmap'd) over and over: page faults and zeroing were ~12 % of this process's CPU
   * and cost ~35 % more CPU per call. Keep freed memory for reuse instead. */
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
#endif
  parse_args(b, argc, argv);
  raise_nofile();
  b->clk_tck = sysconf(_SC_CLK_TCK);
  if (b->clk_tck <= 0) b->clk_tck = 100;
  if (ss_hist_init(&b->hist, 8, 40) != 0) die("out of memory");
  build_request(b);
  if (uv_loop_init(&b->loop) != 0) die("uv_loop_init failed");
  uv_timer_init(&b->loop, &b->tick);
  uv_timer_init(&b->loop, &b->phase_timer);
  uv_timer_init(&b->loop, &b->send_timer);
  b->tick.data = b->phase_timer.data = b->send_timer.data = b;
  uv_signal_init(&b->loop, &b->sigint);
  b->sigint.data = b;
  uv_signal_start(&b->sigint, on_sigint, SIGINT);
  uv_unref((uv_handle_t *)&b->sigint);

  run_probe(b);
  char shp[128];
  ss_shape_str(b->shape, b->ndim, shp, sizeof shp);
  fprintf(stderr,
          "splitserve-bench: %s:%d model '%s' input %s %s (%zu-byte request), %s loop, "
          "%d level(s) x (%.1f s warmup + %.1f s)\n",
          b->host, b->port, b->model ? b->model : "", shp, ss_dtype_name(b->dtype), b->req_len,
          b->rates[0] > 0 ? "open" : "closed", b->n_levels, b->warmup_s, b->duration_s);

  uint64_t total_err = 0;
  for (int li = 0; li < b->n_levels && !b->interrupted; li++) {
    level_result r;
    run_level(b, li, &r);
    total_err += r.errors;
    print_level(b, &r);
    if (b->csv_path) write_csv(b, &r);
    if (b->json_path) write_json(b, &r);
  }

  for (int i = 0; i < b->n_conns; i++) conn_drop_how(b, i, 1);
  conn_reap(b, 1);
  free(b->retired);
  if (b->refused_resent)
    fprintf(stderr,
            "splitserve-bench: %llu calls refused by the server before processing "
            "(GOAWAY / REFUSED_STREAM) were sent again on a new connection\n",
            (unsigned long long)b->refused_resent);
  uv_close((uv_handle_t *)&b->tick, NULL);
  uv_close((uv_handle_t *)&b->phase_timer, NULL);
  uv_close((uv_handle_t *)&b->send_timer, NULL);
  uv_close((uv_handle_t *)&b->sigint, NULL);
  uv_run(&b->loop, UV_RUN_DEFAULT);
  uv_loop_close(&b->loop);
  for (int i = 0; i < b->n_chunks; i++) free(b->chunks[i]);
  free(b->chunks);
  free(b->closed_slots);
  free(b->conns);
  free(b->req);
  free(b->req_prefill);
  free(b->scratch);
  ss_hist_free(&b->hist);
  for (size_t i = 0; i < b->n_meta; i++) free((void *)b->meta[2 * i]);
  tool_token_wipe(b->auth, sizeof b->auth);
  if (b->interrupted) return 130;
  return b->fail_on_error && total_err ? 1 : 0;
}
