/*
 * fuzz_util.h — what several fuzz harnesses share: a check that aborts (so libFuzzer records
 * the input), a tiny GPT-2 checkpoint in a temporary directory, and the service's model set and
 * limits for the harnesses that run the real service (fuzz_service, fuzz_conn).
 *
 * Thread: the fuzzer's (single).
 */
#ifndef SS_FUZZ_UTIL_H
#define SS_FUZZ_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#include "splitserve.h"

#define CHECK_FUZZ(c)                                                       \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* Paths made by fuzz_tmp_gpt2 (valid until exit, when they are removed). */
typedef struct fuzz_gpt2 {
  char dir[64], weights[128], config[128];
} fuzz_gpt2;

/* A fresh directory under /dev/shm (or /tmp) holding model.safetensors (GPT-2 layout: n_embd 16,
 * n_inner 64, FUZZ_GPT2_LAYERS layers) and a config.json for it (4 heads, 32 positions).
 * Aborts on failure. */
#define FUZZ_GPT2_LAYERS 2
const fuzz_gpt2 *fuzz_tmp_gpt2(void);

/* A server configuration for fuzzing the service: 0 workers (compute runs inline), the
 * built-in models with spin replaced by an identity (spin would burn up to 10 minutes of CPU on
 * the loop), a tiny gpt2 "g" (KV cache, sessions, training), small session/activation budgets,
 * warnings off. The strings live until exit. */
void fuzz_service_config(ss_server_config *cfg);

#endif
