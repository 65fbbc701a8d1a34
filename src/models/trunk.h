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
#include "models/nn/matmul.h"

/* root[key] as a positive int into *out (*found = 1), or nothing when absent/null (*found = 0).
 * Returns 0, or SS_EINVAL with "config PATH: 'key' must be a positive integer". */
int ss_trunk_cfg_int(json_t *root, const char *key, const char *path, int *out, int *found,
                     char *err, size_t errlen);
/* "A:B", "A:", ":B" against n_layer into [*a, *b). Returns 0, SS_EINVAL (shape) or SS_ERANGE. */
int ss_trunk_layers(const char *s, int n_layer, int *a, int *b, char *err, size_t errlen);
/* A trunk's input check: hidden states [batch, seq, hidden] with batch, seq >= 1, seq <= n_pos
 * (pos_key: the config key that bounds it, for the message), batch x seq within one call; the
 * output has the input's shape. Returns 0 or SS_EINVAL with a message naming model and values. */
int ss_trunk_check_hidden(const ss_model *m, const ss_tensor *in, int hidden, int n_pos,
                          const char *pos_key, int64_t *out_shape, int *out_ndim, char *err,
                          size_t errlen);
/* The end of a batched decode step: rows of x [n, E] into out[i] on success; on failure free
 * what the step allocated in the presents and say so. Returns rc. */
int ss_trunk_batch_finish(const ss_model *m, int rc, int n, int L, int E, const float *x,
                          ss_tensor *out, ss_kv_io *kv, char *err, size_t errlen);

/* One layer's present key and value, float32 [B, H, T, D], from cc's backend (the caller owns
 * them: ss_kv_release). */
int ss_trunk_alloc_present(const ss_compute *cc, ss_kv_layer *pr, int B, int H, int T, int D);
/* Free the first n present layers of kv and zero them. */
void ss_trunk_free_present(ss_kv_io *kv, int n);

/* Batched decode steps (forward_kv_batch): for layer l, sequence i's window K[i], V[i]
 * [1, H, P_i + 1, D] is its present cache entry (allocated here) when it wants one, else a piece
 * of scratch (2 H (P_i + 1) D floats per such sequence). Returns 0 or SS_ENOMEM. */
int ss_trunk_batch_windows(const ss_compute *cc, ss_kv_io *kv, int n, int l, int H, int D,
                           float *scratch, float **K, float **V);
/* The length of sequence i's past (0 without one). */
static inline int ss_trunk_past_len(const ss_kv_io *kv) {
  return kv->past ? (int)kv->past[0].key.shape[2] : 0;
}

#endif
