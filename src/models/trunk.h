/*
 * trunk.h — the trunk runtime: everything a decoder trunk (layers [a, b) of a Hugging Face
 * checkpoint) does that is not its block, written once for every architecture (gpt2.c, llama.c,
 * gpt_neox.c): the model ops (check, check_kv, forward, forward_kv with the client's cache or a
 * session's, forward_kv_batch, forward_train, backward, the optimizer step, save, LoRA's
 * parameters), the present KV caches, the growth of a session's cache kept in place
 * (ss_trunk_kv_reserve), the saved records of training forwards, and all activation memory.
 *
 * An architecture supplies an ss_trunk_arch: its block (forward and backward, on the ops of
 * nn/backend), and one activation table (llm.c's fill_in_activation_sizes): the slots of its
 * work struct (offsets of its float pointers) and, per phase, the floats each one needs. The
 * runtime carves every phase's memory from one allocation of the model's backend (ss_trunk_carve)
 * and walks the layers. Adding a family is its own file (config, weight table, block, the
 * table) + one registry row + its tests.
 *
 * Thread: the model ops as model.h says (check/check_kv on the loop thread, the rest on workers,
 * reentrant); the config helpers at start-up.
 */
#ifndef SS_MODELS_TRUNK_H
#define SS_MODELS_TRUNK_H

#include <jansson.h>

#include "models/ckpt.h"
#include "models/lora.h"
#include "models/model.h"
#include "models/nn/attention.h"
#include "models/nn/matmul.h"
#include "models/params.h"
#include "models/safetensors.h"

/* root[key] as a positive int into *out (*found = 1), or nothing when absent/null (*found = 0).
 * Returns 0, or SS_EINVAL with "config PATH: 'key' must be a positive integer". */
int ss_trunk_cfg_int(json_t *root, const char *key, const char *path, int *out, int *found,
                     char *err, size_t errlen);
/* The n required keys[i] of root as positive ints into *out[i]. Returns 0, or SS_EINVAL with
 * "config PATH: missing 'key'" (or ss_trunk_cfg_int's message). */
int ss_trunk_cfg_required(json_t *root, const char *const *keys, int *const *out, int n,
                          const char *path, char *err, size_t errlen);
/* root[key] as a positive finite number into *out (*found = 1), or nothing when absent/null
 * (*found = 0). Returns 0, or SS_EINVAL with "config PATH: 'key' must be a positive number". */
int ss_trunk_cfg_num(json_t *root, const char *key, const char *path, double *out, int *found,
                     char *err, size_t errlen);
/* The config.json of a trunk: path, or (NULL or "") config.json in cfg_dir (the checkpoint's
 * directory, as ss_ckpt_open says it; the name written into buf [buflen], path then points
 * there: *used); read (at most SS_CONFIG_MAX_BYTES, a regular file) and parsed into a JSON
 * object. Returns the object (the caller json_decref's it), or NULL with *rc (SS_ENOTFOUND,
 * SS_EINVAL) and the message written. */
json_t *ss_trunk_cfg_load(const char *path, const char *cfg_dir, char *buf, size_t buflen,
                          const char **used, int *rc, char *err, size_t errlen);
/* "A:B", "A:", ":B" against n_layer into [*a, *b). Returns 0, SS_EINVAL (shape) or SS_ERANGE. */
int ss_trunk_layers(const char *s, int n_layer, int *a, int *b, char *err, size_t errlen);
/* A trunk's input check: hidden states [batch, seq, hidden] with batch, seq >= 1, seq <= n_pos
 * (pos_key: the config key that bounds it, for the message), batch x seq within one call; the
 * output has the input's shape. Returns 0 or SS_EINVAL with a message naming model and values. */
int ss_trunk_check_hidden(const ss_model *m, const ss_tensor *in, int hidden, int n_pos,
                          const char *pos_key, int64_t *out_shape, int *out_ndim, char *err,
                          size_t errlen);
