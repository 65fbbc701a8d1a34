/*
 * tbuf.c — see tbuf.h. A pthread key per ss_tbuf, made on first use under one mutex; the key's
 * destructor frees a thread's buffer when the thread exits.
 *
 * Thread: any.
 */
#include "models/nn/tbuf.h"

#include <stdlib.h>

typedef struct tbuf_slot {
  float *p;
  size_t cap; /* floats */
} tbuf_slot;

static pthread_mutex_t tbuf_mu = PTHREAD_MUTEX_INITIALIZER;

static void tbuf_free(void *v) {
  tbuf_slot *t = v;
  free(t->p);
  free(t);
}

float *ss_tbuf_floats(ss_tbuf *b, size_t n) {
  if (!__atomic_load_n(&b->ready, __ATOMIC_ACQUIRE)) {
    pthread_mutex_lock(&tbuf_mu);
    if (!b->ready && pthread_key_create(&b->key, tbuf_free) == 0)
      __atomic_store_n(&b->ready, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&tbuf_mu);
    if (!__atomic_load_n(&b->ready, __ATOMIC_ACQUIRE)) return NULL;
  }
  tbuf_slot *t = pthread_getspecific(b->key);
  if (!t) {
    if (!(t = calloc(1, sizeof *t))) return NULL;
    if (pthread_setspecific(b->key, t) != 0) {
      free(t);
      return NULL;
    }
  }
  if (n > t->cap) {
    float *p = NULL;
    if (posix_memalign((void **)&p, 64, (n ? n : 1) * sizeof *p) != 0) return NULL;
    free(t->p);
    t->p = p, t->cap = n;
  }
  return t->p;
}
