/*
 * log.h — leveled logging to stderr, one line per call with a timestamp and level.
 * Thread: any (each line is written with a single write(2)). The level is process-wide and
 * set once at start-up (the only process-wide setting: logging is an output, not state).
 */
#ifndef SS_CORE_LOG_H
#define SS_CORE_LOG_H

#include "splitserve.h"

enum { SS_LOG_ERROR = 0, SS_LOG_WARN = 1, SS_LOG_INFO = 2, SS_LOG_DEBUG = 3 };

void ss_log_set_level(int level);
int ss_log_level(void);
/* ss_log_parse_level: public, in splitserve.h. */
void ss_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define SS_LOGE(...) ss_log(SS_LOG_ERROR, __VA_ARGS__)
#define SS_LOGW(...) ss_log(SS_LOG_WARN, __VA_ARGS__)
#define SS_LOGI(...) ss_log(SS_LOG_INFO, __VA_ARGS__)
#define SS_LOGD(...)                                                       \
  do {                                                                     \
    if (ss_log_level() >= SS_LOG_DEBUG) ss_log(SS_LOG_DEBUG, __VA_ARGS__); \
  } while (0)

#endif
