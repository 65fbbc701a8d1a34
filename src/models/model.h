/*
 * model.h — the compute-model interface and the registry of model kinds.
 *
 * A model is created once at start-up (ss_model_create, on the main thread before the loop
 * runs), is immutable afterwards and is shared by all workers: forward() must be reentrant
 * (no per-call state in the model; scratch memory is allocated per call or lives on the stack).
 *
 * Threads: check() runs on the loop thread and must be cheap (shape checks only);
 * forward() runs on a worker thread (or inline on the loop with --workers 0), or, for
 * SS_EXEC_INLINE models, on the loop thread.
 */
#ifndef SS_MODELS_MODEL_H
#define SS_MODELS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/meta.h"
#include "core/tensor.h"
#include "models/nn/matmul.h"
#include "models/nn/optim.h"

typedef enum {
  SS_EXEC_WORKER = 0, /* forward() on a worker thread (blocking compute) */
  SS_EXEC_INLINE = 1, /* trivial: answered on the loop thread (identity) */
  SS_EXEC_TIMER = 2   /* waits on a loop timer, never occupies a worker (sleep) */
} ss_exec_kind;

typedef struct ss_model ss_model;

/* One layer's attention cache: key and value, float32 [batch, heads, len, head_dim]. release:
 * how an owned entry's key.data and value.data are given back (the allocating backend's release;
 * ss_kv_release); NULL for borrowed views (a request's past).
 * cap > 0: a cache kept in place (a session's, ss_kv_io.cache): the data holds [batch, heads,
 * cap, head_dim] floats of which keys 0 .. len-1 (shape[2] = len) are live; numel and nbytes
 * count the whole buffer (the memory held). cap 0: dense, exactly the shape. */
typedef struct ss_kv_layer {
  ss_tensor key, value;
  void (*release)(void *data);
  int cap;
} ss_kv_layer;

/* Give back the data of an owned entry (its release callback) and zero it. */
static inline void ss_kv_release(ss_kv_layer *kv) {
  if (kv->release != NULL) {
    kv->release(kv->key.data);
    kv->release(kv->value.data);
  }
  kv->key.data = kv->value.data = NULL;
  kv->release = NULL;
}

/* The live length of a cache entry (0: empty). */
static inline int ss_kv_len(const ss_kv_layer *kv) {
  return kv->key.data != NULL ? (int)kv->key.shape[2] : 0;
}

/* KV-cache input/output of one forward call (models with n_kv_layers > 0).
 * past: n_layers entries (borrowed, float32, already validated by check_kv) or NULL for no past.
 * present: when want_present, the model fills n_layers entries with past+new keys/values; their
 * data comes from the model's backend and is owned by the caller afterwards, who gives it back
 * with ss_kv_release (the entry's release callback), never free().
 * cache: a cache kept in place instead (a session's; past NULL, want_present 0): n_layers
 * entries (all-zero when empty, else cap > 0, all of one length P = cache[0].key.shape[2],
 * validated by check_kv). The model writes this call's keys/values at P .. P+T-1 of each entry
 * (no copy of the past; an entry whose cap is short is first moved to a buffer of at least
 * twice the capacity, from the model's backend, the old one released) and on success sets every
 * entry's length to P+T. On failure the lengths stay P: keys 0 .. P-1 are as they were (a grown
 * entry holds the same past), so the cache is unchanged but for its capacity. */
typedef struct ss_kv_io {
  int n_layers;
  const ss_kv_layer *past;
  int want_present;
  ss_kv_layer *present;
  ss_kv_layer *cache;
} ss_kv_io;

/* Optimizer settings (ss_optim): models/nn/optim.h. */

