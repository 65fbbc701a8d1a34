/*
 * fuzz_gpt2_config.c — the GPT-2 kind's config.json and layers= parsing (models/gpt2.c;
 * load_config and parse_layers are static): each input is written to a config file next to a
 * tiny GPT-2 checkpoint (fuzz_util.h: n_embd 16, 2 layers, n_inner 64) and the model is created
 * through the registry ("g=gpt2,weights=..,config=..[,layers=..]"), so a config that parses is
 * also checked against the weights' shapes.
 *
 * Input: the layers value up to the first newline (',' '=' and NUL are replaced: they would
 * split the spec), then the JSON text. No newline in the first 40 bytes: no layers key.
 *
 * Thread: the fuzzer's (single).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "models/model.h"

static char config[160];

static void cleanup(void) { remove(config); } /* before fuzz_util's: the directory goes last */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  snprintf(config, sizeof config, "%s/fuzz.json", fuzz_tmp_gpt2()->dir);
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!config[0]) LLVMFuzzerInitialize(NULL, NULL);
  const uint8_t *nl = memchr(data, '\n', size < 40 ? size : 40);
  char layers[48];
  size_t ll = nl ? (size_t)(nl - data) : 0;
  for (size_t i = 0; i < ll; i++) {
    char ch = (char)data[i];
    layers[i] = ch == ',' || ch == '=' || ch == '\0' ? ':' : ch;
  }
  layers[ll] = '\0';
  const uint8_t *json = nl ? nl + 1 : data;
  size_t jlen = size - (size_t)(json - data);
  FILE *f = fopen(config, "wb");
  if (!f) abort();
  if (jlen) fwrite(json, 1, jlen, f);
  fclose(f);
  char spec[512];
  snprintf(spec, sizeof spec, "g=gpt2,weights=%s,config=%s%s%s", fuzz_tmp_gpt2()->weights, config,
           nl ? ",layers=" : "", layers);
  ss_model *m = NULL;
  char err[512];
  err[0] = '\0';
  if (ss_model_create(spec, &m, err, sizeof err) == 0) {
    CHECK_FUZZ(m != NULL && m->n_kv_layers >= 1 && m->n_kv_layers <= FUZZ_GPT2_LAYERS);
    ss_model_free(m);
  } else {
    CHECK_FUZZ(m == NULL && err[0] != '\0' && strlen(err) < sizeof err);
  }
  return 0;
}
