/*
 * wire.h — protobuf wire-format helpers (see wire.c). Thread: any.
 */
#ifndef SS_SERVICE_WIRE_H
#define SS_SERVICE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "core/arena.h"

/* A borrowed byte range inside a request message. */
typedef struct ss_wire_view {
  const uint8_t *p;
  size_t len;
} ss_wire_view;

#define SS_WIRE_MAX_DIMS 8

/* A KVCacheEntry read in place: key/value bytes stay in the message. n_*_shape may exceed
 * SS_WIRE_MAX_DIMS (only the first ones are stored): the caller refuses such shapes. */
typedef struct ss_wire_kv {
  ss_wire_view key, value;
  int32_t key_shape[SS_WIRE_MAX_DIMS], value_shape[SS_WIRE_MAX_DIMS];
  size_t n_key_shape, n_value_shape;
} ss_wire_kv;

/* Parse one KVCacheEntry (fields 1 key_data, 2 key_shape, 3 value_data, 4 value_shape;
 * packed or unpacked shapes; unknown fields skipped). Returns 0 or -1 (bad wire). */
int ss_parse_kv_entry(const uint8_t *p, size_t len, ss_wire_kv *kv);

/* Like ss_split_field, and also every occurrence of length-delimited rep_field as a view
 * (*reps from the arena, *nreps of them; 0 = none). */
int ss_split_fields(const uint8_t *msg, size_t len, uint32_t field, uint32_t rep_field,
                    const uint8_t **val, size_t *vlen, ss_wire_view **reps, size_t *nreps,
                    ss_arena *arena, uint8_t **rest, size_t *rest_len);

/* Find top-level length-delimited field `field` of msg (the last occurrence wins, as protobuf
 * says) and return it as a view (*val, *vlen; NULL/0 when absent); copy every other field into
 * *rest (allocated from arena, *rest_len bytes). Returns 0, or -1 for malformed wire data. */
int ss_split_field(const uint8_t *msg, size_t len, uint32_t field, const uint8_t **val,
                   size_t *vlen, ss_arena *arena, uint8_t **rest, size_t *rest_len);

/* Decode a request message whose field 1 is the tensor bytes: those stay in msg as a borrowed
 * view (*data, *dlen) and protobuf-c unpacks only the rest, into the arena (alloc is filled in
 * and must live as long as the message). rep_field != 0: that repeated message field (the KV
 * cache) is also left in place, as views (*reps, *nreps), never copied. Returns the message, or
 * NULL for bad wire data. */
ProtobufCMessage *ss_decode_tensor_request(const ProtobufCMessageDescriptor *d, const uint8_t *msg,
                                           size_t len, ss_arena *arena, ProtobufCAllocator *alloc,
                                           const uint8_t **data, size_t *dlen, uint32_t rep_field,
                                           ss_wire_view **reps, size_t *nreps);

/* Limits checked on the raw request bytes before protobuf-c unpacks anything (the unpacker
 * allocates per map entry and per string, so a message of 100 MB of empty metadata entries would
 * cost gigabytes and seconds of loop time before any check could run). */
typedef struct ss_wire_limits {
  uint32_t meta_field;          /* the map<string,string> field (0: the message has none) */
  size_t max_entries;           /* occurrences of meta_field (each one an entry) */
  size_t max_key, max_value;    /* bytes of one entry's key (its field 1) / value (field 2) */
  const uint32_t *str_fields;   /* top-level string fields that must not hold a NUL byte */
  const char *const *str_names; /* their names, for messages */
  size_t n_str_fields;
  /* The message type (NULL: none of the checks below). protobuf-c allocates per field
   * occurrence (20-30x the wire bytes for 2-byte fields), so what it will see is bounded
   * first: fields the type does not define (it keeps each one, with a copy), entries of a
   * repeated field, and occurrences of a singular field. */
  const ProtobufCMessageDescriptor *desc;
} ss_wire_limits;

#define SS_WIRE_MAX_UNKNOWN_BYTES 4096 /* bytes of unknown fields in one message */
#define SS_WIRE_MAX_UNKNOWN 64         /* unknown field occurrences in one message */
#define SS_WIRE_MAX_REPEATED 64        /* entries of a repeated scalar field (a shape) */
#define SS_WIRE_MAX_REPEATED_MSG 4096  /* entries of a repeated message field (KV cache) */
#define SS_WIRE_MAX_SINGULAR 16        /* occurrences of a singular field (the last one wins) */

/* One pass over the top-level fields of msg (tensor bytes are skipped by length, never read).
 * Returns 0; SS_EBUSY when a metadata limit is exceeded (the message names the limit and the
 * flag that sets it: RESOURCE_EXHAUSTED); SS_EINVAL for a NUL byte in a metadata key/value or
 * in one of str_fields (C strings would silently end there: "identity\0x" would route to
 * identity), or (with lim->desc) for unknown fields, repeated or singular fields over the
 * SS_WIRE_MAX_* bounds (the message names the field). Malformed wire data returns 0: the
 * decoder reports it. */
int ss_wire_check(const uint8_t *msg, size_t len, const ss_wire_limits *lim, char *err,
                  size_t errlen);

/* Append varint v to buf; returns bytes written (<= 10). */
size_t ss_pb_varint(uint8_t *buf, uint64_t v);
/* Append the header (tag + length) of length-delimited field `field` to buf; returns bytes
 * written (<= 15). */
size_t ss_pb_field_header(uint8_t *buf, uint32_t field, size_t len);

#endif
