/*
 * shard.c — I/O on several loops (--io-threads N): the server's shards, the mailboxes between
 * their loops, the connection limits they share, and the way of a call across loops.
 *
 * Threads: shard 0 is the owner's ("app") loop: it accepts connections like any shard, and it
 * alone runs handlers and hooks, so everything above the transport stays single-threaded.
 * Shards 1..N-1 each run a loop on a thread started here (N - 1 threads; the process has
 * N + W x T). Each shard listens on the same port (SO_REUSEPORT: the kernel spreads new
 * connections over the listeners) and owns its connections, HTTP/2 sessions, request framing,
 * deadlines and call cache. With N = 1 none of this runs: no mailbox, no thread, no handoff.
 *
 * Mailboxes: a list under a mutex plus a uv_async_t on the receiving loop (libuv coalesces the
 * wake-ups: under load one wake-up carries many ops). An op that holds a call holds a reference
 * to it. The ops a call has in flight at most once (dispatch, later release; cancel; its final
 * answer, with a small reply packed inline) live inside the call, so a unary call crosses loops
 * without an allocation; streamed messages and loop-wide ops are allocated. A mailbox closes with
 * its loop; a post to a closed mailbox is discarded by the poster.
 *
 * Calls across loops. A call of shard k != 0 is received on k (headers, body, checks); when its
 * request is complete, k marks it handed and posts DISPATCH to the app loop, which runs the
 * handler. From then on:
 *   - the app side owns the handler state, the hooks and its view of the outcome (app_done,
 *     app_status: ss_call_answered / ss_call_status read these); the request bytes and kept
 *     headers are frozen and read-only;
 *   - shard k owns everything of the stream (conn, output, live list, deadline, status);
 *   - the public answering functions (ss_call_reply/_send/_fail/_end) called on the app loop
 *     pack the message there and post REPLY / SEND / FAIL / END to k, which answers as it
 *     would its own call (a call k already ended, e.g. at its deadline, ignores it);
 *   - when the client goes away, the deadline passes or the drain ends a stream, k posts
 *     CANCEL: the app loop runs the cancel hook unless the call was answered already;
 *   - the reference count is atomic; the last reference runs the release hook on the app
 *     loop (k posts RELEASE when it drops the last one), after which the call object goes back
 *     to k's cache through a lock-free stack. By then k has settled the call (its stream is
 *     closed), so the final status is what the app's release hook sees.
 * Deadlines and the request body timeout stay on the loop that owns the call.
 *
 * Drain: ss_grpc_server_drain drains shard 0 and posts DRAIN to the others; each shard runs
 * the same drain (server.c) on its connections. The owner's drain_started hook runs once at
 * the start; its drained hook runs when every shard has answered its unary calls (each posts
 * DRAINED); shard 0 closes its connections and reports `closed` only after every other shard
 * has ended its loop (each posts CLOSED as its thread's last act).
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "grpc/grpc_int.h"

enum {
  /* to the app loop */
  OP_DISPATCH,
  OP_CANCEL,
  OP_RELEASE,
  OP_DRAINED,
  OP_CLOSED,
  /* to shard k's loop */
  OP_REPLY,
  OP_SEND,
  OP_FAIL,
  OP_END,
  OP_DRAIN,
  OP_TLS,
  OP_STOP
};

static ss_op *op_new(int kind, ss_call *call, int code) {
  ss_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->kind = kind;
  op->call = call;
  op->code = code;
  return op;
}

/* One of the call's own op slots (see grpc_int.h): no allocation. */
static ss_op *op_slot(ss_op *slot, int kind, ss_call *call, int code) {
  memset(slot, 0, offsetof(ss_op, small)); /* small[] is written only as far as it is used */
  slot->kind = kind;
  slot->call = call;
  slot->code = code;
  slot->embedded = 1;
  return slot;
}

static void op_free_bytes(ss_op *op) {
  if (!op->bytes_inline) free(op->bytes);
  op->bytes = NULL;
}

/* ------------------------------------------------------------------ mailboxes --- */

static void run_op(ss_grpc_server *s, ss_op *op);
static void discard_op(ss_op *op);

static void on_mbox(uv_async_t *h) {
  ss_grpc_server *s = h->data;
  uv_mutex_lock(&s->mbox.mu);
  ss_op *op = s->mbox.head;
  s->mbox.head = s->mbox.tail = NULL;
  uv_mutex_unlock(&s->mbox.mu);
  while (op) {
    ss_op *next = op->next;
    run_op(s, op);
    op = next;
  }
}

