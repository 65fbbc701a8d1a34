/*
 * fuzz_grpc_frame.c — gRPC message framing (grpc/grpc_frame.h) under arbitrary chunking, plus
 * grpc-timeout values and the percent-encoding of grpc-message.
 *
 * Input: byte 0 picks the reader's size limit, bytes 1..8 the DATA chunk sizes (cycled; 0 is a
 * valid chunk), the rest is the stream of Length-Prefixed-Messages. Every message the reader
 * completes is checked against a one-shot parse of the same stream (oracle), TOO_LARGE must be
 * sticky, and the reader must never consume more than it was given. The first 10 bytes of the
 * stream are also tried as a grpc-timeout value (its formatted form must parse back to no less),
 * and the whole stream goes through pct_encode/pct_decode (a round trip when not truncated).
 *
 * Compression (grpc-encoding gzip / deflate, grpc/compress.h): every completed message with the
 * compressed flag is inflated as gzip and as deflate under the reader's limit (what conn.c does
 * with a request): the result never exceeds the limit, and an error is one of the documented
 * ones. The start of the stream is also compressed and inflated back (a round trip), and tried
 * as a grpc-encoding / grpc-accept-encoding value.
 *
 * Thread: the fuzzer's (single).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/compress.h"
#include "grpc/grpc_frame.h"
#include "splitserve.h"

#define CHECK_FUZZ(c)                                                       \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* A compressed message inflated under limit max, as the server does for a request. */
static void inflate_check(const uint8_t *msg, size_t len, size_t max) {
  for (int enc = SS_ENC_DEFLATE; enc <= SS_ENC_GZIP; enc++) {
    uint8_t *out = NULL;
    size_t outlen = 0;
    int rv = ss_grpc_inflate(enc, msg, len, max, &out, &outlen);
    CHECK_FUZZ(rv == 0 || rv == SS_ERANGE || rv == SS_EPROTO || rv == SS_ENOMEM);
    if (rv == 0)
      CHECK_FUZZ(outlen <= max);
    else
      CHECK_FUZZ(out == NULL);
    free(out);
  }
}

/* Compress then inflate (both encodings) the first bytes of s: the same bytes come back, and a
 * limit one byte short of them is refused. Encoding names: parsed without reading past n. */
static void codec_round_trip(const uint8_t *s, size_t n) {
  if (n > 4096) n = 4096;
  for (int enc = SS_ENC_DEFLATE; enc <= SS_ENC_GZIP; enc++) {
    ss_zpart part = {s, n};
    uint8_t *z = NULL, *back = NULL;
    size_t zlen = 0, blen = 0;
    if (ss_grpc_deflate(enc, &part, 1, 5, &z, &zlen) != 0) continue;
    CHECK_FUZZ(zlen >= 5);
    CHECK_FUZZ(ss_grpc_inflate(enc, z + 5, zlen - 5, n, &back, &blen) == 0);
    CHECK_FUZZ(blen == n && (n == 0 || memcmp(back, s, n) == 0));
    free(back);
    back = NULL;
    if (n > 0) CHECK_FUZZ(ss_grpc_inflate(enc, z + 5, zlen - 5, n - 1, &back, &blen) == SS_ERANGE);
    free(back);
    free(z);
  }
  size_t m = n < 32 ? n : 32;
  int e = ss_grpc_encoding_parse((const char *)s, m);
  CHECK_FUZZ(e >= -1 && e <= SS_ENC_GZIP);
  e = ss_grpc_accept_encoding_pick((const char *)s, m);
  CHECK_FUZZ(e >= SS_ENC_IDENTITY && e <= SS_ENC_GZIP);
}

