/*
 * test_service.c — the compute service driven through fake calls (fake_call.c): no socket, no
 * HTTP/2, no Python. The real service, models, worker pool and loop; only the transport is
 * replaced. Covers each RPC's answer, the error messages, cancellation of queued and running
 * work, the health Watch on drain, and that every call is released.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "compute_service.pb-c.h"
#include "health.pb-c.h"
#include "models/model.h"
#include "service/fake_call.h"
#include "service/service.h"

static uv_loop_t loop;
static ss_pool *pool;
static ss_service *svc;
static const ss_method *methods;
static size_t nmethods;

static const ss_method *method(const char *suffix) {
  for (size_t i = 0; i < nmethods; i++) {
    size_t a = strlen(methods[i].path), b = strlen(suffix);
    if (a >= b && strcmp(methods[i].path + a - b, suffix) == 0) return &methods[i];
  }
  return NULL;
}

/* Run the loop until the call is answered (or 10 s pass). */
static void wait_answer(fake_result *r) {
  uint64_t t0 = uv_hrtime();
  while (!r->answered && uv_hrtime() - t0 < 10000000000ull) uv_run(&loop, UV_RUN_NOWAIT);
}

static size_t data_len_override; /* nonzero: send this many data bytes whatever the shape says */

static uint8_t *pack_compute(const float *x, const int32_t *shape, size_t ndim, const char *model,
                             const char *k, const char *v, size_t *len) {
  Splitlearn__Comm__ComputeRequest req = SPLITLEARN__COMM__COMPUTE_REQUEST__INIT;
  size_t n = 1;
  for (size_t i = 0; i < ndim; i++) n *= (size_t)shape[i];
  req.has_data = 1;
  req.data.data = (uint8_t *)x;
  req.data.len = data_len_override ? data_len_override : n * sizeof(float);
  req.shape = (int32_t *)shape;
  req.n_shape = ndim;
  req.model_id = (char *)model;
  req.has_request_id = 1;
  req.request_id = 42;
  Splitlearn__Comm__ComputeRequest__MetadataEntry
      e = SPLITLEARN__COMM__COMPUTE_REQUEST__METADATA_ENTRY__INIT,
      *ep = &e;
  if (k) {
    e.key = (char *)k;
    e.value = (char *)v;
    req.metadata = &ep;
    req.n_metadata = 1;
  }
  *len = splitlearn__comm__compute_request__get_packed_size(&req);
  uint8_t *b = malloc(*len);
  splitlearn__comm__compute_request__pack(&req, b);
  return b;
}

/* One Compute call run to its answer; the reply decoded into *resp (caller frees) when OK. */
static ss_call *compute(const float *x, const int32_t *shape, size_t ndim, const char *model,
                        const char *k, const char *v, fake_result *r,
                        Splitlearn__Comm__ComputeResponse **resp) {
  size_t len;
  uint8_t *b = pack_compute(x, shape, ndim, model, k, v, &len);
  const ss_method *m = method("/Compute");
  ss_call *c = fake_call_new(m, b, len, r);
  free(b);
  m->handler(c, svc);
  wait_answer(r);
  if (resp)
    *resp = r->status == 0 ? splitlearn__comm__compute_response__unpack(NULL, r->body_len, r->body)
                           : NULL;
  return c;
}

