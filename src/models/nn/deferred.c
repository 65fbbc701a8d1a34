/*
 * deferred.c — deferred f32 weights (see deferred.h): a table of reserved address ranges, each
 * with the narrow checkpoint values it stands for, and whether it was made real.
 *
 * Thread: any (workers pack and train; the main thread loads and frees models). One mutex over
 * the table; a made-real flag is only read and written under it. A pair of atomic bounds lets the
 * products of models without deferred weights skip the lock (ss_weight_deferred_make_at).
 */
#include "models/nn/deferred.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct dweight {
  const void *owner;
  float *w;        /* n floats in a mapping of len bytes: PROT_NONE until ready */
  size_t n, len;   /* values; bytes mapped */
  const void *src; /* n values of dt */
  ss_dtype dt;
  int ready;
} dweight;

static struct {
  pthread_mutex_t mu;
  dweight *d;
  size_t n, cap;
  size_t pending;           /* bytes of arrays not made real */
  _Atomic uintptr_t lo, hi; /* every range lies in [lo, hi) (0, 0: none yet) */
} df = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The entry holding [W, W + n), under df.mu; NULL if none. */
static dweight *find(const float *W, size_t n) {
  uintptr_t a = (uintptr_t)W;
  for (size_t i = 0; i < df.n; i++) {
    uintptr_t b = (uintptr_t)df.d[i].w;
    if (a >= b && a - b < df.d[i].n * sizeof(float) && n <= df.d[i].n - (a - b) / sizeof(float))
      return &df.d[i];
  }
  return NULL;
}

/* Make e real, under df.mu. */
static int make(dweight *e) {
  if (e->ready) return 0;
  if (mprotect(e->w, e->len, PROT_READ | PROT_WRITE) != 0) return SS_ENOMEM;
  ss_to_f32(e->dt, e->src, e->w, e->n);
  e->ready = 1;
  df.pending -= e->n * sizeof(float);
  return 0;
}

/* Unmap entry i and take it out of the table, under df.mu. */
static void remove_at(size_t i) {
  dweight *e = &df.d[i];
  if (!e->ready) df.pending -= e->n * sizeof(float);
  munmap(e->w, e->len);
  df.d[i] = df.d[--df.n];
}

float *ss_weight_deferred_new(const void *owner, const void *src, ss_dtype dt, size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE), len;
  if ((dt != SS_DTYPE_BF16 && dt != SS_DTYPE_F16) || n == 0 || src == NULL ||
      (uintptr_t)src % ss_dtype_size(dt) != 0 || n > SIZE_MAX / sizeof(float) - pg)
    return NULL;
  len = (n * sizeof(float) + pg - 1) / pg * pg;
  void *w = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (w == MAP_FAILED) return NULL;
  pthread_mutex_lock(&df.mu);
  if (df.n == df.cap) {
    size_t cap = df.cap ? 2 * df.cap : 64;
    dweight *d = realloc(df.d, cap * sizeof *d);
    if (d == NULL) {
      pthread_mutex_unlock(&df.mu);
      munmap(w, len);
      return NULL;
    }
    df.d = d, df.cap = cap;
  }
  df.d[df.n++] = (dweight){owner, w, n, len, src, dt, 0};
  df.pending += n * sizeof(float);
  uintptr_t lo = atomic_load(&df.lo), hi = atomic_load(&df.hi);
  if (lo == 0 || (uintptr_t)w < lo) atomic_store(&df.lo, (uintptr_t)w);
  if ((uintptr_t)w + len > hi) atomic_store(&df.hi, (uintptr_t)w + len);
  pthread_mutex_unlock(&df.mu);
  return w;
}

int ss_weights_deferred_make(const void *owner) {
  int rc = 0;
  pthread_mutex_lock(&df.mu);
  for (size_t i = 0; i < df.n && rc == 0; i++)
    if (df.d[i].owner == owner) rc = make(&df.d[i]);
  pthread_mutex_unlock(&df.mu);
  return rc;
}

int ss_weight_deferred_read(const float *W, size_t n, float *out) {
  int r = 0;
  if ((uintptr_t)W < atomic_load(&df.lo) || (uintptr_t)W >= atomic_load(&df.hi)) return 0;
  pthread_mutex_lock(&df.mu);
  dweight *e = find(W, n);
  if (e != NULL && !e->ready) {
    size_t off = (size_t)(W - e->w), es = ss_dtype_size(e->dt);
    if (out != NULL) ss_to_f32(e->dt, (const unsigned char *)e->src + off * es, out, n);
    r = 1;
  }
  pthread_mutex_unlock(&df.mu);
  return r;
}

int ss_weight_deferred_make_at(const float *W) {
  int rc = 0;
  if ((uintptr_t)W < atomic_load(&df.lo) || (uintptr_t)W >= atomic_load(&df.hi)) return 0;
  pthread_mutex_lock(&df.mu);
  dweight *e = find(W, 0);
  if (e != NULL) rc = make(e);
  pthread_mutex_unlock(&df.mu);
  return rc;
}

int ss_weight_deferred_source(const float *W, size_t n, const void **lo, size_t *len) {
  int rc = -1;
  if ((uintptr_t)W < atomic_load(&df.lo) || (uintptr_t)W >= atomic_load(&df.hi)) return -1;
  pthread_mutex_lock(&df.mu);
  dweight *e = find(W, n);
  if (e != NULL) {
    size_t es = ss_dtype_size(e->dt);
    *lo = (const unsigned char *)e->src + (size_t)(W - e->w) * es;
    *len = n * es;
    rc = 0;
  }
  pthread_mutex_unlock(&df.mu);
  return rc;
}

void ss_weight_deferred_moved(const float *W) {
  pthread_mutex_lock(&df.mu);
  for (size_t i = 0; i < df.n; i++)
    if (df.d[i].w == W) {
      remove_at(i);
      break;
    }
  pthread_mutex_unlock(&df.mu);
}

void ss_weights_deferred_drop(const void *owner) {
  pthread_mutex_lock(&df.mu);
  for (size_t i = 0; i < df.n;)
    if (df.d[i].owner == owner)
      remove_at(i);
    else
      i++;
  if (df.n == 0) { /* the bounds start over */
    atomic_store(&df.lo, 0);
    atomic_store(&df.hi, 0);
    free(df.d);
    df.d = NULL, df.cap = 0;
  }
  pthread_mutex_unlock(&df.mu);
}

size_t ss_weights_deferred_bytes(void) {
  pthread_mutex_lock(&df.mu);
  size_t n = df.pending;
  pthread_mutex_unlock(&df.mu);
  return n;
}
