/*
 * mlp.c — the "mlp" model kind: a PyTorch nn.Sequential(Linear, act, Linear, ..., Linear)
 * on the op library in nn/ (linear, relu, gelu). The trunk of a split-learning model in its
 * simplest form.
 *
 * Weights: spec param weights=PATH, a safetensors file with keys "<idx>.weight" [out,in] and
 * optional "<idx>.bias" [out], all under one common prefix ("", "model.", "layers.", ...),
 * as written by torch's state_dict() of a Sequential. Layers are ordered by numeric index; the
 * activation (param activation=relu|gelu, default relu; gelu is the exact erf form, like
 * torch.nn.GELU()) sits between consecutive Linear layers, not after the last. F32 tensors are
 * used in place from the mmap when 4-byte aligned (else copied); F16/BF16 are converted to f32
 * at load. Without weights=: the embedded default 768->768->768 (see default_weights()).
 *
 * Thread: created on the main thread, then shared by all workers; check() on the loop thread;
 * forward() on a worker, reentrant (its two ping-pong scratch buffers come from its backend
 * per call).
 * Y = X W^T + b per layer (nn/linear.h, SS_W_OUT_IN).
 *
 * Training (see "training" below): forward_train/backward on workers under the model's read
 * lock (backwards serialize only their gradient sums: models/params.h); step() under the write lock
 * is the only writer of weights, copying mmap views on first write (ss_param_writable); save()
 * under the read lock writes "<prefix><idx>.weight"/".bias" as loaded (the embedded default:
 * 0.*, 2.*).
 */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "models/nn/backend/backend.h"
#include "models/params.h"
#include "models/safetensors.h"

typedef struct mlp_layer {
  int in, out;
  unsigned long idx; /* index in the Sequential: the key is "<prefix><idx>.weight" */
  const float *w;    /* [out][in] row-major; into the mmap or w_own */
  const float *b;    /* [out] or NULL */
  float *w_own, *b_own;
  int pw, pb; /* parameter indices of w and b (pb -1: no bias) */
} mlp_layer;

typedef struct mlp {
  int n;
  mlp_layer *l;
  int gelu;       /* 0: relu, 1: exact GELU */
  ss_st_file *st; /* keeps the mmap alive while layers point into it */
  char *prefix;   /* key prefix of the loaded file ("" for the embedded default) */
  /* training: weight and bias (when present) of each layer, in order (see mlp_params) */
  ss_params prm;
  ss_compute cc; /* the dtype of the weight products (model key compute=) */
} mlp;

static void mlp_free(mlp *p) {
  if (p == NULL) return;
  for (int i = 0; i < p->n; i++) {
    ss_op_release(&p->cc, p->l[i].w_own);
    ss_op_release(&p->cc, p->l[i].b_own);
  }
  ss_params_free(&p->prm);
  free(p->prefix);
  free(p->l);
  ss_st_close(p->st);
  free(p);
}

/* ------------------------------------------------------------- default model ---- */

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/*
 * The embedded default: 768 -> 768 -> 768, relu, deterministic weights a test can rebuild:
 *   state = 42 (uint64); next(): state += 0x9E3779B97F4A7C15; z = state;
 *     z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31
 *   u = (next() >> 40) / 2^24 in [0,1);  value = float32((2u - 1) / sqrt(in)) computed in double
 * i.e. U(-1/sqrt(in), 1/sqrt(in)) like torch.nn.Linear's init. One stream for the whole model,
 * in this order: layer 0 weight [out][in] row-major, layer 0 bias [out], layer 1 weight, bias.
 */
