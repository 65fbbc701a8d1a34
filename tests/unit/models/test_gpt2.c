/*
 * test_gpt2.c — unit tests for src/models/gpt2.c with a tiny random GPT-2 checkpoint written
 * here (n_embd 16, 4 heads, 3 layers, n_inner 64, n_positions 32, HF key layout): loading a
 * layer range, shapes and describe, the refusals (bad layers, missing tensors, wrong shapes,
 * unsupported activation, bad config), forward against a naive double-precision block written
 * here, prefill == token-by-token decode through forward_kv (past = the previous present),
 * batch 2 == two batch-1 runs, and check_kv's messages. Single-threaded; files in a mkdtemp dir.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends_check.h"
#include "check.h"
#include "gpt2_block_ref.h"
#include "models/model.h"
#include "models/safetensors.h"

#define E 16
#define NH 4
#define HD (E / NH)
#define NI 64
#define NL 3
#define NPOS 32
#define NT 12

static char dir[64];

static const char *const suffix[NT] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
static const int64_t tshape[NT][2] = {{E, 0}, {E, 0}, {E, 3 * E}, {3 * E, 0}, {E, E},  {E, 0},
                                      {E, 0}, {E, 0}, {E, NI},    {NI, 0},    {NI, E}, {E, 0}};
static const int tndim[NT] = {1, 1, 2, 1, 2, 1, 1, 1, 2, 1, 2, 1};

static float W[NL][NT][E * NI]; /* big enough for every tensor */

static uint64_t rng_state = 12345;
static float frand(void) { /* uniform in [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng_state >> 40) * 0x1p-24 * 2.0 - 1.0);
}

static size_t tnumel(int k) {
  return (size_t)tshape[k][0] * (size_t)(tndim[k] == 2 ? tshape[k][1] : 1);
}

static void make_weights(void) {
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < NT; k++)
      for (size_t j = 0; j < tnumel(k); j++) {
        float r = frand();
        if (k == 0 || k == 6)
          W[l][k][j] = 1.0f + 0.2f * r; /* LN gains around 1 */
        else if (tndim[k] == 1)
          W[l][k][j] = 0.1f * r; /* biases */
        else
          W[l][k][j] = r * 0.5f / sqrtf((float)tshape[k][0]); /* weights */
      }
}

/* Write the checkpoint. skip: "h.L.suffix" to leave out (or NULL); bad: name given shape
 * [E, 2E] instead (or NULL). Also some unrelated tensors (wte, ln_f) like a full checkpoint. */
static void write_ckpt(const char *path, const char *prefix, const char *skip, const char *bad) {
  const char *names[NL * NT + 2];
  char namebuf[NL * NT + 2][64];
  const int64_t *shapes[NL * NT + 2];
  int ndims[NL * NT + 2];
  const float *data[NL * NT + 2];
  static const int64_t bad_shape[2] = {E, 2 * E}, wte_shape[2] = {8, E}, lnf_shape[1] = {E};
  char err[300];
  size_t n = 0;
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < NT; k++) {
      snprintf(namebuf[n], sizeof namebuf[n], "h.%d.%s", l, suffix[k]);
      if (skip && strcmp(namebuf[n], skip) == 0) continue;
      shapes[n] = bad && strcmp(namebuf[n], bad) == 0 ? bad_shape : tshape[k];
      snprintf(namebuf[n], sizeof namebuf[n], "%sh.%d.%s", prefix, l, suffix[k]);
      names[n] = namebuf[n];
      ndims[n] = tndim[k];
      data[n] = W[l][k];
      n++;
    }
  snprintf(namebuf[n], sizeof namebuf[n], "%swte.weight", prefix);
  names[n] = namebuf[n], shapes[n] = wte_shape, ndims[n] = 2, data[n] = W[0][8], n++;
  snprintf(namebuf[n], sizeof namebuf[n], "%sln_f.weight", prefix);
  names[n] = namebuf[n], shapes[n] = lnf_shape, ndims[n] = 1, data[n] = W[0][0], n++;
  CHECK_EQ_INT(ss_st_write_f32(path, n, names, shapes, ndims, data, err, sizeof err), 0);
}

