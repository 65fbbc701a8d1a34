/*
 * test_llama.c — unit tests for src/models/llama.c with tiny random checkpoints written here
 * (hidden 16, 4 query heads over 2 kv heads, head_dim 4, intermediate 24, 3 layers, HF key
 * layout under "model."): a qwen2 trunk (q/k/v biases, GQA), a mistral trunk (sliding window
 * 3, shorter than the sequences) and a gemma3_text trunk (four norms, q/k norms, soft-capping
 * at 1, sliding window 3 on layers 0 and 2, local rope base): prefill == token-by-token decode
 * through forward_kv (past = the previous present), batch 2 == two batch-1 runs, a gradient of
 * the training path against central differences (mistral, gemma3), LoRA spec lists on one
 * command-line spec ("lora_targets=q_proj,v_proj"), the refusals of check/check_kv.
 * Single-threaded; files in a mkdtemp dir.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends_check.h"
#include "check.h"
#include "models/model.h"
#include "models/safetensors.h"

#define E 16
#define NH 4
#define NKV 2
#define HD 4
#define NI 24
#define NL 3
#define NPOS 32
#define NT 12 /* tensors per layer (with the q/k/v biases) */

static char dir[64];

static const char *const suffix[NT] = {"input_layernorm.weight",  "post_attention_layernorm.weight",
                                       "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                       "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                       "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                       "mlp.down_proj.weight",    "self_attn.q_proj.bias",
                                       "self_attn.k_proj.bias",   "self_attn.v_proj.bias"};
static const int64_t tshape[NT][2] = {{E, 0},        {E, 0},       {NH * HD, E},  {NKV * HD, E},
                                      {NKV * HD, E}, {E, NH *HD},  {NI, E},       {NI, E},
                                      {E, NI},       {NH * HD, 0}, {NKV * HD, 0}, {NKV * HD, 0}};
static const int tndim[NT] = {1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1};

static float W[NL][NT][E * NI];

/* gemma3_text's extra norms per layer (the MLP's input norm is suffix[1]'s data under
 * pre_feedforward_layernorm; post_attention_layernorm normalizes the attention output). */
#define NG 4
static const char *const gsuffix[NG] = {"pre_feedforward_layernorm.weight",
                                        "post_feedforward_layernorm.weight",
                                        "self_attn.q_norm.weight", "self_attn.k_norm.weight"};
static const int64_t gshape[NG][1] = {{E}, {E}, {HD}, {HD}};
static float GW[NL][NG][E];

static uint64_t rng_state = 777;
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
        if (k < 2)
          W[l][k][j] = 1.0f + 0.2f * r;
        else if (tndim[k] == 1)
          W[l][k][j] = 0.1f * r;
        else
          W[l][k][j] = r * 1.2f / sqrtf((float)tshape[k][1]);
      }
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < NG; k++)
      for (int j = 0; j < E; j++) GW[l][k][j] = 0.3f * frand(); /* (1 + w) norms */
}

/* nt: NT (with q/k/v biases) or NT - 3 (without); gemma: gemma3's extra norms too. */
static void write_ckpt(const char *path, int nt, int gemma) {
  enum { MAXT = NL * (NT + NG) };
  const char *names[MAXT];
  char namebuf[MAXT][96];
  const int64_t *shapes[MAXT];
  int ndims[MAXT];
  const float *data[MAXT];
  char err[300];
  size_t n = 0;
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < nt; k++) {
      snprintf(namebuf[n], sizeof namebuf[n], "model.layers.%d.%s", l, suffix[k]);
      names[n] = namebuf[n];
      shapes[n] = tshape[k];
      ndims[n] = tndim[k];
      data[n] = W[l][k];
      n++;
    }
  for (int l = 0; gemma && l < NL; l++)
    for (int k = 0; k < NG; k++) {
      snprintf(namebuf[n], sizeof namebuf[n], "model.layers.%d.%s", l, gsuffix[k]);
      names[n] = namebuf[n];
      shapes[n] = gshape[k];
      ndims[n] = 1;
      data[n] = GW[l][k];
      n++;
    }
  CHECK_EQ_INT(ss_st_write_f32(path, n, names, shapes, ndims, data, err, sizeof err), 0);
}

