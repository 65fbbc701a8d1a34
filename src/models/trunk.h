/*
 * trunk.h — helpers shared by the transformer-trunk kinds (gpt2.c, llama.c): integers from a
 * Hugging Face config.json, the layers=A:B key, and the present KV cache they return.
 *
 * Thread: any (start-up for the config helpers; workers for the cache).
 */
#ifndef SS_MODELS_TRUNK_H
#define SS_MODELS_TRUNK_H

#include <jansson.h>

#include "models/model.h"

/* root[key] as a positive int into *out (*found = 1), or nothing when absent/null (*found = 0).
 * Returns 0, or SS_EINVAL with "config PATH: 'key' must be a positive integer". */
int ss_trunk_cfg_int(json_t *root, const char *key, const char *path, int *out, int *found,
                     char *err, size_t errlen);
/* "A:B", "A:", ":B" against n_layer into [*a, *b). Returns 0, SS_EINVAL (shape) or SS_ERANGE. */
int ss_trunk_layers(const char *s, int n_layer, int *a, int *b, char *err, size_t errlen);
/* One layer's present key and value, float32 [B, H, T, D], malloc'd (the caller owns them). */
int ss_trunk_alloc_present(ss_kv_layer *pr, int B, int H, int T, int D);
/* Free the first n present layers of kv and zero them. */
void ss_trunk_free_present(ss_kv_io *kv, int n);

#endif
