/*
 * tbuf.h — per-thread growable float buffers: a worker's scratch that outlives one call (the
 * int8 dequantization of a prefill's weight, attention's scratch for the team's other threads)
 * without an allocation per call. One ss_tbuf per use; each thread gets its own buffer from it,
 * grown as needed, freed when the thread exits.
 *
 * Thread: any; a buffer is only ever touched by the thread that owns it.
 */
#ifndef SS_MODELS_NN_TBUF_H
#define SS_MODELS_NN_TBUF_H

#include <pthread.h>
#include <stddef.h>

typedef struct ss_tbuf {
  pthread_key_t key;
  int ready; /* key made (atomic) */
} ss_tbuf;

/* The calling thread's buffer of b, at least n floats, 64-byte aligned (its earlier contents are
 * not kept when it grows), or NULL when out of memory. b: static, zero-initialized. */
float *ss_tbuf_floats(ss_tbuf *b, size_t n);

#endif
