/*
 * wire.c — protobuf wire-format helpers for the zero-copy request path: split one
 * length-delimited field (the tensor bytes) out of a message so protobuf-c unpacks only the rest.
 * Thread: pure functions, any thread.
 */
#include "service/wire.h"

#include <stdio.h>
#include <string.h>

#include "splitserve.h"

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

/* One field at *pos: its number *fn and wire type *wt; a varint's value, or a length-delimited
 * field's payload length, in *n, and the payload in *val (else NULL). *pos moves past the field.
 * 0, or -1 for a truncated field or a wire type these messages do not use (groups). */
static int next_field(const uint8_t *p, size_t len, size_t *pos, uint64_t *fn, uint32_t *wt,
                      const uint8_t **val, uint64_t *n) {
  uint64_t tag;
  *val = NULL;
  *n = 0;
  if (read_varint(p, len, pos, &tag) != 0) return -1;
  *wt = (uint32_t)(tag & 7);
  *fn = tag >> 3;
  switch (*wt) {
    case 0: return read_varint(p, len, pos, n);
    case 1:
      if (len - *pos < 8) return -1;
      *pos += 8;
      return 0;
    case 5:
      if (len - *pos < 4) return -1;
      *pos += 4;
      return 0;
    case 2:
      if (read_varint(p, len, pos, n) != 0 || *n > len - *pos) return -1;
      *val = p + *pos;
      *pos += (size_t)*n;
      return 0;
    default: return -1;
  }
}

/* One pass over the top-level fields: the last `field` occurrence becomes *val; every
 * `rep_field` occurrence is appended to reps (when reps != NULL; reps_cap entries at most);
 * everything else is copied to rest (when rest != NULL). Returns the bytes skipped, or -1. */
static long scan(const uint8_t *msg, size_t len, uint32_t field, uint32_t rep_field,
                 const uint8_t **val, size_t *vlen, ss_wire_view *reps, size_t reps_cap,
                 size_t *nreps, uint8_t *rest) {
  size_t pos = 0, out = 0, skipped = 0;
  while (pos < len) {
    size_t start = pos;
    uint64_t fn, n;
    uint32_t wt;
    const uint8_t *v;
    if (next_field(msg, len, &pos, &fn, &wt, &v, &n) != 0 || fn == 0) return -1;
    if (wt == 2 && (fn == field || (rep_field && fn == rep_field))) {
      if (fn == field) {
        *val = v;
        *vlen = (size_t)n;
      } else {
        if (reps && *nreps < reps_cap) reps[*nreps] = (ss_wire_view){v, (size_t)n};
        (*nreps)++;
      }
      skipped += pos - start;
      continue;
    }
    if (rest) memcpy(rest + out, msg + start, pos - start);
    out += pos - start;
  }
  return (long)skipped;
}

int ss_split_field(const uint8_t *msg, size_t len, uint32_t field, const uint8_t **val,
                   size_t *vlen, ss_arena *arena, uint8_t **rest, size_t *rest_len) {
  size_t nreps = 0;
  *val = NULL;
  *vlen = 0;
  long skipped = scan(msg, len, field, 0, val, vlen, NULL, 0, &nreps, NULL);
  if (skipped < 0) return -1;
  *rest_len = len - (size_t)skipped;
  *rest = ss_arena_alloc(arena, *rest_len ? *rest_len : 1);
  if (!*rest) return -1;
  scan(msg, len, field, 0, val, vlen, NULL, 0, &nreps, *rest);
  return 0;
}

int ss_split_fields(const uint8_t *msg, size_t len, uint32_t field, uint32_t rep_field,
                    const uint8_t **val, size_t *vlen, ss_wire_view **reps, size_t *nreps,
                    ss_arena *arena, uint8_t **rest, size_t *rest_len) {
  *val = NULL;
  *vlen = 0;
  *nreps = 0;
  *reps = NULL;
  long skipped = scan(msg, len, field, rep_field, val, vlen, NULL, 0, nreps, NULL);
  if (skipped < 0) return -1;
  size_t cap = *nreps;
  if (cap && !(*reps = ss_arena_alloc(arena, cap * sizeof **reps))) return -1;
  *rest_len = len - (size_t)skipped;
  *rest = ss_arena_alloc(arena, *rest_len ? *rest_len : 1);
  if (!*rest) return -1;
  *nreps = 0;
  scan(msg, len, field, rep_field, val, vlen, *reps, cap, nreps, *rest);
  return 0;
}

