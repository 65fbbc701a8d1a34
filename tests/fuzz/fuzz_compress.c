/*
 * fuzz_compress.c — the zlib paths: gRPC message inflation (grpc/compress.h: gzip and deflate,
 * one-shot and in bounded slices as the transport runs it) and the tensor codec of the service
 * (service/codec.h: zlib payloads inflated to the exact size a shape gives).
 *
 * Input: byte 0 picks the mode (bit 0: gzip / deflate; bits 1..3: the slice size, 32 .. 4096
 * bytes; bits 4..7 mod 3: the limit between slices stays, shrinks by one, or grows by a slice),
 * byte 1 the output limit (0 .. 254 x 256 bytes; 255: 2 MiB, where the transport's buffer is a
 * mapping), the rest is the compressed stream. Checks:
 *   - the sliced inflation returns exactly what the one-shot one returns (same status, same
 *     bytes) when the limit stays put, never holds more than the limit, and ends;
 *   - what either inflates deflates back (ss_grpc_deflate) and inflates again to the same bytes;
 *   - ss_codec_inflate with the one-shot output's size (when it succeeded) gives the same bytes
 *     for a zlib stream, and never writes outside `want` bytes otherwise (ASan).
 *
 * Thread: the fuzzer's (single).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/compress.h"
#include "service/codec.h"
#include "splitserve.h"

#define CHECK_FUZZ(c)                                                       \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* Inflate in slices; the limit may shrink or grow between steps (mode 0: fixed). */
static int sliced(int enc, const uint8_t *in, size_t n, size_t max, size_t slice, unsigned move,
                  uint8_t **out, size_t *outlen) {
  ss_inflater *f;
  if (ss_inflater_new(enc, &f) != 0) return SS_ENOMEM;
  int rv;
  size_t steps = 0, lim = max, top = max, map_len = 0;
  for (;;) {
    rv = ss_inflater_step(f, in, n, lim, slice, out, outlen, &map_len);
    if (rv != SS_INFLATE_MORE) break;
    CHECK_FUZZ(ss_inflater_held(f) <= top);       /* never more than the largest limit given */
    CHECK_FUZZ(++steps < (n + top) / slice + 16); /* every step makes progress */
    if (move == 1 && lim > 0) lim--;              /* the budget shrinks under it */
    if (move == 2) lim += slice;                  /* or grows */
    if (lim > top) top = lim;
  }
  ss_inflater_free(f);
  if (rv == 0) {
    CHECK_FUZZ(*outlen <= lim);
    if (map_len) { /* a mapping: the caller here wants malloc'd bytes */
      uint8_t *p = malloc(*outlen ? *outlen : 1);
      CHECK_FUZZ(p != NULL);
      memcpy(p, *out, *outlen);
      ss_grpc_inflated_free(*out, map_len);
      *out = p;
    }
  }
  return rv;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  int enc = (data[0] & 1) ? SS_ENC_GZIP : SS_ENC_DEFLATE;
  size_t slice = (size_t)1 << (((data[0] >> 1) & 7) + 5); /* 32 .. 4096 */
  unsigned move = (data[0] >> 4) % 3;
  size_t max = data[1] == 255 ? (size_t)2 << 20 : (size_t)data[1] * 256; /* 255: mapped buffer */
  const uint8_t *in = data + 2;
  size_t n = size - 2;

  uint8_t *one = NULL, *sl = NULL;
  size_t one_len = 0, sl_len = 0;
  int r1 = ss_grpc_inflate(enc, in, n, max, &one, &one_len);
  int r2 = sliced(enc, in, n, max, slice, move, &sl, &sl_len);
  CHECK_FUZZ(r1 == 0 || r1 == SS_ERANGE || r1 == SS_EPROTO || r1 == SS_ENOMEM);
  if (move == 0) { /* same limit all along: the same answer */
    CHECK_FUZZ(r1 == r2);
    if (r1 == 0) CHECK_FUZZ(one_len == sl_len && memcmp(one, sl, one_len) == 0);
  }
  if (r1 == 0) {
    CHECK_FUZZ(one_len <= max);
    /* round trip through our deflate */
    ss_zpart part = {one, one_len};
    uint8_t *z = NULL, *back = NULL;
    size_t zlen = 0, blen = 0;
    if (ss_grpc_deflate(enc, &part, 1, 5, &z, &zlen) == 0) {
      CHECK_FUZZ(zlen >= 5);
      CHECK_FUZZ(ss_grpc_inflate(enc, z + 5, zlen - 5, max, &back, &blen) == 0);
      CHECK_FUZZ(blen == one_len && memcmp(back, one, blen) == 0);
      free(back);
      free(z);
    }
    /* the service's tensor codec: zlib streams only, inflated to an exact size */
    if (enc == SS_ENC_DEFLATE) {
      void *t = NULL;
      char err[256];
      if (ss_codec_check_stream("data", n, err, sizeof err) == 0 &&
          ss_codec_inflate("data", in, n, one_len, &t, err, sizeof err) == 0)
        CHECK_FUZZ(one_len == 0 || memcmp(t, one, one_len) == 0);
      free(t);
      t = NULL;
      if (ss_codec_inflate("data", in, n, one_len + 1, &t, err, sizeof err) == 0)
        CHECK_FUZZ(0); /* one byte more than the stream holds cannot succeed */
      free(t);
    }
  }
  free(one);
  free(sl);
  return 0;
}
