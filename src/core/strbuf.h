/*
 * strbuf.h — a growable text buffer (metrics exposition, messages). Thread: the owner's.
 * Out of memory is sticky: later appends do nothing and ss_strbuf_ok() says so.
 */
#ifndef SS_CORE_STRBUF_H
#define SS_CORE_STRBUF_H

#include <stddef.h>

typedef struct ss_strbuf {
  char *p; /* NUL-terminated once anything was appended (malloc'd; free with ss_strbuf_free) */
  size_t len, cap;
  int oom;
} ss_strbuf;

void ss_strbuf_printf(ss_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ss_strbuf_free(ss_strbuf *b);
static inline int ss_strbuf_ok(const ss_strbuf *b) { return !b->oom; }

#endif