/* The end of a batched decode step: rows of x [n, E] into out[i] and the in-place caches' lengths
 * advanced on success; on failure free what the step allocated in the presents and say so.
 * Returns rc. */
int ss_trunk_batch_finish(const ss_model *m, int rc, int n, int L, int E, const float *x,
                          ss_tensor *out, ss_kv_io *kv, char *err, size_t errlen);

/* One layer's present key and value, float32 [B, H, T, D], from cc's backend (the caller owns
 * them: ss_kv_release). */
int ss_trunk_alloc_present(const ss_compute *cc, ss_kv_layer *pr, int B, int H, int T, int D);
/* Free the first n present layers of kv and zero them. */
void ss_trunk_free_present(ss_kv_io *kv, int n);

/* An in-place cache entry (model.h's ss_kv_io.cache) able to hold need keys per head of batch B:
 * unchanged when it can; else moved to a new buffer of max(need, 2 cap) keys (rounded up to 16,
 * at most max, the positions bound) from cc's backend, its live keys copied, the old released.
 * An entry of another batch size is empty (check_kv) and starts over. 0 or SS_ENOMEM (the entry
 * as it was). */
int ss_trunk_kv_reserve(const ss_compute *cc, ss_kv_layer *c, int B, int H, int need, int D,
                        int max);
/* Set the live length of n in-place cache entries (a step that succeeded). */
void ss_trunk_kv_set_len(ss_kv_layer *c, int n, int len);

/* Batched decode steps (forward_kv_batch): for layer l, sequence i's cache K[i], V[i] is its
 * in-place cache entry (kv[i].cache: reserved for P_i + 1 keys, cap[i] its capacity), its present
 * cache entry [1, H, P_i + 1, D] (allocated here) when it wants one, else a piece of scratch
 * (2 H (P_i + 1) D floats per such sequence); cap[i] 0 for the last two. Returns 0 or
 * SS_ENOMEM. */
int ss_trunk_batch_windows(const ss_compute *cc, ss_kv_io *kv, int n, int l, int H, int D,
                           int n_pos, float *scratch, float **K, float **V, int *cap);
/* The length of sequence i's past (0 without one). */
static inline int ss_trunk_past_len(const ss_kv_io *kv) {
  return kv->cache ? ss_kv_len(&kv->cache[0]) : kv->past ? (int)kv->past[0].key.shape[2] : 0;
}

/* ------------------------------------------------------------- the runtime ---- */

/* One sequence of a block call's rows: usually the only one ([B, T] rows after P cached ones, at
 * positions pos0..); a batched decode step stacks several, each with its own past (attention and
 * rope per sequence, everything else over all rows at once). past_k, past_v: this layer's past
 * [B, NKV, P, D] (wire bytes, may be unaligned) to copy, or NULL when P == 0 or the past is
 * already in K, V (a session's cache in place); K, V: its cache [B, NKV, cap, D] (cap 0: P+T;
 * the present cache, scratch, or the session's); pos: M-RoPE positions [3, B, T] or NULL. */
typedef struct ss_trunk_seq {
  int row0, B, T, P, pos0;
  const void *past_k, *past_v;
  float *K, *V;
  const int *pos;
  int cap; /* keys per head of K, V (a session's cache in place); 0: P + T */
} ss_trunk_seq;

/* What the activation table is asked for: */
typedef enum {
  SS_TRUNK_INFER,    /* forward_kv scratch: x = h = y are the output (not carved) */
  SS_TRUNK_BATCH,    /* forward_kv_batch scratch: x carved, h and y alias it */
  SS_TRUNK_TRAIN,    /* forward_train scratch (what backward recomputes) */
  SS_TRUNK_SAVED,    /* one layer of a training forward's record (x first: y is the next x) */
  SS_TRUNK_BACKWARD, /* backward scratch: recomputed activations and the gradients */
  SS_TRUNK_PHASES
} ss_trunk_phase;

