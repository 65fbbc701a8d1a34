/*
 * lora.h — LoRA adapters, written once for every trunk kind that takes them (gpt2, llama,
 * gpt_neox): the low-rank path of one projection (forward, backward), PEFT's initialisation, the
 * spec keys (lora_rank, lora_alpha, lora_targets, adapter=DIR) and the PEFT directory layout
 * (adapter_config.json + adapter_model.safetensors, plus our optimizer.safetensors).
 *
 * One adapted projection y = x W (+ b), in [in] -> out [out], gains
 *     y += s (x A^T) B^T,   A [r, in], B [out, r], s = alpha / r
 * whatever the layout of W (nn.Linear [out, in] or GPT-2's Conv1D [in, out]: PEFT stores A and B
 * the same way for both; Conv1D adapters say fan_in_fan_out=true in adapter_config.json, which
 * only matters to PEFT's merge). A starts as PEFT's kaiming_uniform(a=sqrt(5)), i.e.
 * U(-1/sqrt(in), 1/sqrt(in)) from a fixed seed, B at zero, so a fresh adapter leaves the
 * model's output unchanged.
 *
 * LoRA dropout (lora_dropout=P, 0 <= P < 1; PEFT's lora_dropout): in training forwards only,
 * each adapter's input x [BT, in] becomes x * keep / (1 - P) on the low-rank path (the base
 * projection still sees x), as PEFT's nn.Dropout in train mode. Every adapted projection draws
 * its own mask from a counter-based generator, so the backward regenerates exactly the mask its
 * forward used (nothing is stored) and a test can reproduce it:
 *   mix(z)  = splitmix64's finalizer: z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
 *             z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31        (uint64, wrapping)
 *   fid     = FNV-1a 64 of the forward id's bytes (offset 0xCBF29CE484222325, prime
 *             0x100000001B3)
 *   key     = mix(seed ^ mix(fid))                  seed: the model key lora_seed (default 0)
 *   unit    = layer * 16 + module                   layer: absolute (the checkpoint's index);
 *             module: the kind's index (gpt2: c_attn 0, attn.c_proj 1, c_fc 2, mlp.c_proj 3;
 *             llama: q 0, k 1, v 2, o 3, gate 4, up 5, down 6)
 *   z       = mix(key ^ (unit * G)),  G = 0x9E3779B97F4A7C15
 *   u_i     = mix(z + (i + 1) * G) >> 40             i: row-major index into [BT, in]
 *   keep_i  = u_i * 2^-24 >= P                       (P the float32 the spec parses, as double)
 * and x * keep / (1 - P) is computed in float32 as x * (1.0f / (1.0f - P)).
 *
 * Thread: set-up on the main thread with the model; forward/backward on workers, reentrant
 * (scratch is the caller's); gradient sums under the params mutex (models/params.h).
 */
#ifndef SS_MODELS_LORA_H
#define SS_MODELS_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "models/params.h"
#include "models/safetensors.h"

/* One projection's adapter. a == NULL: the projection has none. */
typedef struct ss_lora {
  const float *a, *b; /* A [r, in], B [out, r] (views of a_own / b_own) */
  float *a_own, *b_own;
  int ia, ib;           /* their parameter indices (< 0: not trainable) */
  int unit;             /* layer * 16 + module: which dropout masks it draws (see above) */
  const ss_compute *cc; /* whose backend a_own and b_own come from (borrowed) */
} ss_lora;

/* A model's LoRA settings (r == 0: no LoRA). */
typedef struct ss_lora_cfg {
  int r;
  float alpha, s;       /* s = alpha / r */
  unsigned targets;     /* bit per target name (the kind's list, see ss_lora_settings) */
  float dropout;        /* lora_dropout, in [0, 1) */
  uint64_t seed;        /* lora_seed: the dropout masks' seed */
  const ss_compute *cc; /* the model's compute context (borrowed): the adapters' products */
} ss_lora_cfg;

/* One training forward's dropout (p == 0 or a NULL pointer: none): p and the key of its masks. */
typedef struct ss_lora_mask {
  float p;
  uint64_t key;
} ss_lora_mask;