static void write_config(const char *path, const char *type, const char *extra) {
  FILE *fp = fopen(path, "w");
  fprintf(fp,
          "{\"model_type\": \"%s\", \"hidden_size\": %d, \"num_attention_heads\": %d, "
          "\"num_key_value_heads\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
          "\"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0%s}\n",
          type, E, NH, NKV, NI, NL, NPOS, extra ? extra : "");
  fclose(fp);
}

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

static char wq[128], cq[128], wm[128], cm[128], wg[128], cg[128];

/* A session's cache in place (ss_kv_io.cache) == the prefill y of x [2, 9, E]: a prefill of 3
 * tokens, then one at a time, alone and as batched steps (forward_kv_batch, one sequence per
 * batch row) from a cache whose capacity is exactly full (it must grow, keeping its past); a
 * cancelled step leaves the length as it was. */
static void check_in_place(ss_model *m, const float *x, const float *y) {
  enum { B = 2, S = 9, P0 = 3 };
  const int L = m->n_kv_layers;
  ss_kv_layer *cache = calloc((size_t)L, sizeof *cache);
  ss_kv_layer *one[B] = {calloc((size_t)L, sizeof *cache), calloc((size_t)L, sizeof *cache)};
  float xp[B * P0 * E], out[B * P0 * E], worst = 0;
  atomic_int cancel = 1;
  ss_meta cm_ = {NULL, NULL, 0, &cancel};
  char err[300];
  for (int b = 0; b < B; b++) memcpy(xp + b * P0 * E, x + b * S * E, P0 * E * sizeof(float));
  ss_kv_io kv = {L, NULL, 0, NULL, cache};
  CHECK_EQ_INT(run(m, xp, out, B, P0, &kv), 0);
  for (int b = 0; b < B; b++)
    worst = fmaxf(worst, max_abs_diff(out + b * P0 * E, y + b * S * E, P0 * E));
  CHECK_EQ_INT(ss_kv_len(&cache[L - 1]), P0);
  CHECK(cache[0].cap >= P0 && cache[0].key.nbytes == (size_t)B * NKV * cache[0].cap * HD * 4);
  { /* cancelled: nothing kept */
    ss_tensor in = tensor3(xp, B, 1, E), o = tensor3(out, B, 1, E);
    CHECK_EQ_INT(m->ops->forward_kv(m, &in, &o, &kv, &cm_, err, sizeof err), SS_ECANCELLED);
    CHECK_EQ_INT(ss_kv_len(&cache[0]), P0);
  }
  for (int t = P0; t < S; t++) { /* batch 2 steps, in place */
    float st[B * E];
    for (int b = 0; b < B; b++) memcpy(st + b * E, x + (b * S + t) * E, E * sizeof(float));
    CHECK_EQ_INT(run(m, st, out, B, 1, &kv), 0);
    for (int b = 0; b < B; b++)
      worst = fmaxf(worst, max_abs_diff(out + b * E, y + (b * S + t) * E, E));
    CHECK_EQ_INT(ss_kv_len(&cache[0]), t + 1);
  }
  /* batched steps of two batch-1 sequences: dense caches of exactly P0 keys (cap == len) */
  for (int b = 0; b < B; b++) {
    ss_kv_layer *pr = calloc((size_t)L, sizeof *pr);
    ss_kv_io k1 = {L, NULL, 1, pr, NULL};
    CHECK_EQ_INT(run(m, (float *)x + b * S * E, out, 1, P0, &k1), 0);
    for (int l = 0; l < L; l++) one[b][l] = pr[l], one[b][l].cap = P0;
    free(pr);
  }
  for (int t = P0; t < S && m->ops->forward_kv_batch; t++) {
    ss_tensor in[B], o[B];
    ss_kv_io kb[B];
    float st[B * E];
    for (int b = 0; b < B; b++) {
      memcpy(st + b * E, x + (b * S + t) * E, E * sizeof(float));
      in[b] = tensor3(st + b * E, 1, 1, E);
      o[b] = tensor3(out + b * E, 1, 1, E);
      kb[b] = (ss_kv_io){L, NULL, 0, NULL, one[b]};
    }
    CHECK_EQ_INT(m->ops->forward_kv_batch(m, B, in, o, kb, err, sizeof err), 0);
    for (int b = 0; b < B; b++) {
      worst = fmaxf(worst, max_abs_diff(out + b * E, y + (b * S + t) * E, E));
      CHECK_EQ_INT(ss_kv_len(&one[b][L - 1]), t + 1);
      CHECK(one[b][0].cap >= t + 1 && one[b][0].cap >= 2 * P0);
    }
  }
  if (worst >= 1e-5f) fprintf(stderr, "in place vs prefill %g\n", (double)worst);
  CHECK(worst < 1e-5f);
  free_kv(cache, L);
  free(cache);
  for (int b = 0; b < B; b++) free_kv(one[b], L), free(one[b]);
}

