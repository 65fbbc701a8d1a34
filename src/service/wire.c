/*
 * wire.c — protobuf wire-format helpers for the zero-copy request path: split one
 * length-delimited field (the tensor bytes) out of a message so protobuf-c unpacks only the rest.
 * Thread: pure functions, any thread.
 */
#include "service/wire.h"

#include <string.h>

static int read_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= len) return -1;
    uint8_t b = p[(*pos)++];
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return 0;
    }
  }
  return -1;
}

/* Find top-level length-delimited field `field` (last occurrence wins, as protobuf says) and
 * copy every other field into a new buffer *rest (caller frees). Returns 0 or -1 (bad wire). */
int ss_split_field(const uint8_t *msg, size_t len, uint32_t field, const uint8_t **val,
                       size_t *vlen, ss_arena *arena, uint8_t **rest, size_t *rest_len) {
  *val = NULL;
  *vlen = 0;
  size_t skipped = 0;
  for (int pass = 0; pass < 2; pass++) {
    size_t pos = 0, out = 0;
    while (pos < len) {
      size_t start = pos;
      uint64_t tag, n;
      if (read_varint(msg, len, &pos, &tag) != 0) return -1;
      uint32_t wt = (uint32_t)(tag & 7);
      uint64_t fn = tag >> 3;
      if (fn == 0) return -1;
      switch (wt) {
      case 0: if (read_varint(msg, len, &pos, &n) != 0) return -1; break;
      case 1: if (len - pos < 8) return -1; pos += 8; break;
      case 5: if (len - pos < 4) return -1; pos += 4; break;
      case 2:
        if (read_varint(msg, len, &pos, &n) != 0 || n > len - pos) return -1;
        if (fn == field) {
          if (pass == 0) {
            skipped += pos + n - start;
            *val = msg + pos;
            *vlen = (size_t)n;
          }
          pos += (size_t)n;
          continue;
        }
        pos += (size_t)n;
        break;
      default: return -1; /* groups are not used by these messages */
      }
      if (pass == 1) {
        memcpy(*rest + out, msg + start, pos - start);
        out += pos - start;
      }
    }
    if (pass == 0) {
      *rest_len = len - skipped;
      *rest = ss_arena_alloc(arena, *rest_len ? *rest_len : 1);
      if (!*rest) return -1;
    }
  }
  return 0;
}


ProtobufCMessage *ss_decode_tensor_request(const ProtobufCMessageDescriptor *d, const uint8_t *msg,
                                           size_t len, ss_arena *arena, ProtobufCAllocator *alloc,
                                           const uint8_t **data, size_t *dlen) {
  uint8_t *rest;
  size_t rest_len;
  *alloc = (ProtobufCAllocator){ss_arena_pb_alloc, ss_arena_pb_free, arena};
  if (ss_split_field(msg, len, 1, data, dlen, arena, &rest, &rest_len) != 0) return NULL;
  return protobuf_c_message_unpack(d, alloc, rest_len, rest);
}
