/*
 * arena.h — a bump allocator over a caller-provided buffer, with malloc overflow, used so that
 * decoding one request (protobuf-c unpack, metadata views, scratch) costs no malloc in the
 * common case. Also usable as a ProtobufCAllocator: free is a no-op; everything is released at
 * once by ss_arena_release().
 * Thread: one arena is used by one thread at a time (the loop thread for requests).
 */
#ifndef SS_CORE_ARENA_H
#define SS_CORE_ARENA_H

#include <stddef.h>

typedef struct ss_arena_big ss_arena_big;

typedef struct ss_arena {
  char *buf; /* borrowed inline buffer */
  size_t cap, used;
  ss_arena_big *big; /* overflow allocations (malloc'd), freed by release */
} ss_arena;

/* Start an arena over buf[cap] (borrowed; must outlive the arena's allocations). */
void ss_arena_init(ss_arena *a, void *buf, size_t cap);
/* size bytes aligned to 16, from the buffer or from malloc. NULL when out of memory. */
void *ss_arena_alloc(ss_arena *a, size_t size);
/* Free the overflow allocations; the arena is empty again. */
void ss_arena_release(ss_arena *a);

/* A ProtobufCAllocator over arena a (returns a pointer to a struct inside nothing: fill the
 * caller's own ProtobufCAllocator with these two functions and allocator_data = a). */
void *ss_arena_pb_alloc(void *a, size_t size);
void ss_arena_pb_free(void *a, void *p);

#endif
