/*
 * test_train.c — the model-level half of split training (src/models/mlp.c, gpt2.c, optim.c,
 * the training keys in registry.c, ss_st_write_f32_atomic):
 *   - gradients: forward_train + backward against double-precision central differences of
 *     L = sum(out * R) (so grad_out = R) through a naive double model written here, for
 *     grad_input and every weight, for mlp (relu, gelu; a bias-less layer; a key prefix) and a
 *     2-layer trunk (layers 1:3) of a tiny GPT-2 (n_embd 16, 4 heads, batch 2, seq 5). Weight
 *     gradients are read back black-box: an SGD step with lr 1 leaves w - g, written by save().
 *   - SGD (with weight decay) and AdamW (3 steps) against updates computed by hand in double;
 *   - accumulation: two backward calls before one step == the sum of the two gradients;
 *   - save + reload gives identical outputs; the original file is untouched (copy on write);
 *   - the spec keys (optimizer, beta1, beta2, eps, weight_decay, save) and their refusals.
 * Single-threaded; files in a mkdtemp dir.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "gpt2_block_ref.h"
#include "models/model.h"
#include "models/nn/optim.h"
#include "models/safetensors.h"

static char dir[64];

static uint64_t rng_state = 987654321;
static double drand(void) { /* uniform in [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(rng_state >> 40) * 0x1p-24 * 2.0 - 1.0;
}

static ss_tensor tens(float *data, int ndim, int64_t d0, int64_t d1, int64_t d2) {
  ss_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = SS_DTYPE_F32;
  t.ndim = ndim;
  t.shape[0] = d0;
  t.shape[1] = d1;
  t.shape[2] = d2;
  t.numel = (size_t)(d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1));
  t.nbytes = t.numel * sizeof(float);
  t.data = data;
  return t;
}

/* Read tensor name of the safetensors file at path into out (n floats). */
static int read_tensor(const char *path, const char *name, float *out, size_t n) {
  ss_st_file *f;
  char err[300];
  const ss_st_tensor *t;
  int rc = -1;
  if (ss_st_open(path, &f, err, sizeof err) != 0) {
    fprintf(stderr, "read_tensor: %s\n", err);
    return -1;
  }
  t = ss_st_find(f, name);
  if (t != NULL && t->dtype == SS_DTYPE_F32 && t->numel == n) {
    memcpy(out, t->data, n * sizeof(float));
    rc = 0;
  } else {
    fprintf(stderr, "read_tensor: %s: no F32 tensor '%s' of %zu values\n", path, name, n);
  }
  ss_st_close(f);
  return rc;
}

static char *slurp(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  char *buf;
  long n;
  if (fp == NULL) return NULL;
  fseek(fp, 0, SEEK_END);
  n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(fp);
  *len = (size_t)n;
  return buf;
}

/* max |a - b| / max(max |b|, floor): the relative error of an analytic gradient a against a
 * numeric one b. */
static double rel_err(const float *a, const double *b, size_t n, double floor_) {
  double d = 0, s = floor_;
  static int verbose = -1;
  if (verbose < 0) verbose = getenv("SS_TEST_VERBOSE") != NULL;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]);
    if (isnan(e)) return INFINITY;
    if (e > d) d = e;
    if (fabs(b[i]) > s) s = fabs(b[i]);
  }
  if (verbose) fprintf(stderr, "rel_err %.3g (max |numeric| %.3g)\n", d / s, s);
  return d / s;
}

static int create(const char *spec, ss_model **m, char *err, size_t errlen) {
  err[0] = '\0';
  *m = NULL;
  int rc = ss_model_create(spec, m, err, errlen);
  if (rc != 0) fprintf(stderr, "create %s: %s\n", spec, err);
  return rc;
}

/* forward_train + backward of one call; out, grad_in filled. */
static int train_call(ss_model *m, float *x, int ndim, const int64_t *ishape, const int64_t *oshape,
                      float *out, const float *R, float *grad_in) {
  ss_tensor in = tens(x, ndim, ishape[0], ishape[1], ishape[2]);
  ss_tensor o = tens(out, ndim, oshape[0], oshape[1], oshape[2]);
  ss_tensor go = tens((float *)R, ndim, oshape[0], oshape[1], oshape[2]);
  ss_tensor gi = tens(grad_in, ndim, ishape[0], ishape[1], ishape[2]);
  void *saved = NULL;
  size_t bytes = 0;
  char err[300];
  int rc;
  uv_rwlock_rdlock(&m->lock);
  rc = m->ops->forward_train(m, &in, &o, NULL, &saved, &bytes, err, sizeof err);
  if (rc == 0) {
    CHECK(bytes > in.nbytes);
    rc = m->ops->backward(m, saved, &go, &gi, err, sizeof err);
  }
  uv_rwlock_rdunlock(&m->lock);
  if (saved) m->ops->free_saved(m, saved);
  if (rc != 0) fprintf(stderr, "train_call: %s\n", err);
  return rc;
}