/* prefill of S tokens == one token at a time with the cache; batch 2 == two batch-1 runs. */
static void check_decode_and_batch(const char *spec) {
  enum { B = 2, S = 9 };
  char err[600];
  ss_model *m = NULL;
  float x[B * S * E], y[B * S * E], y1[S * E], step[B * E], out[B * E];
  CHECK_EQ_INT(ss_model_create(spec, &m, err, sizeof err), 0);
  if (m == NULL) {
    fprintf(stderr, "%s\n", err);
    return;
  }
  for (size_t i = 0; i < B * S * E; i++) x[i] = frand();
  CHECK_EQ_INT(run(m, x, y, B, S, NULL), 0);
  for (int b = 0; b < B; b++) { /* batch 2 == two batch-1 */
    CHECK_EQ_INT(run(m, x + b * S * E, y1, 1, S, NULL), 0);
    CHECK(max_abs_diff(y1, y + b * S * E, S * E) < 1e-5f);
  }
  {
    int L = m->n_kv_layers;
    ss_kv_layer *past = NULL, *present = calloc((size_t)L, sizeof *present);
    float worst = 0;
    for (int t = 0; t < S; t++) {
      ss_kv_io kv = {L, past, 1, present, NULL};
      for (int b = 0; b < B; b++) memcpy(step + b * E, x + (b * S + t) * E, E * sizeof(float));
      if (run(m, step, out, B, 1, &kv) != 0) {
        CHECK(0);
        break;
      }
      for (int b = 0; b < B; b++) {
        float d = max_abs_diff(out + b * E, y + (b * S + t) * E, E);
        if (d > worst) worst = d;
      }
      CHECK_EQ_INT(present[0].key.shape[1], NKV);
      CHECK_EQ_INT(present[0].key.shape[2], t + 1);
      if (past != NULL) {
        free_kv(past, L);
        free(past);
      }
      past = present;
      present = calloc((size_t)L, sizeof *present);
    }
    if (worst >= 1e-5f) fprintf(stderr, "%s: decode vs prefill %g\n", spec, (double)worst);
    CHECK(worst < 1e-5f);
    if (past != NULL) {
      free_kv(past, L);
      free(past);
    }
    free(present);
  }
  check_in_place(m, x, y);
  ss_model_free(m);
}

