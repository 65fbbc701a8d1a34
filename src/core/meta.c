/*
 * meta.c — typed getters over the borrowed request-metadata view, with user-facing messages.
 * Thread: any; pure.
 */
#include "core/meta.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "splitserve.h"

const char *ss_meta_get(const ss_meta *m, const char *key) {
  if (m == NULL || key == NULL) return NULL;
  for (size_t i = 0; i < m->n; i++) {
    if (m->keys[i] != NULL && strcmp(m->keys[i], key) == 0) return m->values[i];
  }
  return NULL;
}

int ss_meta_double(const ss_meta *m, const char *key, double def, double lo, double hi, double *out,
                   char *err, size_t errlen) {
  const char *s = ss_meta_get(m, key);
  char *end = NULL;
  double v;

  if (s == NULL) {
    *out = def;
    return 0;
  }
  errno = 0;
  v = strtod(s, &end);
  if (end != s)
    while (*end == ' ' || *end == '\t') end++;
  if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v) || v < lo || v > hi) {
    if (lo <= -DBL_MAX && hi >= DBL_MAX)
      snprintf(err, errlen, "metadata '%s' must be a finite number, got '%.64s'", key, s);
    else
      snprintf(err, errlen, "metadata '%s' must be a number in [%g, %g], got '%.64s'", key, lo, hi,
               s);
    return SS_EINVAL;
  }
  *out = v;
  return 0;
}
