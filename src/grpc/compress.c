/*
 * compress.c — gRPC message compression with zlib (see compress.h).
 *
 * Inflation is bounded: the output buffer grows (once to ~4x the input, then to the limit)
 * but never beyond the caller's limit, and a stream that
 * still produces output once the limit is reached is refused, so a
 * "zip bomb" (a small message that inflates to gigabytes) costs at most the limit in memory and
 * the time to inflate that much.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
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

struct ss_inflater {
  z_stream z;
  int enc;
  uint8_t *buf; /* output so far (have of cap bytes) */
  size_t have, cap;
  size_t map_len; /* buf is an anonymous mapping of this many bytes (0: malloc'd) */
  size_t in_off;  /* input bytes consumed */
};

int ss_inflater_new(int enc, ss_inflater **out) {
  *out = NULL;
  ss_inflater *f = calloc(1, sizeof *f);
  if (!f) return SS_ENOMEM;
  f->enc = enc;
  if (inflateInit2(&f->z, window_bits(enc)) != Z_OK) {
    free(f);
    return SS_ENOMEM;
  }
  *out = f;
  return 0;
}

void ss_grpc_inflated_free(uint8_t *p, size_t map_len) {
  if (map_len)
    munmap(p, map_len);
  else
    free(p);
}

void ss_inflater_free(ss_inflater *f) {
  if (!f) return;
  inflateEnd(&f->z);
  ss_grpc_inflated_free(f->buf, f->map_len);
  free(f);
}

size_t ss_inflater_held(const ss_inflater *f) { return f->have; }

static size_t page_round(size_t n) {
  long pg = sysconf(_SC_PAGESIZE);
  size_t p = pg > 0 ? (size_t)pg : 4096;
  return n == 0 ? p : (n + p - 1) / p * p;
}

/* Grow the output buffer: first about 4x the input (most messages fit), then straight to the
 * limit (the few bytes so far copied over), instead of a doubling series that copies the output
 * again at every step on the loop thread. A large buffer (SS_INFLATE_MAP_MIN) is an anonymous
 * mapping of its own: only the pages the output reaches cost memory, and they go back to the
 * system when the message is freed, where the heap (the daemon keeps 256 MB of freed heap, see
 * tools/splitserve.c) would keep every page a bomb ever touched. */
#define SS_INFLATE_MAP_MIN (1u << 20)
static int grow(ss_inflater *f, size_t n, size_t max) {
  size_t ncap = f->cap ? max : (n < SIZE_MAX / 4 ? n * 4 : max);
  if (ncap < 4096) ncap = 4096;
  if (ncap > max) ncap = max;
  if (ncap <= f->cap) return SS_ERANGE;
  uint8_t *p;
  size_t map_len = 0;
  if (ncap >= SS_INFLATE_MAP_MIN) {
    map_len = page_round(ncap);
    void *m = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return SS_ENOMEM;
    p = m;
  } else if (!(p = malloc(ncap ? ncap : 1))) {
    return SS_ENOMEM;
  }
  if (f->have) memcpy(p, f->buf, f->have);
  ss_grpc_inflated_free(f->buf, f->map_len);
  f->buf = p;
  f->cap = ncap;
  f->map_len = map_len;
  return 0;
}

int ss_inflater_step(ss_inflater *f, const uint8_t *in, size_t n, size_t max, size_t slice,
                     uint8_t **out, size_t *outlen, size_t *out_map) {
  *out = NULL;
  *outlen = 0;
  *out_map = 0;
  size_t out_budget = slice, in_budget = slice;
  for (;;) {
    if (f->have >= max) { /* at the limit: one more byte of output means too large */
      if (f->have > max) return SS_ERANGE; /* the limit shrank below what is already out */
      uint8_t probe;
      f->z.next_in = (Bytef *)(in + f->in_off);
      f->z.avail_in = n - f->in_off > UINT32_MAX ? UINT32_MAX : (uInt)(n - f->in_off);
      f->z.next_out = &probe;
      f->z.avail_out = 1;
      int zr = inflate(&f->z, Z_NO_FLUSH);
      if (zr == Z_STREAM_END && f->z.avail_out == 1) break;
      return f->z.avail_out == 0 ? SS_ERANGE : SS_EPROTO;
    }
    if (f->have == f->cap) {
      int rv = grow(f, n, max);
      if (rv != 0) return rv;
    }
    if (out_budget == 0 || in_budget == 0) return SS_INFLATE_MORE;
    size_t left_in = n - f->in_off, room = (f->cap < max ? f->cap : max) - f->have;
    if (left_in > in_budget) left_in = in_budget;
    if (room > out_budget) room = out_budget;
    uInt in_chunk = left_in > UINT32_MAX ? UINT32_MAX : (uInt)left_in;
    uInt out_chunk = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
    f->z.next_in = (Bytef *)(in + f->in_off);
    f->z.avail_in = in_chunk;
    f->z.next_out = f->buf + f->have;
    f->z.avail_out = out_chunk;
    int zr = inflate(&f->z, Z_NO_FLUSH);
    size_t used_in = in_chunk - f->z.avail_in, made = out_chunk - f->z.avail_out;
    f->in_off += used_in;
    f->have += made;
    in_budget -= used_in < in_budget ? used_in : in_budget;
    out_budget -= made < out_budget ? made : out_budget;
    if (zr == Z_STREAM_END) break;
    if (zr == Z_BUF_ERROR && f->z.avail_out > 0 && f->in_off == n) /* input ended inside */
      return SS_EPROTO;
    if (zr != Z_OK && zr != Z_BUF_ERROR) return zr == Z_MEM_ERROR ? SS_ENOMEM : SS_EPROTO;
    if (used_in == 0 && made == 0 && f->in_off == n) return SS_EPROTO; /* no progress */
  }
  /* (trailing bytes after the stream are ignored) */
  if (f->map_len) { /* give the untouched reservation back */
    size_t keep = page_round(f->have);
    if (keep < f->map_len) {
      munmap(f->buf + keep, f->map_len - keep);
      f->map_len = keep;
    }
  } else if (f->buf && f->cap - f->have > (64u << 10)) {
    uint8_t *p = realloc(f->buf, f->have ? f->have : 1);
    if (p) f->buf = p;
  }
  *out = f->buf ? f->buf : malloc(1);
  if (!*out) return SS_ENOMEM;
  *outlen = f->have;
  *out_map = f->map_len;
  f->buf = NULL;
  f->have = f->cap = f->map_len = 0;
  return 0;
}

int ss_grpc_inflate(int enc, const uint8_t *in, size_t n, size_t max, uint8_t **out,
                    size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  ss_inflater *f;
  int rv = ss_inflater_new(enc, &f);
  if (rv != 0) return rv;
  size_t map_len;
  rv = ss_inflater_step(f, in, n, max, SIZE_MAX, out, outlen, &map_len);
  ss_inflater_free(f);
  if (rv == 0 && map_len) { /* the contract here: malloc'd */
    uint8_t *p = malloc(*outlen ? *outlen : 1);
    if (p) memcpy(p, *out, *outlen);
    ss_grpc_inflated_free(*out, map_len);
    *out = p;
    if (!p) rv = SS_ENOMEM;
  }
  return rv == SS_INFLATE_MORE ? SS_EPROTO : rv;
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
      if (p) p += chunk - z.avail_in; /* (NULL for the final Z_FINISH round) */
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