static void write_config(const char *path, const char *extra) {
  FILE *fp = fopen(path, "w");
  fprintf(fp,
          "{\"model_type\": \"gpt2\", \"n_embd\": %d, \"n_head\": %d, \"n_layer\": %d, "
          "\"n_positions\": %d, \"n_inner\": null, \"layer_norm_epsilon\": 1e-05%s}\n",
          E, NH, NL, NPOS, extra ? extra : ", \"activation_function\": \"gelu_new\"");
  fclose(fp);
}

static int create(const char *spec, ss_model **m, char *err, size_t errlen) {
  err[0] = '\0';
  *m = NULL;
  return ss_model_create(spec, m, err, errlen);
}

/* ---------------------------------------------------------------- naive reference ---- */

/* Blocks [a,b) over x [S][E] (one sequence, no past), in place (gpt2_block_ref.h). */
static void ref_forward(double *x, int S, int a, int b) {
  static double wd[NT][E * NI];
  for (int l = a; l < b; l++) {
    const double *w[NT];
    for (int k = 0; k < NT; k++) {
      for (int i = 0; i < E * NI; i++) wd[k][i] = W[l][k][i];
      w[k] = wd[k];
    }
    ref_gpt2_block(x, S, E, NH, NI, w);
  }
}

/* ---------------------------------------------------------------- helpers ---- */

static float max_abs_diff(const float *a, const float *b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) {
    float d = fabsf(a[i] - b[i]);
    if (isnan(d)) return INFINITY;
    if (d > m) m = d;
  }
  return m;
}

static void free_kv(ss_kv_layer *kv, int n) {
  for (int i = 0; i < n; i++) ss_kv_release(&kv[i]);
}

static int run(ss_model *m, float *x, float *y, int64_t B, int64_t S, ss_kv_io *kv) {
  ss_tensor in = tensor3(x, B, S, E), out = tensor3(y, B, S, E);
  int64_t oshape[8];
  int ondim, rc;
  char err[300];
  rc = m->ops->check(m, &in, NULL, oshape, &ondim, err, sizeof err);
  if (rc == 0 && kv && kv->past)
    rc = m->ops->check_kv(m, &in, kv->past, kv->n_layers, err, sizeof err);
  if (rc == 0)
    rc = kv ? m->ops->forward_kv(m, &in, &out, kv, NULL, err, sizeof err)
            : m->ops->forward(m, &in, &out, NULL, err, sizeof err);
  if (rc != 0) fprintf(stderr, "run: %s\n", err);
  return rc;
}

/* ---------------------------------------------------------------- tests ---- */

static char wpath[128], wpath_tf[128], cpath[128];

static void test_load(void) {
  char spec[512], err[600];
  ss_model *m;
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", wpath, cpath);
  CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
  if (m == NULL) return;
  CHECK_EQ_INT(m->n_kv_layers, 2);
  CHECK_EQ_INT(m->exec, SS_EXEC_WORKER);
  CHECK_EQ_INT(m->n_params, 2 * (4 * E + 3 * E * E + 3 * E + E * E + E + E * NI + NI + NI * E + E));
  CHECK_CONTAINS(m->describe, "gpt2 layers 1:3 of 3 (n_embd 16, 4 heads)");
  CHECK_CONTAINS(m->describe, "f32 mmap");
  {
    float x[2 * 5 * E] = {0};
    ss_tensor in = tensor3(x, 2, 5, E);
    int64_t os[8];
    int ond;
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), 0);
    CHECK_EQ_INT(ond, 3);
    CHECK(os[0] == 2 && os[1] == 5 && os[2] == E);
    in = tensor3(x, 1, 5, 8);
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "model 't' expects hidden size 16, got 8");
    in = tensor3(x, 1, 5, E);
    in.ndim = 2;
    in.shape[0] = 5, in.shape[1] = E;
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "3 dims");
    in = tensor3(x, 1, NPOS + 1, E);
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "seq 33 exceeds n_positions 32");
    in = tensor3(x, 1, 0, E);
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "seq >= 1");
  }
  ss_model_free(m);
  /* prefix "transformer.", default layers = all, config next to the weights */
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s", wpath_tf);
  CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
  if (m) CHECK_EQ_INT(m->n_kv_layers, 3);
  if (m) CHECK_CONTAINS(m->describe, "layers 0:3 of 3");
  ss_model_free(m);
}

static void expect_refused(const char *spec, const char *want1, const char *want2) {
  char err[600];
  ss_model *m;
  CHECK(create(spec, &m, err, sizeof err) < 0);
  CHECK(m == NULL);
  CHECK_CONTAINS(err, want1);
  if (want2) CHECK_CONTAINS(err, want2);
}

