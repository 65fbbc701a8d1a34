/*
 * fuzz_wire.c — protobuf decoding of every request type, the way the service does it
 * (service/wire.c, core/tensor.c): ComputeRequest and BackwardRequest through the zero-copy
 * ss_decode_tensor_request (tensor bytes and KV entries left in place), each KV entry through
 * ss_parse_kv_entry, every tensor through ss_tensor_from_wire; HealthRequest,
 * ServiceInfoRequest, MonitoringStreamRequest and grpc.health.v1.HealthCheckRequest through
 * protobuf-c. Byte 0 picks the message type, the rest is the message. Type 8 is the zlib
 * wire codec (service/codec.h, metadata codec=zlib): [want, 2 bytes little-endian][payload]:
 * the stream check, then an inflate to exactly `want` bytes, then a deflate/inflate round trip.
 *
 * Oracle: when protobuf-c unpacks the whole message, the split decode must succeed and agree
 * with it (tensor bytes, shape, ids, KV entries); a tensor that validates must fit its bytes.
 *
 * Thread: the fuzzer's (single).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "core/tensor.h"
#include "health.pb-c.h"
#include "service/codec.h"
#include "service/wire.h"

#define CHECK_FUZZ(c)                                                       \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* A tensor that validated: its bytes are exactly numel x dtype size, its dims as sent. */
static void check_tensor(const int32_t *shape, size_t ndim, const uint8_t *p, size_t len,
                         ss_dtype dt) {
  ss_tensor t;
  char err[256];
  err[0] = '\0';
  int rv = ss_tensor_from_wire("data", shape, ndim, p, len, dt, &t, err, sizeof err);
  if (rv != 0) {
    CHECK_FUZZ(err[0] != '\0' && strlen(err) < sizeof err);
    return;
  }
  CHECK_FUZZ(t.ndim == (int)ndim && ndim >= 1 && ndim <= SS_MAX_DIMS);
  size_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    CHECK_FUZZ(shape[i] >= 0 && t.shape[i] == shape[i]);
    numel *= (size_t)shape[i];
  }
  CHECK_FUZZ(t.numel == numel && t.nbytes == len && len == numel * ss_dtype_size(dt));
  CHECK_FUZZ(t.data == (const void *)p || len == 0);
  /* Touch every byte, as the model will: realigned, then converted (compute.c's job_run). */
  if (numel > 0 && numel <= 1024) {
    _Alignas(16) uint8_t in[4096];
    float tmp[1024];
    memcpy(in, p, len);
    ss_to_f32(dt, in, tmp, numel);
  }
}

/* Does the message have a top-level field number 0? protobuf-c 1.4 skips such a field (an
 * over-long tag like 80 00 decodes to 0); the service's splitter refuses it (the protobuf
 * spec says field numbers start at 1). The one known disagreement, so the oracle allows it. */
static int has_field0(const uint8_t *p, size_t len) {
  size_t pos = 0;
  while (pos < len) {
    uint64_t tag = 0, v = 0;
    int shift = 0;
    do {
      if (pos >= len || shift > 63) return 0;
      tag |= (uint64_t)(p[pos] & 0x7f) << shift, shift += 7;
    } while (p[pos++] & 0x80);
    if (tag >> 3 == 0) return 1;
    switch (tag & 7) {
      case 0:
        while (pos < len && (p[pos] & 0x80)) pos++;
        pos++;
        break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2:
        shift = 0;
        do {
          if (pos >= len || shift > 63) return 0;
          v |= (uint64_t)(p[pos] & 0x7f) << shift, shift += 7;
        } while (p[pos++] & 0x80);
        if (v > len - pos) return 0;
        pos += (size_t)v;
        break;
      default: return 0;
    }
  }
  return 0;
}