static void add_dim(int32_t *shape, size_t *n, uint64_t v) {
  if (*n < SS_WIRE_MAX_DIMS) shape[*n] = (int32_t)(int64_t)v;
  (*n)++;
}

/* One occurrence of a repeated int32, packed (wire type 2: the payload p[plen]) or not (wire
 * type 0: the value v), appended to shape[] (at most SS_WIRE_MAX_DIMS; more dims are counted so
 * the caller can refuse them). */
static int add_int32s(uint32_t wt, uint64_t v, const uint8_t *p, size_t plen, int32_t *shape,
                      size_t *n) {
  if (wt == 0) {
    add_dim(shape, n, v);
    return 0;
  }
  for (size_t pos = 0; pos < plen;) {
    if (read_varint(p, plen, &pos, &v) != 0) return -1;
    add_dim(shape, n, v);
  }
  return 0;
}

int ss_parse_kv_entry(const uint8_t *p, size_t len, ss_wire_kv *kv) {
  memset(kv, 0, sizeof *kv);
  size_t pos = 0;
  while (pos < len) {
    uint64_t fn, n;
    uint32_t wt;
    const uint8_t *v;
    if (next_field(p, len, &pos, &fn, &wt, &v, &n) != 0) return -1;
    if ((fn == 2 || fn == 4) && (wt == 0 || wt == 2)) {
      if (add_int32s(wt, n, v, (size_t)n, fn == 2 ? kv->key_shape : kv->value_shape,
                     fn == 2 ? &kv->n_key_shape : &kv->n_value_shape) != 0)
        return -1;
    } else if (wt == 2 && fn == 1) {
      kv->key = (ss_wire_view){v, (size_t)n};
    } else if (wt == 2 && fn == 3) {
      kv->value = (ss_wire_view){v, (size_t)n};
    }
  }
  return 0;
}

ProtobufCMessage *ss_decode_tensor_request(const ProtobufCMessageDescriptor *d, const uint8_t *msg,
                                           size_t len, ss_arena *arena, ProtobufCAllocator *alloc,
                                           const uint8_t **data, size_t *dlen, uint32_t rep_field,
                                           ss_wire_view **reps, size_t *nreps) {
  uint8_t *rest;
  size_t rest_len, none = 0;
  ss_wire_view *unused;
  *alloc = (ProtobufCAllocator){ss_arena_pb_alloc, ss_arena_pb_free, arena};
  if (ss_split_fields(msg, len, 1, rep_field, data, dlen, reps ? reps : &unused,
                      nreps ? nreps : &none, arena, &rest, &rest_len) != 0)
    return NULL;
  return protobuf_c_message_unpack(d, alloc, rest_len, rest);
}

/* A map entry (field 1 key, field 2 value): sizes and NUL bytes. */
static int check_entry(const uint8_t *p, size_t len, size_t idx, const ss_wire_limits *lim,
                       char *err, size_t errlen) {
  size_t pos = 0;
  while (pos < len) {
    uint64_t fn, n;
    uint32_t wt;
    const uint8_t *v;
    if (next_field(p, len, &pos, &fn, &wt, &v, &n) != 0) return 0; /* protobuf-c will say */
    if (wt != 2 || (fn != 1 && fn != 2)) continue;
    size_t max = fn == 1 ? lim->max_key : lim->max_value;
    const char *what = fn == 1 ? "key" : "value";
    const uint8_t *z;
    if (n > max) {
      snprintf(err, errlen,
               "metadata entry %zu: %s of %llu bytes is over the limit of %zu bytes "
               "(--max-metadata-%s-bytes)",
               idx, what, (unsigned long long)n, max, what);
      return SS_EBUSY;
    }
    if ((z = memchr(v, 0, (size_t)n)) != NULL) {
      snprintf(err, errlen,
               "metadata entry %zu: the %s holds a NUL byte at offset %zu; "
               "metadata keys and values are text without NUL",
               idx, what, (size_t)(z - v));
      return SS_EINVAL;
    }
  }
  return 0;
}

/* Entries of a repeated scalar field in one occurrence: 1, or for a packed run (wire type 2)
 * the number of values in it (varints counted by their last byte). */
static size_t packed_count(const ProtobufCFieldDescriptor *f, const uint8_t *p, size_t n) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE: return 1;
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64: return n / 8;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32: return n / 4;
    default: {
      size_t k = 0;
      for (size_t i = 0; i < n; i++) k += !(p[i] & 0x80);
      return k;
    }
  }
}

