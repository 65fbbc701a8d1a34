/*
 * grpc_frame.c — gRPC Length-Prefixed-Message reassembly, grpc-timeout values and the
 * percent-encoding of grpc-message (see grpc_frame.h and PROTOCOL-HTTP2.md).
 *
 * Reader state machine: PREFIX (hdr_have < 5) -> BODY (have < len) -> COMPLETE (have == len,
 * waiting for ss_msg_reader_take) -> PREFIX. The announced length is checked against max_len
 * as soon as the prefix is complete, before any body byte is buffered, so a peer cannot make
 * us allocate more than max_len per stream.
 * Thread: pure data structures and functions; used on the loop thread.
 */
#include "grpc/grpc_frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "splitserve.h"

void ss_msg_reader_init(ss_msg_reader *r, size_t max_len) {
  memset(r, 0, sizeof *r);
  r->max_len = max_len;
}

/* Complete: the prefix is whole and the body has all its bytes. */
static int reader_complete(const ss_msg_reader *r) { return r->hdr_have == 5 && r->have == r->len; }

int ss_msg_reader_feed(ss_msg_reader *r, const uint8_t *data, size_t len, size_t *used) {
  size_t off = 0;
  *used = 0;
  if (r->hdr_have == 5) {
    if (reader_complete(r)) return SS_MSG_COMPLETE;   /* not taken yet */
    if (r->len > r->max_len) return SS_MSG_TOO_LARGE; /* sticky: the stream is dead */
    if (!r->buf) return SS_MSG_NOMEM;
  }
  while (r->hdr_have < 5) {
    if (off == len) return SS_MSG_NEED_MORE;
    r->hdr[r->hdr_have++] = data[off++];
    *used = off;
    if (r->hdr_have == 5) {
      r->compressed = r->hdr[0] & 1;
      r->len = ((size_t)r->hdr[1] << 24) | ((size_t)r->hdr[2] << 16) | ((size_t)r->hdr[3] << 8) |
               (size_t)r->hdr[4];
      r->have = 0;
      if (r->len > r->max_len) return SS_MSG_TOO_LARGE;
      if (r->len > 0) {
        r->buf = malloc(r->len);
        if (!r->buf) return SS_MSG_NOMEM;
      }
    }
  }
  size_t want = r->len - r->have;
  size_t n = len - off < want ? len - off : want;
  if (n > 0) {
    memcpy(r->buf + r->have, data + off, n);
    r->have += n;
    off += n;
  }
  *used = off;
  return reader_complete(r) ? SS_MSG_COMPLETE : SS_MSG_NEED_MORE;
}

void ss_msg_reader_take(ss_msg_reader *r, uint8_t **msg, size_t *len, int *compressed) {
  *msg = r->buf;
  *len = r->len;
  if (compressed) *compressed = r->compressed;
  r->buf = NULL;
  r->hdr_have = 0;
  r->len = 0;
  r->have = 0;
  r->compressed = 0;
}

int ss_msg_reader_idle(const ss_msg_reader *r) { return r->hdr_have == 0; }

void ss_msg_reader_free(ss_msg_reader *r) {
  free(r->buf);
  r->buf = NULL;
  r->hdr_have = 0;
  r->len = 0;
  r->have = 0;
}

void ss_msg_prefix(uint8_t out[5], uint32_t len) {
  out[0] = 0;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
}

/* ------------------------------------------------------------- grpc-timeout ---- */

static int64_t unit_ns(char u) {
  switch (u) {
    case 'H': return INT64_C(3600000000000);
    case 'M': return INT64_C(60000000000);
    case 'S': return INT64_C(1000000000);
    case 'm': return INT64_C(1000000);
    case 'u': return INT64_C(1000);
    case 'n': return 1;
    default: return 0;
  }
}

int ss_grpc_timeout_parse(const char *s, size_t len, int64_t *ns) {
  /* TimeoutValue: 1..8 ASCII digits; TimeoutUnit: one of H M S m u n. */
  if (!s || len < 2 || len > 9) return SS_EINVAL;
  int64_t unit = unit_ns(s[len - 1]);
  if (unit == 0) return SS_EINVAL;
  int64_t v = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    if (s[i] < '0' || s[i] > '9') return SS_EINVAL;
    v = v * 10 + (s[i] - '0');
  }
  /* Saturate instead of overflowing (99999999H does not fit in int64 ns). */
  *ns = v > INT64_MAX / unit ? INT64_MAX : v * unit;
  return 0;
}

void ss_grpc_timeout_format(int64_t ns, char out[16]) {
  static const char units[] = {'H', 'M', 'S', 'm', 'u', 'n'};
  const int64_t max_v = 99999999;
  if (ns <= 0) ns = 1;
  /* Coarsest unit that represents ns exactly in <= 8 digits: the shortest exact value. */
  for (size_t i = 0; i < sizeof units; i++) {
    int64_t u = unit_ns(units[i]);
    if (ns % u == 0 && ns / u <= max_v) {
      snprintf(out, 16, "%u%c", (unsigned)(ns / u), units[i]);
      return;
    }
  }
  /* Not exact anywhere: round up in the finest unit that fits (never shortens a deadline). */
  for (size_t i = sizeof units; i-- > 0;) {
    int64_t u = unit_ns(units[i]);
    int64_t v = ns / u + (ns % u != 0);
    if (v <= max_v) {
      snprintf(out, 16, "%u%c", (unsigned)v, units[i]);
      return;
    }
  }
  snprintf(out, 16, "%uH", (unsigned)max_v);
}

/* ------------------------------------------------------------- grpc-message ---- */

size_t ss_pct_encode(const char *in, size_t inlen, char *out, size_t outlen) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  if (outlen == 0) return 0;
  for (size_t i = 0; i < inlen; i++) {
    unsigned char c = (unsigned char)in[i];
    if (c >= 0x20 && c <= 0x7E && c != '%') {
      if (o + 1 > outlen - 1) break;
      out[o++] = (char)c;
    } else {
      if (o + 3 > outlen - 1) break;
      out[o++] = '%';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  out[o] = '\0';
  return o;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

size_t ss_pct_decode(const char *in, size_t inlen, char *out, size_t outlen) {
  size_t o = 0;
  if (outlen == 0) return 0;
  for (size_t i = 0; i < inlen && o + 1 < outlen; i++) {
    int hi, lo;
    if (in[i] == '%' && i + 2 < inlen && (hi = hexval(in[i + 1])) >= 0 &&
        (lo = hexval(in[i + 2])) >= 0) {
      out[o++] = (char)((hi << 4) | lo);
      i += 2;
    } else {
      out[o++] = in[i];
    }
  }
  out[o] = '\0';
  return o;
}
