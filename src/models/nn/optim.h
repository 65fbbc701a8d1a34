/*
 * optim.h — the parameter update shared by the trainable models (mlp, gpt2): SGD and AdamW
 * over one float array with its gradient and state, and copy on first write of weights that
 * are still read-only views (into the safetensors mmap).
 *
 * Semantics follow torch.optim (1.13, defaults: no momentum, no amsgrad, not maximize):
 *   SGD:   g' = g + wd * p  (when wd != 0);   p -= lr * g'
 *   AdamW: p *= 1 - lr * wd  (decoupled);  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *          p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)     (t = 1, 2, ...)
 *
 * Thread: the caller's; the models call these from step() under the model's write lock, so
 * nothing here locks.
 */
#ifndef SS_MODELS_NN_OPTIM_H
#define SS_MODELS_NN_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "splitserve.h"

/* Optimizer settings for one step (training models). */
typedef enum { SS_OPT_SGD = 0, SS_OPT_ADAMW = 1 } ss_opt_kind;
typedef struct ss_optim {
  ss_opt_kind kind; /* from the model spec: optimizer=sgd|adamw (default sgd) */
  float lr;         /* the request's learning_rate (> 0, finite) */
  float beta1, beta2, eps, weight_decay; /* spec keys beta1, beta2, eps, weight_decay
                                          * (AdamW defaults 0.9, 0.999, 1e-8, 0.01; SGD: 0) */
} ss_optim;

/* One trainable array: its values (a view, or its own copy once written), its accumulated
 * gradient and its AdamW moments. grad, m and v are allocated lazily (NULL until needed). */
typedef struct ss_param {
  const float **view; /* borrowed: the model's pointer to the current values */
  float **own;        /* borrowed: the model's pointer to its owned copy (NULL: still a view) */
  size_t numel;
  float *grad;  /* owned: summed gradient since the last step (NULL: none yet) */
  float *m, *v; /* owned: AdamW first/second moments (NULL until the first AdamW step) */
  /* Where grad, m, v and the copy on first write come from and go back to: the allocator of the
   * model's backend (params.c sets it; nn/ does not know backends). NULL: malloc / free. */
  void *(*alloc)(size_t n);
  void (*release)(void *p);
} ss_param;

/* Make *p->view writable: when it is still a view (p->own NULL), copy it (p->alloc), point both
 * at the copy (the model releases *p->own with the same allocator).
 * Returns the writable array, or NULL when out of memory (the view is left as it was). */
float *ss_param_writable(ss_param *p);

/* Allocate p->grad (zeroed) when absent. Returns 0 or SS_ENOMEM. */
int ss_param_grad(ss_param *p);

/* Apply one optimizer update to p with its accumulated gradient (p->grad; a NULL grad is a
 * parameter that saw no backward: left untouched, like torch with grad None), then zero the
 * gradient. t: the 1-based step number (AdamW bias correction). Returns 0 or SS_ENOMEM. */
int ss_param_step(ss_param *p, const ss_optim *opt, int64_t t);

/* One optimizer step over a model's n parameters, all or nothing: first every new value is
 * computed without writing anything (weights, moments); if one would be NaN or +-Inf the step
 * is refused: weights, moments and the step count stay exactly as they were, the accumulated
 * gradients are dropped (zeroed: the bad batch is discarded, the next backward starts clean)
 * and SS_EINVAL comes back with a message naming the parameter and element. Otherwise ++*t and
 * every parameter is updated (ss_param_step). Parameters with numel 0 or no gradient are skipped.
 * model_id: for messages. Returns 0, SS_EINVAL or SS_ENOMEM (then some may be updated). */
int ss_param_array_step(ss_param *prm, size_t n, const ss_optim *opt, int64_t *t,
                        const char *model_id, char *err, size_t errlen);

/* Free grad, m and v (not the values: they belong to the model). */
void ss_param_free_state(ss_param *p);

#endif
