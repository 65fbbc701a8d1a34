/*
 * log.c — leveled logging to stderr: "2025-01-02T03:04:05.678Z INFO  message\n".
 * Thread: any. Each line is formatted into a stack buffer and written with one write(2), so
 * lines from different threads never interleave. The level is the one process-wide setting
 * (an atomic int, set at start-up); logging is output, not library state.
 */
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int log_level = SS_LOG_INFO;

void ss_log_set_level(int level) {
  if (level < SS_LOG_ERROR) level = SS_LOG_ERROR;
  if (level > SS_LOG_DEBUG) level = SS_LOG_DEBUG;
  __atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
}

int ss_log_level(void) { return __atomic_load_n(&log_level, __ATOMIC_RELAXED); }

int ss_log_parse_level(const char *s) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  if (s == NULL) return -1;
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, names[i]) == 0) return i;
  if (strcasecmp(s, "warning") == 0) return SS_LOG_WARN;
  return -1;
}

void ss_log(int level, const char *fmt, ...) {
  static const char *const tags[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};
  char buf[4096];
  struct timespec ts;
  struct tm tm;
  size_t pos;
  int w, saved_errno = errno;
  va_list ap;

  if (level > ss_log_level()) return;
  if (level < 0) level = 0;
  if (level > 3) level = 3;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  pos = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  w = snprintf(buf + pos, sizeof buf - pos, ".%03dZ %s ", (int)(ts.tv_nsec / 1000000), tags[level]);
  if (w > 0) pos += (size_t)w;
  va_start(ap, fmt);
  w = vsnprintf(buf + pos, sizeof buf - pos, fmt, ap);
  va_end(ap);
  if (w < 0) w = 0;
  if ((size_t)w >= sizeof buf - pos - 1) { /* truncated: mark it and keep room for '\n' */
    pos = sizeof buf - 5;
    memcpy(buf + pos, "...", 3);
    pos += 3;
  } else {
    pos += (size_t)w;
  }
  while (pos > 0 && buf[pos - 1] == '\n') pos--; /* one line, our newline */
  buf[pos++] = '\n';
  for (size_t off = 0; off < pos;) {
    ssize_t n = write(STDERR_FILENO, buf + off, pos - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += (size_t)n;
  }
  errno = saved_errno;
}
