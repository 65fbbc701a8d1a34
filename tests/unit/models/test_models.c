/*
 * test_models.c — unit tests for src/models: spec parsing and its error messages, the
 * built-in kinds (identity, scale, sleep, spin), and the mlp (safetensors loading with
 * prefixes, F16 and unaligned weights, width checks, forward against a naive triple loop,
 * and the embedded default rebuilt from its documented generator). Single-threaded.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "models/lora.h"
#include "models/model.h"
#include "models/nn/matmul.h"
#include "models/safetensors.h"

static char dir[64];

static int create(const char *spec, ss_model **m, char *err, size_t errlen) {
  err[0] = '\0';
  *m = NULL;
  return ss_model_create(spec, m, err, errlen);
}

static void test_specs(void) {
  char err[300];
  ss_model *m;

  CHECK_EQ_INT(create("noequals", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "must look like ID=KIND");
  CHECK(m == NULL);
  CHECK_EQ_INT(create("=identity", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "must look like ID=KIND");
  CHECK_EQ_INT(create("x=", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "missing KIND");
  CHECK_EQ_INT(create("x=bogus", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "unknown kind 'bogus'");
  CHECK_CONTAINS(err, "identity, scale, sleep, spin, mlp");
  CHECK_EQ_INT(create("x=identity,foo=1", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "'foo'");
  CHECK_EQ_INT(create("x=mlp,bar=1", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "unknown parameter 'bar' for kind 'mlp'");
  CHECK_CONTAINS(err, "weights, activation");
  /* compute=: fp32 runs; bf16 runs where the CPU has native bf16 products and is refused at
   * start-up elsewhere, naming the missing instruction set (never a silent fp32 run). */
  CHECK_EQ_INT(create("x=mlp,compute=fp16", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "compute must be fp32, bf16 or int8, got 'fp16'");
  {
    char why[160];
    if (ss_matmul_bf16_check(why, sizeof why) != 0) {
      CHECK_EQ_INT(create("x=mlp,compute=bf16", &m, err, sizeof err), SS_EINVAL);
      CHECK(m == NULL);
      CHECK_CONTAINS(err, "compute=bf16 needs avx512_bf16 or amx_bf16 (this CPU has ");
      CHECK_CONTAINS(err, why);
      CHECK_EQ_INT(create("x=gpt2,compute=bf16", &m, err, sizeof err), SS_EINVAL);
      CHECK_CONTAINS(err, "compute=bf16");
    } else {
      CHECK_EQ_INT(create("x=mlp,compute=bf16", &m, err, sizeof err), 0);
      CHECK(m != NULL && m->compute == SS_MM_BF16);
      CHECK_CONTAINS(m ? m->describe : "", "compute bf16");
      ss_model_free(m);
      m = NULL;
    }
  }
  CHECK_EQ_INT(create("x=mlp,compute=fp32", &m, err, sizeof err), 0);
  ss_model_free(m);
  m = NULL;
  CHECK_EQ_INT(create("x=mlp,weights", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "'weights' must be key=value");
  CHECK_EQ_INT(create("x=mlp,activation=tanh", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "activation must be relu or gelu, got 'tanh'");
  CHECK_EQ_INT(create("x=mlp,activation=relu,activation=gelu", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "given twice");
  /* Every key is a row of the registry's table, which checks its value before any constructor
   * runs: types and ranges of the kinds' own keys too, and keys of another kind are refused. */
  CHECK_EQ_INT(create("x=gpt2,weights=w,lora_rank=abc", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "model 'x': lora_rank must be an integer in [1, 4096], got 'abc'");
  CHECK_EQ_INT(create("x=llama,weights=w,lora_seed=-1", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "lora_seed must be an unsigned 64-bit integer, got '-1'");
  CHECK_EQ_INT(create("x=llama,weights=w,lora_alpha=0", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "lora_alpha must be a number > 0");
  CHECK_EQ_INT(create("x=gpt2,weights=", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "weights must be a file or directory path, got ''");
  CHECK_EQ_INT(create("x=mlp,lora_rank=4", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "unknown parameter 'lora_rank' for kind 'mlp'");
  CHECK_EQ_INT(create("x=gpt2,weights=w,activation=relu", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "unknown parameter 'activation' for kind 'gpt2' (known: weights, config");
  CHECK_EQ_INT(create("x=mlp,max_batch_rows=1x", &m, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "max_batch_rows must be an integer in [0, 1048576], got '1x'");
  CHECK_EQ_INT(
      create("x=mlp,wire_dtype=fp16,learning_rate=1e-3,accumulation_step=2", &m, err, sizeof err),
      0);
  CHECK(m != NULL && m->wire_dtype == SS_DTYPE_F16 && m->accumulation_step == 2 &&
        fabsf(m->learning_rate - 1e-3f) < 1e-9f);
  ss_model_free(m);
  m = NULL;
  CHECK(create("x=mlp,weights=/nonexistent/w.safetensors", &m, err, sizeof err) < 0);
  CHECK_CONTAINS(err, "/nonexistent/w.safetensors");
  CHECK(m == NULL);

  CHECK_EQ_INT(create("echo=identity", &m, err, sizeof err), 0);
  if (m) {
    CHECK(strcmp(m->id, "echo") == 0);
    CHECK(strcmp(m->kind, "identity") == 0);
    CHECK_EQ_INT(m->exec, SS_EXEC_INLINE);
    CHECK_EQ_INT(m->echo, 1);
    CHECK(m->describe[0] != '\0');
  }
  ss_model_free(m);
  ss_model_free(NULL);
  {
    const char *params[] = {"nope", "1"};
    CHECK_EQ_INT(ss_model_create_kind("s", "sleep", params, 1, &m, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "'nope'");
    CHECK_EQ_INT(ss_model_create_kind("", "sleep", NULL, 0, &m, err, sizeof err), SS_EINVAL);
  }
}

static void test_builtins(void) {
  char err[300];
  ss_model *m;
  float x[6] = {1, -2, 3, -4, 5, 0.5f}, y[6];
  ss_tensor in = {SS_DTYPE_F32, 2, {2, 3}, 6, x, 24}, out = {SS_DTYPE_F32, 2, {2, 3}, 6, y, 24};
  int64_t oshape[SS_MAX_DIMS];
  int ondim;
  const char *k1[] = {"factor"}, *v1[] = {"3"}, *vb[] = {"abc"};
  ss_meta meta = {k1, v1, 1, NULL}, bad = {k1, vb, 1, NULL}, none = {NULL, NULL, 0, NULL};

  CHECK_EQ_INT(create("sc=scale", &m, err, sizeof err), 0);
  if (m) {
    CHECK_EQ_INT(m->exec, SS_EXEC_WORKER);
    CHECK_EQ_INT(m->echo, 0);
    CHECK_EQ_INT(m->ops->check(m, &in, &meta, oshape, &ondim, err, sizeof err), 0);
    CHECK_EQ_INT(ondim, 2);
    CHECK_EQ_INT(oshape[1], 3);
    CHECK_EQ_INT(m->ops->forward(m, &in, &out, &meta, err, sizeof err), 0);
    CHECK(y[0] == 3.0f && y[1] == -6.0f && y[5] == 1.5f);
    CHECK_EQ_INT(m->ops->forward(m, &in, &out, &none, err, sizeof err), 0);
    CHECK(memcmp(x, y, sizeof x) == 0);
    CHECK_EQ_INT(m->ops->check(m, &in, &bad, oshape, &ondim, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "metadata 'factor' must be a finite number, got 'abc'");
  }
  ss_model_free(m);

  CHECK_EQ_INT(create("sl=sleep", &m, err, sizeof err), 0);
  if (m) {
    const char *km[] = {"ms"}, *vm[] = {"25"}, *vx[] = {"700000"};
    ss_meta mm = {km, vm, 1, NULL}, mx = {km, vx, 1, NULL};
    double ms;
    CHECK_EQ_INT(m->exec, SS_EXEC_TIMER);
    CHECK_EQ_INT(m->echo, 1);
    CHECK(ss_model_sleep_ms(&none, &ms, err, sizeof err) == 0 && ms == 100.0);
    CHECK(ss_model_sleep_ms(&mm, &ms, err, sizeof err) == 0 && ms == 25.0);
    CHECK_EQ_INT(ss_model_sleep_ms(&mx, &ms, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "metadata 'ms' must be a number in [0, 600000], got '700000'");
    CHECK_EQ_INT(m->ops->check(m, &in, &mx, oshape, &ondim, err, sizeof err), SS_EINVAL);
    CHECK_EQ_INT(m->ops->check(m, &in, &mm, oshape, &ondim, err, sizeof err), 0);
  }
  ss_model_free(m);

  CHECK_EQ_INT(create("sp=spin", &m, err, sizeof err), 0);
  if (m) {
    const char *km[] = {"ms"}, *vm[] = {"30"};
    ss_meta mm = {km, vm, 1, NULL};
    ss_tensor nodata = out;
    struct timespec t0, t1;
    double el;
    nodata.data = NULL; /* echo: forward must not write out */
    CHECK_EQ_INT(m->exec, SS_EXEC_WORKER);
    CHECK_EQ_INT(m->echo, 1);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_EQ_INT(m->ops->forward(m, &in, &nodata, &mm, err, sizeof err), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    el = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    CHECK(el >= 30.0 && el < 3000.0);
  }
  ss_model_free(m);
}

/* ------------------------------------------------------------------ mlp ---- */

/* Naive reference: y = act(x W^T + b) per layer, in double. */
static void naive_mlp(int nl, const int *w, const float *const *W, const float *const *B, int gelu,
                      const float *x, size_t rows, float *y) {
  double *cur = malloc(rows * 64 * sizeof(double)), *nxt = malloc(rows * 64 * sizeof(double));
  for (size_t r = 0; r < rows; r++)
    for (int j = 0; j < w[0]; j++) cur[r * 64 + (size_t)j] = x[r * (size_t)w[0] + (size_t)j];
  for (int l = 0; l < nl; l++) {
    for (size_t r = 0; r < rows; r++)
      for (int o = 0; o < w[l + 1]; o++) {
        double s = B[l] ? B[l][o] : 0.0;
        for (int i = 0; i < w[l]; i++) s += cur[r * 64 + (size_t)i] * W[l][o * w[l] + i];
        if (l < nl - 1) s = gelu ? 0.5 * s * (1.0 + erf(s / sqrt(2.0))) : (s > 0 ? s : 0);
        nxt[r * 64 + (size_t)o] = s;
      }
    double *t = cur;
    cur = nxt;
    nxt = t;
  }
  for (size_t r = 0; r < rows; r++)
    for (int o = 0; o < w[nl]; o++)
      y[r * (size_t)w[nl] + (size_t)o] = (float)cur[r * 64 + (size_t)o];
  free(cur);
  free(nxt);
}

static float frand(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
  return d;
}

static void test_mlp_file(void) {
  enum { L = 3 };
  int widths[L + 1] = {4, 6, 5, 3};
  float *W[L], *B[L];
  uint32_t seed = 7;
  char path[128], spec[200], err[300];
  ss_model *m;

  for (int l = 0; l < L; l++) {
    W[l] = malloc(sizeof(float) * (size_t)(widths[l] * widths[l + 1]));
    B[l] = malloc(sizeof(float) * (size_t)widths[l + 1]);
    for (int i = 0; i < widths[l] * widths[l + 1]; i++) W[l][i] = frand(&seed);
    for (int i = 0; i < widths[l + 1]; i++) B[l][i] = frand(&seed);
  }
  /* Sequential indices 0, 2, 10 (10 sorts after 2 numerically), prefix "model.", layer 2
   * without bias; names deliberately written out of order. */
  {
    int64_t s0w[] = {6, 4}, s0b[] = {6}, s2w[] = {5, 6}, s10w[] = {3, 5}, s10b[] = {3};
    const char *names[] = {"model.10.weight", "model.0.weight", "model.2.weight", "model.0.bias",
                           "model.10.bias"};
    const int64_t *shapes[] = {s10w, s0w, s2w, s0b, s10b};
    int nd[] = {2, 2, 2, 1, 1};
    const float *data[] = {W[2], W[0], W[1], B[0], B[2]};
    snprintf(path, sizeof path, "%s/mlp.safetensors", dir);
    CHECK_EQ_INT(ss_st_write_f32(path, 5, names, shapes, nd, data, err, sizeof err), 0);
  }
  for (int gelu = 0; gelu < 2; gelu++) {
    snprintf(spec, sizeof spec, "m=mlp,weights=%s%s", path, gelu ? ",activation=gelu" : "");
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
    if (m == NULL) {
      fprintf(stderr, "%s\n", err);
      continue;
    }
    CHECK_CONTAINS(m->describe, gelu ? "mlp 4->6->5->3 gelu" : "mlp 4->6->5->3 relu");
    CHECK_CONTAINS(m->describe, "mlp.safetensors");
    CHECK_EQ_INT(m->n_params, 24 + 6 + 30 + 15 + 3);
    CHECK_EQ_INT(m->weight_bytes, 4 * (24 + 6 + 30 + 15 + 3));
    CHECK_EQ_INT(m->exec, SS_EXEC_WORKER);
    {
      float x[2 * 3 * 4], y[2 * 3 * 3], ref[2 * 3 * 3];
      const float *Bs[L] = {B[0], NULL, B[2]};
      const float *Ws[L] = {W[0], W[1], W[2]};
      ss_tensor in = {SS_DTYPE_F32, 3, {2, 3, 4}, 24, x, sizeof x};
      ss_tensor out = {SS_DTYPE_F32, 0, {0}, 18, y, sizeof y};
      ss_meta none = {NULL, NULL, 0, NULL};
      for (int i = 0; i < 24; i++) x[i] = frand(&seed) * 2.0f;
      CHECK_EQ_INT(m->ops->check(m, &in, &none, out.shape, &out.ndim, err, sizeof err), 0);
      CHECK_EQ_INT(out.ndim, 3);
      CHECK(out.shape[0] == 2 && out.shape[1] == 3 && out.shape[2] == 3);
      CHECK_EQ_INT(m->ops->forward(m, &in, &out, &none, err, sizeof err), 0);
      naive_mlp(L, widths, Ws, Bs, gelu, x, 6, ref);
      CHECK(max_abs_diff(y, ref, 18) < 1e-5);
      in.shape[2] = 7;
      CHECK_EQ_INT(m->ops->check(m, &in, &none, out.shape, &out.ndim, err, sizeof err), SS_EINVAL);
      CHECK_CONTAINS(err, "model 'm' expects last dimension 4, got 7");
    }
    ss_model_free(m);
  }

  /* widths that do not chain */
  {
    int64_t s0[] = {6, 4}, s2[] = {3, 5};
    const char *names[] = {"0.weight", "2.weight"};
    const int64_t *shapes[] = {s0, s2};
    int nd[] = {2, 2};
    const float *data[] = {W[0], W[2]};
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    CHECK_EQ_INT(ss_st_write_f32(path, 2, names, shapes, nd, data, err, sizeof err), 0);
    snprintf(spec, sizeof spec, "m=mlp,weights=%s", path);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "'0.weight' outputs width 6 but '2.weight' expects input width 5");
  }
  /* a bias of the wrong size; a stray tensor; mixed prefixes; bias without weight */
  {
    int64_t s0[] = {6, 4}, sb[] = {5};
    const char *names[] = {"0.weight", "0.bias"};
    const int64_t *shapes[] = {s0, sb};
    int nd[] = {2, 1};
    const float *data[] = {W[0], B[0]};
    CHECK_EQ_INT(ss_st_write_f32(path, 2, names, shapes, nd, data, err, sizeof err), 0);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "'0.bias' has shape [5]; expected [6]");
    names[1] = "embed";
    CHECK_EQ_INT(ss_st_write_f32(path, 2, names, shapes, nd, data, err, sizeof err), 0);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "'embed'");
    names[1] = "layers.0.bias";
    CHECK_EQ_INT(ss_st_write_f32(path, 2, names, shapes, nd, data, err, sizeof err), 0);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "different prefixes");
    names[1] = "4.bias";
    CHECK_EQ_INT(ss_st_write_f32(path, 2, names, shapes, nd, data, err, sizeof err), 0);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "'4.bias' has no matching weight");
  }
  for (int l = 0; l < L; l++) {
    free(W[l]);
    free(B[l]);
  }
}

/* F16 weights, and F32 weights at an address that is not 4-byte aligned (both copied). */
static void test_mlp_converted(void) {
  char path[128], spec[200], err[300];
  ss_model *m;
  float wf[6] = {1.0f, -0.5f, 2.0f, 0.25f, -1.0f, 3.0f}, bf[3] = {0.5f, -1.0f, 0.0f};
  const float *Ws[1] = {wf}, *Bs[1] = {bf};
  int widths[2] = {2, 3};
  float x[4] = {1.0f, 2.0f, -3.0f, 0.5f}, y[6], ref[6];
  ss_meta none = {NULL, NULL, 0, NULL};
  ss_tensor in = {SS_DTYPE_F32, 2, {2, 2}, 4, x, sizeof x};
  ss_tensor out = {SS_DTYPE_F32, 2, {2, 3}, 6, y, sizeof y};
  naive_mlp(1, widths, Ws, Bs, 0, x, 2, ref);
  for (int variant = 0; variant < 2; variant++) {
    FILE *fp;
    char hdr[256];
    uint8_t lenb[8];
    size_t hl;
    snprintf(path, sizeof path, "%s/conv%d.safetensors", dir, variant);
    if (variant == 0)
      snprintf(hdr, sizeof hdr,
               "{\"0.weight\":{\"dtype\":\"F16\",\"shape\":[3,2],"
               "\"data_offsets\":[0,12]},\"0.bias\":{\"dtype\":\"F16\",\"shape\":[3],"
               "\"data_offsets\":[12,18]}}");
    else /* header length chosen so that the buffer starts at offset 8 + hl = 2 (mod 4) */
      snprintf(hdr, sizeof hdr,
               "{\"0.weight\":{\"dtype\":\"F32\",\"shape\":[3,2],"
               "\"data_offsets\":[0,24]},\"0.bias\":{\"dtype\":\"F32\",\"shape\":[3],"
               "\"data_offsets\":[24,36]}}");
    hl = strlen(hdr);
    if (variant == 1)
      while ((8 + hl) % 4 != 2) hdr[hl++] = ' ';
    hdr[hl] = '\0';
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    fp = fopen(path, "wb");
    fwrite(lenb, 1, 8, fp);
    fwrite(hdr, 1, hl, fp);
    if (variant == 0) {
      uint16_t h[9];
      ss_f32_to_f16(wf, h, 6);
      ss_f32_to_f16(bf, h + 6, 3);
      fwrite(h, 2, 9, fp);
    } else {
      fwrite(wf, 4, 6, fp);
      fwrite(bf, 4, 3, fp);
    }
    fclose(fp);
    snprintf(spec, sizeof spec, "c=mlp,weights=%s", path);
    CHECK_EQ_INT(create(spec, &m, err, sizeof err), 0);
    if (m == NULL) {
      fprintf(stderr, "%s\n", err);
      continue;
    }
    CHECK_CONTAINS(m->describe, variant == 0 ? "f16->f32" : "(f32,");
    CHECK_EQ_INT(m->ops->forward(m, &in, &out, &none, err, sizeof err), 0);
    CHECK(max_abs_diff(y, ref, 6) < 1e-6);
    ss_model_free(m);
  }
}

/* The embedded default, rebuilt from the generator documented in mlp.c. */
static uint64_t sm64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void test_mlp_default(void) {
  char err[300];
  ss_model *m;
  ss_meta none = {NULL, NULL, 0, NULL};
  int64_t oshape[SS_MAX_DIMS];
  int ondim;

  CHECK_EQ_INT(create("default=mlp", &m, err, sizeof err), 0);
  if (m == NULL) return;
  CHECK_CONTAINS(m->describe, "mlp 768->768->768 relu (f32, embedded)");
  CHECK_EQ_INT(m->n_params, 2 * (768 * 768 + 768));
  {
    float x[1];
    ss_tensor in = {SS_DTYPE_F32, 3, {1, 10, 768}, 7680, x, 7680 * 4};
    CHECK_EQ_INT(m->ops->check(m, &in, &none, oshape, &ondim, err, sizeof err), 0);
    CHECK(ondim == 3 && oshape[0] == 1 && oshape[1] == 10 && oshape[2] == 768);
    in.shape[2] = 512;
    CHECK_EQ_INT(m->ops->check(m, &in, &none, oshape, &ondim, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "model 'default' expects last dimension 768, got 512");
  }
  {
    enum { N = 768, R = 3 };
    float *w[2], *b[2], *x = malloc(sizeof(float) * N * R), *y = malloc(sizeof(float) * N * R);
    float *ref = malloc(sizeof(float) * N * R), *h = malloc(sizeof(float) * N * R);
    uint64_t st = 42;
    double bound = 1.0 / sqrt(768.0), d = 0;
    uint32_t seed = 3;
    ss_tensor in = {SS_DTYPE_F32, 2, {R, N}, N * R, x, sizeof(float) * N * R};
    ss_tensor out = {SS_DTYPE_F32, 2, {R, N}, N * R, y, sizeof(float) * N * R};
    for (int l = 0; l < 2; l++) {
      w[l] = malloc(sizeof(float) * N * N);
      b[l] = malloc(sizeof(float) * N);
      for (int i = 0; i < N * N; i++)
        w[l][i] = (float)((2.0 * ((double)(sm64(&st) >> 40) * 0x1p-24) - 1.0) * bound);
      for (int i = 0; i < N; i++)
        b[l][i] = (float)((2.0 * ((double)(sm64(&st) >> 40) * 0x1p-24) - 1.0) * bound);
    }
    for (int i = 0; i < N * R; i++) x[i] = frand(&seed);
    for (int r = 0; r < R; r++)
      for (int l = 0; l < 2; l++) {
        const float *src = l == 0 ? x + r * N : h + r * N;
        float *dst = l == 0 ? h + r * N : ref + r * N;
        for (int o = 0; o < N; o++) {
          double s = b[l][o];
          for (int i = 0; i < N; i++) s += (double)src[i] * w[l][o * N + i];
          dst[o] = (float)(l == 0 && s < 0 ? 0 : s);
        }
      }
    CHECK_EQ_INT(m->ops->forward(m, &in, &out, &none, err, sizeof err), 0);
    d = max_abs_diff(y, ref, N * R);
    CHECK(d < 1e-4);
    if (d >= 1e-4) fprintf(stderr, "default mlp max diff %g\n", d);
    for (int l = 0; l < 2; l++) {
      free(w[l]);
      free(b[l]);
    }
    free(x);
    free(y);
    free(ref);
    free(h);
  }
  ss_model_free(m);
}

/* The LoRA dropout generator (models/lora.h) against values from its numpy twin
 * (tests/interop/gpt2_ref.py lora_keep), so both are checked against one written spec. */
static void test_lora_dropout_masks(void) {
  const char *want = "01011010100110100101000111011010";
  ss_lora_mask mk = {0.5f, ss_lora_mask_key(7, "fwd-1")};
  float x[1000], xd[1000];
  size_t kept = 0;
  CHECK(mk.key == 0x82dd5298288b2871ull);
  for (int i = 0; i < 1000; i++) x[i] = 1.0f;
  ss_lora_dropout(NULL, xd, x, 32, &mk, 2 * 16 + 3);
  for (int i = 0; i < 32; i++) CHECK_EQ_INT(xd[i] != 0.0f, want[i] == '1');
  for (int i = 0; i < 32; i++) CHECK(xd[i] == 0.0f || xd[i] == 2.0f);
  mk.p = 0.25f;
  mk.key = ss_lora_mask_key(0, NULL);
  ss_lora_dropout(NULL, xd, x, 1000, &mk, 0);
  for (int i = 0; i < 1000; i++) kept += xd[i] != 0.0f;
  CHECK_EQ_INT((int)kept, 762);
}

int main(void) {
  char cmd[96];
  strcpy(dir, "/tmp/ss_test_models_XXXXXX");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  test_specs();
  test_lora_dropout_masks();
  test_builtins();
  test_mlp_file();
  test_mlp_converted();
  test_mlp_default();
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  TEST_MAIN_END();
}