static void test_refusals(void) {
  char spec[512], p[128], c[128];
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:4", wpath, cpath);
  expect_refused(spec, "layers 1:4 outside 0:3", NULL);
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=2:2", wpath, cpath);
  expect_refused(spec, "layers 2:2", "empty");
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=x", wpath, cpath);
  expect_refused(spec, "must look like A:B", NULL);
  snprintf(spec, sizeof spec, "t=gpt2,config=%s", cpath);
  expect_refused(spec, "needs weights=", NULL);
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,bogus=1", wpath, cpath);
  expect_refused(spec, "unknown parameter 'bogus'", NULL);

  /* missing tensor: named; outside the range it does not matter */
  snprintf(p, sizeof p, "%s/missing.safetensors", dir);
  write_ckpt(p, "", "h.2.mlp.c_fc.bias", NULL);
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", p, cpath);
  expect_refused(spec, "1 tensor of layers 1:3 missing: h.2.mlp.c_fc.bias", NULL);
  {
    char err[600];
    ss_model *m;
    snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=0:2", p, cpath);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
    ss_model_free(m);
  }
  /* a whole layer missing: the first few + count (config says 3 layers, ckpt has them; claim 3
   * layers with a prefix mismatch instead: weights without h.* at all) */
  {
    const char *names[1] = {"wte.weight"};
    static const int64_t sh[2] = {8, E};
    const int64_t *shapes[1] = {sh};
    int nd[1] = {2};
    const float *data[1] = {W[0][8]};
    char err[300];
    snprintf(p, sizeof p, "%s/empty.safetensors", dir);
    CHECK_EQ_INT(ss_st_write_f32(p, 1, names, shapes, nd, data, err, sizeof err), 0);
    snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", p, cpath);
    expect_refused(spec, "24 tensors of layers 1:3 missing: h.1.ln_1.weight, h.1.ln_1.bias",
                   "(18 more)");
  }
  /* wrong shape */
  snprintf(p, sizeof p, "%s/shape.safetensors", dir);
  write_ckpt(p, "transformer.", NULL, "h.1.attn.c_attn.weight");
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", p, cpath);
  expect_refused(spec, "'transformer.h.1.attn.c_attn.weight' has shape [16,32], expected [16,48]",
                 NULL);
  /* config problems */
  snprintf(c, sizeof c, "%s/relu.json", dir);
  write_config(c, ", \"activation_function\": \"relu\"");
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s", wpath, c);
  expect_refused(spec, "activation_function 'relu' is not supported", NULL);
  {
    FILE *fp;
    snprintf(c, sizeof c, "%s/nohead.json", dir);
    fp = fopen(c, "w");
    fprintf(fp, "{\"n_embd\": 16, \"n_layer\": 3}");
    fclose(fp);
    snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s", wpath, c);
    expect_refused(spec, "missing 'n_head'", NULL);
    fp = fopen(c, "w");
    fprintf(fp, "{\"n_embd\": 16, \"n_layer\": 3, \"n_head\": 5}");
    fclose(fp);
    expect_refused(spec, "not a multiple of n_head", NULL);
    fp = fopen(c, "w");
    fprintf(fp, "{\"n_embd\": \"16\", \"n_layer\": 3, \"n_head\": 4}");
    fclose(fp);
    expect_refused(spec, "'n_embd' must be a positive integer", NULL);
    fp = fopen(c, "w");
    fprintf(fp, "{\"n_embd\": 16, ");
    fclose(fp);
    expect_refused(spec, "nohead.json", NULL);
  }
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s/nope.json", wpath, dir);
  expect_refused(spec, "nope.json", NULL);
  /* config with a wider n_embd than the weights: shapes refused naming the tensor */
  snprintf(c, sizeof c, "%s/wide.json", dir);
  {
    FILE *fp = fopen(c, "w");
    fprintf(fp, "{\"n_embd\": 32, \"n_layer\": 3, \"n_head\": 4}");
    fclose(fp);
  }
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s", wpath, c);
  expect_refused(spec, "'h.0.ln_1.weight' has shape [16], expected [32]", NULL);
}