static void test_identity_and_mlp(void) {
  float x[10 * 768];
  for (int i = 0; i < 10 * 768; i++) x[i] = sinf((float)i * 0.01f);
  int32_t shape[3] = {1, 10, 768};
  fake_result r;
  Splitlearn__Comm__ComputeResponse *resp;
  ss_call *c = compute(x, shape, 3, "identity", NULL, NULL, &r, &resp);
  CHECK_EQ_INT(r.status, 0);
  CHECK(resp && resp->data.len == sizeof x && memcmp(resp->data.data, x, sizeof x) == 0);
  CHECK(resp && resp->has_request_id && resp->request_id == 42);
  if (resp) splitlearn__comm__compute_response__free_unpacked(resp, NULL);
  fake_call_close(c);
  free(r.body);

  /* The default model (mlp) against the same model run directly. */
  c = compute(x, shape, 3, "", NULL, NULL, &r, &resp);
  CHECK_EQ_INT(r.status, 0);
  ss_model *m = NULL;
  char err[256];
  CHECK_EQ_INT(ss_model_create("mlp=mlp", &m, err, sizeof err), 0);
  float want[10 * 768];
  ss_tensor in = {SS_DTYPE_F32, 3, {1, 10, 768}, 10 * 768, x, sizeof x};
  ss_tensor out = {SS_DTYPE_F32, 3, {1, 10, 768}, 10 * 768, want, sizeof want};
  CHECK_EQ_INT(m->ops->forward(m, &in, &out, NULL, err, sizeof err), 0);
  ss_model_free(m);
  CHECK(resp && resp->n_shape == 3 && resp->shape[2] == 768 && resp->has_compute_time_ms);
  double maxd = 0;
  if (resp && resp->data.len == sizeof want)
    for (int i = 0; i < 10 * 768; i++) {
      double d = fabs((double)((const float *)(const void *)resp->data.data)[i] - want[i]);
      if (d > maxd) maxd = d;
    }
  else
    maxd = 1e9;
  CHECK(maxd < 1e-5);
  if (resp) splitlearn__comm__compute_response__free_unpacked(resp, NULL);
  fake_call_close(c);
  free(r.body);
}

static void test_bad_inputs(void) {
  float x[8] = {0};
  fake_result r;
  data_len_override = sizeof x; /* 8 floats sent for a [2,3] shape */
  ss_call *c = compute(x, (int32_t[]){2, 3}, 2, "identity", NULL, NULL, &r, NULL);
  data_len_override = 0;
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "data has 32 bytes but shape [2,3] x float32 needs 24");
  fake_call_close(c);
  c = compute(x, (int32_t[]){1, 8}, 2, "nosuch", NULL, NULL, &r, NULL);
  CHECK_EQ_INT(r.status, SS_GRPC_NOT_FOUND);
  CHECK_CONTAINS(r.message, "identity");
  fake_call_close(c);
  c = compute(x, (int32_t[]){1, 8}, 2, "mlp", NULL, NULL, &r, NULL);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "768");
  fake_call_close(c);
  c = compute(x, (int32_t[]){1, 8}, 2, "identity", "dtype", "int8", &r, NULL);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "dtype");
  fake_call_close(c);
  /* Not a protobuf at all. */
  const ss_method *m = method("/Compute");
  c = fake_call_new(m, "\xff\xff\xff", 3, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "ComputeRequest");
  fake_call_close(c);
}

/* Hardening: limits checked on the wire before decoding, NUL bytes in ids. */
static void test_wire_limits(void) {
  const ss_method *m = method("/Compute");
  fake_result r;
  /* 65 empty metadata entries (field 4, length 0) after a model_id */
  uint8_t body[256];
  size_t n = 0;
  body[n++] = 0x2a; /* field 5 (model_id), length-delimited */
  body[n++] = 8;
  memcpy(body + n, "identity", 8), n += 8;
  for (int i = 0; i < 65; i++) body[n++] = 0x22, body[n++] = 0;
  ss_call *c = fake_call_new(m, body, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_RESOURCE_EXHAUSTED);
  CHECK_CONTAINS(r.message, "--max-metadata-entries");
  fake_call_close(c);
  /* model_id "identity\0x" must not route to identity */
  n = 0;
  body[n++] = 0x2a;
  body[n++] = 10;
  memcpy(body + n, "identity\0x", 10), n += 10;
  c = fake_call_new(m, body, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "model_id holds a NUL byte at offset 8");
  fake_call_close(c);
  CHECK_EQ_INT(fake_calls_alive(), 0);
}

