/*
 * fake_call.c — see fake_call.h. Implements every ss_call_* function of grpc/grpc.h that a
 * service uses, plus ss_grpc_server_stats (zeros), against plain memory.
 */
#include "fake_call.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct ss_call {
  int refs;
  uint8_t *req;
  size_t req_len;
  fake_result *res;
  uint64_t start_ns;
  void (*on_cancel)(ss_call *call);
  void (*on_release)(ss_call *call);
  ss_owned owner; /* released with the call (reply tails) */
  char *hname[SS_GRPC_MAX_KEPT_HEADERS], *hval[SS_GRPC_MAX_KEPT_HEADERS]; /* request headers */
  _Alignas(16) unsigned char state[];
};

static int alive;

ss_call *fake_call_new(const ss_method *m, const void *req, size_t len, fake_result *res) {
  ss_call *c = calloc(1, sizeof *c + m->state_size);
  assert(c);
  c->refs = 1;
  c->req = malloc(len ? len : 1);
  assert(c->req);
  memcpy(c->req, req, len);
  c->req_len = len;
  c->res = res;
  memset(res, 0, sizeof *res);
  res->status = -1;
  c->start_ns = uv_hrtime();
  alive++;
  return c;
}

int fake_calls_alive(void) { return alive; }

uint8_t *ss_call_request(ss_call *call, size_t *len) {
  *len = call->req_len;
  return call->req;
}
void *ss_call_state(ss_call *call) { return call->state; }
void ss_call_set_hooks(ss_call *call, void (*cancel)(ss_call *), void (*release)(ss_call *)) {
  call->on_cancel = cancel;
  call->on_release = release;
}
int ss_call_answered(const ss_call *call) { return call->res->answered; }
int ss_call_status(const ss_call *call) { return call->res->answered ? call->res->status : -1; }
uint64_t ss_call_start_ns(const ss_call *call) { return call->start_ns; }

uint64_t ss_call_conn_id(const ss_call *call) {
  (void)call;
  return 1; /* one connection */
}

void fake_call_set_header(ss_call *call, const char *name, const char *value) {
  for (int i = 0; i < SS_GRPC_MAX_KEPT_HEADERS; i++)
    if (!call->hname[i] || strcasecmp(call->hname[i], name) == 0) {
      free(call->hname[i]);
      free(call->hval[i]);
      call->hname[i] = strdup(name);
      call->hval[i] = strdup(value);
      assert(call->hname[i] && call->hval[i]);
      return;
    }
  assert(!"fake_call_set_header: too many headers");
}

const char *ss_call_header(const ss_call *call, const char *name) {
  for (int i = 0; i < SS_GRPC_MAX_KEPT_HEADERS && call->hname[i]; i++)
    if (strcasecmp(call->hname[i], name) == 0) return call->hval[i];
  return NULL;
}
ss_grpc_server *ss_call_server(ss_call *call) {
  (void)call;
  return NULL;
}
void ss_grpc_server_stats(const ss_grpc_server *g, ss_grpc_stats *out) {
  (void)g;
  memset(out, 0, sizeof *out);
}

static void finish(ss_call *call, int code, const char *msg) {
  call->res->answered = 1;
  call->res->status = code;
  snprintf(call->res->message, sizeof call->res->message, "%s", msg ? msg : "");
}

void ss_call_reply_segs(ss_call *call, const ProtobufCMessage *msg, const ss_seg *segs,
                        size_t nsegs, ss_owned owner) {
  if (call->res->answered) {
    ss_owned_release(owner);
    return;
  }
  size_t n = protobuf_c_message_get_packed_size(msg), total = n;
  for (size_t i = 0; i < nsegs; i++) total += segs[i].len;
  uint8_t *b = malloc(total ? total : 1);
  assert(b);
  protobuf_c_message_pack(msg, b);
  for (size_t i = 0; i < nsegs; i++) {
    memcpy(b + n, segs[i].p, segs[i].len);
    n += segs[i].len;
  }
  call->res->body = b;
  call->res->body_len = total;
  ss_owned_release(call->owner);
  call->owner = owner; /* the real transport keeps segments until the call dies: so do we */
  finish(call, SS_GRPC_OK, NULL);
}

void ss_call_reply(ss_call *call, const ProtobufCMessage *msg, uint32_t tail_field,
                   const void *tail, size_t tail_len, ss_owned tail_owner) {
  if (!tail) {
    ss_call_reply_segs(call, msg, NULL, 0, tail_owner);
    return;
  }
  uint8_t hdr[16];
  size_t h = 0;
  uint64_t v = (uint64_t)tail_field << 3 | 2;
  for (int k = 0; k < 2; k++) {
    while (v >= 0x80) {
      hdr[h++] = (uint8_t)(v | 0x80);
      v >>= 7;
    }
    hdr[h++] = (uint8_t)v;
    v = tail_len;
  }
  ss_seg segs[2] = {{hdr, h}, {tail, tail_len}};
  ss_call_reply_segs(call, msg, segs, 2, tail_owner);
}

void ss_call_send(ss_call *call, const ProtobufCMessage *msg) {
  if (call->res->answered) return;
  size_t n = protobuf_c_message_get_packed_size(msg);
  free(call->res->last_sent);
  call->res->last_sent = malloc(n ? n : 1);
  assert(call->res->last_sent);
  protobuf_c_message_pack(msg, call->res->last_sent);
  call->res->last_sent_len = n;
  call->res->nsent++;
}

void ss_call_fail(ss_call *call, int code, const char *fmt, ...) {
  if (call->res->answered) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  finish(call, code, msg);
}

void ss_call_end(ss_call *call, int code, const char *msg) {
  if (!call->res->answered) finish(call, code, msg);
}

void ss_call_ref(ss_call *call) {
  assert(call->refs > 0);
  call->refs++;
}

void ss_call_unref(ss_call *call) {
  assert(call->refs > 0);
  if (--call->refs > 0) return;
  if (call->on_release) call->on_release(call);
  ss_owned_release(call->owner);
  free(call->req);
  for (int i = 0; i < SS_GRPC_MAX_KEPT_HEADERS; i++) {
    free(call->hname[i]);
    free(call->hval[i]);
  }
  free(call);
  alive--;
}

void fake_call_cancel(ss_call *call) {
  if (call->res->answered) return;
  call->res->answered = 1;
  call->res->status = SS_GRPC_CANCELLED;
  if (call->on_cancel) call->on_cancel(call);
}

void fake_call_close(ss_call *call) { ss_call_unref(call); }
