/*
 * meta.h — request metadata (the ComputeRequest `metadata` map), as a borrowed key/value view,
 * with typed getters that produce user-facing error messages.
 * Thread: any; pure.
 */
#ifndef SS_CORE_META_H
#define SS_CORE_META_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct ss_meta {
  const char *const *keys;   /* borrowed */
  const char *const *values; /* borrowed */
  size_t n;
  /* Borrowed, may be NULL: set (non-zero) by the loop thread when nobody waits for the result
   * any more (deadline passed, client reset or closed). A long forward polls it with
   * ss_meta_cancelled() between layers / chunks and returns SS_ECANCELLED. */
  const atomic_int *cancel;
} ss_meta;

/* Has the call this metadata belongs to been cancelled? Any thread; cheap (one atomic load). */
static inline int ss_meta_cancelled(const ss_meta *m) {
  return m != NULL && m->cancel != NULL && atomic_load_explicit(m->cancel, memory_order_relaxed);
}

/* Value for key, or NULL. */
const char *ss_meta_get(const ss_meta *m, const char *key);
/* Parse key as a finite double in [lo, hi]; absent -> *out = def. Returns 0 or SS_EINVAL with
 * a message like "metadata 'ms' must be a number in [0, 60000], got 'abc'". */
int ss_meta_double(const ss_meta *m, const char *key, double def, double lo, double hi, double *out,
                   char *err, size_t errlen);

#endif