static int step_save(ss_model *m, ss_opt_kind kind, float lr, const char *path) {
  ss_optim opt = m->optim;
  char err[300];
  int rc;
  opt.kind = kind;
  opt.lr = lr;
  uv_rwlock_wrlock(&m->lock);
  rc = m->ops->step(m, &opt, err, sizeof err);
  uv_rwlock_wrunlock(&m->lock);
  if (rc == 0 && path) rc = m->ops->save(m, path, err, sizeof err);
  if (rc != 0) fprintf(stderr, "step_save: %s\n", err);
  return rc;
}

/* ================================================================ mlp ==== */

#define ML 3
static const int mw_[ML + 1] = {5, 7, 6, 4};
static const int mhasb[ML] = {1, 0, 1};
static const int midx[ML] = {0, 2, 4};
#define MROWS 6 /* x [2, 3, 5] */
static double MW[ML][7 * 7], MB[ML][7];
static double mlp_x[MROWS * 5], mR[MROWS * 4];
static int mgelu;

static double mlp_loss(void) {
  double a[MROWS * 7], z[MROWS * 7], L = 0;
  memcpy(a, mlp_x, sizeof mlp_x);
  for (int l = 0; l < ML; l++) {
    int in = mw_[l], out = mw_[l + 1];
    for (int r = 0; r < MROWS; r++)
      for (int o = 0; o < out; o++) {
        double s = mhasb[l] ? MB[l][o] : 0.0;
        for (int j = 0; j < in; j++) s += a[r * in + j] * MW[l][o * in + j];
        z[r * out + o] = s;
      }
    for (int k = 0; k < MROWS * out; k++) {
      double v = z[k];
      if (l < ML - 1) v = mgelu ? 0.5 * v * (1.0 + erf(v / sqrt(2.0))) : (v > 0 ? v : 0);
      a[k] = v;
    }
  }
  for (int k = 0; k < MROWS * 4; k++) L += a[k] * mR[k];
  return L;
}

static double numdiff(double *v, double (*loss)(void)) {
  const double h = 1e-6;
  double keep = *v, lp, lm;
  *v = keep + h;
  lp = loss();
  *v = keep - h;
  lm = loss();
  *v = keep;
  return (lp - lm) / (2 * h);
}

static char mpath[128];

static void write_mlp(const char *path) {
  char names[2 * ML][32], err[300];
  const char *np[2 * ML];
  int64_t shapes[2 * ML][2];
  const int64_t *sp[2 * ML];
  int nd[2 * ML];
  float wf[ML][49], bf[ML][7];
  const float *data[2 * ML];
  size_t n = 0;
  for (int l = 0; l < ML; l++) {
    for (int k = 0; k < mw_[l] * mw_[l + 1]; k++) wf[l][k] = (float)MW[l][k];
    for (int k = 0; k < mw_[l + 1]; k++) bf[l][k] = (float)MB[l][k];
    snprintf(names[n], 32, "net.%d.weight", midx[l]);
    shapes[n][0] = mw_[l + 1], shapes[n][1] = mw_[l];
    np[n] = names[n], sp[n] = shapes[n], nd[n] = 2, data[n] = wf[l], n++;
    if (!mhasb[l]) continue;
    snprintf(names[n], 32, "net.%d.bias", midx[l]);
    shapes[n][0] = mw_[l + 1];
    np[n] = names[n], sp[n] = shapes[n], nd[n] = 1, data[n] = bf[l], n++;
  }
  CHECK_EQ_INT(ss_st_write_f32(path, n, np, sp, nd, data, err, sizeof err), 0);
}