static int default_weights(mlp *p) {
  static const int widths[] = {768, 768, 768};
  uint64_t state = 42;
  p->n = 2;
  p->l = calloc((size_t)p->n, sizeof *p->l);
  if (p->l == NULL) return SS_ENOMEM;
  for (int i = 0; i < p->n; i++) {
    mlp_layer *L = &p->l[i];
    double bound;
    size_t nw;
    L->in = widths[i];
    L->out = widths[i + 1];
    L->idx = 2 * (unsigned long)i; /* Sequential(Linear, ReLU, Linear): 0, 2 */
    nw = (size_t)L->in * (size_t)L->out;
    bound = 1.0 / sqrt((double)L->in);
    L->w_own = ss_op_alloc(&p->cc, nw * sizeof(float));
    L->b_own = ss_op_alloc(&p->cc, (size_t)L->out * sizeof(float));
    if (L->w_own == NULL || L->b_own == NULL) return SS_ENOMEM;
    for (size_t k = 0; k < nw; k++) {
      double u = (double)(splitmix64(&state) >> 40) * 0x1p-24;
      L->w_own[k] = (float)((2.0 * u - 1.0) * bound);
    }
    for (int k = 0; k < L->out; k++) {
      double u = (double)(splitmix64(&state) >> 40) * 0x1p-24;
      L->b_own[k] = (float)((2.0 * u - 1.0) * bound);
    }
    L->w = L->w_own;
    L->b = L->b_own;
  }
  return 0;
}

/* ------------------------------------------------------------- file loading ---- */

typedef struct layer_ref {
  unsigned long idx;
  const ss_st_tensor *w, *b;
} layer_ref;

static int ref_cmp(const void *a, const void *b) {
  const layer_ref *x = a, *y = b;
  return x->idx < y->idx ? -1 : x->idx > y->idx ? 1 : 0;
}

/* Split "model.2.weight" into prefix "model." (length), index 2 and kind (0 weight, 1 bias).
 * Returns -1 when the name does not have that form. */
static int split_name(const char *name, size_t *prefix_len, unsigned long *idx, int *is_bias) {
  size_t len = strlen(name), stem, dot;
  if (len > 7 && strcmp(name + len - 7, ".weight") == 0) {
    stem = len - 7;
    *is_bias = 0;
  } else if (len > 5 && strcmp(name + len - 5, ".bias") == 0) {
    stem = len - 5;
    *is_bias = 1;
  } else {
    return -1;
  }
  dot = stem;
  while (dot > 0 && name[dot - 1] != '.') dot--;
  if (dot == stem || stem - dot > 9) return -1;
  *idx = 0;
  for (size_t i = dot; i < stem; i++) {
    if (!isdigit((unsigned char)name[i])) return -1;
    *idx = *idx * 10 + (unsigned long)(name[i] - '0');
  }
  *prefix_len = dot;
  return 0;
}

