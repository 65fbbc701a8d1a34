/*
 * fuzz_service.c — every RPC handler of the service (decode, validation, models, KV cache,
 * sessions, training forward/backward, health, info, monitoring streams) driven through the
 * fake call of tests/unit/service/fake_call.c: no socket, no HTTP/2. The service is the real
 * one (fuzz_util.h: 0 workers so compute runs inline on this thread, a tiny gpt2, the mlp).
 *
 * Input: a sequence of calls, each [method byte][length, 2 bytes little-endian][request bytes]
 * (a short last request takes what is left). The calls of one input run in order, so a
 * forward can be followed by its backward or a session's next step. After the sequence the
 * loop runs a little, streams and calls still waiting (sleep) are cancelled, and every call
 * must be released.
 *
 * Checks: each call is answered; a failure carries a message; an OK reply of a unary method
 * unpacks as that method's response type; no call leaks.
 *
 * State (sessions, training activations, weights after a backward step) persists across
 * inputs, as in a server; budgets are small so it cannot grow without bound.
 *
 * FUZZ_VERBOSE=1 in the environment prints each call's status and message.
 *
 * Thread: the fuzzer's (single), which is the service's loop thread.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "compute_service.pb-c.h"
#include "fuzz_util.h"
#include "health.pb-c.h"
#include "service/fake_call.h"
#include "service/service.h"

static uv_loop_t loop;
static ss_pool *pool;
static ss_service *svc;
static const ss_method *methods;
static size_t nmethods;
static int verbose; /* FUZZ_VERBOSE=1: print each call's status (reproducing an input) */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  ss_server_config cfg;
  fuzz_service_config(&cfg);
  uv_loop_init(&loop);
  char err[512];
  if (ss_pool_new(&loop, 0, NULL, NULL, &pool) != 0 ||
      ss_service_new(&loop, pool, &cfg, &svc, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_service: cannot start the service: %s\n", err);
    abort();
  }
  methods = ss_service_methods(&nmethods);
  verbose = getenv("FUZZ_VERBOSE") != NULL;
  return 0;
}

#define MAX_CALLS 16

static void check_reply(const ss_method *m, const fake_result *r) {
  if (!r->answered || r->status < 0) return;
  CHECK_FUZZ(r->status <= 16);
  if (r->status == SS_GRPC_CANCELLED) return; /* fake_call_cancel: the client left */
  if (r->status != 0) {
    if (r->message[0] == '\0')
      fprintf(stderr, "%s: status %d without a message\n", m->path, r->status);
    CHECK_FUZZ(r->message[0] != '\0');
    return;
  }
  if (m->server_streaming) return;
  const ProtobufCMessageDescriptor *d = NULL;
  const char *name = strrchr(m->path, '/') + 1;
  if (!strcmp(name, "Compute"))
    d = &splitlearn__comm__compute_response__descriptor;
  else if (!strcmp(name, "ComputeBackward"))
    d = &splitlearn__comm__backward_response__descriptor;
  else if (!strcmp(name, "HealthCheck"))
    d = &splitlearn__comm__health_response__descriptor;
  else if (!strcmp(name, "GetServiceInfo"))
    d = &splitlearn__comm__service_info_response__descriptor;
  else if (!strcmp(name, "Check"))
    d = &grpc__health__v1__health_check_response__descriptor;
  if (!d) return;
  ProtobufCMessage *msg = protobuf_c_message_unpack(d, NULL, r->body_len, r->body);
  CHECK_FUZZ(msg != NULL);
  protobuf_c_message_free_unpacked(msg, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!svc) LLVMFuzzerInitialize(NULL, NULL);
  ss_call *calls[MAX_CALLS];
  const ss_method *ms[MAX_CALLS];
  fake_result *res = calloc(MAX_CALLS, sizeof *res);
  CHECK_FUZZ(res != NULL);
  size_t n = 0, pos = 0;
  while (pos < size && n < MAX_CALLS) {
    const ss_method *m = &methods[data[pos++] % nmethods];
    size_t len = 0;
    if (pos < size) len = data[pos++];
    if (pos < size) len |= (size_t)data[pos++] << 8;
    if (len > size - pos) len = size - pos;
    ms[n] = m;
    calls[n] = fake_call_new(m, data + pos, len, &res[n]);
    pos += len;
    m->handler(calls[n], svc);
    uv_run(&loop, UV_RUN_NOWAIT);
    n++;
  }
  for (int i = 0; i < 3; i++) uv_run(&loop, UV_RUN_NOWAIT);
  for (size_t i = 0; i < n; i++) {
    if (!res[i].answered) fake_call_cancel(calls[i]); /* streams, sleeps, queued calls */
    CHECK_FUZZ(res[i].answered);
    if (verbose)
      fprintf(stderr, "call %zu %s: status %d %s\n", i, ms[i]->path, res[i].status, res[i].message);
    check_reply(ms[i], &res[i]);
    fake_call_close(calls[i]);
  }
  for (int i = 0; i < 1000 && fake_calls_alive() > 0; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_FUZZ(fake_calls_alive() == 0);
  for (size_t i = 0; i < n; i++) {
    free(res[i].body);
    free(res[i].last_sent);
  }
  free(res);
  return 0;
}