static void test_mlp_grads(int gelu) {
  char spec[300], err[300], out_path[160], name[32];
  ss_model *m;
  float x[MROWS * 5], R[MROWS * 4], y[MROWS * 4], gin[MROWS * 5], yref[MROWS * 4];
  double num[49];
  const int64_t ish[3] = {2, 3, 5}, osh[3] = {2, 3, 4};
  mgelu = gelu;
  for (int l = 0; l < ML; l++) {
    for (int k = 0; k < mw_[l] * mw_[l + 1]; k++)
      MW[l][k] = (float)(drand() / sqrt((double)mw_[l]));
    for (int k = 0; k < mw_[l + 1]; k++) MB[l][k] = (float)(0.3 * drand());
  }
  for (int k = 0; k < MROWS * 5; k++) mlp_x[k] = x[k] = (float)drand();
  for (int k = 0; k < MROWS * 4; k++) mR[k] = R[k] = (float)drand();
  snprintf(mpath, sizeof mpath, "%s/mlp.safetensors", dir);
  write_mlp(mpath);
  snprintf(spec, sizeof spec, "t=mlp,weights=%s,activation=%s", mpath, gelu ? "gelu" : "relu");
  if (create(spec, &m, err, sizeof err) != 0) return;
  CHECK(m->ops->forward_train && m->ops->backward && m->ops->step && m->ops->save);
  CHECK_EQ_INT(train_call(m, x, 3, ish, osh, y, R, gin), 0);
  { /* forward_train output == forward output */
    ss_tensor in = tens(x, 3, 2, 3, 5), o = tens(yref, 3, 2, 3, 4);
    CHECK_EQ_INT(m->ops->forward(m, &in, &o, NULL, err, sizeof err), 0);
    CHECK(memcmp(y, yref, sizeof y) == 0);
  }
  {
    double ngin[MROWS * 5];
    for (int k = 0; k < MROWS * 5; k++) ngin[k] = numdiff(&mlp_x[k], mlp_loss);
    double e = rel_err(gin, ngin, MROWS * 5, 1e-3);
    if (e > 1e-5) fprintf(stderr, "mlp %s grad_in rel err %g\n", gelu ? "gelu" : "relu", e);
    CHECK(e < 1e-5);
  }
  snprintf(out_path, sizeof out_path, "%s/mlp_step.safetensors", dir);
  CHECK_EQ_INT(step_save(m, SS_OPT_SGD, 1.0f, out_path), 0);
  for (int l = 0; l < ML; l++) {
    int nw = mw_[l] * mw_[l + 1];
    float w1[49], g[49];
    for (int b = 0; b < 1 + mhasb[l]; b++) {
      int cnt = b ? mw_[l + 1] : nw;
      double *v = b ? MB[l] : MW[l];
      snprintf(name, sizeof name, "net.%d.%s", midx[l], b ? "bias" : "weight");
      CHECK_EQ_INT(read_tensor(out_path, name, w1, (size_t)cnt), 0);
      for (int k = 0; k < cnt; k++) {
        g[k] = (float)v[k] - w1[k];
        num[k] = numdiff(&v[k], mlp_loss);
      }
      double e = rel_err(g, num, (size_t)cnt, 1e-3);
      if (e > 1e-5) fprintf(stderr, "mlp %s grad %s rel err %g\n", gelu ? "gelu" : "relu", name, e);
      CHECK(e < 1e-5);
    }
    if (!mhasb[l]) { /* a bias-less layer stays bias-less */
      ss_st_file *f;
      snprintf(name, sizeof name, "net.%d.bias", midx[l]);
      CHECK_EQ_INT(ss_st_open(out_path, &f, err, sizeof err), 0);
      CHECK(f != NULL && ss_st_find(f, name) == NULL);
      ss_st_close(f);
    }
  }
  ss_model_free(m);
}

