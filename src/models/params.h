/*
 * params.h — the training plumbing the trainable models share: a model lists each parameter
 * once (name, shape, where its values live), and this gives it gradient buffers summed by
 * concurrent backward calls, the optimizer step over all of them, and the safetensors save.
 *
 * Thread: created on the main thread with the model. Workers: ss_params_grads and the
 * gradient sums (ss_params_lock / ss_params_linear_backward) run in backward() under the
 * model's read lock, serialized among themselves by the set's mutex; ss_params_step runs in
 * step() under the model's write lock; ss_params_save under the read lock (any thread).
 */
#ifndef SS_MODELS_PARAMS_H
#define SS_MODELS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "models/model.h"
#include "models/nn/linear.h"
#include "models/nn/optim.h"

typedef struct ss_params {
  ss_param *p;         /* n entries, in the order added */
  char **names;        /* owned: the safetensors key of each */
  int64_t (*shape)[2]; /* each one's shape (ndim 1 or 2) */
  int *ndim;
  size_t n, cap;
  uv_mutex_t gmu; /* serializes gradient sums of concurrent backward calls */
  int gmu_ok;
  int64_t t;            /* optimizer steps taken so far */
  const ss_compute *cc; /* the model's compute context (borrowed; NULL: cpu): the products, and
                         * the allocator of gradients, moments and copies on first write */
} ss_params;

/* Room for cap parameters whose gradients and optimizer state come from cc's backend (borrowed,
 * filled in: ss_model_compute). Returns 0 or SS_ENOMEM (then ss_params_free is still safe). */
int ss_params_init(ss_params *s, size_t cap, const ss_compute *cc);
/* Add a parameter: name copied; view/own borrowed (the model's pointers to the values and to its
 * owned copy, see ss_param); shape [ndim] with ndim 1 or 2. Returns its index, or SS_ENOMEM. */
int ss_params_add(ss_params *s, const char *name, const int64_t *shape, int ndim,
                  const float **view, float **own);
/* Allocate every missing gradient buffer (zeroed), under the mutex. Returns 0 or SS_ENOMEM. */
int ss_params_grads(ss_params *s);
/* The gradient buffer of parameter i (after ss_params_grads). */
float *ss_params_grad(const ss_params *s, int i);
void ss_params_lock(ss_params *s);
void ss_params_unlock(ss_params *s);
/* Backward of a linear layer whose weight is parameter iw and bias parameter ib (< 0: none):
 * dW, db += (under the mutex), then dx = ... outside it (dx NULL: skipped). See nn/linear.h. */
void ss_params_linear_backward(ss_params *s, int iw, int ib, float *dx, const float *dy,
                               const float *x, const float *W, int BT, int C, int OC,
                               ss_w_layout layout);
/* One optimizer step over every parameter with a gradient, then zero the gradients; nothing
 * when no backward ran since the set was made. All or nothing (ss_param_array_step): a step that
 * would make a weight NaN/Inf is refused with SS_EINVAL and leaves every weight as it was.
 * model_id: for messages. Returns 0, SS_EINVAL or SS_ENOMEM with a message in err. */
int ss_params_step(ss_params *s, const ss_optim *opt, const char *model_id, char *err,
                   size_t errlen);
/* Checkpoints. The optimizer state travels with the weights, in the same file, so a server
 * restarted from a checkpoint continues the run exactly (AdamW's moments and bias correction):
 *   optimizer.step                 F32 [1]   steps taken (exact up to 2^24)
 *   optimizer.exp_avg.<name>       F32 like <name>   AdamW first moment (when it has one)
 *   optimizer.exp_avg_sq.<name>    F32 like <name>   AdamW second moment
 * Loaders of the trainable kinds skip the "optimizer." keys (SS_PARAMS_OPTIM_PREFIX). */
#define SS_PARAMS_OPTIM_PREFIX "optimizer."
enum { SS_PARAMS_VALUES = 1, SS_PARAMS_OPTIM = 2 };
/* Write the parameters (SS_PARAMS_VALUES) and/or the optimizer state (SS_PARAMS_OPTIM) as F32
 * safetensors, atomically (see safetensors.h). */
int ss_params_write(const ss_params *s, const char *path, int what, char *err, size_t errlen);
/* Both, in one file: ss_params_write(s, path, SS_PARAMS_VALUES | SS_PARAMS_OPTIM). */
int ss_params_save(const ss_params *s, const char *path, char *err, size_t errlen);
/* Restore the optimizer state written by ss_params_write from f (borrowed; its data is copied):
 * the step count and every parameter's moments found there (shapes checked). A file without
 * optimizer.step leaves the state empty. Call after every ss_params_add. 0 or <0 + message. */
int ss_params_restore(ss_params *s, const struct ss_st_file *f, char *err, size_t errlen);
/* Free names, gradients and optimizer state (not the values: they belong to the model). */
void ss_params_free(ss_params *s);

#endif