static int load_file(mlp *p, const char *path, char *err, size_t errlen) {
  size_t n, nref = 0, plen = 0;
  const char *prefix = NULL;
  layer_ref *refs;
  int rc;

  rc = ss_st_open(path, &p->st, err, errlen);
  if (rc != 0) return rc;
  n = ss_st_count(p->st);
  if (n == 0) {
    snprintf(err, errlen, "weights %s: no tensors", path);
    return SS_EINVAL;
  }
  refs = calloc(n, sizeof *refs);
  if (refs == NULL) {
    snprintf(err, errlen, "weights %s: out of memory", path);
    return SS_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const ss_st_tensor *t = ss_st_at(p->st, i);
    size_t pl;
    unsigned long idx;
    int is_bias;
    layer_ref *r = NULL;
    if (strncmp(t->name, SS_PARAMS_OPTIM_PREFIX, strlen(SS_PARAMS_OPTIM_PREFIX)) == 0)
      continue; /* optimizer state of a checkpoint (params.h) */
    if (split_name(t->name, &pl, &idx, &is_bias) != 0) {
      snprintf(err, errlen,
               "weights %s: tensor '%s' is not named [prefix.]<index>.weight or "
               "[prefix.]<index>.bias (an nn.Sequential of Linear layers)",
               path, t->name);
      rc = SS_EINVAL;
      goto done;
    }
    if (prefix == NULL) {
      prefix = t->name;
      plen = pl;
    } else if (pl != plen || strncmp(prefix, t->name, pl) != 0) {
      snprintf(err, errlen, "weights %s: tensors '%s' and '%s' have different prefixes", path,
               prefix, t->name);
      rc = SS_EINVAL;
      goto done;
    }
    for (size_t j = 0; j < nref; j++)
      if (refs[j].idx == idx) r = &refs[j];
    if (r == NULL) {
      r = &refs[nref++];
      r->idx = idx;
    }
    if (is_bias)
      r->b = t;
    else
      r->w = t;
  }
  if (nref == 0) {
    snprintf(err, errlen, "weights %s: no layer tensors (only optimizer state)", path);
    rc = SS_EINVAL;
    goto done;
  }
  qsort(refs, nref, sizeof *refs, ref_cmp);
  if ((p->prefix = strndup(prefix, plen)) == NULL) {
    rc = SS_ENOMEM;
    goto done;
  }
  p->l = calloc(nref, sizeof *p->l);
  if (p->l == NULL) {
    rc = SS_ENOMEM;
    goto done;
  }
  for (size_t i = 0; i < nref; i++) {
    const ss_st_tensor *w = refs[i].w, *b = refs[i].b;
    mlp_layer *L = &p->l[i];
    p->n = (int)i + 1;
    if (w == NULL) {
      snprintf(err, errlen, "weights %s: '%s' has no matching weight tensor", path, b->name);
      rc = SS_EINVAL;
      goto done;
    }
    if (w->ndim != 2 || w->shape[0] <= 0 || w->shape[1] <= 0 || w->shape[0] > INT_MAX ||
        w->shape[1] > INT_MAX) {
      char sbuf[160];
      snprintf(err, errlen,
               "weights %s: '%s' has shape %s; expected [out, in] with positive "
               "widths",
               path, w->name, ss_shape_str(w->shape, w->ndim, sbuf, sizeof sbuf));
      rc = SS_EINVAL;
      goto done;
    }
    L->out = (int)w->shape[0];
    L->in = (int)w->shape[1];
    L->idx = refs[i].idx;
    if (b != NULL && (b->ndim != 1 || b->shape[0] != w->shape[0])) {
      char sbuf[160];
      snprintf(err, errlen, "weights %s: '%s' has shape %s; expected [%d] to match '%s'", path,
               b->name, ss_shape_str(b->shape, b->ndim, sbuf, sizeof sbuf), L->out, w->name);
      rc = SS_EINVAL;
      goto done;
    }
    if (i > 0 && p->l[i - 1].out != L->in) {
      snprintf(err, errlen, "weights %s: '%s' outputs width %d but '%s' expects input width %d",
               path, refs[i - 1].w->name, p->l[i - 1].out, w->name, L->in);
      rc = SS_EINVAL;
      goto done;
    }
    if ((rc = ss_st_f32(w, &L->w, &L->w_own, ss_backend_of(&p->cc)->alloc)) != 0) goto done;
    if (b != NULL && (rc = ss_st_f32(b, &L->b, &L->b_own, ss_backend_of(&p->cc)->alloc)) != 0)
      goto done;
  }
done:
  if (rc == SS_ENOMEM) snprintf(err, errlen, "weights %s: out of memory", path);
  free(refs);
  return rc;
}

/* ------------------------------------------------------------- model ops ---- */

static int mlp_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                     int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  const mlp *p = m->impl;
  int64_t last = in->ndim > 0 ? in->shape[in->ndim - 1] : 0;
  (void)meta;
  if (in->ndim < 1 || last != p->l[0].in) {
    snprintf(err, errlen, "model '%s' expects last dimension %d, got %lld", m->id, p->l[0].in,
             (long long)last);
    return SS_EINVAL;
  }
  memcpy(out_shape, in->shape, sizeof(int64_t) * (size_t)in->ndim);
  out_shape[in->ndim - 1] = p->l[p->n - 1].out;
  *out_ndim = in->ndim;
  return 0;
}