/* Accumulation, copy on write, save + reload, and the shapes refused by backward. */
static void test_mlp_accumulate_save(void) {
  char spec[300], err[300], p1[160], p2[160], p12[160], name[32];
  ss_model *m;
  float x1[MROWS * 5], x2[MROWS * 5], R1[MROWS * 4], R2[MROWS * 4], y[MROWS * 4], gin[MROWS * 5];
  float w0[49], a[49], b[49], c[49];
  const int64_t ish[3] = {2, 3, 5}, osh[3] = {2, 3, 4};
  size_t len0, len1;
  char *before, *after;
  for (int k = 0; k < MROWS * 5; k++) x1[k] = (float)drand(), x2[k] = (float)drand();
  for (int k = 0; k < MROWS * 4; k++) R1[k] = (float)drand(), R2[k] = (float)drand();
  write_mlp(mpath);
  before = slurp(mpath, &len0);
  snprintf(spec, sizeof spec, "t=mlp,weights=%s,activation=gelu", mpath);
  snprintf(p1, sizeof p1, "%s/acc1.safetensors", dir);
  snprintf(p2, sizeof p2, "%s/acc2.safetensors", dir);
  snprintf(p12, sizeof p12, "%s/acc12.safetensors", dir);
  /* g1, g2 alone, then both before one step */
  for (int run = 0; run < 3; run++) {
    if (create(spec, &m, err, sizeof err) != 0) return;
    if (run != 1) CHECK_EQ_INT(train_call(m, x1, 3, ish, osh, y, R1, gin), 0);
    if (run != 0) CHECK_EQ_INT(train_call(m, x2, 3, ish, osh, y, R2, gin), 0);
    CHECK_EQ_INT(step_save(m, SS_OPT_SGD, 1.0f, run == 0 ? p1 : run == 1 ? p2 : p12), 0);
    ss_model_free(m);
  }
  for (int l = 0; l < ML; l++) {
    int nw = mw_[l] * mw_[l + 1];
    double sum[49];
    snprintf(name, sizeof name, "net.%d.weight", midx[l]);
    for (int k = 0; k < nw; k++) w0[k] = (float)MW[l][k];
    CHECK_EQ_INT(read_tensor(p1, name, a, (size_t)nw), 0);
    CHECK_EQ_INT(read_tensor(p2, name, b, (size_t)nw), 0);
    CHECK_EQ_INT(read_tensor(p12, name, c, (size_t)nw), 0);
    for (int k = 0; k < nw; k++) {
      sum[k] = ((double)w0[k] - a[k]) + ((double)w0[k] - b[k]);
      c[k] = w0[k] - c[k];
    }
    CHECK(rel_err(c, sum, (size_t)nw, 1e-3) < 1e-5);
  }
  /* copy on write: the loaded file is byte for byte what it was */
  after = slurp(mpath, &len1);
  CHECK(before && after && len0 == len1 && memcmp(before, after, len0) == 0);
  free(before);
  free(after);
  /* save + reload: a model trained for two AdamW steps, saved, reloaded: identical outputs */
  {
    ss_model *m2;
    float ya[MROWS * 4], yb[MROWS * 4];
    ss_tensor in = tens(x1, 3, 2, 3, 5), oa = tens(ya, 3, 2, 3, 4), ob = tens(yb, 3, 2, 3, 4);
    snprintf(spec, sizeof spec, "t=mlp,weights=%s,activation=gelu,optimizer=adamw", mpath);
    if (create(spec, &m, err, sizeof err) != 0) return;
    CHECK_EQ_INT(m->optim.kind, SS_OPT_ADAMW);
    for (int s = 0; s < 2; s++) {
      CHECK_EQ_INT(train_call(m, x1, 3, ish, osh, y, R1, gin), 0);
      CHECK_EQ_INT(step_save(m, SS_OPT_ADAMW, 0.01f, s == 1 ? p1 : NULL), 0);
    }
    snprintf(spec, sizeof spec, "t=mlp,weights=%s,activation=gelu", p1);
    if (create(spec, &m2, err, sizeof err) == 0) {
      CHECK_EQ_INT(m->ops->forward(m, &in, &oa, NULL, err, sizeof err), 0);
      CHECK_EQ_INT(m2->ops->forward(m2, &in, &ob, NULL, err, sizeof err), 0);
      CHECK(memcmp(ya, yb, sizeof ya) == 0);
      CHECK_CONTAINS(m2->describe, "5->7->6->4");
      ss_model_free(m2);
    }
    { /* the tmp file is gone; the save did not touch the source */
      char tmp[200];
      snprintf(tmp, sizeof tmp, "%s.tmp", p1);
      CHECK(access(tmp, F_OK) != 0);
    }
    { /* wrong grad shapes are refused with a message */
      void *saved = NULL;
      size_t bytes;
      ss_tensor o = tens(y, 3, 2, 3, 4), go = tens(R1, 3, 1, 3, 4), gi = tens(gin, 3, 2, 3, 5);
      CHECK_EQ_INT(m->ops->forward_train(m, &in, &o, NULL, &saved, &bytes, err, sizeof err), 0);
      CHECK_EQ_INT(m->ops->backward(m, saved, &go, &gi, err, sizeof err), SS_EINVAL);
      CHECK_CONTAINS(err, "grad_output of 12 values");
      m->ops->free_saved(m, saved);
    }
    ss_model_free(m);
  }
  /* the embedded default saves as "0.weight", "0.bias", "2.weight", "2.bias" */
  {
    ss_st_file *f;
    if (create("d=mlp", &m, err, sizeof err) != 0) return;
    CHECK_EQ_INT(m->ops->save(m, p2, err, sizeof err), 0);
    CHECK_EQ_INT(ss_st_open(p2, &f, err, sizeof err), 0);
    if (f) {
      CHECK_EQ_INT(ss_st_count(f), 4);
      CHECK(ss_st_find(f, "0.weight") && ss_st_find(f, "0.bias") && ss_st_find(f, "2.weight") &&
            ss_st_find(f, "2.bias"));
      ss_st_close(f);
    }
    ss_model_free(m);
  }
}