/* Issue 20 (9): what protobuf-c would allocate is bounded on the wire bytes first. */
static void test_decode_bounds(void) {
  const ss_method *m = method("/Compute");
  fake_result r;
  uint8_t body[512];
  size_t n = 0;
  body[n++] = 0x2a; /* model_id "identity" */
  body[n++] = 8;
  memcpy(body + n, "identity", 8), n += 8;
  size_t base = n;
  /* a packed shape of 65 one-byte entries (field 2, wire type 2) */
  body[n++] = 0x12;
  body[n++] = 65;
  for (int i = 0; i < 65; i++) body[n++] = 1;
  ss_call *c = fake_call_new(m, body, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "repeated field 'shape' has more than 64 entries");
  fake_call_close(c);
  /* 17 request_id fields (field 3, varint): a singular field repeated */
  n = base;
  for (int i = 0; i < 17; i++) body[n++] = 0x18, body[n++] = 1;
  c = fake_call_new(m, body, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "field 'request_id' is sent more than 16 times");
  fake_call_close(c);
  /* 65 unknown fields (field 99, varint 0) are refused, naming the field number */
  n = base;
  for (int i = 0; i < 65; i++) body[n++] = 0x98, body[n++] = 0x06, body[n++] = 0;
  c = fake_call_new(m, body, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "field number 99");
  fake_call_close(c);
  /* a few (a newer client's fields) pass the bound: the call goes on to its own checks */
  n = base;
  for (int i = 0; i < 4; i++) body[n++] = 0x98, body[n++] = 0x06, body[n++] = 0;
  c = fake_call_new(m, body, n, &r);
  m->handler(c, svc);
  CHECK(strstr(r.message, "does not define") == NULL);
  fake_call_close(c);
  /* ComputeBackward: the same bounds (grad_output_shape, field 2) */
  const ss_method *mb = method("/ComputeBackward");
  n = 0;
  body[n++] = 0x12;
  body[n++] = 65;
  for (int i = 0; i < 65; i++) body[n++] = 1;
  c = fake_call_new(mb, body, n, &r);
  mb->handler(c, svc);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "repeated field 'grad_output_shape' has more than 64 entries");
  fake_call_close(c);
  CHECK_EQ_INT(fake_calls_alive(), 0);
}

static void test_health(void) {
  Splitlearn__Comm__HealthRequest req = SPLITLEARN__COMM__HEALTH_REQUEST__INIT;
  uint8_t b[8];
  size_t n = splitlearn__comm__health_request__pack(&req, b);
  const ss_method *m = method("ComputeService/HealthCheck");
  fake_result r;
  ss_call *c = fake_call_new(m, b, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.status, 0);
  Splitlearn__Comm__HealthResponse *h =
      splitlearn__comm__health_response__unpack(NULL, r.body_len, r.body);
  CHECK(h && strcmp(h->status, "ok") == 0);
  if (h) splitlearn__comm__health_response__free_unpacked(h, NULL);
  free(r.body);
  fake_call_close(c);
}

/* A spin call occupies the only worker; a second one queues; cancelling both releases both. */
static void test_cancel(void) {
  float x[4] = {1, 2, 3, 4};
  int32_t shape[2] = {1, 4};
  size_t len;
  uint8_t *b = pack_compute(x, shape, 2, "spin", "ms", "300", &len);
  const ss_method *m = method("/Compute");
  fake_result r1, r2;
  ss_call *c1 = fake_call_new(m, b, len, &r1), *c2 = fake_call_new(m, b, len, &r2);
  free(b);
  m->handler(c1, svc);
  m->handler(c2, svc);
  uv_run(&loop, UV_RUN_NOWAIT);
  fake_call_cancel(c2); /* queued: leaves the admission queue */
  fake_call_cancel(c1); /* running: its result is dropped */
  fake_call_close(c2);
  fake_call_close(c1);
  uint64_t t0 = uv_hrtime();
  while (fake_calls_alive() > 0 && uv_hrtime() - t0 < 5000000000ull) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(fake_calls_alive(), 0);
  CHECK_EQ_INT(r1.status, SS_GRPC_CANCELLED);
  /* The model is free again: a new call runs. */
  fake_result r3;
  ss_call *c3 = compute(x, shape, 2, "identity", NULL, NULL, &r3, NULL);
  CHECK_EQ_INT(r3.status, 0);
  free(r3.body);
  fake_call_close(c3);
}