static void test_numerics(void) {
  char spec[512], err[600];
  ss_model *m;
  enum { B = 2, S = 9 };
  float x[B * S * E], y[B * S * E], y1[S * E], ytok[B * E];
  double ref[S * E];
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", wpath, cpath);
  CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
  if (m == NULL) return;
  for (int i = 0; i < B * S * E; i++) x[i] = frand();

  /* forward vs the naive reference, both batch rows */
  CHECK_EQ_INT(run(m, x, y, B, S, NULL), 0);
  for (int b = 0; b < B; b++) {
    double worst = 0;
    for (int i = 0; i < S * E; i++) ref[i] = x[b * S * E + i];
    ref_forward(ref, S, 1, 3);
    for (int i = 0; i < S * E; i++) worst = fmax(worst, fabs(ref[i] - y[b * S * E + i]));
    if (!(worst < 1e-4)) fprintf(stderr, "batch row %d: max abs err vs reference %g\n", b, worst);
    CHECK(worst < 1e-4);
  }
  /* batch 2 == two batch-1 runs */
  for (int b = 0; b < B; b++) {
    float d;
    CHECK_EQ_INT(run(m, x + b * S * E, y1, 1, S, NULL), 0);
    d = max_abs_diff(y1, y + b * S * E, S * E);
    CHECK(d <= 1e-6f);
  }
  /* prefill == token by token (batch 2), past from the previous present; also 4 + 5 split */
  {
    ss_kv_layer past[2], present[2], pre_full[2];
    ss_kv_io kv = {0};
    float xs[B * E], worst = 0;
    memset(past, 0, sizeof past);
    kv.n_layers = 2;
    kv.past = NULL;
    kv.want_present = 1;
    kv.present = pre_full;
    CHECK_EQ_INT(run(m, x, y, B, S, &kv), 0);
    CHECK_EQ_INT(pre_full[0].key.ndim, 4);
    CHECK(pre_full[1].value.shape[0] == B && pre_full[1].value.shape[1] == NH &&
          pre_full[1].value.shape[2] == S && pre_full[1].value.shape[3] == HD);
    CHECK(pre_full[0].key.numel == (size_t)B * NH * S * HD);
    CHECK(pre_full[0].key.nbytes == (size_t)B * NH * S * HD * 4);
    for (int t = 0; t < S; t++) {
      for (int b = 0; b < B; b++) memcpy(xs + b * E, x + (b * S + t) * E, E * sizeof(float));
      kv.past = t ? past : NULL;
      kv.present = present;
      CHECK_EQ_INT(run(m, xs, ytok, B, 1, &kv), 0);
      for (int b = 0; b < B; b++)
        worst = fmaxf(worst, max_abs_diff(ytok + b * E, y + (b * S + t) * E, E));
      if (t) free_kv(past, 2);
      memcpy(past, present, sizeof past);
      CHECK(past[0].key.shape[2] == t + 1);
    }
    if (!(worst <= 1e-5f)) fprintf(stderr, "decode vs prefill: max abs err %g\n", worst);
    CHECK(worst <= 1e-5f);
    for (int l = 0; l < 2; l++) {
      CHECK(max_abs_diff(past[l].key.data, pre_full[l].key.data, pre_full[l].key.numel) <= 1e-5f);
      CHECK(max_abs_diff(past[l].value.data, pre_full[l].value.data, pre_full[l].key.numel) <=
            1e-5f);
    }
    free_kv(past, 2);
    free_kv(pre_full, 2);
    /* without want_present, with past: chunk 4 then 5 */
    {
      float y2[B * S * E], xa[B * 4 * E], xb[B * 5 * E], ya[B * 4 * E], yb[B * 5 * E];
      for (int b = 0; b < B; b++) {
        memcpy(xa + b * 4 * E, x + b * S * E, 4 * E * sizeof(float));
        memcpy(xb + b * 5 * E, x + (b * S + 4) * E, 5 * E * sizeof(float));
      }
      kv.past = NULL;
      kv.want_present = 1;
      kv.present = present;
      CHECK_EQ_INT(run(m, xa, ya, B, 4, &kv), 0);
      kv.past = present;
      kv.want_present = 0;
      kv.present = NULL;
      CHECK_EQ_INT(run(m, xb, yb, B, 5, &kv), 0);
      free_kv(present, 2);
      for (int b = 0; b < B; b++) {
        memcpy(y2 + b * S * E, ya + b * 4 * E, 4 * E * sizeof(float));
        memcpy(y2 + (b * S + 4) * E, yb + b * 5 * E, 5 * E * sizeof(float));
      }
      CHECK(max_abs_diff(y2, y, B * S * E) <= 1e-5f);
    }
  }
  ss_model_free(m);
}