int ss_mbox_init(ss_grpc_server *s) {
  uv_mutex_init(&s->mbox.mu);
  int rv = uv_async_init(s->loop, &s->mbox.async, on_mbox);
  if (rv != 0) {
    uv_mutex_destroy(&s->mbox.mu);
    return SS_EIO;
  }
  s->mbox.async.data = s;
  s->mbox.open = 1;
  return 0;
}

/* The loop is closing: later posts are discarded by their posters; what is still queued is
 * discarded here (the threads that could post have stopped, or their posts are refused). */
void ss_mbox_close(ss_grpc_server *s) {
  if (!s->mbox.open || s->mbox.closed) return;
  uv_mutex_lock(&s->mbox.mu);
  s->mbox.closed = 1;
  ss_op *op = s->mbox.head;
  s->mbox.head = s->mbox.tail = NULL;
  uv_mutex_unlock(&s->mbox.mu);
  uv_close((uv_handle_t *)&s->mbox.async, NULL);
  while (op) {
    ss_op *next = op->next;
    discard_op(op);
    op = next;
  }
}

void ss_mbox_destroy(ss_grpc_server *s) {
  if (!s->mbox.open) return;
  s->mbox.open = 0;
  uv_mutex_destroy(&s->mbox.mu);
}

/* Post op to shard `to`; a closed mailbox: the op is discarded here. */
static void post(ss_grpc_server *to, ss_op *op) {
  op->next = NULL;
  uv_mutex_lock(&to->mbox.mu);
  if (to->mbox.closed) {
    uv_mutex_unlock(&to->mbox.mu);
    discard_op(op);
    return;
  }
  if (to->mbox.tail)
    to->mbox.tail->next = op;
  else
    to->mbox.head = op;
  to->mbox.tail = op;
  uv_async_send(&to->mbox.async); /* under the lock: the handle cannot be closing */
  uv_mutex_unlock(&to->mbox.mu);
}

/* ------------------------------------------------------------------ ops --- */

static void app_drained(ss_grpc_server *app, int graceful) {
  app->shards_drained++;
  if (!graceful) app->drain_cut = 1;
  if (app->shards_drained == app->nshards && !app->drained_told) {
    app->drained_told = 1;
    if (app->hooks.drained) app->hooks.drained(app->hooks.app, !app->drain_cut);
  }
  ss_grpc_wake_flush(app);
}

void ss_shard_drained(ss_grpc_server *s, int graceful) {
  if (s->index == 0) {
    app_drained(s, graceful);
    return;
  }
  ss_op *op = op_new(OP_DRAINED, NULL, graceful);
  if (op)
    post(s->app, op);
  else
    SS_LOGE("io thread %d: out of memory telling its drain ended", s->index);
}

/* Close everything the shard holds now (ss_grpc_server_free before a drain ended). */
static void shard_stop(ss_grpc_server *s) {
  ss_grpc_shard_drain(s, 1);
  while (s->conns) ss_conn_close(s->conns);
  ss_grpc_shard_close(s);
}

/* App loop: the client of a handed call went away (code: why); its cancel hook runs unless the
 * call was answered first. Drops the op's reference. */
static void app_cancel(ss_call *call, int code) {
  if (!call->app_done) {
    call->app_done = 1;
    call->app_status = code;
    if (call->on_cancel) call->on_cancel(call);
  }
  ss_call_unref(call);
}

/* Run op on loop s. An op inside a call (embedded) may be reused as soon as the call's reference
 * it holds is dropped, so every case drops that reference last and nothing reads op after it. */
static void run_op(ss_grpc_server *s, ss_op *op) {
  ss_call *call = op->call;
  const int kind = op->kind, embedded = op->embedded;
  switch (kind) {
    case OP_DISPATCH:
      call->method->handler(call, call->srv->method_app);
      ss_call_unref(call);
      break;
    case OP_CANCEL: app_cancel(call, op->code); break;
    case OP_RELEASE: ss_call_finalize_app(call); break;
    case OP_DRAINED: app_drained(s, op->code); break;
    case OP_CLOSED: { /* posting this was the thread's last act: join it now */
      ss_grpc_server *k = s->shards[op->code];
      uv_thread_join(&k->thread);
      k->thread_started = 0;
      k->loop_ended = 1;
      s->shards_closed++;
      ss_grpc_wake_flush(s);
      break;
    }
    case OP_REPLY:
      ss_call_reply_packed(call, op->bytes, op->len, op->segs, op->nsegs, op->owner);
      op_free_bytes(op);
      ss_call_drop(call);
      break;
    case OP_SEND:
      ss_call_send_packed(call, op->bytes, op->len);
      op_free_bytes(op);
      ss_call_drop(call);
      break;
    case OP_FAIL:
      ss_call_failf(call, op->code, "%s", op->bytes ? (const char *)op->bytes : "");
      op_free_bytes(op);
      ss_call_drop(call);
      break;
    case OP_END:
      ss_call_end_local(call, op->code, (const char *)op->bytes);
      op_free_bytes(op);
      ss_call_drop(call);
      break;
    case OP_DRAIN: ss_grpc_shard_drain(s, op->code); break;
    case OP_TLS:
      ss_tls_ctx_free(s->tls); /* connections hold their own reference to the old one */
      s->tls = op->tls;
      break;
    case OP_STOP: shard_stop(s); break;
  }
  if (!embedded) free(op);
}