/* The shapes a phase's sizes depend on. */
typedef struct ss_trunk_dims {
  size_t rows; /* rows of the block call (B S, or the batched steps) */
  int B, S, T; /* batch, new tokens, keys seen (P + S; a batch: the longest window) */
  int dropout; /* a training call with LoRA dropout masks */
} ss_trunk_dims;

/* The slots every architecture's table starts with (the runtime points them): the residual
 * stream (x in, h after attention, y out) and the key/value window. */
enum { SS_TRUNK_X, SS_TRUNK_H, SS_TRUNK_Y, SS_TRUNK_K, SS_TRUNK_V, SS_TRUNK_SLOTS0 };
#define SS_TRUNK_MAX_SLOTS 48
/* A size that says "the same memory as slot j" (carved earlier in the same phase). */
#define SS_TRUNK_ALIAS(j) ((size_t)-1 - (size_t)(j))

/* Table helper: the batch phase's residual stream (x carved [rows, E], h and y the same memory).
 * (An inference phase's attention scratch is ss_attn_scratch(head size), nn/attention.h.) */
static inline void ss_trunk_batch_stream(size_t *n, size_t rows_e) {
  n[SS_TRUNK_X] = rows_e;
  n[SS_TRUNK_H] = n[SS_TRUNK_Y] = SS_TRUNK_ALIAS(SS_TRUNK_X);
}

typedef struct ss_trunk ss_trunk;

typedef struct ss_trunk_arch {
  const char *kind;         /* "gpt2", "llama" */
  const char *pos_key;      /* the config key bounding positions, for messages */
  const char *kv_heads_key; /* the config key of the cache's heads, for messages */
  int kv_msg_layer;         /* cache shape messages name the layer: "(layer %d)" */
  /* The activation table: work_size bytes of work struct, slots[i] the offset of its float
   * pointer i (the SS_TRUNK_* ones first); att_all_off, mk_off: its int att_all (1 when att
   * keeps every probability: training) and its const ss_lora_mask *mk. */
  size_t work_size;
  const size_t *slots;
  int n_slots;
  size_t att_all_off, mk_off;
  /* n[i] (floats; 0: not carved, the pointer left as it is; SS_TRUNK_ALIAS(j): slot j's) of
   * every slot of phase ph. The runtime adds K and V scratch itself. */
  void (*sizes)(const void *impl, ss_trunk_phase ph, const ss_trunk_dims *d, size_t *n);
  /* Optional: after the backward carve (zero a sink, ...). */
  void (*backward_init)(const void *impl, void *work);
  /* The block of layer l (0-based in the trunk) over BT rows of work's activations. */
  void (*block_forward)(const void *impl, int l, void *work, int BT, const ss_trunk_seq *seqs,
                        int nseq);
  /* Its backward: dres [BT, E] holds dL/dy on entry and dL/dx on return; 0 or SS_ENOMEM. */
  int (*block_backward)(void *impl, int l, void *work, float *dres, int B, int S);
  /* Optional: request metadata that places tokens (position_offset, M-RoPE positions): *pos0
   * (-1: after the past) and *pos (malloc'd [3, B, S] or NULL). check: validate only. */
  int (*positions)(const ss_model *m, const ss_meta *meta, int B, int S, int *pos0, int **pos,
                   char *err, size_t errlen);
  int (*check_meta)(const ss_model *m, const ss_tensor *in, const ss_meta *meta, char *err,
                    size_t errlen);
  /* LoRA's PEFT target names (bit i: name i) and whether its weights are Conv1D (fan_in_fan_out)
   * for save. */
  const char *const *lora_targets;
  int n_lora_targets, fan_in_fan_out;
  void (*destroy)(void *impl);
} ss_trunk_arch;

/* The runtime's slots in the slot table of a work struct type whose block_acts member a has
 * x, h, y, K, V. */
#define SS_TRUNK_COMMON_SLOTS(type)                                       \
  [SS_TRUNK_X] = offsetof(type, a.x), [SS_TRUNK_H] = offsetof(type, a.h), \
  [SS_TRUNK_Y] = offsetof(type, a.y), [SS_TRUNK_K] = offsetof(type, a.K), \
  [SS_TRUNK_V] = offsetof(type, a.V)