static void test_watch_on_drain(void) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  uint8_t b[8];
  size_t n = grpc__health__v1__health_check_request__pack(&req, b);
  const ss_method *m = method("Health/Watch");
  fake_result r;
  ss_call *c = fake_call_new(m, b, n, &r);
  m->handler(c, svc);
  CHECK_EQ_INT(r.nsent, 1);
  ss_service_drain_started(svc);
  CHECK_EQ_INT(r.nsent, 2);
  Grpc__Health__V1__HealthCheckResponse *h =
      grpc__health__v1__health_check_response__unpack(NULL, r.last_sent_len, r.last_sent);
  CHECK(h && h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
  if (h) grpc__health__v1__health_check_response__free_unpacked(h, NULL);
  fake_call_cancel(c);
  fake_call_close(c);
  free(r.last_sent);
  CHECK_EQ_INT(fake_calls_alive(), 0);
}

/* The proxy affinity headers: x-session-id acts as metadata session=ID (conflicts refused),
 * x-forward-id as the forward_id field. */
static void test_affinity_headers(void) {
  float x[4] = {1, 2, 3, 4};
  fake_result r;
  size_t len;
  const ss_method *m = method("/Compute");
  uint8_t *b = pack_compute(x, (int32_t[]){1, 4}, 2, "identity", "session", "a", &len);
  ss_call *c = fake_call_new(m, b, len, &r);
  free(b);
  fake_call_set_header(c, "x-session-id", "b");
  m->handler(c, svc);
  wait_answer(&r);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "metadata session='a' and request header x-session-id 'b' differ");
  fake_call_close(c);
  /* the header alone is the session: identity keeps no KV cache, so it says so */
  b = pack_compute(x, (int32_t[]){1, 4}, 2, "identity", NULL, NULL, &len);
  c = fake_call_new(m, b, len, &r);
  fake_call_set_header(c, "X-Session-Id", "s1");
  m->handler(c, svc);
  wait_answer(&r);
  CHECK_EQ_INT(r.status, SS_GRPC_INVALID_ARGUMENT);
  CHECK_CONTAINS(r.message, "keeps no KV cache");
  fake_call_close(c);
  /* x-forward-id is echoed like the forward_id field */
  c = fake_call_new(m, b, len, &r);
  free(b);
  fake_call_set_header(c, "x-forward-id", "f-77");
  m->handler(c, svc);
  wait_answer(&r);
  CHECK_EQ_INT(r.status, SS_GRPC_OK);
  Splitlearn__Comm__ComputeResponse *resp =
      splitlearn__comm__compute_response__unpack(NULL, r.body_len, r.body);
  CHECK(resp && resp->forward_id && strcmp(resp->forward_id, "f-77") == 0);
  splitlearn__comm__compute_response__free_unpacked(resp, NULL);
  free(r.body);
  fake_call_close(c);
  CHECK_EQ_INT(fake_calls_alive(), 0);
}

int main(void) {
  uv_loop_init(&loop);
  CHECK_EQ_INT(ss_pool_new(&loop, 1, NULL, NULL, &pool), 0);
  ss_server_config cfg;
  ss_server_config_init(&cfg);
  cfg.workers = 1;
  cfg.log_level = 1;
  cfg.enable_test_models = 1; /* sleep, spin */
  char err[512];
  int rv = ss_service_new(&loop, pool, &cfg, &svc, err, sizeof err);
  CHECK_EQ_INT(rv, 0);
  if (rv != 0) {
    fprintf(stderr, "service: %s\n", err);
    return 1;
  }
  methods = ss_service_methods(&nmethods);
  test_identity_and_mlp();
  test_bad_inputs();
  test_affinity_headers();
  test_wire_limits();
  test_decode_bounds();
  test_health();
  test_cancel();
  test_watch_on_drain();
  ss_service_close(svc);
  ss_pool_shutdown(pool);
  uv_run(&loop, UV_RUN_DEFAULT);
  ss_pool_free(pool);
  ss_service_free(svc);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
  TEST_MAIN_END();
}
