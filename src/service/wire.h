/*
 * wire.h — protobuf wire-format helpers (see wire.c). Thread: any.
 */
#ifndef SS_SERVICE_WIRE_H
#define SS_SERVICE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "core/arena.h"

/* Find top-level length-delimited field `field` of msg (the last occurrence wins, as protobuf
 * says) and return it as a view (*val, *vlen; NULL/0 when absent); copy every other field into
 * *rest (allocated from arena, *rest_len bytes). Returns 0, or -1 for malformed wire data. */
int ss_split_field(const uint8_t *msg, size_t len, uint32_t field, const uint8_t **val,
                   size_t *vlen, ss_arena *arena, uint8_t **rest, size_t *rest_len);

/* Decode a request message whose field 1 is the tensor bytes: those stay in msg as a borrowed
 * view (*data, *dlen) and protobuf-c unpacks only the rest, into the arena (alloc is filled in
 * and must live as long as the message). Returns the message, or NULL for bad wire data. */
ProtobufCMessage *ss_decode_tensor_request(const ProtobufCMessageDescriptor *d, const uint8_t *msg,
                                           size_t len, ss_arena *arena, ProtobufCAllocator *alloc,
                                           const uint8_t **data, size_t *dlen);

#endif