/* The hidden activation, forward (in place) and backward (d *= act'(z)). */
static void act_forward(const mlp *p, float *y, size_t n) {
  if (p->gelu)
    ss_op_gelu_erf_forward(&p->cc, y, y, n);
  else
    ss_op_relu_forward(&p->cc, y, y, n);
}

static void act_backward(const mlp *p, float *d, const float *z, size_t n) {
  if (p->gelu)
    ss_op_gelu_erf_backward(&p->cc, d, z, n);
  else
    ss_op_relu_backward(&p->cc, d, z, n);
}

static int mlp_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out, const ss_meta *meta,
                       char *err, size_t errlen) {
  const mlp *p = m->impl;
  size_t rows = in->numel / (size_t)p->l[0].in, maxw = 0, cells;
  float *buf[2] = {NULL, NULL};
  (void)meta;
  if (rows == 0) return 0;
  if (rows > INT_MAX) {
    snprintf(err, errlen, "model '%s': %zu rows is too many for one call", m->id, rows);
    return SS_ERANGE;
  }
  for (int i = 0; i + 1 < p->n; i++)
    if ((size_t)p->l[i].out > maxw) maxw = (size_t)p->l[i].out;
  if (maxw > 0) {
    if (__builtin_mul_overflow(rows, maxw * sizeof(float), &cells) ||
        (buf[0] = ss_op_alloc(&p->cc, cells)) == NULL ||
        (buf[1] = ss_op_alloc(&p->cc, cells)) == NULL) {
      ss_op_release(&p->cc, buf[0]);
      snprintf(err, errlen, "model '%s': out of memory for %zu x %zu activations", m->id, rows,
               maxw);
      return SS_ENOMEM;
    }
  }
  for (int i = 0; i < p->n; i++) {
    const mlp_layer *L = &p->l[i];
    const float *x = i == 0 ? (const float *)in->data : buf[(i - 1) & 1];
    if (ss_meta_cancelled(meta)) break; /* nobody waits for the result: stop (checked below) */
    float *y = i == p->n - 1 ? (float *)out->data : buf[i & 1];
    ss_op_linear_forward(&p->cc, y, x, L->w, L->b, (int)rows, L->in, L->out, SS_W_OUT_IN, 0);
    if (i < p->n - 1) act_forward(p, y, rows * (size_t)L->out);
  }
  ss_op_release(&p->cc, buf[0]);
  ss_op_release(&p->cc, buf[1]);
  return ss_meta_cancelled(meta) ? SS_ECANCELLED : 0;
}

/* ------------------------------------------------------------- training ---- */

/*
 * Training. forward_train keeps, per call, the input X0 and the pre-activations Z_i of every
 * hidden layer (i < n-1); the activations A_i = act(Z_i), the inputs of the next layer, are
 * recomputed in backward (cheaper than keeping them). Backward, last layer first, with dY the
 * gradient of the layer's output:
 *   dW += dY^T X,  db += sum over rows of dY   (into the gradient buffers, under the params mutex)
 *   dX  = dY W;    below a hidden layer dZ = dX * act'(Z)        (nn/linear.h backward)
 * ReLU' is 1 where Z > 0 (0 at 0, like torch); GELU' = Phi(z) + z phi(z) (exact erf form).
 */
typedef struct mlp_saved {
  size_t rows;
  float *x; /* [rows, in of layer 0] */
  float *z; /* Z_0 [rows, out_0], Z_1 [rows, out_1], ... for the n-1 hidden layers */
} mlp_saved;