static void test_decode(void) {
  char spec[600];
  snprintf(spec, sizeof spec, "q=llama,weights=%s,config=%s,layers=1:3", wq, cq);
  check_decode_and_batch(spec);
  snprintf(spec, sizeof spec, "m=llama,weights=%s,config=%s", wm, cm);
  check_decode_and_batch(spec);
  snprintf(spec, sizeof spec, "g=llama,weights=%s,config=%s", wg, cg);
  check_decode_and_batch(spec);
  /* LoRA with a nonzero B does not exist before training; a fresh adapter keeps the outputs */
  snprintf(spec, sizeof spec,
           "l=llama,weights=%s,config=%s,layers=1:3,lora_rank=2,lora_targets=q_proj,v_proj,"
           "down_proj,optimizer=adamw",
           wq, cq);
  check_decode_and_batch(spec);
}

/* Each family's block (qwen2 biases, mistral's window, gemma3's q/k norms, sandwich norms,
 * soft-capping, local rope; LoRA with dropout) on the cpu and reference backends. */
static void test_backends(void) {
  char spec[600];
  snprintf(spec, sizeof spec, "q=llama,weights=%s,config=%s,layers=1:3", wq, cq);
  check_backends(spec, E, 1e-4);
  snprintf(spec, sizeof spec, "m=llama,weights=%s,config=%s", wm, cm);
  check_backends(spec, E, 1e-4);
  snprintf(spec, sizeof spec, "g=llama,weights=%s,config=%s", wg, cg);
  check_backends(spec, E, 1e-4);
  snprintf(spec, sizeof spec,
           "l=llama,weights=%s,config=%s,lora_rank=2,lora_targets=q_proj,v_proj,down_proj,"
           "lora_dropout=0.3",
           wq, cq);
  check_backends(spec, E, 1e-4);
}

/* The training path (forward_train + backward) against central differences of forward. */
static void test_grad(const char *w, const char *c) {
  enum { B = 1, S = 5 };
  char spec[600], err[600];
  ss_model *m = NULL;
  float x[B * S * E], y[B * S * E], r[B * S * E], gin[B * S * E], yp[B * S * E], ym[B * S * E];
  void *saved = NULL;
  size_t sb;
  snprintf(spec, sizeof spec, "m=llama,weights=%s,config=%s", w, c);
  CHECK_EQ_INT(ss_model_create(spec, &m, err, sizeof err), 0);
  if (m == NULL) return;
  for (int i = 0; i < B * S * E; i++) x[i] = frand(), r[i] = frand();
  {
    ss_tensor in = tensor3(x, B, S, E), out = tensor3(y, B, S, E);
    ss_tensor go = tensor3(r, B, S, E), gi = tensor3(gin, B, S, E);
    CHECK_EQ_INT(m->ops->forward_train(m, &in, &out, NULL, &saved, &sb, err, sizeof err), 0);
    CHECK_EQ_INT(m->ops->backward(m, saved, &go, &gi, err, sizeof err), 0);
    m->ops->free_saved(m, saved);
  }
  {
    double worst = 0, scale = 0;
    for (int i = 0; i < B * S * E; i++) {
      double fp = 0, fm = 0, h = 1e-2, num;
      float keep = x[i];
      x[i] = keep + (float)h;
      run(m, x, yp, B, S, NULL);
      x[i] = keep - (float)h;
      run(m, x, ym, B, S, NULL);
      x[i] = keep;
      for (int j = 0; j < B * S * E; j++) fp += (double)yp[j] * r[j], fm += (double)ym[j] * r[j];
      num = (fp - fm) / (2 * h);
      if (fabs(num - gin[i]) > worst) worst = fabs(num - gin[i]);
      if (fabs(num) > scale) scale = fabs(num);
    }
    if (worst > 2e-2 * scale) fprintf(stderr, "grad %s: %g vs scale %g\n", c, worst, scale);
    CHECK(worst <= 2e-2 * scale);
  }
  ss_model_free(m);
}