typedef struct ss_model_ops {
  /* Validate an input tensor (dtype already resolved; data may be any dtype) and metadata;
   * write the output shape. Returns 0, or SS_EINVAL with a message naming the problem, e.g.
   * "model 'mlp' expects last dimension 768, got 512". Loop thread. */
  int (*check)(const ss_model *m, const ss_tensor *in, const ss_meta *meta, int64_t *out_shape,
               int *out_ndim, char *err, size_t errlen);
  /* Compute out = f(in). in and out are float32 (the service converts f16/bf16 around it);
   * out->data is preallocated with the shape check() gave. Worker thread.
   * Echo models (echo = 1): the service still calls forward() when exec == SS_EXEC_WORKER
   * (spin burns its CPU time here) and then replies with the input; forward() must then not
   * touch out (out->data may be NULL). INLINE and TIMER models are never forwarded.
   * Returns 0 or <0 with a message. */
  int (*forward)(const ss_model *m, const ss_tensor *in, ss_tensor *out, const ss_meta *meta,
                 char *err, size_t errlen);
  /* Free impl. */
  void (*destroy)(ss_model *m);
  /* Models with a KV cache only (else NULL). Loop thread: validate the past entries against the
   * input (count == n_kv_layers, shapes [batch, heads, past, head_dim] equal for all layers and
   * key/value, batch matching the input, past + seq <= the model's max positions); n_past == 0
   * means no past. Message names the entry, expected vs got. */
  int (*check_kv)(const ss_model *m, const ss_tensor *in, const ss_kv_layer *past, int n_past,
                  char *err, size_t errlen);
  /* Worker thread: like forward, with the cache (see ss_kv_io). */
  int (*forward_kv)(const ss_model *m, const ss_tensor *in, ss_tensor *out, ss_kv_io *kv,
                    const ss_meta *meta, char *err, size_t errlen);
  /* Worker thread, optional (NULL: the kind cannot): n one-token decode steps of different
   * sequences, in[i] [1,1,hidden] float32 with its own cache kv[i] (pasts of any lengths, each
   * validated by check_kv), as one batch: the dense layers see n rows, attention stays per
   * sequence. Each out[i], present and in-place cache equal what forward_kv gives that step
   * alone. */
  int (*forward_kv_batch)(const ss_model *m, int n, const ss_tensor *in, ss_tensor *out,
                          ss_kv_io *kv, char *err, size_t errlen);

  /* ---- training (models that can learn; all NULL otherwise) ----
   * Locking is the caller's (the service): forward, forward_train and backward run under the
   * model's read lock (m->lock), step under its write lock, so a forward sees either the old or
   * the new weights, never a torn mix. backward calls of one model may run concurrently: the
   * model serializes its own gradient accumulation (a mutex inside impl). */
  /* Worker: forward that also keeps what backward needs in *saved (model-owned record, freed
   * with free_saved); *saved_bytes = its memory. Same shapes as forward. forward_id: the
   * record's id (NULL: ""), which seeds what is random in a training forward (LoRA dropout's
   * masks, models/lora.h), so that backward sees the same. */
  int (*forward_train)(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                       const char *forward_id, void **saved, size_t *saved_bytes, char *err,
                       size_t errlen);
  /* Worker: grad_in (preallocated, the input's shape, f32) = dL/d(input) given grad_out
   * (dL/d(output), the output's shape); adds dL/d(weights) into the model's gradient buffers. */
  int (*backward)(ss_model *m, const void *saved, const ss_tensor *grad_out, ss_tensor *grad_in,
                  char *err, size_t errlen);
  /* Worker, write lock held: apply the optimizer to the accumulated gradients (as summed by the
   * backward calls since the last step), then zero them. Weights that are still read-only mmap
   * views are copied to owned memory on the first step (copy on first write). */
  int (*step)(ss_model *m, const ss_optim *opt, char *err, size_t errlen);
  void (*free_saved)(const ss_model *m, void *saved);
  /* Optional (NULL: unknown). Loop thread, shapes only: the bytes forward_train would keep in
   * its record for this input (what *saved_bytes will say), so the service can refuse a request
   * over the activation budget before anything is allocated. */
  size_t (*train_bytes)(const ss_model *m, const ss_tensor *in);
  /* Any thread, read lock held: write the current weights as safetensors with the same keys
   * (and dtype F32) the model was loaded from, atomically: PATH.tmp, fsync, rename. */
  int (*save)(const ss_model *m, const char *path, char *err, size_t errlen);
} ss_model_ops;

