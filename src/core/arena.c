/*
 * arena.c — see arena.h.
 */
#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>

struct ss_arena_big {
  ss_arena_big *next;
  max_align_t pad[]; /* keeps the payload aligned */
};

void ss_arena_init(ss_arena *a, void *buf, size_t cap) {
  a->buf = buf;
  a->cap = cap;
  a->used = 0;
  a->big = NULL;
}

void *ss_arena_alloc(ss_arena *a, size_t size) {
  size_t need = (size + 15) & ~(size_t)15;
  uintptr_t base = (uintptr_t)a->buf;
  size_t start = (size_t)(((base + a->used + 15) & ~(uintptr_t)15) - base);
  if (need >= size && start + need <= a->cap) {
    a->used = start + need;
    return a->buf + start;
  }
  ss_arena_big *b = malloc(sizeof *b + size);
  if (!b) return NULL;
  b->next = a->big;
  a->big = b;
  return b + 1;
}

void ss_arena_release(ss_arena *a) {
  while (a->big) {
    ss_arena_big *next = a->big->next;
    free(a->big);
    a->big = next;
  }
  a->used = 0;
}

void *ss_arena_pb_alloc(void *a, size_t size) { return ss_arena_alloc(a, size); }

void ss_arena_pb_free(void *a, void *p) { (void)a, (void)p; }