/* The activation-table fields of an ss_trunk_arch for a work struct type whose block_acts
 * member a has att_all and mk, and its slot offsets table. */
#define SS_TRUNK_WORK(type, table)                                                                \
  .work_size = sizeof(type), .slots = (table), .n_slots = (int)(sizeof(table) / sizeof *(table)), \
  .att_all_off = offsetof(type, a.att_all), .mk_off = offsetof(type, a.mk)

/* The runtime's view of a model (m->impl of gpt2 and llama models). */
struct ss_trunk {
  const ss_trunk_arch *arch;
  void *impl;        /* the architecture's state (owned: arch->destroy) */
  int a, b, n_pos;   /* layers [a, b) of the checkpoint; positions bound */
  int E, NKV, D;     /* hidden size; the cache's heads and head size */
  ss_params *prm;    /* the trainable parameters (in impl) */
  ss_compute *cc;    /* the compute context (in impl) */
  ss_lora_cfg *lora; /* LoRA settings (in impl; r 0: none) */
};

/* The model ops of every trunk (m->impl: an ss_trunk). */
extern const ss_model_ops ss_trunk_ops;

/* The spec keys every trunk kind takes (registry.c: weights, config, layers and LoRA's). */
typedef struct ss_trunk_spec {
  const char *weights, *config, *layers;
  const char *lora_rank, *lora_alpha, *lora_targets, *adapter, *lora_dropout, *lora_seed;
} ss_trunk_spec;

/* params (n key/value pairs, borrowed) into *sp; weights is required ("kind 'K' needs
 * weights=PATH (weights_what)"), layers defaults to ":". Returns 0 or SS_EINVAL. */
int ss_trunk_spec_parse(const ss_model *m, const char *kind, const char *weights_what,
                        const char *const *params, size_t n, ss_trunk_spec *sp, char *err,
                        size_t errlen);

/* The start of every architecture's loading, after its spec: the checkpoint sp->weights opened
 * into *ck (models/ckpt.h) and its config.json (sp->config, else the one in the checkpoint's
 * directory) parsed into *root (the caller json_decref's it; the path it came from in cfg_path
 * [cfg_len], for messages). 0, or an error with msg written (*ck then still safe to close). */
int ss_trunk_open(const ss_trunk_spec *sp, ss_ckpt *ck, json_t **root, char *cfg_path,
                  size_t cfg_len, char *msg, size_t len);

/* Training set-up once an architecture has loaded its weights: LoRA's settings (PEFT's default
 * targets: bits of arch->lora_targets), the adapters (lora_setup: fresh or from sp->adapter),
 * the parameters (params: every trunk tensor, or the adapters only), and the optimizer state
 * (from ckpt, the weights file, or the adapter's directory). 0, or an error with msg written. */
int ss_trunk_training(const ss_trunk_arch *arch, void *impl, const ss_trunk_spec *sp,
                      unsigned default_targets, ss_lora_cfg *lora, ss_params *prm,
                      const struct ss_st_file *ckpt,
                      int (*lora_setup)(void *impl, const char *adapter, char *msg, size_t len),
                      int (*params)(void *impl), char *msg, size_t len);

/* One module of a trunk that may carry an adapter, as ss_trunk_lora_all asks for it: the
 * adapter (the architecture's), its PEFT key (without .lora_A.weight), shape and dropout unit. */
typedef struct ss_trunk_lora_site {
  ss_lora *lo;
  char key[256];
  int in, out, unit;
} ss_trunk_lora_site;

/* Every adapter of a trunk: for i in [0, n), describe(impl, i, site) says whether module i is a
 * target (0: not) and fills *site; each target's adapter is read from adapter_dir's
 * adapter_model.safetensors or, without one, made fresh (PEFT's init, one seeded generator over
 * the targets in order), in cc's backend memory (the model's). r: the rank. 0, or an error with
 * err written. */