/* The receiving loop is gone. Answers to a shard that has closed (its connections, and so its
 * streams, are gone) are dropped on the app loop that posted them. Ops for the app loop are
 * never refused while a shard runs: the app loop closes its mailbox only after every shard has
 * ended (ss_shards_closed) or been joined (ss_shards_free); what is left then is settled here
 * without running handlers. */
static void discard_op(ss_op *op) {
  ss_call *call = op->call;
  const int kind = op->kind, embedded = op->embedded;
  switch (kind) {
    case OP_DISPATCH: ss_call_unref(call); break;
    case OP_CANCEL: app_cancel(call, op->code); break;
    case OP_RELEASE: ss_call_finalize_app(call); break;
    case OP_REPLY:
      ss_owned_release(op->owner);
      op_free_bytes(op);
      ss_call_unref(call);
      break;
    case OP_SEND:
    case OP_FAIL:
    case OP_END:
      op_free_bytes(op);
      ss_call_unref(call);
      break;
    case OP_TLS: ss_tls_ctx_free(op->tls); break;
    default: break;
  }
  if (!embedded) free(op);
}

void ss_shard_dispatch(ss_call *call) {
  call->handed = 1;
  ss_call_ref(call);
  post(call->srv->app, op_slot(&call->op_in, OP_DISPATCH, call, 0));
}

void ss_shard_post_cancel(ss_call *call, int code) {
  ss_call_ref(call);
  post(call->srv->app, op_slot(&call->op_cancel, OP_CANCEL, call, code));
}

void ss_shard_post_release(ss_call *call) {
  post(call->srv->app, op_slot(&call->op_in, OP_RELEASE, call, 0)); /* the dispatch is done */
}

/* App side: an answer that cannot be posted for want of memory. The call stays unanswered on
 * its loop until its deadline or its client gives up; say so. */
static void post_failed(ss_call *call) {
  SS_LOGE("out of memory answering a call of io thread %d", call->srv->index);
}

/* Put n bytes (packed by pack, or copied from src) in op: its small buffer when they fit. */
static int op_bytes(ss_op *op, const ProtobufCMessage *msg, const char *src, size_t n) {
  uint8_t *b = op->small;
  if (n > sizeof op->small && !(b = malloc(n))) return SS_ENOMEM;
  if (msg)
    protobuf_c_message_pack(msg, b);
  else if (src)
    memcpy(b, src, n);
  op->bytes = b;
  op->len = n;
  op->bytes_inline = b == op->small;
  return 0;
}

void ss_shard_post_reply(ss_call *call, const ProtobufCMessage *msg, const ss_seg *segs,
                         size_t nsegs, ss_owned owner) {
  if (call->app_done) {
    ss_owned_release(owner);
    return;
  }
  call->app_done = 1;
  call->app_status = SS_GRPC_OK;
  ss_op *op = op_slot(&call->op_answer, OP_REPLY, call, 0);
  if (op_bytes(op, msg, NULL, protobuf_c_message_get_packed_size(msg)) != 0) {
    ss_owned_release(owner);
    post_failed(call);
    return;
  }
  op->segs = segs;
  op->nsegs = nsegs;
  op->owner = owner;
  ss_call_ref(call);
  post(call->srv, op);
}

void ss_shard_post_send(ss_call *call, const ProtobufCMessage *msg) {
  if (call->app_done) return;
  ss_op *op = op_new(OP_SEND, call, 0);
  if (!op || op_bytes(op, msg, NULL, protobuf_c_message_get_packed_size(msg)) != 0) {
    free(op);
    post_failed(call);
    return;
  }
  ss_call_ref(call);
  post(call->srv, op);
}

