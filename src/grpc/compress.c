/*
 * compress.c — gRPC message compression with zlib (see compress.h).
 *
 * Inflation is bounded: the output buffer grows geometrically but never beyond the caller's
 * limit, and a stream that still produces output once the limit is reached is refused, so a
 * "zip bomb" (a small message that inflates to gigabytes) costs at most the limit in memory and
 * the time to inflate that much.
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "grpc/compress.h"
#include "splitserve.h"

int ss_grpc_encoding_parse(const char *s, size_t len) {
  if (len == 8 && memcmp(s, "identity", 8) == 0) return SS_ENC_IDENTITY;
  if (len == 7 && memcmp(s, "deflate", 7) == 0) return SS_ENC_DEFLATE;
  if (len == 4 && memcmp(s, "gzip", 4) == 0) return SS_ENC_GZIP;
  return -1;
}

const char *ss_grpc_encoding_name(int enc) {
  return enc == SS_ENC_GZIP ? "gzip" : enc == SS_ENC_DEFLATE ? "deflate" : "identity";
}

int ss_grpc_accept_encoding_pick(const char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    while (i < len && (s[i] == ' ' || s[i] == ',' || s[i] == '\t')) i++;
    size_t j = i;
    while (j < len && s[j] != ',' && s[j] != ' ' && s[j] != '\t') j++;
    int e = ss_grpc_encoding_parse(s + i, j - i);
    if (e == SS_ENC_GZIP || e == SS_ENC_DEFLATE) return e;
    i = j;
  }
  return SS_ENC_IDENTITY;
}

static int window_bits(int enc) { return enc == SS_ENC_GZIP ? 15 + 16 : 15; }

int ss_grpc_inflate(int enc, const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, window_bits(enc)) != Z_OK) return SS_ENOMEM;
  size_t cap = n < (SIZE_MAX / 4) ? n * 4 : max;
  if (cap < 4096) cap = 4096;
  if (cap > max) cap = max;
  uint8_t *buf = malloc(cap ? cap : 1);
  if (!buf) {
    inflateEnd(&z);
    return SS_ENOMEM;
  }
  size_t have = 0, left_in = n;
  const uint8_t *next_in = in;
  int rv = 0;
  for (;;) {
    if (have == cap) {
      if (cap == max) { /* at the limit: one more byte of output means too large */
        uint8_t probe;
        z.next_in = (Bytef *)next_in; /* (max 0: no input was given to zlib yet) */
        z.avail_in = left_in > UINT32_MAX ? UINT32_MAX : (uInt)left_in;
        z.next_out = &probe;
        z.avail_out = 1;
        int zr = inflate(&z, Z_NO_FLUSH);
        if (zr == Z_STREAM_END && z.avail_out == 1) break;
        rv = z.avail_out == 0 ? SS_ERANGE : SS_EPROTO;
        break;
      }
      size_t ncap = cap > max / 2 ? max : cap * 2;
      uint8_t *p = realloc(buf, ncap);
      if (!p) {
        rv = SS_ENOMEM;
        break;
      }
      buf = p;
      cap = ncap;
    }
    uInt in_chunk = left_in > UINT32_MAX ? UINT32_MAX : (uInt)left_in;
    size_t out_room = cap - have;
    uInt out_chunk = out_room > UINT32_MAX ? UINT32_MAX : (uInt)out_room;
    z.next_in = (Bytef *)next_in;
    z.avail_in = in_chunk;
    z.next_out = buf + have;
    z.avail_out = out_chunk;
    int zr = inflate(&z, Z_NO_FLUSH);
    if (next_in) next_in += in_chunk - z.avail_in; /* NULL: an empty message (UB to offset) */
    left_in -= in_chunk - z.avail_in;
    have += out_chunk - z.avail_out;
    if (zr == Z_STREAM_END) break;
    if (zr == Z_BUF_ERROR && z.avail_out > 0) { /* input ended inside the stream */
      rv = SS_EPROTO;
      break;
    }
    if (zr != Z_OK && zr != Z_BUF_ERROR) {
      rv = zr == Z_MEM_ERROR ? SS_ENOMEM : SS_EPROTO;
      break;
    }
  }
  z.next_in = (Bytef *)next_in; /* (unused after: trailing bytes after the stream are ignored) */
  inflateEnd(&z);
  if (rv != 0) {
    free(buf);
    return rv;
  }
  *out = buf;
  *outlen = have;
  return 0;
}

int ss_grpc_deflate(int enc, const ss_zpart *parts, size_t n, size_t reserve, uint8_t **out,
                    size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += parts[i].len;
  z_stream z;
  memset(&z, 0, sizeof z);
  /* Level 1: the loop thread pays for it; most of the gain at a fraction of the cost. */
  if (deflateInit2(&z, 1, Z_DEFLATED, window_bits(enc), 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return SS_ENOMEM;
  size_t cap = reserve + deflateBound(&z, (uLong)total) + 64;
  uint8_t *buf = malloc(cap);
  if (!buf) {
    deflateEnd(&z);
    return SS_ENOMEM;
  }
  size_t have = reserve;
  int rv = 0;
  for (size_t i = 0; i <= n && rv == 0; i++) {
    const uint8_t *p = i < n ? parts[i].p : NULL;
    size_t left = i < n ? parts[i].len : 0;
    int flush = i == n ? Z_FINISH : Z_NO_FLUSH;
    do {
      uInt chunk = left > UINT32_MAX ? UINT32_MAX : (uInt)left;
      z.next_in = (Bytef *)p;
      z.avail_in = chunk;
      size_t room = cap - have;
      uInt oc = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
      z.next_out = buf + have;
      z.avail_out = oc;
      int zr = deflate(&z, chunk == left ? flush : Z_NO_FLUSH);
      have += oc - z.avail_out;
      if (p) p += chunk - z.avail_in; /* NULL: the Z_FINISH pass (no offset on NULL: UB) */
      left -= chunk - z.avail_in;
      if (zr == Z_STREAM_END) break;
      if (zr != Z_OK && zr != Z_BUF_ERROR) rv = SS_EPROTO;
      if (z.avail_out == 0 && have == cap) rv = SS_EPROTO; /* deflateBound was wrong */
    } while (rv == 0 && (left > 0 || (flush == Z_FINISH && z.avail_out == 0)));
  }
  deflateEnd(&z);
  if (rv != 0) {
    free(buf);
    return rv;
  }
  *out = buf;
  *outlen = have;
  return 0;
}