static void test_checks(void) {
  char spec[600], err[600];
  ss_model *m = NULL;
  float x[2 * 3 * E] = {0}, kv[2 * NKV * 3 * HD] = {0};
  int64_t os[8];
  int ond;
  snprintf(spec, sizeof spec, "q=llama,weights=%s,config=%s,layers=1:3", wq, cq);
  CHECK_EQ_INT(ss_model_create(spec, &m, err, sizeof err), 0);
  if (m == NULL) return;
  CHECK_EQ_INT(m->n_kv_layers, 2);
  CHECK_CONTAINS(m->describe, "llama (qwen2) layers 1:3 of 3 (hidden 16, 4/2 heads)");
  {
    ss_tensor in = tensor3(x, 1, 3, 8);
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "expects hidden size 16, got 8");
    in = tensor3(x, 1, NPOS + 1, E);
    CHECK_EQ_INT(m->ops->check(m, &in, NULL, os, &ond, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "seq 33 exceeds max_position_embeddings 32");
  }
  {
    ss_tensor in = tensor3(x, 2, 1, E);
    ss_kv_layer past[2];
    memset(past, 0, sizeof past);
    for (int l = 0; l < 2; l++)
      for (int f = 0; f < 2; f++) {
        ss_tensor *t = f ? &past[l].value : &past[l].key;
        t->dtype = SS_DTYPE_F32;
        t->ndim = 4;
        t->shape[0] = 2, t->shape[1] = NKV, t->shape[2] = 3, t->shape[3] = HD;
        t->numel = 2 * NKV * 3 * HD;
        t->nbytes = t->numel * 4;
        t->data = kv;
      }
    CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 2, err, sizeof err), 0);
    CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 1, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "expects 2 past_key_values entries (one per trunk layer 1:3), got 1");
    past[1].value.shape[1] = NH;
    CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 2, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err,
                   "past_key_values[1].value_shape (layer 2) is [2,4,3,4], expected [2,2,3,4]");
    past[1].value.shape[1] = NKV;
    past[0].key.shape[3] = 8;
    CHECK_EQ_INT(m->ops->check_kv(m, &in, past, 2, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "expected [2,2,past_len,4] ([batch, num_key_value_heads");
  }
  ss_model_free(m);
  /* refusals */
  snprintf(spec, sizeof spec, "q=llama,weights=%s,config=%s,lora_rank=2,lora_targets=q_proj,zz", wq,
           cq);
  CHECK(ss_model_create(spec, &m, err, sizeof err) < 0);
  CHECK_CONTAINS(err, "unknown module 'zz'");
  snprintf(spec, sizeof spec, "q=llama,weights=%s,config=%s", wm, cq); /* no q/k/v biases */
  CHECK(ss_model_create(spec, &m, err, sizeof err) < 0);
  CHECK_CONTAINS(err, "missing: model.layers.0.self_attn.q_proj.bias");
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/ss-llama-XXXXXX");
  if (mkdtemp(dir) == NULL) return 1;
  make_weights();
  snprintf(wq, sizeof wq, "%s/q.safetensors", dir);
  snprintf(cq, sizeof cq, "%s/q.json", dir);
  snprintf(wm, sizeof wm, "%s/m.safetensors", dir);
  snprintf(cm, sizeof cm, "%s/m.json", dir);
  snprintf(wg, sizeof wg, "%s/g.safetensors", dir);
  snprintf(cg, sizeof cg, "%s/g.json", dir);
  write_ckpt(wq, NT, 0);
  write_config(cq, "qwen2", NULL);
  write_ckpt(wm, NT - 3, 0);
  write_config(cm, "mistral", ", \"sliding_window\": 3");
  write_ckpt(wg, NT - 3, 1);
  write_config(cg, "gemma3_text",
               ", \"head_dim\": 4, \"sliding_window\": 3, \"sliding_window_pattern\": 2, "
               "\"rope_local_base_freq\": 100.0, \"query_pre_attn_scalar\": 2, "
               "\"attn_logit_softcapping\": 1.0");
  test_decode();
  test_backends();
  test_grad(wm, cm);
  test_grad(wg, cg);
  test_checks();
  unlink(wq);
  unlink(cq);
  unlink(wm);
  unlink(cm);
  unlink(wg);
  unlink(cg);
  rmdir(dir);
  TEST_MAIN_END();
}