/* ================================================================ optimizer ==== */

static void test_optim(void) {
  enum { N = 7 };
  float w[N], g[N], *own = NULL;
  const float *view = w;
  double wd_[N], m_[N] = {0}, v_[N] = {0};
  ss_param p;
  ss_optim o;
  for (int i = 0; i < N; i++) w[i] = (float)drand(), wd_[i] = w[i];
  memset(&p, 0, sizeof p);
  p.view = &view;
  p.own = &own;
  p.numel = N;
  /* no gradient: untouched, still a view */
  memset(&o, 0, sizeof o);
  o.kind = SS_OPT_SGD;
  o.lr = 0.1f;
  CHECK_EQ_INT(ss_param_step(&p, &o, 1), 0);
  CHECK(view == w && own == NULL);
  /* SGD with weight decay: p -= lr (g + wd p); copy on first write leaves w alone */
  CHECK_EQ_INT(ss_param_grad(&p), 0);
  for (int i = 0; i < N; i++) p.grad[i] = g[i] = (float)drand();
  o.weight_decay = 0.05f;
  CHECK_EQ_INT(ss_param_step(&p, &o, 1), 0);
  CHECK(own != NULL && view == own);
  {
    double e = 0;
    for (int i = 0; i < N; i++) {
      double want = wd_[i] - 0.1 * ((double)g[i] + 0.05 * wd_[i]);
      e = fmax(e, fabs(own[i] - want));
      CHECK(w[i] == (float)wd_[i]);
      CHECK(p.grad[i] == 0.0f);
      wd_[i] = own[i];
    }
    CHECK(e < 1e-6);
  }
  /* AdamW, 3 steps, by hand */
  o.kind = SS_OPT_ADAMW;
  o.lr = 0.01f;
  o.beta1 = 0.8f;
  o.beta2 = 0.99f;
  o.eps = 1e-6f;
  o.weight_decay = 0.1f;
  for (int t = 1; t <= 3; t++) {
    double e = 0;
    for (int i = 0; i < N; i++) p.grad[i] = g[i] = (float)drand();
    CHECK_EQ_INT(ss_param_step(&p, &o, t), 0);
    for (int i = 0; i < N; i++) {
      double b1 = 0.8f, b2 = 0.99f, lr = 0.01f, wdc = 0.1f;
      wd_[i] *= 1 - lr * wdc;
      m_[i] = b1 * m_[i] + (1 - b1) * g[i];
      v_[i] = b2 * v_[i] + (1 - b2) * (double)g[i] * g[i];
      wd_[i] -= lr / (1 - pow(b1, t)) * m_[i] / (sqrt(v_[i]) / sqrt(1 - pow(b2, t)) + 1e-6);
      e = fmax(e, fabs(own[i] - wd_[i]));
    }
    CHECK(e < 1e-6);
  }
  ss_param_free_state(&p);
  free(own);
}

/* ================================================================ gpt2 ==== */

#define E 16
#define NH 4
#define HD (E / NH)
#define NI 64
#define NL 3
#define GB 2
#define GS 5
#define NT 12

static const char *const suffix[NT] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
static const int64_t tshape[NT][2] = {{E, 0}, {E, 0}, {E, 3 * E}, {3 * E, 0}, {E, E},  {E, 0},
                                      {E, 0}, {E, 0}, {E, NI},    {NI, 0},    {NI, E}, {E, 0}};
static const int tndim[NT] = {1, 1, 2, 1, 2, 1, 1, 1, 2, 1, 2, 1};
static double GW[NL][NT][E * NI];
static double gx[GB * GS * E], gR[GB * GS * E];

static size_t tnumel(int k) {
  return (size_t)tshape[k][0] * (size_t)(tndim[k] == 2 ? tshape[k][1] : 1);
}

