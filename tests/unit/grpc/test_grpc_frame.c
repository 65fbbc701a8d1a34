/*
 * test_grpc_frame.c — unit tests for gRPC message framing (reassembly across any chunking,
 * size limit, empty messages), grpc-timeout parse/format and grpc-message percent coding.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "grpc/grpc_frame.h"
#include "splitserve.h"

/* Build a stream of n messages; message i has length lens[i] and bytes (i*31 + j) & 0xff. */
static uint8_t *build_stream(const size_t *lens, size_t n, size_t *out_len) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += 5 + lens[i];
  uint8_t *s = malloc(total ? total : 1), *p = s;
  for (size_t i = 0; i < n; i++) {
    ss_msg_prefix(p, (uint32_t)lens[i]);
    p += 5;
    for (size_t j = 0; j < lens[i]; j++) *p++ = (uint8_t)((i * 31 + j) & 0xff);
  }
  *out_len = total;
  return s;
}

/* Feed the stream in chunks of `chunk` bytes (0 = all at once); check every message. */
static void feed_in_chunks(const size_t *lens, size_t n, size_t chunk) {
  size_t total;
  uint8_t *s = build_stream(lens, n, &total);
  ss_msg_reader r;
  ss_msg_reader_init(&r, 1 << 20);
  size_t got = 0, off = 0;
  int bad = 0;
  while (off < total) {
    size_t clen = chunk ? chunk : total;
    if (clen > total - off) clen = total - off;
    const uint8_t *c = s + off;
    size_t left = clen;
    while (left > 0 || (r.hdr_have == 5 && r.have == r.len)) {
      size_t used = 0;
      int rc = ss_msg_reader_feed(&r, c, left, &used);
      c += used;
      left -= used;
      if (rc == SS_MSG_COMPLETE) {
        uint8_t *msg;
        size_t mlen;
        int comp;
        ss_msg_reader_take(&r, &msg, &mlen, &comp);
        if (got >= n || mlen != lens[got] || comp != 0) bad++;
        for (size_t j = 0; !bad && j < mlen; j++)
          if (msg[j] != (uint8_t)((got * 31 + j) & 0xff)) bad++;
        if (mlen == 0 && msg != NULL) bad++;
        free(msg);
        got++;
      } else if (rc != SS_MSG_NEED_MORE) {
        bad++;
        break;
      } else if (left != 0) {
        bad++; /* NEED_MORE must consume everything */
        break;
      }
    }
    off += clen;
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(got, n);
  CHECK(ss_msg_reader_idle(&r));
  ss_msg_reader_free(&r);
  free(s);
}

static void test_reassembly(void) {
  size_t lens[] = {10, 0, 1, 70000, 0, 5, 3};
  size_t n = sizeof lens / sizeof lens[0];
  feed_in_chunks(lens, n, 1); /* byte by byte */
  feed_in_chunks(lens, n, 0); /* everything in one chunk */
  feed_in_chunks(lens, n, 3); /* splits inside prefixes */
  feed_in_chunks(lens, n, 7);
  feed_in_chunks(lens, n, 16384);
  size_t one[] = {0};
  feed_in_chunks(one, 1, 1); /* a lone empty message */
  feed_in_chunks(one, 1, 0);
}

static void test_prefix(void) {
  uint8_t p[5];
  ss_msg_prefix(p, 0x01020304u);
  CHECK(p[0] == 0 && p[1] == 1 && p[2] == 2 && p[3] == 3 && p[4] == 4);
}

static void test_too_large(void) {
  ss_msg_reader r;
  ss_msg_reader_init(&r, 100);
  uint8_t hdr[5];
  ss_msg_prefix(hdr, 101);
  size_t used = 0;
  /* Partial prefix: still needs more. */
  CHECK_EQ_INT(ss_msg_reader_feed(&r, hdr, 4, &used), SS_MSG_NEED_MORE);
  CHECK_EQ_INT(used, 4);
  /* Last prefix byte: refused from the prefix alone, nothing buffered. */
  CHECK_EQ_INT(ss_msg_reader_feed(&r, hdr + 4, 1, &used), SS_MSG_TOO_LARGE);
  CHECK_EQ_INT(r.len, 101);
  CHECK(r.buf == NULL);
  /* Sticky. */
  uint8_t body[8] = {0};
  CHECK_EQ_INT(ss_msg_reader_feed(&r, body, sizeof body, &used), SS_MSG_TOO_LARGE);
  ss_msg_reader_free(&r);

  /* Exactly the limit is fine. */
  ss_msg_reader_init(&r, 100);
  ss_msg_prefix(hdr, 100);
  CHECK_EQ_INT(ss_msg_reader_feed(&r, hdr, 5, &used), SS_MSG_NEED_MORE);
  ss_msg_reader_free(&r);

  /* Huge announced length (4 GiB - 1) with the default-ish limit. */
  ss_msg_reader_init(&r, 100u << 20);
  uint8_t big[5] = {0, 0xff, 0xff, 0xff, 0xff};
  CHECK_EQ_INT(ss_msg_reader_feed(&r, big, 5, &used), SS_MSG_TOO_LARGE);
  CHECK(r.buf == NULL);
  ss_msg_reader_free(&r);
}

static void test_compressed_flag(void) {
  ss_msg_reader r;
  ss_msg_reader_init(&r, 100);
  uint8_t m[7] = {1, 0, 0, 0, 2, 'h', 'i'};
  size_t used;
  CHECK_EQ_INT(ss_msg_reader_feed(&r, m, 7, &used), SS_MSG_COMPLETE);
  CHECK_EQ_INT(used, 7);
  /* Not taken: feeding again returns COMPLETE without consuming. */
  CHECK_EQ_INT(ss_msg_reader_feed(&r, m, 7, &used), SS_MSG_COMPLETE);
  CHECK_EQ_INT(used, 0);
  CHECK(!ss_msg_reader_idle(&r));
  uint8_t *msg;
  size_t len;
  int comp;
  ss_msg_reader_take(&r, &msg, &len, &comp);
  CHECK_EQ_INT(comp, 1);
  CHECK_EQ_INT(len, 2);
  CHECK(msg && memcmp(msg, "hi", 2) == 0);
  free(msg);
  CHECK(ss_msg_reader_idle(&r));
  ss_msg_reader_free(&r);
}

static int64_t tparse(const char *s, int *rc) {
  int64_t ns = -1;
  *rc = ss_grpc_timeout_parse(s, strlen(s), &ns);
  return ns;
}

static void test_timeout(void) {
  int rc;
  CHECK_EQ_INT(tparse("1H", &rc), INT64_C(3600000000000));
  CHECK_EQ_INT(rc, 0);
  CHECK_EQ_INT(tparse("2M", &rc), INT64_C(120000000000));
  CHECK_EQ_INT(tparse("3S", &rc), INT64_C(3000000000));
  CHECK_EQ_INT(tparse("250m", &rc), INT64_C(250000000));
  CHECK_EQ_INT(tparse("7u", &rc), 7000);
  CHECK_EQ_INT(tparse("99999999n", &rc), 99999999);
  CHECK_EQ_INT(rc, 0);
  CHECK_EQ_INT(tparse("0m", &rc), 0);
  CHECK_EQ_INT(rc, 0);
  tparse("99999999H", &rc); /* saturates, no overflow */
  CHECK_EQ_INT(rc, 0);
  CHECK_EQ_INT(tparse("99999999H", &rc), INT64_MAX);

  tparse("", &rc);
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("123456789S", &rc); /* 9 digits */
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("100", &rc); /* no unit */
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("S", &rc); /* no digits */
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("10x", &rc); /* bad unit */
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("10s", &rc); /* units are case-sensitive: 's' is not 'S' */
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("1a0m", &rc); /* non-digit */
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse("-10m", &rc);
  CHECK_EQ_INT(rc, SS_EINVAL);
  tparse(" 10m", &rc);
  CHECK_EQ_INT(rc, SS_EINVAL);
  int64_t ns;
  CHECK_EQ_INT(ss_grpc_timeout_parse(NULL, 0, &ns), SS_EINVAL);
  /* Length-bounded: "5S" inside a longer buffer. */
  CHECK_EQ_INT(ss_grpc_timeout_parse("5Sxyz", 2, &ns), 0);
  CHECK_EQ_INT(ns, INT64_C(5000000000));

  char out[16];
  ss_grpc_timeout_format(INT64_C(1000000000), out);
  CHECK(strcmp(out, "1S") == 0);
  ss_grpc_timeout_format(INT64_C(1500000000), out);
  CHECK(strcmp(out, "1500m") == 0);
  ss_grpc_timeout_format(INT64_C(3600000000000), out);
  CHECK(strcmp(out, "1H") == 0);
  ss_grpc_timeout_format(1234, out);
  CHECK(strcmp(out, "1234n") == 0);
  ss_grpc_timeout_format(INT64_C(123456789123), out); /* not exact in 8 digits: rounds up */
  CHECK(strcmp(out, "123456790u") == 0 || strcmp(out, "123457m") == 0);
  int64_t back;
  CHECK_EQ_INT(ss_grpc_timeout_parse(out, strlen(out), &back), 0);
  CHECK(back >= INT64_C(123456789123));
  ss_grpc_timeout_format(INT64_MAX, out);
  CHECK_EQ_INT(ss_grpc_timeout_parse(out, strlen(out), &back), 0);
  /* Round trips for a spread of values: parse(format(x)) >= x and exact when representable. */
  int bad = 0;
  for (int64_t x = 1; x < INT64_C(4000000000000000); x = x * 3 + 7) {
    ss_grpc_timeout_format(x, out);
    if (strlen(out) > 9 || ss_grpc_timeout_parse(out, strlen(out), &back) != 0 || back < x) bad++;
  }
  CHECK_EQ_INT(bad, 0);
}

static void test_pct(void) {
  char out[64];
  const char *in = "bad input: 100% \xc3\xa9\n";
  size_t n = ss_pct_encode(in, strlen(in), out, sizeof out);
  CHECK(strcmp(out, "bad input: 100%25 %C3%A9%0A") == 0);
  CHECK_EQ_INT(n, strlen(out));
  char dec[64];
  n = ss_pct_decode(out, strlen(out), dec, sizeof dec);
  CHECK(strcmp(dec, in) == 0);
  CHECK_EQ_INT(n, strlen(in));
  /* Invalid escapes copied verbatim. */
  ss_pct_decode("a%zzb%4", 7, dec, sizeof dec);
  CHECK(strcmp(dec, "a%zzb%4") == 0);
  ss_pct_decode("%41%", 4, dec, sizeof dec);
  CHECK(strcmp(dec, "A%") == 0);
  ss_pct_decode("%e9", 3, dec, sizeof dec);
  CHECK(strcmp(dec, "\xe9") == 0);
  /* Truncation never splits an escape. */
  n = ss_pct_encode("ab\n", 3, out, 5); /* room for 4 chars: "ab" then %0A would need 5 */
  CHECK(strcmp(out, "ab") == 0);
  CHECK_EQ_INT(n, 2);
  n = ss_pct_encode("abcdef", 6, out, 4);
  CHECK(strcmp(out, "abc") == 0);
  n = ss_pct_encode("x", 1, out, 1);
  CHECK_EQ_INT(n, 0);
  CHECK(out[0] == '\0');
  n = ss_pct_decode("abcdef", 6, dec, 3);
  CHECK(strcmp(dec, "ab") == 0);
  /* Empty input. */
  n = ss_pct_encode("", 0, out, sizeof out);
  CHECK(n == 0 && out[0] == '\0');
}

int main(void) {
  test_prefix();
  test_reassembly();
  test_too_large();
  test_compressed_flag();
  test_timeout();
  test_pct();
  TEST_MAIN_END();
}