static int mlp_forward_train(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                             const char *forward_id, void **saved, size_t *saved_bytes, char *err,
                             size_t errlen) {
  const mlp *p = m->impl;
  (void)forward_id; /* nothing random */
  size_t rows = in->numel / (size_t)p->l[0].in, cells = (size_t)p->l[0].in, maxw = 0, bytes;
  mlp_saved *sv;
  float *a = NULL, *z;

  *saved = NULL;
  *saved_bytes = 0;
  if (rows > INT_MAX / 4) {
    snprintf(err, errlen, "model '%s': %zu rows is too many for one call", m->id, rows);
    return SS_ERANGE;
  }
  for (int i = 0; i + 1 < p->n; i++) {
    cells += (size_t)p->l[i].out;
    if ((size_t)p->l[i].out > maxw) maxw = (size_t)p->l[i].out;
  }
  sv = NULL;
  if (__builtin_mul_overflow(rows, cells * sizeof(float), &bytes) ||
      (sv = malloc(sizeof *sv)) == NULL || (sv->x = ss_op_alloc(&p->cc, bytes)) == NULL ||
      (maxw > 0 && rows > 0 && (a = ss_op_alloc(&p->cc, rows * maxw * sizeof(float))) == NULL)) {
    if (sv != NULL) ss_op_release(&p->cc, sv->x);
    free(sv);
    snprintf(err, errlen, "model '%s': out of memory for %zu x %zu saved activations", m->id, rows,
             cells);
    return SS_ENOMEM;
  }
  sv->rows = rows;
  sv->z = sv->x + rows * (size_t)p->l[0].in;
  if (rows > 0) /* zero rows: in->data may be NULL (an empty wire tensor) */
    memcpy(sv->x, in->data, rows * (size_t)p->l[0].in * sizeof(float));
  z = sv->z;
  for (int i = 0; i < p->n && rows > 0; i++) {
    const mlp_layer *L = &p->l[i];
    const float *x = i == 0 ? sv->x : a;
    float *y = i == p->n - 1 ? (float *)out->data : z;
    ss_op_linear_forward(&p->cc, y, x, L->w, L->b, (int)rows, L->in, L->out, SS_W_OUT_IN, 0);
    if (i < p->n - 1) {
      memcpy(a, z, rows * (size_t)L->out * sizeof(float));
      act_forward(p, a, rows * (size_t)L->out);
      z += rows * (size_t)L->out;
    }
  }
  ss_op_release(&p->cc, a);
  *saved = sv;
  *saved_bytes = sizeof *sv + bytes;
  return 0;
}

static int mlp_backward(ss_model *m, const void *saved, const ss_tensor *grad_out,
                        ss_tensor *grad_in, char *err, size_t errlen) {
  mlp *p = m->impl;
  const mlp_saved *sv = saved;
  size_t rows = sv->rows, maxw = (size_t)p->l[0].in;
  const float *z;
  float *dy, *dx, *a, *tmp;

  if (grad_out->numel != rows * (size_t)p->l[p->n - 1].out ||
      grad_in->numel != rows * (size_t)p->l[0].in) {
    snprintf(err, errlen,
             "model '%s': backward got grad_output of %zu values and grad_input of "
             "%zu, expected %zu and %zu",
             m->id, grad_out->numel, grad_in->numel, rows * (size_t)p->l[p->n - 1].out,
             rows * (size_t)p->l[0].in);
    return SS_EINVAL;
  }
  if (ss_params_grads(&p->prm) != 0) {
    snprintf(err, errlen, "model '%s': out of memory for gradients", m->id);
    return SS_ENOMEM;
  }
  if (rows == 0) return 0;
  for (int i = 0; i < p->n; i++)
    if ((size_t)p->l[i].out > maxw) maxw = (size_t)p->l[i].out;
  dy = ss_op_alloc(&p->cc, rows * maxw * sizeof(float));
  dx = ss_op_alloc(&p->cc, rows * maxw * sizeof(float));
  a = ss_op_alloc(&p->cc, rows * maxw * sizeof(float));
  if (dy == NULL || dx == NULL || a == NULL) {
    ss_op_release(&p->cc, dy);
    ss_op_release(&p->cc, dx);
    ss_op_release(&p->cc, a);
    snprintf(err, errlen, "model '%s': out of memory for backward (%zu x %zu)", m->id, rows, maxw);
    return SS_ENOMEM;
  }
  memcpy(dy, grad_out->data, grad_out->numel * sizeof(float));
  /* z: the pre-activation feeding layer i (Z_{i-1}), walked from the end. */
  z = sv->z;
  for (int i = 0; i + 2 < p->n; i++) z += rows * (size_t)p->l[i].out;
  for (int i = p->n - 1; i >= 0; i--) {
    const mlp_layer *L = &p->l[i];
    const float *x = sv->x;
    float *dst = i == 0 ? (float *)grad_in->data : dx;
    size_t in_cells = rows * (size_t)L->in;
    if (i > 0) {
      memcpy(a, z, in_cells * sizeof(float));
      act_forward(p, a, in_cells);
      x = a;
    }
    ss_params_linear_backward(&p->prm, L->pw, L->pb, dst, dy, x, L->w, (int)rows, L->in, L->out,
                              SS_W_OUT_IN);
    if (i > 0) {
      act_backward(p, dx, z, in_cells);
      tmp = dy;
      dy = dx;
      dx = tmp;
      if (i >= 2) z -= rows * (size_t)p->l[i - 2].out;
    }
  }
  ss_op_release(&p->cc, dy);
  ss_op_release(&p->cc, dx);
  ss_op_release(&p->cc, a);
  return 0;
}

