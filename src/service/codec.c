/*
 * codec.c — see codec.h. zlib (Debian zlib1g) does the compression.
 */
#include "service/codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "service/service_int.h"

int ss_codec_parse(const char *s, int *zlib) {
  if (strcmp(s, "zlib") == 0)
    *zlib = 1;
  else if (strcmp(s, "none") == 0 || strcmp(s, "identity") == 0)
    *zlib = 0;
  else
    return SS_EINVAL;
  return 0;
}

int ss_wire_enc_resolve(const ss_service *s, const ss_model *m, const ss_meta *meta,
                        ss_wire_enc *out, char *err, size_t errlen) {
  out->dtype = m->wire_dtype >= 0       ? (ss_dtype)m->wire_dtype
               : s->cfg.wire_dtype >= 0 ? (ss_dtype)s->cfg.wire_dtype
                                        : SS_DTYPE_F32;
  out->zlib = m->wire_codec >= 0 ? m->wire_codec : s->cfg.wire_codec > 0;
  const char *dts = ss_meta_get(meta, "dtype"), *cs = ss_meta_get(meta, "codec");
  if (dts && ss_dtype_parse(dts, &out->dtype) != 0) {
    snprintf(err, errlen, "metadata dtype '%s' is not supported; use float32, float16 or bfloat16",
             dts);
    return SS_EINVAL;
  }
  if (cs && ss_codec_parse(cs, &out->zlib) != 0) {
    snprintf(err, errlen, "metadata codec '%s' is not supported; use none or zlib", cs);
    return SS_EINVAL;
  }
  return 0;
}

int ss_codec_check_stream(const char *what, size_t len, char *err, size_t errlen) {
  if (len >= SS_ZLIB_MIN_STREAM) return 0;
  snprintf(err, errlen,
           "%s has %zu bytes, too few for a zlib stream (wire codec zlib: at least %d bytes, "
           "as zlib.compress writes them; or send codec=none)",
           what, len, SS_ZLIB_MIN_STREAM);
  return SS_EINVAL;
}

int ss_codec_inflate(const char *what, const void *src, size_t len, size_t want, void **out,
                     char *err, size_t errlen) {
  *out = NULL;
  if (ss_codec_check_stream(what, len, err, errlen) != 0) return SS_EINVAL;
  unsigned char *buf = malloc(want ? want : 1);
  if (!buf) {
    snprintf(err, errlen, "out of memory for %s (%zu bytes inflated)", what, want);
    return SS_ENOMEM;
  }
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit(&z) != Z_OK) {
    free(buf);
    snprintf(err, errlen, "zlib: cannot start inflating %s", what);
    return SS_ENOMEM;
  }
  z.next_in = (Bytef *)(uintptr_t)src;
  size_t in_left = len, produced = 0;
  int rc = Z_OK;
  unsigned char spill[64]; /* one byte past want tells "too long" */
  while (rc == Z_OK) {
    unsigned in_chunk = in_left > (1u << 30) ? 1u << 30 : (unsigned)in_left;
    z.avail_in = in_chunk;
    if (produced < want) {
      size_t room = want - produced;
      z.next_out = buf + produced;
      z.avail_out = room > (1u << 30) ? 1u << 30 : (unsigned)room;
    } else {
      z.next_out = spill;
      z.avail_out = sizeof spill;
    }
    unsigned before_out = z.avail_out;
    rc = inflate(&z, Z_NO_FLUSH);
    in_left -= in_chunk - z.avail_in;
    produced += before_out - z.avail_out;
    if (produced > want) break;
    if (rc == Z_BUF_ERROR && in_left == 0) break; /* truncated */
    if (rc == Z_BUF_ERROR) rc = Z_OK;
  }
  inflateEnd(&z);
  if (rc != Z_STREAM_END || produced != want || in_left != 0) {
    free(buf);
    if (produced > want)
      snprintf(err, errlen, "%s inflates to more than the %zu bytes its shape and dtype need", what,
               want);
    else if (rc == Z_STREAM_END && in_left != 0)
      snprintf(err, errlen, "%s has %zu bytes after the end of its zlib stream", what, in_left);
    else if (rc == Z_STREAM_END || rc == Z_BUF_ERROR)
      snprintf(err, errlen, "%s inflates to %zu bytes but its shape and dtype need %zu", what,
               produced, want);
    else
      snprintf(err, errlen, "%s is not a valid zlib stream (wire codec zlib): %s", what,
               z.msg ? z.msg : "corrupt data");
    return SS_EINVAL;
  }
  *out = buf;
  return 0;
}

int ss_codec_deflate(const void *src, size_t len, void **out, size_t *outlen) {
  uLong bound = compressBound((uLong)len);
  unsigned char *buf = malloc(bound ? bound : 1);
  if (!buf) return SS_ENOMEM;
  uLongf n = bound;
  if (compress2(buf, &n, src, (uLong)len, Z_BEST_SPEED) != Z_OK) {
    free(buf);
    return SS_ENOMEM;
  }
  *out = buf;
  *outlen = (size_t)n;
  return 0;
}