static void test_check_kv(void) {
  char spec[512], err[600];
  ss_model *m;
  float x[2 * 3 * E] = {0}, dummy[1] = {0};
  ss_kv_layer past[3];
  ss_tensor in = tensor3(x, 2, 3, E);
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=0:3", wpath, cpath);
  CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
  if (m == NULL) return;
  memset(past, 0, sizeof past);
  for (int l = 0; l < 3; l++)
    for (int f = 0; f < 2; f++) {
      ss_tensor *t = f ? &past[l].value : &past[l].key;
      t->dtype = SS_DTYPE_F32;
      t->ndim = 4;
      t->shape[0] = 2, t->shape[1] = NH, t->shape[2] = 7, t->shape[3] = HD;
      t->data = dummy;
    }
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 0, err, sizeof err), 0);
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), 0);
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 2, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "expects 3 past_key_values entries");
  CHECK_CONTAINS(err, "got 2");
  past[2].value.shape[2] = 5;
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err,
                 "past_key_values[2].value_shape is [2,4,5,4], expected [2,4,7,4] like "
                 "past_key_values[0].key_shape");
  past[2].value.shape[2] = 7;
  past[0].key.shape[1] = 3;
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "past_key_values[0].key_shape is [2,3,7,4], expected [2,4,past_len,4]");
  past[0].key.shape[1] = NH;
  in = tensor3(x, 1, 3, E); /* batch mismatch */
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "expected [1,4,past_len,4]");
  in = tensor3(x, 2, 3, E);
  past[1].key.ndim = 3;
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "past_key_values[1].key_shape is [2,4,7]");
  past[1].key.ndim = 4;
  for (int l = 0; l < 3; l++) past[l].key.shape[2] = past[l].value.shape[2] = 30;
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "past_len 30 + seq 3 exceeds n_positions 32");
  for (int l = 0; l < 3; l++) past[l].key.shape[2] = past[l].value.shape[2] = 29;
  CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 3, err, sizeof err), 0);
  ss_model_free(m);
}

/* F16-free but unaligned F32 weights are copied; a checkpoint at the maximum n_positions runs. */
static void test_full_window(void) {
  char spec[512], err[600];
  ss_model *m;
  float *x = malloc(sizeof(float) * NPOS * E), *y = malloc(sizeof(float) * NPOS * E);
  double *ref = malloc(sizeof(double) * NPOS * E), worst = 0;
  snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=0:1", wpath_tf, cpath);
  CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
  if (m != NULL) {
    for (int i = 0; i < NPOS * E; i++) ref[i] = x[i] = frand();
    CHECK_EQ_INT(run(m, x, y, 1, NPOS, NULL), 0);
    ref_forward(ref, NPOS, 0, 1);
    for (int i = 0; i < NPOS * E; i++) worst = fmax(worst, fabs(ref[i] - y[i]));
    CHECK(worst < 1e-4);
  }
  ss_model_free(m);
  free(x);
  free(y);
  free(ref);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/ss-gpt2-XXXXXX");
  if (mkdtemp(dir) == NULL) return 1;
  make_weights();
  snprintf(wpath, sizeof wpath, "%s/model.safetensors", dir);
  snprintf(cpath, sizeof cpath, "%s/config.json", dir);
  snprintf(wpath_tf, sizeof wpath_tf, "%s/tf.safetensors", dir);
  write_ckpt(wpath, "", NULL, NULL);
  write_ckpt(wpath_tf, "transformer.", NULL, NULL);
  write_config(cpath, NULL);
  test_load();
  test_refusals();
  test_numerics();
  test_check_kv();
  test_full_window();
  { /* the block on the cpu and reference backends (nn/backend/), with LoRA and dropout too */
    char spec[600];
    snprintf(spec, sizeof spec, "t=gpt2,weights=%s,config=%s,layers=1:3", wpath, cpath);
    check_backends(spec, E, 1e-4);
    snprintf(spec, sizeof spec,
             "t=gpt2,weights=%s,config=%s,lora_rank=2,lora_targets=c_attn,c_proj,c_fc,"
             "lora_dropout=0.3",
             wpath, cpath);
    check_backends(spec, E, 1e-4);
  }
  {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  }
  TEST_MAIN_END();
}