/* The masks' key of a training forward: mix(seed ^ mix(fnv1a64(forward_id))); NULL id: "". */
uint64_t ss_lora_mask_key(uint64_t seed, const char *forward_id);
/* xd [n] = x * keep / (1 - p) with unit's mask (see above), the dropout op of cc's backend
 * (NULL: cpu); xd may be x. */
void ss_lora_dropout(const ss_compute *cc, float *xd, const float *x, size_t n,
                     const ss_lora_mask *mk, int unit);

/* y [BT, out] += s (drop(x [BT, in]) A^T) B^T. lt: scratch [BT, r]. mk: the training forward's
 * dropout (NULL: none, as in inference); xd: scratch [BT, in] when mk->p > 0. */
void ss_lora_forward(const ss_lora_cfg *c, const ss_lora *l, int in, int out, float *y,
                     const float *x, int BT, float *lt, const ss_lora_mask *mk, float *xd);
/* Backward of ss_lora_forward given dy [BT, out] and its input x (and its forward's mk, the
 * same masks): dx [BT, in] += the adapter's part; dA, dB += (under prm's mutex, when ia >= 0).
 * lt, dlt: scratch [BT, r]; xd: scratch [BT, in] when mk->p > 0. */
void ss_lora_backward(ss_params *prm, const ss_lora_cfg *c, const ss_lora *l, int in, int out,
                      float *dx, const float *dy, const float *x, int BT, float *lt, float *dlt,
                      const ss_lora_mask *mk, float *xd);

/* Fresh adapter in cc's backend memory (cc: the model's, borrowed): A from PEFT's init (state:
 * the seeded generator, advanced), B zero. Returns 0 or SS_ENOMEM. */
int ss_lora_init(ss_lora *l, const ss_compute *cc, int r, int in, int out, uint64_t *state);
/* Adapter from an opened adapter_model.safetensors (borrowed; values copied into cc's backend
 * memory): keys <key>.lora_A.weight [r, in] and <key>.lora_B.weight [out, r]. path: for
 * messages. */
int ss_lora_load(ss_lora *l, const ss_compute *cc, const ss_st_file *ad, const char *path,
                 const char *key, int r, int in, int out, char *err, size_t errlen);
/* Register A and B as parameters under <key>.lora_A.weight / .lora_B.weight. 0 or SS_ENOMEM. */
int ss_lora_add_params(ss_params *prm, ss_lora *l, const char *key, int r, int in, int out);
void ss_lora_free(ss_lora *l);

/* The spec keys: rank, alpha, targets, adapter, dropout, seed (each NULL when absent; all NULL:
 * no LoRA, c->r = 0). names [n]: the kind's target names (bit i = names[i]); def_targets: PEFT's
 * default for the architecture. With adapter=DIR the settings come from DIR/adapter_config.json
 * and any of rank, alpha, targets given too must agree (dropout defaults to the file's
 * lora_dropout; the key overrides it). 0 or <0 with a message. */
int ss_lora_settings(const char *rank, const char *alpha, const char *targets, const char *adapter,
                     const char *dropout, const char *seed, const char *const *names, int n,
                     unsigned def_targets, ss_lora_cfg *c, char *err, size_t errlen);
/* The optimizer state of an adapter=DIR (DIR/optimizer.safetensors, when there) into prm. */
int ss_lora_restore(ss_params *prm, const char *dir, char *err, size_t errlen);
/* Write the PEFT directory dir: adapter_model.safetensors (prm's values), optimizer.safetensors
 * and adapter_config.json (r, alpha, target names of c->targets, layers [a, b),
 * fan_in_fan_out). */
int ss_lora_save(const ss_params *prm, const ss_lora_cfg *c, const char *const *names, int n, int a,
                 int b, int fan_in_fan_out, const char *dir, char *err, size_t errlen);
/* Open DIR/adapter_model.safetensors (*ad: caller closes). */
int ss_lora_open(const char *dir, ss_st_file **ad, char *path, size_t pathlen, char *err,
                 size_t errlen);

#endif