static int mlp_step(ss_model *m, const ss_optim *opt, char *err, size_t errlen) {
  mlp *p = m->impl;
  return ss_params_step(&p->prm, opt, m->id, err, errlen); /* all or nothing (nn/optim.c) */
}

static void mlp_free_saved(const ss_model *m, void *saved) {
  const mlp *p = m->impl;
  mlp_saved *sv = saved;
  ss_op_release(&p->cc, sv->x);
  free(sv);
}

/* "<prefix><idx>.weight" / ".bias" as loaded (the embedded default: 0.*, 2.*). */
static int mlp_save(const ss_model *m, const char *path, char *err, size_t errlen) {
  const mlp *p = m->impl;
  return ss_params_save(&p->prm, path, err, errlen);
}

static void mlp_destroy(ss_model *m) {
  mlp_free(m->impl);
  m->impl = NULL;
}

/* What forward_train keeps: X0 and the hidden Z_i (saturating on overflow). */
static size_t mlp_train_bytes(const ss_model *m, const ss_tensor *in) {
  const mlp *p = m->impl;
  size_t rows = in->numel / (size_t)p->l[0].in, cells = (size_t)p->l[0].in, bytes;
  for (int i = 0; i + 1 < p->n; i++) cells += (size_t)p->l[i].out;
  if (__builtin_mul_overflow(rows, cells * sizeof(float), &bytes)) return SIZE_MAX;
  return sizeof(mlp_saved) + bytes;
}

static const ss_model_ops mlp_ops = {.check = mlp_check,
                                     .train_bytes = mlp_train_bytes,
                                     .forward = mlp_forward,
                                     .destroy = mlp_destroy,
                                     .forward_train = mlp_forward_train,
                                     .backward = mlp_backward,
                                     .step = mlp_step,
                                     .free_saved = mlp_free_saved,
                                     .save = mlp_save};

/* The trainable parameters: each layer's weight [out, in] then its bias [out] when it has one,
 * under the names they were loaded with. */
