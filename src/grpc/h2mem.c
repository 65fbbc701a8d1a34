/*
 * h2mem.c — see h2mem.h. Every block carries a 16-byte header (its size and whether it was
 * mmapped) so free and realloc know where it came from.
 */
#include "grpc/h2mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HDR 16u
#define MMAP_MIN 8192u

typedef struct hdr {
  size_t size;   /* usable bytes */
  size_t mapped; /* 1: mmap, 0: malloc */
} hdr;

static void *mem_alloc(size_t size, int zero) {
  if (size > SIZE_MAX - HDR) return NULL;
  hdr *h;
  if (size >= MMAP_MIN) {
    void *p = mmap(NULL, size + HDR, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    h = p; /* fresh pages are zero: calloc costs nothing */
    h->mapped = 1;
  } else {
    h = zero ? calloc(1, size + HDR) : malloc(size + HDR);
    if (!h) return NULL;
    h->mapped = 0;
  }
  h->size = size;
  return (char *)h + HDR;
}

static void *h2_malloc(size_t size, void *ud) {
  (void)ud;
  return mem_alloc(size, 0);
}

static void h2_free(void *ptr, void *ud) {
  (void)ud;
  if (!ptr) return;
  hdr *h = (hdr *)(void *)((char *)ptr - HDR);
  if (h->mapped)
    munmap(h, h->size + HDR);
  else
    free(h);
}

static void *h2_calloc(size_t n, size_t size, void *ud) {
  (void)ud;
  if (size && n > SIZE_MAX / size) return NULL;
  return mem_alloc(n * size, 1);
}

static void *h2_realloc(void *ptr, size_t size, void *ud) {
  if (!ptr) return h2_malloc(size, ud);
  hdr *h = (hdr *)(void *)((char *)ptr - HDR);
  if (!h->mapped && size < MMAP_MIN) {
    hdr *n = realloc(h, size + HDR);
    if (!n) return NULL;
    n->size = size;
    return (char *)n + HDR;
  }
  void *p = mem_alloc(size, 0);
  if (!p) return NULL;
  memcpy(p, ptr, h->size < size ? h->size : size);
  h2_free(ptr, ud);
  return p;
}

nghttp2_mem *ss_h2mem(void) {
  static nghttp2_mem mem = {NULL, h2_malloc, h2_free, h2_calloc, h2_realloc};
  return &mem;
}
