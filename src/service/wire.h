/*
 * wire.h — protobuf wire-format helpers (see wire.c). Thread: any.
 */
#ifndef SS_SERVICE_WIRE_H
#define SS_SERVICE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"

/* Find top-level length-delimited field `field` of msg (the last occurrence wins, as protobuf
 * says) and return it as a view (*val, *vlen; NULL/0 when absent); copy every other field into
 * *rest (allocated from arena, *rest_len bytes). Returns 0, or -1 for malformed wire data. */
int ss_split_field(const uint8_t *msg, size_t len, uint32_t field, const uint8_t **val,
                   size_t *vlen, ss_arena *arena, uint8_t **rest, size_t *rest_len);

#endif