static void frames(const uint8_t *sizes, const uint8_t *s, size_t n, size_t max_len) {
  ss_msg_reader r;
  ss_msg_reader_init(&r, max_len);
  size_t pos = 0, oracle = 0, k = 0;
  int dead = 0;
  while (pos < n && !dead) {
    size_t chunk = sizes[k++ % 8] % 23;
    if (chunk == 0) { /* an empty DATA frame: nothing happens */
      size_t used = 1;
      int rc = ss_msg_reader_feed(&r, s + pos, 0, &used);
      CHECK_FUZZ(used == 0 && (rc == SS_MSG_NEED_MORE || rc == SS_MSG_TOO_LARGE));
      chunk = 1;
    }
    if (chunk > n - pos) chunk = n - pos;
    const uint8_t *p = s + pos;
    size_t left = chunk;
    do {
      size_t used = 0;
      int rc = ss_msg_reader_feed(&r, p, left, &used);
      CHECK_FUZZ(used <= left);
      p += used;
      left -= used;
      if (rc == SS_MSG_COMPLETE) {
        /* The oracle: the message at `oracle` in the whole stream. */
        CHECK_FUZZ(n - oracle >= 5);
        size_t len = (size_t)s[oracle + 1] << 24 | (size_t)s[oracle + 2] << 16 |
                     (size_t)s[oracle + 3] << 8 | s[oracle + 4];
        CHECK_FUZZ(len <= max_len && n - oracle - 5 >= len);
        uint8_t *msg;
        size_t mlen;
        int comp;
        ss_msg_reader_take(&r, &msg, &mlen, &comp);
        CHECK_FUZZ(mlen == len && comp == (s[oracle] & 1));
        CHECK_FUZZ(len == 0 || memcmp(msg, s + oracle + 5, len) == 0);
        if (comp) inflate_check(msg, mlen, max_len);
        free(msg);
        CHECK_FUZZ(ss_msg_reader_idle(&r));
        oracle += 5 + len;
        CHECK_FUZZ((size_t)(p - s) == oracle);
      } else if (rc == SS_MSG_TOO_LARGE) {
        CHECK_FUZZ(r.len > max_len);
        size_t used2 = 0;
        CHECK_FUZZ(ss_msg_reader_feed(&r, p, left, &used2) == SS_MSG_TOO_LARGE && used2 == 0);
        dead = 1;
        break;
      } else {
        CHECK_FUZZ(rc == SS_MSG_NEED_MORE);
        CHECK_FUZZ(left == 0);
      }
    } while (left > 0);
    pos += chunk;
  }
  ss_msg_reader_free(&r);
}

static void timeout(const uint8_t *s, size_t n) {
  if (n > 10) n = 10;
  int64_t ns;
  if (ss_grpc_timeout_parse((const char *)s, n, &ns) != 0) return;
  CHECK_FUZZ(ns >= 0);
  if (ns == 0) return;
  char out[16];
  ss_grpc_timeout_format(ns, out);
  size_t l = strlen(out);
  CHECK_FUZZ(l >= 2 && l <= 9);
  int64_t back;
  CHECK_FUZZ(ss_grpc_timeout_parse(out, l, &back) == 0);
  CHECK_FUZZ(back >= ns); /* never shortens a deadline */
}

static void pct(const uint8_t *s, size_t n, size_t outlen) {
  char *enc = malloc(outlen), *dec = malloc(n + 1);
  if (!enc || !dec) {
    free(enc);
    free(dec);
    return;
  }
  size_t e = ss_pct_encode((const char *)s, n, enc, outlen);
  CHECK_FUZZ(e < outlen && enc[e] == '\0' && strlen(enc) == e);
  for (size_t i = 0; i < e; i++) CHECK_FUZZ(enc[i] >= 0x20 && enc[i] <= 0x7E);
  size_t d = ss_pct_decode(enc, e, dec, n + 1);
  CHECK_FUZZ(d <= n && dec[d] == '\0');
  CHECK_FUZZ(memcmp(dec, s, d) == 0); /* a prefix of the input, whole when not truncated */
  if (3 * n < outlen) CHECK_FUZZ(d == n);
  /* Decoding arbitrary bytes stays in bounds too. */
  size_t d2 = ss_pct_decode((const char *)s, n, dec, n + 1);
  CHECK_FUZZ(d2 <= n);
  free(enc);
  free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 9) return 0;
  /* (not the server default of 100 MiB: the reader allocates the announced length at once,
   * which under ASan costs ~1 ms per input) */
  static const size_t limits[] = {0, 1, 4, 16, 100, 1000, 65536, 1u << 20};
  size_t max_len = limits[data[0] % 8];
  const uint8_t *s = data + 9;
  size_t n = size - 9;
  frames(data + 1, s, n, max_len);
  codec_round_trip(s, n);
  timeout(s, n);
  pct(s, n, 1 + (size_t)data[0] * 2);
  return 0;
}