struct ss_model {
  char *id;         /* owned */
  const char *kind; /* static: "identity", "mlp", ... */
  const ss_model_ops *ops;
  void *impl;
  ss_exec_kind exec;
  int echo;           /* output is the input, byte for byte (identity, sleep, spin) */
  int n_kv_layers;    /* > 0: the model keeps an attention cache of this many layers */
  ss_optim optim;     /* training: optimizer from the spec (lr filled per request) */
  char *save_path;    /* spec key save=PATH: checkpoint written on drain and SIGUSR1 */
  int max_batch_rows; /* spec key: stack concurrent calls up to this many rows (0 = off) */
  int batch_delay_us; /* spec key: how long a batch waits for company (default 0) */
  int decode_batch;   /* spec key (default 1): one-token steps of different sequences
                       * (sessions, client caches) run as one batch (forward_kv_batch) */
  int wire_dtype;     /* spec key wire_dtype: ss_dtype of tensors without metadata, -1 unset */
  int wire_codec;     /* spec key wire_codec: 1 zlib, 0 none, -1 unset (service/codec.h) */
  int compute;        /* spec key compute: the dtype of the weight products (ss_mm_dtype:
                       * 0 fp32, 1 bf16, 2 int8); set before the constructor runs */
  const struct ss_backend *backend; /* spec key backend=cpu|reference: the op table and
                                     * allocator of its ops (models/nn/backend/backend.h); set
                                     * before the constructor runs */
  int implicit_training;            /* spec key implicit_training=1: an untagged Compute keeps its
                                     * activations for the next ComputeBackward on its connection
                                     * (service/train.c) */
  float learning_rate;   /* spec key learning_rate: the step of a ComputeBackward that sends
                          * none (0: such a call only accumulates) */
  int accumulation_step; /* spec key accumulation_step: ditto (0: 1) */
  uv_rwlock_t lock;      /* weights: forward/backward read, step writes (workers only) */
  int64_t n_params;      /* parameter count (0 for built-ins) */
  size_t weight_bytes;   /* bytes of weights resident */
  const struct ss_st_file *weights; /* the mapped weights file, or NULL; the service calls
                                     * ss_st_check() on it after each forward (in-place changes) */
  char describe[224]; /* one line for logs and GetServiceInfo, e.g. "mlp 768->768->768 (f32)" */
};

/* Parse a model spec "ID=KIND[,key=value...]" and create the model.
 * Known kinds: identity, scale, sleep, spin, mlp, gpt2, llama, gpt_neox (registry.c). mlp keys:
 * weights=PATH (safetensors); without weights: the embedded default (768->768->768, deterministic
 * seeded weights). *out: caller frees with ss_model_free(). On error returns <0 and writes a
 * message. */
int ss_model_create(const char *spec, ss_model **out, char *err, size_t errlen);

/* Create a model of a kind with an id and key=value params (params borrowed, n pairs as
 * alternating key,value strings). Same contract as ss_model_create. */
int ss_model_create_kind(const char *id, const char *kind, const char *const *params, size_t n,
                         ss_model **out, char *err, size_t errlen);

void ss_model_free(ss_model *m);

/* m's compute context (nn/matmul.h): its compute dtype and backend, with m the owner of packed
 * weight copies. A constructor takes it first thing: every tensor its model holds (weights it
 * copies, gradients, optimizer state, adapters, caches, scratch) comes from that backend. */
static inline ss_compute ss_model_compute(const ss_model *m) {
  return (ss_compute){(ss_mm_dtype)m->compute, m, m->backend};
}

/* Size the compute engine's intra-op team of the calling thread (each worker calls it once at
 * start; the loop thread too, for --workers 0). */
void ss_compute_thread_init(int intra_op_threads);

/* Kind constructors (one per file in src/models/). */
int ss_model_identity_new(ss_model *m, const char *const *params, size_t n, char *err,
                          size_t errlen);
int ss_model_scale_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen);
int ss_model_sleep_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen);
int ss_model_spin_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen);
int ss_model_mlp_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen);
int ss_model_gpt2_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen);
int ss_model_llama_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen);
int ss_model_gpt_neox_new(ss_model *m, const char *const *params, size_t n, char *err,
                          size_t errlen);

/* sleep: the wait for a request, in ms, from metadata "ms" (default 100, range 0..600000). */
int ss_model_sleep_ms(const ss_meta *meta, double *ms, char *err, size_t errlen);

#endif