/* Absent proto2 strings are NULL. */
static int same_str(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void kv_entry(const ss_wire_view *v, const Splitlearn__Comm__KVCacheEntry *want) {
  ss_wire_kv e;
  int rv = ss_parse_kv_entry(v->p, v->len, &e);
  Splitlearn__Comm__KVCacheEntry *pb = splitlearn__comm__kvcache_entry__unpack(NULL, v->len, v->p);
  if (pb) {
    CHECK_FUZZ(rv == 0); /* (no field-0 check here: ss_parse_kv_entry skips unknown fields) */
    CHECK_FUZZ(e.n_key_shape == pb->n_key_shape && e.n_value_shape == pb->n_value_shape);
    for (size_t i = 0; i < e.n_key_shape && i < SS_WIRE_MAX_DIMS; i++)
      CHECK_FUZZ(e.key_shape[i] == pb->key_shape[i]);
    for (size_t i = 0; i < e.n_value_shape && i < SS_WIRE_MAX_DIMS; i++)
      CHECK_FUZZ(e.value_shape[i] == pb->value_shape[i]);
    CHECK_FUZZ(e.key.len == pb->key_data.len && e.value.len == pb->value_data.len);
    CHECK_FUZZ(e.key.len == 0 || memcmp(e.key.p, pb->key_data.data, e.key.len) == 0);
    CHECK_FUZZ(e.value.len == 0 || memcmp(e.value.p, pb->value_data.data, e.value.len) == 0);
    if (want) /* the same entry as the whole-message unpack saw */
      CHECK_FUZZ(want->key_data.len == pb->key_data.len && want->n_key_shape == pb->n_key_shape);
    splitlearn__comm__kvcache_entry__free_unpacked(pb, NULL);
  }
  if (rv != 0) return;
  CHECK_FUZZ(e.key.len == 0 || (e.key.p >= v->p && e.key.p + e.key.len <= v->p + v->len));
  CHECK_FUZZ(e.value.len == 0 || (e.value.p >= v->p && e.value.p + e.value.len <= v->p + v->len));
  if (e.n_key_shape <= SS_WIRE_MAX_DIMS)
    check_tensor(e.key_shape, e.n_key_shape, e.key.p, e.key.len, SS_DTYPE_F32);
  if (e.n_value_shape <= SS_WIRE_MAX_DIMS)
    check_tensor(e.value_shape, e.n_value_shape, e.value.p, e.value.len, SS_DTYPE_F32);
}

static void compute_request(const uint8_t *msg, size_t len) {
  _Alignas(16) char buf[1536];
  ss_arena arena;
  ss_arena_init(&arena, buf, sizeof buf);
  ProtobufCAllocator alloc;
  const uint8_t *data;
  size_t dlen;
  ss_wire_view *reps = NULL;
  size_t nreps = 0;
  Splitlearn__Comm__ComputeRequest *req =
      (Splitlearn__Comm__ComputeRequest *)ss_decode_tensor_request(
          &splitlearn__comm__compute_request__descriptor, msg, len, &arena, &alloc, &data, &dlen, 8,
          &reps, &nreps);
  Splitlearn__Comm__ComputeRequest *full =
      splitlearn__comm__compute_request__unpack(NULL, len, msg);
  if (full && !req) CHECK_FUZZ(has_field0(msg, len));
  if (full && req) {
    CHECK_FUZZ(dlen == full->data.len && (dlen == 0 || memcmp(data, full->data.data, dlen) == 0));
    CHECK_FUZZ(req->n_shape == full->n_shape);
    CHECK_FUZZ(req->n_shape == 0 ||
               memcmp(req->shape, full->shape, req->n_shape * sizeof *req->shape) == 0);
    CHECK_FUZZ(same_str(req->model_id, full->model_id));
    CHECK_FUZZ(req->n_metadata == full->n_metadata);
    CHECK_FUZZ(nreps == full->n_past_key_values && req->n_past_key_values == 0);
  }
  if (req) {
    CHECK_FUZZ(dlen == 0 || (data >= msg && data + dlen <= msg + len));
    ss_dtype dt = SS_DTYPE_F32;
    for (size_t i = 0; i < req->n_metadata; i++) /* map entries may lack key or value */
      if (same_str(req->metadata[i]->key, "dtype") && req->metadata[i]->value &&
          ss_dtype_parse(req->metadata[i]->value, &dt) != 0)
        dt = SS_DTYPE_F32;
    check_tensor(req->shape, req->n_shape, data, dlen, dt);
    for (size_t i = 0; i < nreps; i++) {
      CHECK_FUZZ(reps[i].len == 0 || (reps[i].p >= msg && reps[i].p + reps[i].len <= msg + len));
      kv_entry(&reps[i], full && i < full->n_past_key_values ? full->past_key_values[i] : NULL);
    }
  }
  if (full) splitlearn__comm__compute_request__free_unpacked(full, NULL);
  ss_arena_release(&arena);
}

static void backward_request(const uint8_t *msg, size_t len) {
  _Alignas(16) char buf[512];
  ss_arena arena;
  ss_arena_init(&arena, buf, sizeof buf);
  ProtobufCAllocator alloc;
  const uint8_t *data;
  size_t dlen;
  Splitlearn__Comm__BackwardRequest *req =
      (Splitlearn__Comm__BackwardRequest *)ss_decode_tensor_request(
          &splitlearn__comm__backward_request__descriptor, msg, len, &arena, &alloc, &data, &dlen,
          0, NULL, NULL);
  Splitlearn__Comm__BackwardRequest *full =
      splitlearn__comm__backward_request__unpack(NULL, len, msg);
  if (full && !req) CHECK_FUZZ(has_field0(msg, len));
  if (full && req) {
    CHECK_FUZZ(dlen == full->grad_output_data.len &&
               (dlen == 0 || memcmp(data, full->grad_output_data.data, dlen) == 0));
    CHECK_FUZZ(req->n_grad_output_shape == full->n_grad_output_shape);
    CHECK_FUZZ(same_str(req->forward_id, full->forward_id));
  }
  if (full) splitlearn__comm__backward_request__free_unpacked(full, NULL);
  if (req) check_tensor(req->grad_output_shape, req->n_grad_output_shape, data, dlen, SS_DTYPE_F32);
  ss_arena_release(&arena);
}

/* The zlib tensor codec: a payload must be a stream, inflate to exactly want bytes or be
 * refused with a message; what inflates deflates back to an equal stream's worth. */
static void zlib_codec(const uint8_t *msg, size_t len) {
  if (len < 2) return;
  size_t want = (size_t)msg[0] | (size_t)msg[1] << 8;
  msg += 2;
  len -= 2;
  char err[256] = "";
  if (ss_codec_check_stream("data", len, err, sizeof err) != 0) {
    CHECK_FUZZ(err[0] != '\0' && len < SS_ZLIB_MIN_STREAM);
    return;
  }
  void *out = NULL;
  int rv = ss_codec_inflate("data", msg, len, want, &out, err, sizeof err);
  if (rv != 0) {
    CHECK_FUZZ(err[0] != '\0' && strlen(err) < sizeof err);
    return;
  }
  CHECK_FUZZ(out != NULL || want == 0);
  void *z = NULL, *back = NULL;
  size_t zlen = 0;
  if (ss_codec_deflate(out, want, &z, &zlen) == 0) {
    CHECK_FUZZ(ss_codec_inflate("data", z, zlen, want, &back, err, sizeof err) == 0);
    CHECK_FUZZ(want == 0 || memcmp(back, out, want) == 0);
  }
  free(back);
  free(z);
  free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t *msg = data + 1;
  size_t len = size - 1;
  ProtobufCMessage *m = NULL;
  if (data[0] % 9 == 8) {
    zlib_codec(msg, len);
    return 0;
  }
  switch (data[0] % 8) {
    case 0: compute_request(msg, len); break;
    case 1: backward_request(msg, len); break;
    case 2: {
      ss_wire_view v = {msg, len};
      kv_entry(&v, NULL);
      break;
    }
    case 3:
      m = protobuf_c_message_unpack(&splitlearn__comm__health_request__descriptor, NULL, len, msg);
      break;
    case 4:
      m = protobuf_c_message_unpack(&splitlearn__comm__service_info_request__descriptor, NULL, len,
                                    msg);
      break;
    case 5:
      m = protobuf_c_message_unpack(&splitlearn__comm__monitoring_stream_request__descriptor, NULL,
                                    len, msg);
      break;
    case 6:
      m = protobuf_c_message_unpack(&grpc__health__v1__health_check_request__descriptor, NULL, len,
                                    msg);
      break;
    default: { /* the generic splitter on its own, any field numbers */
      _Alignas(16) char buf[256];
      ss_arena arena;
      ss_arena_init(&arena, buf, sizeof buf);
      const uint8_t *val;
      size_t vlen, rest_len, nreps;
      uint8_t *rest;
      ss_wire_view *reps;
      uint32_t f = len ? (uint32_t)(msg[0] % 16) : 1, rf = len > 1 ? (uint32_t)(msg[1] % 16) : 0;
      if (ss_split_fields(msg, len, f ? f : 1, rf, &val, &vlen, &reps, &nreps, &arena, &rest,
                          &rest_len) == 0) {
        size_t total = rest_len + vlen;
        for (size_t i = 0; i < nreps; i++) total += reps[i].len;
        CHECK_FUZZ(total <= len);
      }
      ss_arena_release(&arena);
    }
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}