/* Layers 1..2 over one sequence x [GS][E], in place (gpt2_block_ref.h). */
static void ref_seq(double *x) {
  for (int l = 1; l < NL; l++) {
    const double *w[NT];
    for (int k = 0; k < NT; k++) w[k] = GW[l][k];
    ref_gpt2_block(x, GS, E, NH, NI, w);
  }
}

static double gpt2_loss(void) {
  double x[GB * GS * E], L = 0;
  memcpy(x, gx, sizeof x);
  for (int b = 0; b < GB; b++) ref_seq(x + b * GS * E);
  for (int k = 0; k < GB * GS * E; k++) L += x[k] * gR[k];
  return L;
}

static char gpath[128], cfgpath[128];

static void write_gpt2(void) {
  const char *names[NL * NT];
  char namebuf[NL * NT][64], err[300];
  const int64_t *shapes[NL * NT];
  int ndims[NL * NT];
  static float wf[NL][NT][E * NI];
  const float *data[NL * NT];
  size_t n = 0;
  FILE *fp;
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < NT; k++) {
      for (size_t j = 0; j < tnumel(k); j++) {
        double r = drand();
        float v = k == 0 || k == 6 ? (float)(1.0 + 0.2 * r)
                  : tndim[k] == 1  ? (float)(0.1 * r)
                                   : (float)(r * 0.9 / sqrt((double)tshape[k][0]));
        wf[l][k][j] = v;
        GW[l][k][j] = v;
      }
      snprintf(namebuf[n], sizeof namebuf[n], "transformer.h.%d.%s", l, suffix[k]);
      names[n] = namebuf[n], shapes[n] = tshape[k], ndims[n] = tndim[k], data[n] = wf[l][k];
      n++;
    }
  snprintf(gpath, sizeof gpath, "%s/gpt2.safetensors", dir);
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
  CHECK_EQ_INT(ss_st_write_f32(gpath, n, names, shapes, ndims, data, err, sizeof err), 0);
  fp = fopen(cfgpath, "w");
  fprintf(fp, "{\"n_embd\": %d, \"n_head\": %d, \"n_layer\": %d, \"n_positions\": 32}\n", E, NH,
          NL);
  fclose(fp);
}