static int mlp_params(mlp *p) {
  size_t len = strlen(p->prefix) + 32;
  char *name = malloc(len);
  int rc = ss_params_init(&p->prm, 2 * (size_t)p->n, &p->cc);
  if (name == NULL) rc = SS_ENOMEM;
  for (int i = 0; i < p->n && rc == 0; i++) {
    mlp_layer *L = &p->l[i];
    int64_t shape[2] = {L->out, L->in};
    snprintf(name, len, "%s%lu.weight", p->prefix, L->idx);
    if ((L->pw = ss_params_add(&p->prm, name, shape, 2, &L->w, &L->w_own)) < 0) rc = SS_ENOMEM;
    L->pb = -1;
    if (rc != 0 || L->b == NULL) continue;
    snprintf(name, len, "%s%lu.bias", p->prefix, L->idx);
    if ((L->pb = ss_params_add(&p->prm, name, shape, 1, &L->b, &L->b_own)) < 0) rc = SS_ENOMEM;
  }
  free(name);
  return rc;
}

int ss_model_mlp_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  const char *weights = NULL, *act = "relu", *src, *dt = "f32";
  char widths[72], msg[400];
  size_t pos;
  mlp *p;
  int rc;

  for (size_t i = 0; i < n; i++) {
    if (strcmp(params[2 * i], "weights") == 0)
      weights = params[2 * i + 1];
    else if (strcmp(params[2 * i], "activation") == 0)
      act = params[2 * i + 1];
    else {
      snprintf(err, errlen, "model '%s': parameter '%s' is not an mlp key", m->id,
               params[2 * i]); /* the registry's table lists the known ones */
      return SS_EINVAL;
    }
  }
  if (strcmp(act, "relu") != 0 && strcmp(act, "gelu") != 0) {
    snprintf(err, errlen, "model '%s': activation must be relu or gelu, got '%s'", m->id, act);
    return SS_EINVAL;
  }
  if ((p = calloc(1, sizeof *p)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  p->cc = ss_model_compute(m); /* every tensor of the model comes from its backend */
  p->gelu = strcmp(act, "gelu") == 0;
  if (weights != NULL && weights[0] != '\0') {
    rc = load_file(p, weights, err, errlen);
  } else {
    rc = default_weights(p);
    if (rc == 0 && (p->prefix = strdup("")) == NULL) rc = SS_ENOMEM;
    if (rc != 0) snprintf(err, errlen, "model '%s': out of memory", m->id);
  }
  if (rc == 0 && (rc = mlp_params(p)) != 0) snprintf(err, errlen, "out of memory");
  if (rc == 0 && p->st != NULL && (rc = ss_params_restore(&p->prm, p->st, msg, sizeof msg)) != 0)
    snprintf(err, errlen, "model '%s': weights %s: %s", m->id, weights, msg);
  if (rc != 0) {
    mlp_free(p);
    return rc;
  }
  m->kind = "mlp";
  m->ops = &mlp_ops;
  m->impl = p;
  m->weights = p->st;
  m->exec = SS_EXEC_WORKER;
  m->echo = 0;
  m->n_params = 0;
  for (int i = 0; i < p->n; i++)
    m->n_params += (int64_t)p->l[i].in * p->l[i].out + (p->l[i].b ? p->l[i].out : 0);
  m->weight_bytes = (size_t)m->n_params * sizeof(float);
  pos = (size_t)snprintf(widths, sizeof widths, "%d", p->l[0].in);
  for (int i = 0; i < p->n && pos < sizeof widths; i++)
    pos += (size_t)snprintf(widths + pos, sizeof widths - pos, "->%d", p->l[i].out);
  if (weights != NULL && weights[0] != '\0') {
    const ss_st_tensor *t0 = ss_st_at(p->st, 0);
    src = strrchr(weights, '/') ? strrchr(weights, '/') + 1 : weights;
    if (t0->dtype == SS_DTYPE_F16)
      dt = "f16->f32";
    else if (t0->dtype == SS_DTYPE_BF16)
      dt = "bf16->f32";
  } else {
    src = "embedded";
  }
  snprintf(m->describe, sizeof m->describe, "mlp %s %s (%s, %.48s)", widths,
           p->gelu ? "gelu" : "relu", dt, src);
  return 0;
}
