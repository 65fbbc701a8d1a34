/*
 * fuzz_safetensors.c — the safetensors parser (models/safetensors.h ss_st_parse) on the input
 * bytes: the 8-byte header length, the JSON header, dtypes, shapes, data offsets. A file that
 * parses must describe tensors that lie inside the buffer with nbytes == numel x dtype size;
 * every tensor is found by name and read through ss_st_f32 (as the models load weights); no
 * two non-empty tensors overlap.
 *
 * Thread: the fuzzer's (single).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/safetensors.h"

#define CHECK_FUZZ(c)                                                       \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                              \
    }                                                                       \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ss_st_file *f = NULL;
  char err[512];
  err[0] = '\0';
  int rv = ss_st_parse(data, size, &f, err, sizeof err);
  if (rv != 0) {
    CHECK_FUZZ(f == NULL && err[0] != '\0' && strlen(err) < sizeof err);
    return 0;
  }
  CHECK_FUZZ(f != NULL);
  const uint8_t *end = data + size;
  for (size_t i = 0; i < ss_st_count(f); i++) {
    const ss_st_tensor *t = ss_st_at(f, i);
    CHECK_FUZZ(t && t->name && t->ndim >= 0 && t->ndim <= SS_MAX_DIMS);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      CHECK_FUZZ(t->shape[d] >= 0);
      numel *= (size_t)t->shape[d];
    }
    CHECK_FUZZ(numel == t->numel && t->nbytes == numel * ss_dtype_size(t->dtype));
    const uint8_t *p = t->data;
    CHECK_FUZZ(t->nbytes == 0 || (p >= data && p <= end && t->nbytes <= (size_t)(end - p)));
    const ss_st_tensor *byname = ss_st_find(f, t->name);
    CHECK_FUZZ(byname != NULL && strcmp(byname->name, t->name) == 0);
    if (t->numel <= (1u << 16)) {
      const float *view;
      float *own = NULL;
      if (ss_st_f32(t, &view, &own, NULL) == 0) {
        volatile float sink = 0;
        for (size_t k = 0; k < t->numel; k++) sink += view[k];
        (void)sink;
        free(own);
      }
    }
  }
  /* No two non-empty tensors share bytes (the parser promises to refuse such files). */
  size_t n = ss_st_count(f);
  for (size_t i = 0; i < n && n <= 256; i++)
    for (size_t j = i + 1; j < n; j++) {
      const ss_st_tensor *a = ss_st_at(f, i), *b = ss_st_at(f, j);
      if (a->nbytes == 0 || b->nbytes == 0) continue;
      const uint8_t *pa = a->data, *pb = b->data;
      CHECK_FUZZ(pa + a->nbytes <= pb || pb + b->nbytes <= pa);
    }
  ss_st_close(f);
  return 0;
}