static void test_gpt2(void) {
  char spec[400], err[300], p1[160], p2[160], name[64];
  ss_model *m, *m2;
  static float x[GB * GS * E], R[GB * GS * E], y[GB * GS * E], yref[GB * GS * E], gin[GB * GS * E],
      w1[E * NI], g[E * NI];
  static double ngin[GB * GS * E], num[E * NI];
  const int64_t sh[3] = {GB, GS, E};
  size_t len0, len1;
  char *before, *after;
  write_gpt2();
  before = slurp(gpath, &len0);
  for (int k = 0; k < GB * GS * E; k++) gx[k] = x[k] = (float)drand();
  for (int k = 0; k < GB * GS * E; k++) gR[k] = R[k] = (float)drand();
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", gpath, cfgpath);
  if (create(spec, &m, err, sizeof err) != 0) return;
  CHECK_EQ_INT(train_call(m, x, 3, sh, sh, y, R, gin), 0);
  {
    ss_tensor in = tens(x, 3, GB, GS, E), o = tens(yref, 3, GB, GS, E);
    double ref[GB * GS * E], e = 0;
    CHECK_EQ_INT(m->ops->forward(m, &in, &o, NULL, err, sizeof err), 0);
    for (int k = 0; k < GB * GS * E; k++) e = fmax(e, fabs(y[k] - yref[k]));
    CHECK(e < 1e-5);
    memcpy(ref, gx, sizeof ref);
    for (int b = 0; b < GB; b++) ref_seq(ref + b * GS * E);
    e = 0;
    for (int k = 0; k < GB * GS * E; k++) e = fmax(e, fabs(y[k] - ref[k]));
    CHECK(e < 1e-4);
  }
  for (int k = 0; k < GB * GS * E; k++) ngin[k] = numdiff(&gx[k], gpt2_loss);
  {
    double e = rel_err(gin, ngin, GB * GS * E, 1e-3);
    if (e > 1e-5) fprintf(stderr, "gpt2 grad_in rel err %g\n", e);
    CHECK(e < 1e-5);
  }
  snprintf(p1, sizeof p1, "%s/gpt2_step.safetensors", dir);
  CHECK_EQ_INT(step_save(m, SS_OPT_SGD, 1.0f, p1), 0);
  for (int l = 1; l < NL; l++)
    for (int k = 0; k < NT; k++) {
      size_t n = tnumel(k);
      double e;
      snprintf(name, sizeof name, "transformer.h.%d.%s", l, suffix[k]);
      CHECK_EQ_INT(read_tensor(p1, name, w1, n), 0);
      for (size_t j = 0; j < n; j++) {
        g[j] = (float)GW[l][k][j] - w1[j];
        num[j] = numdiff(&GW[l][k][j], gpt2_loss);
      }
      e = rel_err(g, num, n, 1e-3);
      if (e > 1e-5) fprintf(stderr, "gpt2 grad %s rel err %g\n", name, e);
      CHECK(e < 1e-5);
    }
  {
    ss_st_file *f;
    CHECK_EQ_INT(ss_st_open(p1, &f, err, sizeof err), 0);
    if (f) {
      size_t nw = 0; /* only the trunk's layers (and the optimizer state: params.h) */
      for (size_t i = 0; i < ss_st_count(f); i++)
        nw += strncmp(ss_st_at(f, i)->name, "optimizer.", 10) != 0;
      CHECK_EQ_INT(nw, 2 * NT);
      CHECK(ss_st_find(f, "optimizer.step") != NULL);
      CHECK(ss_st_find(f, "transformer.h.0.ln_1.weight") == NULL);
      ss_st_close(f);
    }
  }
  /* save + reload: identical outputs; the source file untouched */
  snprintf(p2, sizeof p2, "%s/gpt2_more.safetensors", dir);
  CHECK_EQ_INT(train_call(m, x, 3, sh, sh, y, R, gin), 0);
  CHECK_EQ_INT(step_save(m, SS_OPT_ADAMW, 1e-3f, p2), 0);
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", p2, cfgpath);
  if (create(spec, &m2, err, sizeof err) == 0) {
    ss_tensor in = tens(x, 3, GB, GS, E), oa = tens(y, 3, GB, GS, E), ob = tens(yref, 3, GB, GS, E);
    CHECK_EQ_INT(m->ops->forward(m, &in, &oa, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(m2->ops->forward(m2, &in, &ob, NULL, err, sizeof err), 0);
    CHECK(memcmp(y, yref, sizeof y) == 0);
    ss_model_free(m2);
  }
  after = slurp(gpath, &len1);
  CHECK(before && after && len0 == len1 && memcmp(before, after, len0) == 0);
  free(before);
  free(after);
  ss_model_free(m);
}

/* Concurrent backward calls (4 threads, as the service's workers do under the read lock) sum
 * their gradients: the step then equals 4 x one call's gradient. */
typedef struct worker_arg {
  ss_model *m;
  float *x, *R;
  int rc;
} worker_arg;

static void worker(void *arg) {
  worker_arg *a = arg;
  const int64_t sh[3] = {GB, GS, E};
  float *y = malloc(GB * GS * E * sizeof(float)), *gin = malloc(GB * GS * E * sizeof(float));
  a->rc = 0;
  for (int i = 0; i < 3 && a->rc == 0; i++) a->rc = train_call(a->m, a->x, 3, sh, sh, y, a->R, gin);
  free(y);
  free(gin);
}

static void test_gpt2_concurrent(void) {
  char spec[400], err[300], p1[160], p4[160], name[64];
  static float x[GB * GS * E], R[GB * GS * E], w0[E * NI], a[E * NI], b[E * NI];
  ss_model *m;
  uv_thread_t th[4];
  worker_arg args[4];
  for (int k = 0; k < GB * GS * E; k++) x[k] = (float)drand(), R[k] = (float)drand();
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", gpath, cfgpath);
  snprintf(p1, sizeof p1, "%s/c1.safetensors", dir);
  snprintf(p4, sizeof p4, "%s/c4.safetensors", dir);
  for (int run = 0; run < 2; run++) {
    int n = run ? 4 : 1;
    if (create(spec, &m, err, sizeof err) != 0) return;
    for (int i = 0; i < n; i++) {
      args[i].m = m, args[i].x = x, args[i].R = R;
      CHECK_EQ_INT(uv_thread_create(&th[i], worker, &args[i]), 0);
    }
    for (int i = 0; i < n; i++) {
      uv_thread_join(&th[i]);
      CHECK_EQ_INT(args[i].rc, 0);
    }
    CHECK_EQ_INT(step_save(m, SS_OPT_SGD, 1.0f, run ? p4 : p1), 0);
    ss_model_free(m);
  }
  for (int k = 0; k < NT; k++) {
    size_t n = tnumel(k);
    double want[E * NI];
    snprintf(name, sizeof name, "transformer.h.1.%s", suffix[k]);
    for (size_t j = 0; j < n; j++) w0[j] = (float)GW[1][k][j];
    CHECK_EQ_INT(read_tensor(p1, name, a, n), 0);
    CHECK_EQ_INT(read_tensor(p4, name, b, n), 0);
    for (size_t j = 0; j < n; j++) {
      want[j] = 4.0 * ((double)w0[j] - a[j]);
      b[j] = w0[j] - b[j];
    }
    CHECK(rel_err(b, want, n, 1e-3) < 1e-5);
  }
}

/* ================================================================ spec keys ==== */

static void test_spec(void) {
  char err[400], spec[300];
  ss_model *m;
  CHECK_EQ_INT(create("a=mlp", &m, err, sizeof err), 0);
  if (m) {
    CHECK_EQ_INT(m->optim.kind, SS_OPT_SGD);
    CHECK(m->optim.weight_decay == 0.0f && m->save_path == NULL);
    ss_model_free(m);
  }
  snprintf(spec, sizeof spec, "a=mlp,optimizer=adamw,save=%s/ck.safetensors", dir);
  CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
  if (m) {
    CHECK_EQ_INT(m->optim.kind, SS_OPT_ADAMW);
    CHECK(m->optim.beta1 == 0.9f && m->optim.beta2 == 0.999f && m->optim.eps == 1e-8f &&
          m->optim.weight_decay == 0.01f);
    CHECK_CONTAINS(m->save_path, "/ck.safetensors");
    ss_model_free(m);
  }
  CHECK_EQ_INT(create("a=mlp,optimizer=adamw,beta1=0.5,beta2=0.9,eps=1e-6,weight_decay=0", &m, err,
                      sizeof err),
               0);
  if (m) {
    CHECK(m->optim.beta1 == 0.5f && m->optim.beta2 == 0.9f && m->optim.eps == 1e-6f &&
          m->optim.weight_decay == 0.0f);
    ss_model_free(m);
  }
  CHECK_EQ_INT(create("a=mlp,weight_decay=0.1", &m, err, sizeof err), 0);
  if (m) {
    CHECK(m->optim.kind == SS_OPT_SGD && m->optim.weight_decay == 0.1f);
    ss_model_free(m);
  }
  CHECK_EQ_INT(ss_model_create("a=mlp,optimizer=adam", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "optimizer must be sgd or adamw, got 'adam'");
  CHECK_EQ_INT(ss_model_create("a=mlp,optimizer=adamw,beta1=1", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "beta1 must be a number in [0, 1), got '1'");
  CHECK_EQ_INT(ss_model_create("a=mlp,optimizer=adamw,beta2=x", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "beta2 must be a number");
  CHECK_EQ_INT(ss_model_create("a=mlp,optimizer=adamw,eps=0", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "eps must be a number in (0, 1]");
  CHECK_EQ_INT(ss_model_create("a=mlp,weight_decay=-1", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "weight_decay must be a number >= 0, got '-1'");
  CHECK_EQ_INT(ss_model_create("a=mlp,weight_decay=nan", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "weight_decay must be a number");
  CHECK_EQ_INT(ss_model_create("a=mlp,beta1=0.5", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "beta1 applies to optimizer=adamw only (optimizer is sgd)");
  CHECK_EQ_INT(ss_model_create("a=mlp,save=", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "save must be a file path");
  CHECK_EQ_INT(ss_model_create("a=scale,optimizer=sgd", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "kind 'scale' takes no parameters, got 'optimizer'");
  CHECK_EQ_INT(ss_model_create("a=mlp,optimizer=sgd,optimizer=adamw", &m, err, sizeof err),
               SS_EINVAL);
  CHECK_CONTAINS(err, "given twice");
  /* models that cannot train have no training ops */
  CHECK_EQ_INT(create("s=scale", &m, err, sizeof err), 0);
  if (m) {
    CHECK(m->ops->backward == NULL && m->ops->step == NULL && m->ops->forward_train == NULL);
    ss_model_free(m);
  }
}

int main(void) {
  char cmd[128];
  snprintf(dir, sizeof dir, "/tmp/ss_train_XXXXXX");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  test_optim();
  test_spec();
  test_mlp_grads(0);
  test_mlp_grads(1);
  test_mlp_accumulate_save();
  test_gpt2();
  test_gpt2_concurrent();
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  TEST_MAIN_END();
}
