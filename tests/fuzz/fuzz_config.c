/*
 * fuzz_config.c — the YAML config file (core/config.h ss_config_parse) on the input text: every
 * key, the listen address, numbers, booleans, the models sequence and the spec strings built
 * from it. A file that parses must have well-formed model specs; those of the cheap built-in
 * kinds (identity, scale, sleep, spin) are then created through the model registry (spec
 * parsing: ss_model_create). An error must come with a message.
 *
 * Thread: the fuzzer's (single).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "models/model.h"

#define CHECK_FUZZ(c)                                                       \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                              \
    }                                                                       \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ss_file_config c;
  char err[512];
  err[0] = '\0';
  int rv = ss_config_parse("fuzz.yaml", (const char *)data, size, &c, err, sizeof err);
  if (rv != 0) {
    CHECK_FUZZ(err[0] != '\0' && strlen(err) < sizeof err);
    ss_config_free(&c);
    return 0;
  }
  for (size_t i = 0; i < c.n_models; i++) {
    const ss_model_conf *m = &c.models[i];
    CHECK_FUZZ(m->id && m->kind && m->spec);
    size_t idl = strlen(m->id);
    CHECK_FUZZ(strncmp(m->spec, m->id, idl) == 0 && m->spec[idl] == '=');
    static const char *const cheap[] = {"identity", "scale", "sleep", "spin"};
    for (size_t k = 0; k < 4; k++) {
      if (strcmp(m->kind, cheap[k]) != 0) continue;
      ss_model *model = NULL;
      char merr[512];
      merr[0] = '\0';
      if (ss_model_create(m->spec, &model, merr, sizeof merr) == 0) {
        CHECK_FUZZ(model != NULL);
        ss_model_free(model);
      } else {
        CHECK_FUZZ(model == NULL && merr[0] != '\0');
      }
    }
  }
  ss_config_free(&c);
  return 0;
}