/* What protobuf-c will allocate for field fn (one occurrence: wire type wt, payload p[n] when
 * length-delimited), counted in cnt[] (one per field of the type) and *unknown / *unknown_bytes.
 * 0 or SS_EINVAL with the reason in err. */
static int bound_field(const ss_wire_limits *lim, uint64_t fn, uint32_t wt, const uint8_t *p,
                       size_t n, size_t field_bytes, size_t *cnt, size_t *unknown,
                       size_t *unknown_bytes, char *err, size_t errlen) {
  const ProtobufCMessageDescriptor *d = lim->desc;
  const ProtobufCFieldDescriptor *f =
      fn <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(d, (unsigned)fn) : NULL;
  if (!f) {
    *unknown_bytes += field_bytes;
    if (++*unknown > SS_WIRE_MAX_UNKNOWN || *unknown_bytes > SS_WIRE_MAX_UNKNOWN_BYTES) {
      snprintf(err, errlen,
               "%s carries more than %d fields (%d bytes) this server does not "
               "define (field number %llu and others); send only the fields of its .proto",
               d->name, SS_WIRE_MAX_UNKNOWN, SS_WIRE_MAX_UNKNOWN_BYTES, (unsigned long long)fn);
      return SS_EINVAL;
    }
    return 0;
  }
  size_t i = (size_t)(f - d->fields);
  if (fn == lim->meta_field) return 0; /* the map: bounded by max_entries */
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    size_t max =
        f->type == PROTOBUF_C_TYPE_MESSAGE ? SS_WIRE_MAX_REPEATED_MSG : SS_WIRE_MAX_REPEATED;
    cnt[i] += wt == 2 ? packed_count(f, p, n) : 1;
    if (cnt[i] > max) {
      snprintf(err, errlen, "%s: repeated field '%s' has more than %zu entries", d->name, f->name,
               max);
      return SS_EINVAL;
    }
  } else if (++cnt[i] > SS_WIRE_MAX_SINGULAR) {
    snprintf(err, errlen, "%s: field '%s' is sent more than %d times (it holds one value)", d->name,
             f->name, SS_WIRE_MAX_SINGULAR);
    return SS_EINVAL;
  }
  return 0;
}

int ss_wire_check(const uint8_t *msg, size_t len, const ss_wire_limits *lim, char *err,
                  size_t errlen) {
  size_t pos = 0, entries = 0, unknown = 0, unknown_bytes = 0;
  size_t cnt[64] = {0}; /* per field of lim->desc (types here have far fewer) */
  const ss_wire_limits *blim = lim->desc && lim->desc->n_fields <= 64 ? lim : NULL;
  while (pos < len) {
    uint64_t fn, n;
    uint32_t wt;
    const uint8_t *v;
    size_t start = pos;
    if (next_field(msg, len, &pos, &fn, &wt, &v, &n) != 0) return 0; /* protobuf-c will say */
    if (blim) {
      int rv = bound_field(blim, fn, wt, v, wt == 2 ? (size_t)n : 0, pos - start, cnt, &unknown,
                           &unknown_bytes, err, errlen);
      if (rv != 0) return rv;
    }
    if (wt != 2) continue;
    if (lim->meta_field && fn == lim->meta_field) {
      if (++entries > lim->max_entries) {
        snprintf(err, errlen, "metadata has more than %zu entries (--max-metadata-entries)",
                 lim->max_entries);
        return SS_EBUSY;
      }
      int rv = check_entry(v, (size_t)n, entries - 1, lim, err, errlen);
      if (rv != 0) return rv;
    }
    for (size_t i = 0; i < lim->n_str_fields; i++) {
      const uint8_t *z;
      if (fn == lim->str_fields[i] && (z = memchr(v, 0, (size_t)n)) != NULL) {
        snprintf(err, errlen,
                 "%s holds a NUL byte at offset %zu ('%.*s\\0...'); ids are text "
                 "without NUL",
                 lim->str_names[i], (size_t)(z - v), (int)((z - v) > 64 ? 64 : (z - v)),
                 (const char *)v);
        return SS_EINVAL;
      }
    }
  }
  return 0;
}

size_t ss_pb_varint(uint8_t *buf, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  buf[n++] = (uint8_t)v;
  return n;
}

size_t ss_pb_field_header(uint8_t *buf, uint32_t field, size_t len) {
  size_t n = ss_pb_varint(buf, (uint64_t)field << 3 | 2);
  return n + ss_pb_varint(buf + n, len);
}
