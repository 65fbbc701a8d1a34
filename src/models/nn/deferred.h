/*
 * deferred.h — model weights whose float32 values are made only when something reads them in
 * float32. A BF16 (or F16) checkpoint served with a compute dtype whose products always run on a
 * packed copy (compute=bf16, int8, and f32 where oneDNN has brgemm: nn/packed.c) needs its f32
 * values only for training (backward reads W, the optimizer writes it), for saving, and for a
 * product the engine refuses to run packed. So the weight's f32 array is an address range
 * reserved but not backed (PROT_NONE, no RSS) and remembered with the checkpoint's narrow values
 * it stands for: packed.c packs from those values (the same packed bytes as from the f32 copy:
 * widening bf16/f16 to f32 is exact), and the f32 array is written from them the first time
 * anything needs it (ss_weights_deferred_make). A read before that faults (SIGSEGV) instead of
 * seeing zeros: a missed reader is loud, never a wrong answer.
 *
 * Life: made at load (ss_weight_deferred_new, the model's constructor), made real on demand,
 * unmapped when the optimizer's copy on first write has moved the model off it
 * (ss_weight_deferred_moved) or when the owner goes (ss_weights_deferred_drop).
 *
 * Thread: any. One mutex guards the table; making values real happens under it, so a caller
 * that returns from ss_weights_deferred_make / ss_weight_deferred_read sees the values written.
 */
#ifndef SS_MODELS_NN_DEFERRED_H
#define SS_MODELS_NN_DEFERRED_H

#include <stddef.h>

#include "splitserve.h"

/* A deferred f32 array of n values standing for src (n values of dt: SS_DTYPE_BF16 or
 * SS_DTYPE_F16, aligned to its size; borrowed: src must outlive the owner's weights, e.g. the
 * checkpoint mapping). Returns the array's address (page aligned, not readable yet), or NULL when
 * no address range could be reserved or dt is not narrow (the caller converts as before). */
float *ss_weight_deferred_new(const void *owner, const void *src, ss_dtype dt, size_t n);

/* Every deferred weight of owner made real (readable and writable f32, the source's values
 * widened). 0, or SS_ENOMEM when a range could not be made writable (nothing read wrong: the
 * caller fails the call). Cheap once made. */
int ss_weights_deferred_make(const void *owner);

/* The values of [W, W + n) of a deferred weight not yet made real, widened into out [n] (out
 * NULL: only the answer): 1. W not in a deferred weight, or already made real (read W): 0. */
int ss_weight_deferred_read(const float *W, size_t n, float *out);

/* The deferred weight holding W made real: 0 (also when W is not deferred), or SS_ENOMEM. */
int ss_weight_deferred_make_at(const float *W);

/* The source bytes that [W, W + n) stands for: *lo, *len; 0, or -1 when W is not deferred. */
int ss_weight_deferred_source(const float *W, size_t n, const void **lo, size_t *len);

/* The model no longer uses the deferred weight starting at W (the optimizer copied it to an
 * array of its own): its range is unmapped. Nothing when W is not the start of one. */
void ss_weight_deferred_moved(const float *W);

/* Every deferred weight of owner unmapped (the model is freed). */
void ss_weights_deferred_drop(const void *owner);

/* Bytes of f32 arrays deferred and not made real (what keeping them would have cost). */
size_t ss_weights_deferred_bytes(void);

#endif
