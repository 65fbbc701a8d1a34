/*
 * test_tensor.c — unit tests for src/core: wire-tensor validation messages, dtype names,
 * f16/bf16 <-> f32 conversions (known values, rounding, NaN/inf, exhaustive round trips),
 * metadata getters, error tables and log-level parsing. Single-threaded.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "core/log.h"
#include "core/meta.h"
#include "core/tensor.h"

static uint32_t fbits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bitsf(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint16_t to_h(float f) {
  uint16_t h;
  ss_f32_to_f16(&f, &h, 1);
  return h;
}

static float from_h(uint16_t h) {
  float f;
  ss_f16_to_f32(&h, &f, 1);
  return f;
}

static uint16_t to_bf(float f) {
  uint16_t h;
  ss_f32_to_bf16(&f, &h, 1);
  return h;
}

static void test_validation(void) {
  char err[256];
  ss_tensor t;
  uint8_t buf[64] = {0};
  int rc;

  {
    int32_t s[] = {2, 3};
    rc = ss_tensor_from_wire("data", s, 2, buf, 24, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(t.numel, 6);
    CHECK_EQ_INT(t.nbytes, 24);
    CHECK_EQ_INT(t.ndim, 2);
    CHECK_EQ_INT(t.shape[1], 3);
    CHECK(t.data == buf);
    CHECK_EQ_INT(t.dtype, SS_DTYPE_F32);
  }
  {
    int32_t s[] = {1, 10, 768};
    rc = ss_tensor_from_wire("data", s, 3, buf, 100, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_CONTAINS(err, "data has 100 bytes but shape [1,10,768] x float32 needs 30720");
  }
  {
    int32_t s[] = {4};
    rc = ss_tensor_from_wire("grad_output_data", s, 1, buf, 16, SS_DTYPE_F16, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_CONTAINS(err, "grad_output_data has 16 bytes but shape [4] x float16 needs 8");
    rc = ss_tensor_from_wire("data", s, 1, buf, 8, SS_DTYPE_BF16, &t, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(t.nbytes, 8);
  }
  {
    int32_t s[] = {2, -1, 3};
    rc = ss_tensor_from_wire("data", s, 3, buf, 0, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_CONTAINS(err, "negative dimension");
    CHECK_CONTAINS(err, "[2,-1,3]");
    CHECK_CONTAINS(err, "-1 at index 1");
  }
  {
    int32_t s[] = {2147483647, 2147483647, 2147483647};
    rc = ss_tensor_from_wire("data", s, 3, buf, 16, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_ERANGE);
    CHECK_CONTAINS(err, "[2147483647,2147483647,2147483647]");
    CHECK_CONTAINS(err, "overflow");
  }
  {
    /* element count fits 64 bits, byte size does not */
    int32_t s[] = {2147483647, 2147483647, 2};
    rc = ss_tensor_from_wire("data", s, 3, buf, 16, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_ERANGE);
    CHECK_CONTAINS(err, "overflow");
  }
  {
    rc = ss_tensor_from_wire("data", NULL, 0, buf, 4, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_CONTAINS(err, "data: shape is empty");
    CHECK_CONTAINS(err, "1 to 8");
  }
  {
    int32_t s[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    rc = ss_tensor_from_wire("data", s, 10, buf, 4, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_CONTAINS(err, "10 dimensions");
    s[8] = s[9] = 0; /* 8 dims are fine */
    rc = ss_tensor_from_wire("data", s, 8, buf, 4, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
  }
  {
    int32_t s[] = {0, 5};
    rc = ss_tensor_from_wire("data", s, 2, NULL, 0, SS_DTYPE_F32, &t, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(t.numel, 0);
  }
  {
    /* tiny error buffers are always terminated and never overrun */
    int32_t s[] = {1, 10, 768};
    char small[8];
    memset(small, 'x', sizeof small);
    rc = ss_tensor_from_wire("data", s, 3, buf, 100, SS_DTYPE_F32, &t, small, sizeof small);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_EQ_INT(strlen(small), 7);
  }
}

static void test_names(void) {
  ss_dtype dt;
  char buf[64];
  int64_t s[] = {1, 10, 768};
  CHECK(strcmp(ss_dtype_name(SS_DTYPE_F32), "float32") == 0);
  CHECK(strcmp(ss_dtype_name(SS_DTYPE_F16), "float16") == 0);
  CHECK(strcmp(ss_dtype_name(SS_DTYPE_BF16), "bfloat16") == 0);
  CHECK_EQ_INT(ss_dtype_size(SS_DTYPE_F32), 4);
  CHECK_EQ_INT(ss_dtype_size(SS_DTYPE_F16), 2);
  CHECK_EQ_INT(ss_dtype_size(SS_DTYPE_BF16), 2);
  CHECK(ss_dtype_parse("half", &dt) == 0 && dt == SS_DTYPE_F16);
  CHECK(ss_dtype_parse("fp16", &dt) == 0 && dt == SS_DTYPE_F16);
  CHECK(ss_dtype_parse("bf16", &dt) == 0 && dt == SS_DTYPE_BF16);
  CHECK(ss_dtype_parse("bfloat16", &dt) == 0 && dt == SS_DTYPE_BF16);
  CHECK(ss_dtype_parse("f32", &dt) == 0 && dt == SS_DTYPE_F32);
  CHECK(ss_dtype_parse("float32", &dt) == 0 && dt == SS_DTYPE_F32);
  CHECK_EQ_INT(ss_dtype_parse("int8", &dt), SS_EINVAL);
  CHECK_EQ_INT(ss_dtype_parse(NULL, &dt), SS_EINVAL);
  CHECK(strcmp(ss_shape_str(s, 3, buf, sizeof buf), "[1,10,768]") == 0);
  CHECK(strcmp(ss_shape_str(s, 0, buf, sizeof buf), "[]") == 0);
  ss_shape_str(s, 3, buf, 6);
  CHECK(strlen(buf) == 5);
}

static void test_f16(void) {
  CHECK_EQ_INT(to_h(1.0f), 0x3C00);
  CHECK_EQ_INT(to_h(-2.0f), 0xC000);
  CHECK_EQ_INT(to_h(0.0f), 0x0000);
  CHECK_EQ_INT(to_h(-0.0f), 0x8000);
  CHECK_EQ_INT(to_h(65504.0f), 0x7BFF);
  CHECK_EQ_INT(to_h(65519.0f), 0x7BFF);
  CHECK_EQ_INT(to_h(65520.0f), 0x7C00); /* tie past the max rounds to even = inf */
  CHECK_EQ_INT(to_h(1e10f), 0x7C00);
  CHECK_EQ_INT(to_h(-1e10f), 0xFC00);
  CHECK_EQ_INT(to_h(INFINITY), 0x7C00);
  CHECK_EQ_INT(to_h(-INFINITY), 0xFC00);
  CHECK(isnan(from_h(to_h(NAN))));
  CHECK(isnan(from_h(to_h(bitsf(0x7F800001u))))); /* signalling NaN with a low payload */
  CHECK_EQ_INT(to_h(0x1p-14f), 0x0400);           /* smallest normal */
  CHECK_EQ_INT(to_h(0x1p-24f), 0x0001);           /* smallest subnormal */
  CHECK_EQ_INT(to_h(0x1p-25f), 0x0000);           /* tie to even: 0 */
  CHECK_EQ_INT(to_h(0x1.000002p-25f), 0x0001);
  CHECK_EQ_INT(to_h(0x3p-25f), 0x0002);           /* 1.5 units: tie to even 2 */
  CHECK_EQ_INT(to_h(1023.0f * 0x1p-24f), 0x03FF); /* largest subnormal */
  CHECK_EQ_INT(to_h(1e-9f), 0x0000);
  CHECK_EQ_INT(to_h(1.0f + 0x1p-11f), 0x3C00);    /* tie, even below */
  CHECK_EQ_INT(to_h(1.0f + 0x3p-11f), 0x3C02);    /* tie, even above */
  CHECK_EQ_INT(to_h(1.0f + 0x1.02p-11f), 0x3C01); /* just above the tie */
  CHECK(from_h(0x3C00) == 1.0f);
  CHECK(from_h(0x7BFF) == 65504.0f);
  CHECK(from_h(0x0001) == 0x1p-24f);
  CHECK(from_h(0x03FF) == 1023.0f * 0x1p-24f);
  CHECK(from_h(0x8000) == 0.0f && signbit(from_h(0x8000)));
  CHECK(isinf(from_h(0x7C00)) && from_h(0x7C00) > 0);
  CHECK(isinf(from_h(0xFC00)) && from_h(0xFC00) < 0);
  CHECK(isnan(from_h(0x7E00)) && isnan(from_h(0x7C01)));
  /* every half round-trips exactly (NaNs stay NaN) */
  {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
      float f = from_h((uint16_t)h);
      uint16_t back = to_h(f);
      int is_nan = ((h & 0x7C00u) == 0x7C00u) && (h & 0x3FFu);
      if (is_nan ? !(isnan(f) && (back & 0x7C00u) == 0x7C00u && (back & 0x3FFu)) : back != h) bad++;
    }
    CHECK_EQ_INT(bad, 0);
  }
  /* monotone rounding: the result is one of the two neighbours and the nearer one */
  {
    int bad = 0;
    uint32_t x = 12345;
    for (int i = 0; i < 200000; i++) {
      float f, g;
      x = x * 1664525u + 1013904223u;
      f = bitsf((x & 0x807FFFFFu) | ((100u + (x >> 8) % 45u) << 23)); /* 2^-27 .. 2^17 */
      g = from_h(to_h(f));
      if (fabsf(f) >= 65520.0f) {
        if (!isinf(g)) bad++;
      } else {
        float ulp = fabsf(f) < 0x1p-14f ? 0x1p-24f : 0x1p-10f * exp2f(floorf(log2f(fabsf(f))));
        if (fabsf(g - f) > 0.5f * ulp) bad++;
      }
    }
    CHECK_EQ_INT(bad, 0);
  }
}

static void test_bf16(void) {
  float f;
  uint16_t h;
  CHECK_EQ_INT(to_bf(1.0f), 0x3F80);
  CHECK_EQ_INT(to_bf(-2.0f), 0xC000);
  CHECK_EQ_INT(to_bf(bitsf(0x3F808000u)), 0x3F80); /* tie, even below */
  CHECK_EQ_INT(to_bf(bitsf(0x3F818000u)), 0x3F82); /* tie, even above */
  CHECK_EQ_INT(to_bf(bitsf(0x3F808001u)), 0x3F81);
  CHECK_EQ_INT(to_bf(bitsf(0x3F807FFFu)), 0x3F80);
  CHECK_EQ_INT(to_bf(bitsf(0x7F7FFFFFu)), 0x7F80); /* FLT_MAX rounds to inf */
  CHECK_EQ_INT(to_bf(INFINITY), 0x7F80);
  CHECK_EQ_INT(to_bf(-INFINITY), 0xFF80);
  CHECK_EQ_INT(to_bf(bitsf(0x7F800001u)) & 0x7FC0, 0x7FC0); /* sNaN -> quiet NaN, not inf */
  CHECK_EQ_INT(to_bf(bitsf(0xFFC00000u)), 0xFFC0);
  CHECK_EQ_INT(to_bf(bitsf(0x00000001u)), 0x0000); /* tiny subnormal */
  h = 0x3F80;
  ss_bf16_to_f32(&h, &f, 1);
  CHECK(f == 1.0f);
  {
    int bad = 0;
    for (uint32_t v = 0; v < 65536; v++) {
      uint16_t in = (uint16_t)v, back;
      ss_bf16_to_f32(&in, &f, 1);
      back = to_bf(f);
      if (isnan(f) ? (back & 0x7F80u) != 0x7F80u || !(back & 0x7Fu) : back != in) bad++;
    }
    CHECK_EQ_INT(bad, 0);
  }
  /* ss_to_f32 / ss_from_f32 dispatch */
  {
    float in[3] = {1.5f, -0.25f, 3.0f}, out[3];
    uint16_t mid[3];
    ss_from_f32(SS_DTYPE_F16, in, mid, 3);
    ss_to_f32(SS_DTYPE_F16, mid, out, 3);
    CHECK(memcmp(in, out, sizeof in) == 0);
    ss_from_f32(SS_DTYPE_BF16, in, mid, 3);
    ss_to_f32(SS_DTYPE_BF16, mid, out, 3);
    CHECK(memcmp(in, out, sizeof in) == 0);
    memset(out, 0, sizeof out);
    ss_from_f32(SS_DTYPE_F32, in, out, 3);
    CHECK(memcmp(in, out, sizeof in) == 0);
    CHECK_EQ_INT(fbits(out[1]), fbits(-0.25f));
  }
}

static void test_meta(void) {
  const char *keys[] = {"ms", "factor", "bad", "inf", "big"};
  const char *vals[] = {"250", " 2.5 ", "abc", "inf", "1e400"};
  ss_meta m = {keys, vals, 5, NULL};
  char err[200];
  double v;
  CHECK(ss_meta_get(&m, "ms") == vals[0]);
  CHECK(ss_meta_get(&m, "nope") == NULL);
  CHECK(ss_meta_get(NULL, "ms") == NULL);
  CHECK(ss_meta_double(&m, "ms", 1, 0, 60000, &v, err, sizeof err) == 0 && v == 250.0);
  CHECK(ss_meta_double(&m, "factor", 1, -10, 10, &v, err, sizeof err) == 0 && v == 2.5);
  CHECK(ss_meta_double(&m, "absent", 7, 0, 10, &v, err, sizeof err) == 0 && v == 7.0);
  CHECK_EQ_INT(ss_meta_double(&m, "bad", 1, 0, 60000, &v, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "metadata 'bad' must be a number in [0, 60000], got 'abc'");
  CHECK_EQ_INT(ss_meta_double(&m, "ms", 1, 0, 100, &v, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "got '250'");
  CHECK_EQ_INT(ss_meta_double(&m, "inf", 1, 0, 100, &v, err, sizeof err), SS_EINVAL);
  CHECK_EQ_INT(ss_meta_double(&m, "big", 1, 0, 100, &v, err, sizeof err), SS_EINVAL);
}

static void test_errors_and_log(void) {
  CHECK_EQ_INT(ss_error_to_grpc(0), SS_GRPC_OK);
  CHECK_EQ_INT(ss_error_to_grpc(SS_EINVAL), SS_GRPC_INVALID_ARGUMENT);
  CHECK_EQ_INT(ss_error_to_grpc(SS_EBUSY), SS_GRPC_RESOURCE_EXHAUSTED);
  CHECK_EQ_INT(ss_error_to_grpc(SS_ETIMEDOUT), SS_GRPC_DEADLINE_EXCEEDED);
  CHECK_EQ_INT(ss_error_to_grpc(SS_ENOTFOUND), SS_GRPC_NOT_FOUND);
  CHECK_EQ_INT(ss_error_to_grpc(SS_ECLOSED), SS_GRPC_UNAVAILABLE);
  CHECK_EQ_INT(ss_error_to_grpc(SS_EUNSUPPORTED), SS_GRPC_UNIMPLEMENTED);
  CHECK_EQ_INT(ss_error_to_grpc(-999), SS_GRPC_UNKNOWN);
  for (int e = 0; e >= -12; e--) CHECK(strcmp(ss_strerror(e), "unknown error") != 0);
  CHECK(strcmp(ss_strerror(-999), "unknown error") == 0);
  CHECK(strcmp(ss_grpc_code_name(0), "OK") == 0);
  CHECK(strcmp(ss_grpc_code_name(3), "INVALID_ARGUMENT") == 0);
  CHECK(strcmp(ss_grpc_code_name(8), "RESOURCE_EXHAUSTED") == 0);
  CHECK(strcmp(ss_grpc_code_name(16), "UNAUTHENTICATED") == 0);
  CHECK(strcmp(ss_grpc_code_name(17), "UNKNOWN_CODE") == 0);
  CHECK(strcmp(ss_grpc_code_name(-1), "UNKNOWN_CODE") == 0);
  CHECK_EQ_INT(ss_log_parse_level("debug"), SS_LOG_DEBUG);
  CHECK_EQ_INT(ss_log_parse_level("WARN"), SS_LOG_WARN);
  CHECK_EQ_INT(ss_log_parse_level("loud"), -1);
  ss_log_set_level(SS_LOG_ERROR);
  CHECK_EQ_INT(ss_log_level(), SS_LOG_ERROR);
  SS_LOGI("not shown %d", 1);
  ss_log_set_level(SS_LOG_INFO);
  SS_LOGI("test_tensor: a log line with a trailing newline is still one line\n");
}

/* Wire bytes may sit at an odd offset in a request: conversions must not assume alignment. */
static void test_unaligned_conversions(void) {
  float src[5] = {1.0f, -2.5f, 0.333f, 65504.0f, -0.0f}, back[5], ref[5];
  for (int dt = SS_DTYPE_F16; dt <= SS_DTYPE_BF16; dt++) {
    _Alignas(8) unsigned char buf[16];
    ss_from_f32((ss_dtype)dt, src, buf + 1, 5); /* odd address */
    ss_to_f32((ss_dtype)dt, buf + 1, back, 5);
    uint16_t aligned[5];
    ss_from_f32((ss_dtype)dt, src, aligned, 5);
    ss_to_f32((ss_dtype)dt, aligned, ref, 5);
    CHECK(memcmp(buf + 1, aligned, sizeof aligned) == 0);
    CHECK(memcmp(back, ref, sizeof ref) == 0);
  }
}

int main(void) {
  test_unaligned_conversions();
  test_validation();
  test_names();
  test_f16();
  test_bf16();
  test_meta();
  test_errors_and_log();
  TEST_MAIN_END();
}