void ss_shard_post_fail(ss_call *call, int end, int code, const char *msg) {
  if (call->app_done) return;
  call->app_done = 1;
  call->app_status = code;
  ss_op *op = op_slot(&call->op_answer, end ? OP_END : OP_FAIL, call, code);
  if (msg && op_bytes(op, NULL, msg, strlen(msg) + 1) != 0) {
    post_failed(call);
    return;
  }
  ss_call_ref(call);
  post(call->srv, op);
}

void ss_shard_post_drain(ss_grpc_server *k, int now) {
  ss_op *op = op_new(OP_DRAIN, NULL, now);
  if (op)
    post(k, op);
  else
    SS_LOGE("io thread %d: out of memory telling it to drain", k->index);
}

void ss_shard_post_tls(ss_grpc_server *k, ss_tls_ctx *ctx) {
  ss_op *op = op_new(OP_TLS, NULL, 0);
  if (!op) {
    ss_tls_ctx_free(ctx);
    SS_LOGE("io thread %d: out of memory: TLS context not replaced", k->index);
    return;
  }
  op->tls = ctx;
  post(k, op);
}

/* ------------------------------------------------------------------ shards --- */

int ss_shards_new(ss_grpc_server *s, size_t n, char *err, size_t errlen) {
  int rv = ss_mbox_init(s);
  if (rv != 0) {
    snprintf(err, errlen, "--io-threads: cannot create the app loop's mailbox");
    return rv;
  }
  for (size_t i = 1; i < n; i++) {
    uv_loop_t *loop = malloc(sizeof *loop);
    if (!loop || uv_loop_init(loop) != 0) {
      free(loop);
      snprintf(err, errlen, "--io-threads: cannot create loop %zu", i);
      return SS_ENOMEM;
    }
    ss_grpc_server *k;
    rv = ss_grpc_shard_new(s, (int)i, loop, &k, err, errlen);
    if (rv == 0 && (rv = ss_mbox_init(k)) != 0) {
      snprintf(err, errlen, "--io-threads: cannot create the mailbox of loop %zu", i);
      s->shards[s->nshards++] = k; /* freed with the others */
      return rv;
    }
    if (rv != 0) {
      uv_run(loop, UV_RUN_NOWAIT);
      if (uv_loop_close(loop) != 0) SS_LOGW("io loop %zu closed with handles open", i);
      free(loop);
      return rv;
    }
    s->shards[s->nshards++] = k;
  }
  return 0;
}

static void shard_main(void *arg) {
  ss_grpc_server *k = arg;
  uv_run(k->loop, UV_RUN_DEFAULT);
  /* Its handles are closed (its connections too): the thread's last act. */
  ss_op *op = op_new(OP_CLOSED, NULL, k->index);
  if (op)
    post(k->app, op);
  else
    SS_LOGE("io thread %d: out of memory telling it has stopped", k->index);
}

int ss_shards_start(ss_grpc_server *s, char *err, size_t errlen) {
  for (size_t i = 1; i < s->nshards; i++) {
    ss_grpc_server *k = s->shards[i];
    ss_grpc_start_flush(k);
    if (uv_thread_create(&k->thread, shard_main, k) != 0) {
      snprintf(err, errlen, "--io-threads: cannot start thread %zu", i);
      return SS_EIO;
    }
    k->thread_started = 1;
  }
  return 0;
}

int ss_shards_closed(const ss_grpc_server *s) { return s->shards_closed + 1 >= s->nshards; }

void ss_shards_free(ss_grpc_server *s) {
  for (size_t i = 1; i < s->nshards; i++) {
    ss_grpc_server *k = s->shards[i];
    if (k->thread_started) {
      ss_op *op = op_new(OP_STOP, NULL, 0);
      if (op) post(k, op); /* refused (discarded) when its loop has ended already */
      uv_thread_join(&k->thread);
    } else if (!k->loop_ended) { /* never ran: close its handles here */
      while (k->conns) ss_conn_close(k->conns);
      ss_grpc_shard_close(k);
      uv_run(k->loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(k->loop) != 0) SS_LOGW("io loop %zu closed with handles open", i);
  }
  /* What the stopped shards left for this loop is settled before their memory goes (a call
   * object finalized here returns to its shard's cache). */
  ss_mbox_close(s);
  for (size_t i = 1; i < s->nshards; i++) {
    free(s->shards[i]->loop);
    ss_grpc_shard_free(s->shards[i]);
    s->shards[i] = NULL;
  }
  s->nshards = 1;
}