int ss_trunk_lora_all(void *impl, const ss_compute *cc, int n, int r,
                      int (*describe)(void *impl, int i, ss_trunk_lora_site *site),
                      const char *adapter_dir, char *err, size_t errlen);

/* Make t (a copy of *desc) the model's impl with the trunk ops: the compute context from the
 * model's keys (compute=, backend=) into *desc->cc, shared by its parameters and LoRA; the
 * model's cache layers, exec, weights (ck's first file; every file of ck is a source whose f32
 * views give their pages back once packed: ss_matmul_weights_source) and sizes; ", LoRA r N"
 * after the describe line the architecture wrote. Returns 0, or SS_ENOMEM with desc->impl
 * destroyed and err written. */
int ss_trunk_attach(ss_model *m, const ss_trunk *desc, const ss_ckpt *ck, int64_t n_params,
                    char *err, size_t errlen);

/* Carve base into the work struct for n (see sizes): returns the floats used. base NULL: only
 * count. */
size_t ss_trunk_carve(const ss_trunk_arch *ar, const size_t *n, float *base, void *work);

/* ------------------------------------------------------------- loading weights ---- */

/* What a trunk's tensors were loaded as (one per architecture's load_weights): the dtypes seen,
 * whether an F32 tensor had to be copied (unaligned), the parameter count, and the names of
 * missing tensors (the first 6, for one message). */
typedef struct ss_trunk_load {
  const ss_compute *cc; /* the model's: its backend holds the converted copies */
  unsigned dts;
  int copied, n_missing;
  int deferred, converted; /* narrow matrices kept as stored (nn/deferred.h); narrow ones copied */
  int64_t n_params;
  size_t mpos;
  char missing[400];
} ss_trunk_load;

/* Start loading for a model of compute context cc (borrowed, filled in: ss_model_compute; the
 * copies ss_trunk_weight makes come from its backend, the architecture releases them with
 * ss_op_release): *ld zeroed, *found = n_found NULL tensor pointers (the caller frees them).
 * Returns n_blk zeroed blocks of blk_size bytes (the architecture's, freed with it), or NULL
 * when out of memory (nothing allocated, message written). */
void *ss_trunk_load_begin(ss_trunk_load *ld, const ss_compute *cc, size_t n_found,
                          const struct ss_st_tensor ***found, size_t n_blk, size_t blk_size,
                          const char *path, char *err, size_t errlen);
/* Note name as missing. */
void ss_trunk_missing(ss_trunk_load *ld, const char *name);
/* 0 when nothing is missing, else SS_EINVAL: "weights PATH: N tensors of layers A:B missing:
 * NAME, ... (K more)". */
int ss_trunk_missing_check(const ss_trunk_load *ld, const char *path, int a, int b, char *err,
                           size_t errlen);
/* Tensor t of the table with its expected shape [ndim]: checked ("weights PATH: 'NAME' has shape
 * S, expected S2 (dims)", dims: the config values that made it), then its float32 view / owned
 * copy (ss_st_f32, in ld->cc's backend memory) and the counts. A BF16/F16 matrix of a model on
 * the cpu backend whose products all run packed (matmul.h ss_matmul_w_always_packed: compute bf16,
 * int8, f32 with brgemm) is not converted: *view is a deferred f32 array (nn/deferred.h) standing
 * for the checkpoint's values, made real only when training or saving reads it, *own NULL.
 * 0, SS_EINVAL or SS_ENOMEM. */
int ss_trunk_weight(ss_trunk_load *ld, const struct ss_st_tensor *t, const int64_t *shape, int ndim,
                    const float **view, float **own, const char *path, const char *dims, char *err,
                    size_t errlen);
/* "f32 mmap", "f32 copied", "f16->f32", "bf16->f32" or "mixed->f32" (static); "bf16 as stored",
 * "f16 as stored" or "mixed as stored" when the matrices were deferred. */
const char *ss_trunk_load_kind(const ss_trunk_load *ld);

#endif
