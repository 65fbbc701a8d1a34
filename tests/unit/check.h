/*
 * check.h — a minimal test harness for the C unit tests: CHECK(cond) records a failure with
 * file:line and keeps going; CHECK_EQ_* print both values; TEST_MAIN_END prints
 * "N passed, M failed" and returns non-zero on any failure.
 */
#ifndef SS_TEST_CHECK_H
#define SS_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed_, check_failed_;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (cond) {                                                                \
      check_passed_++;                                                         \
    } else {                                                                   \
      check_failed_++;                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                                      \
  do {                                                                                          \
    long long a_ = (long long)(a), b_ = (long long)(b);                                         \
    if (a_ == b_) {                                                                             \
      check_passed_++;                                                                          \
    } else {                                                                                    \
      check_failed_++;                                                                          \
      fprintf(stderr, "%s:%d: %s == %s failed: %lld vs %lld\n", __FILE__, __LINE__, #a, #b, a_, \
              b_);                                                                              \
    }                                                                                           \
  } while (0)

#define CHECK_CONTAINS(hay, needle)                                                     \
  do {                                                                                  \
    const char *h_ = (hay), *n_ = (needle);                                             \
    if (h_ && strstr(h_, n_)) {                                                         \
      check_passed_++;                                                                  \
    } else {                                                                            \
      check_failed_++;                                                                  \
      fprintf(stderr, "%s:%d: expected \"%s\" to contain \"%s\"\n", __FILE__, __LINE__, \
              h_ ? h_ : "(null)", n_);                                                  \
    }                                                                                   \
  } while (0)

#define TEST_MAIN_END()                                             \
  do {                                                              \
    printf("%d passed, %d failed\n", check_passed_, check_failed_); \
    return check_failed_ ? 1 : 0;                                   \
  } while (0)

#endif
