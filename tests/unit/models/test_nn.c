/*
 * test_nn.c — the op library in src/models/nn/: every op's backward against central finite
 * differences of its forward (loss = sum(out * R) for a random R, so dL/dout = R): linear (both
 * weight layouts), layernorm, rmsnorm (w and 1 + w), gelu (tanh and erf), relu, silu, attention
 * with grouped heads, rope; rmsnorm, silu and rope against values computed by hand; attention with
 * grouped heads against the same attention with the kv heads repeated; attention with a past (KV
 * cache) against one call over the whole sequence. Single-threaded.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/nn/attention.h"
#include "models/nn/gelu.h"
#include "models/nn/layernorm.h"
#include "models/nn/linear.h"
#include "models/nn/relu.h"
#include "models/nn/rmsnorm.h"
#include "models/nn/rope.h"
#include "models/nn/silu.h"

static unsigned rs = 7;
static float frand(void) { /* uniform in [-1, 1) */
  rs = rs * 1103515245u + 12345u;
  return (float)((rs >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *rnd(size_t n) {
  float *a = malloc(n * sizeof *a);
  for (size_t i = 0; i < n; i++) a[i] = frand();
  return a;
}

static double dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

/* ------------------------------------------------------------ finite differences ---- */

typedef double (*loss_fn)(void *ctx);

/* Compare grad [n] with central differences of f with respect to param [n]. */
static void check_grad(const char *what, float *param, const float *grad, size_t n, loss_fn f,
                       void *ctx) {
  const float h = 1e-2f;
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    float v = param[i];
    double lp, lm, num, e;
    param[i] = v + h;
    lp = f(ctx);
    param[i] = v - h;
    lm = f(ctx);
    param[i] = v;
    num = (lp - lm) / (2.0 * (double)h);
    e = fabs(num - (double)grad[i]) / (1.0 + fabs(num));
    if (e > worst) worst = e;
  }
  if (worst > 5e-3) fprintf(stderr, "  %s: worst gradient error %.3g\n", what, worst);
  CHECK(worst <= 5e-3);
}

/* ------------------------------------------------------------ linear ---- */

typedef struct lin_ctx {
  float *x, *W, *b, *y, *R;
  int BT, C, OC;
  ss_w_layout lay;
} lin_ctx;

static double lin_loss(void *c_) {
  lin_ctx *c = c_;
  ss_linear_forward(NULL, c->y, c->x, c->W, c->b, c->BT, c->C, c->OC, c->lay, 0);
  return dot(c->y, c->R, (size_t)(c->BT * c->OC));
}

static void test_linear(ss_w_layout lay, int BT) {
  lin_ctx c = {NULL, NULL, NULL, NULL, NULL, BT, 7, 5, lay};
  size_t nx = (size_t)(BT * c.C), nw = (size_t)(c.C * c.OC), ny = (size_t)(BT * c.OC);
  float *dx, *dW, *db;
  c.x = rnd(nx), c.W = rnd(nw), c.b = rnd((size_t)c.OC), c.y = rnd(ny), c.R = rnd(ny);
  dx = rnd(nx), dW = calloc(nw, sizeof *dW), db = calloc((size_t)c.OC, sizeof *db);
  ss_linear_backward(dx, dW, db, c.R, c.x, c.W, BT, c.C, c.OC, lay);
  check_grad("linear dx", c.x, dx, nx, lin_loss, &c);
  check_grad("linear dW", c.W, dW, nw, lin_loss, &c);
  check_grad("linear db", c.b, db, (size_t)c.OC, lin_loss, &c);
  free(c.x), free(c.W), free(c.b), free(c.y), free(c.R), free(dx), free(dW), free(db);
}

/* ------------------------------------------------------------ norms ---- */

typedef struct norm_ctx {
  float *x, *w, *b, *y, *R, *mean, *rstd;
  int BT, C, rms, one_plus;
} norm_ctx;

static double norm_loss(void *c_) {
  norm_ctx *c = c_;
  if (c->rms)
    ss_rmsnorm_forward(c->y, c->rstd, c->x, c->w, c->BT, c->C, 1e-5f, c->one_plus);
  else
    ss_layernorm_forward(c->y, c->mean, c->rstd, c->x, c->w, c->b, c->BT, c->C, 1e-5f);
  return dot(c->y, c->R, (size_t)(c->BT * c->C));
}

static void test_norm(int rms, int one_plus) {
  norm_ctx c = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, 3, 11, rms, one_plus};
  size_t n = (size_t)(c.BT * c.C), C = (size_t)c.C;
  float *dx = calloc(n, sizeof *dx), *dw = calloc(C, sizeof *dw), *db = calloc(C, sizeof *db);
  c.x = rnd(n), c.w = rnd(C), c.b = rnd(C), c.y = rnd(n), c.R = rnd(n);
  c.mean = rnd((size_t)c.BT), c.rstd = rnd((size_t)c.BT);
  norm_loss(&c); /* statistics */
  if (rms)
    ss_rmsnorm_backward(dx, dw, c.R, c.x, c.w, c.rstd, c.BT, c.C, one_plus);
  else
    ss_layernorm_backward(dx, dw, db, c.R, c.x, c.w, c.mean, c.rstd, c.BT, c.C);
  check_grad(rms ? "rmsnorm dx" : "layernorm dx", c.x, dx, n, norm_loss, &c);
  check_grad(rms ? "rmsnorm dw" : "layernorm dw", c.w, dw, C, norm_loss, &c);
  if (!rms) check_grad("layernorm db", c.b, db, C, norm_loss, &c);
  free(c.x), free(c.w), free(c.b), free(c.y), free(c.R), free(c.mean), free(c.rstd);
  free(dx), free(dw), free(db);
}

static void test_rmsnorm_by_hand(void) {
  /* x = [1, 2, 3, 4]: mean(x^2) = 7.5, rstd = 1/sqrt(7.5) = 0.36514837 (eps 0) */
  const float x[4] = {1, 2, 3, 4}, w[4] = {1, 0.5f, 2, -1};
  const float want[4] = {0.36514837f, 0.36514837f, 2.19089023f, -1.46059349f};
  const float want1p[4] = {0.73029674f, 1.09544512f, 3.28633535f, 0.0f}; /* (1 + w) */
  float y[4], r;
  ss_rmsnorm_forward(y, &r, x, w, 1, 4, 0.0f, 0);
  CHECK(fabsf(r - 0.36514837f) < 1e-6f);
  for (int i = 0; i < 4; i++) CHECK(fabsf(y[i] - want[i]) < 1e-6f);
  ss_rmsnorm_forward(y, NULL, x, w, 1, 4, 0.0f, 1);
  for (int i = 0; i < 4; i++) CHECK(fabsf(y[i] - want1p[i]) < 1e-6f);
}

/* ------------------------------------------------------------ activations ---- */

typedef struct act_ctx {
  float *x, *y, *R;
  size_t n;
  void (*fwd)(float *, const float *, size_t);
} act_ctx;

static double act_loss(void *c_) {
  act_ctx *c = c_;
  c->fwd(c->y, c->x, c->n);
  return dot(c->y, c->R, c->n);
}

static void test_act(const char *what, void (*fwd)(float *, const float *, size_t),
                     void (*bwd)(float *, const float *, size_t)) {
  act_ctx c = {NULL, NULL, NULL, 40, fwd};
  float *d;
  c.x = rnd(c.n), c.y = rnd(c.n), c.R = rnd(c.n);
  for (size_t i = 0; i < c.n; i++) {
    c.x[i] *= 4.0f;
    if (fabsf(c.x[i]) < 0.05f) c.x[i] = 0.5f; /* keep relu's kink out of reach of h */
  }
  d = malloc(c.n * sizeof *d);
  memcpy(d, c.R, c.n * sizeof *d);
  bwd(d, c.x, c.n);
  check_grad(what, c.x, d, c.n, act_loss, &c);
  free(c.x), free(c.y), free(c.R), free(d);
}

static void test_silu_by_hand(void) {
  const float x[4] = {0.0f, 1.0f, -2.0f, 5.0f};
  /* x / (1 + e^-x) */
  const float want[4] = {0.0f, 0.73105858f, -0.23840584f, 4.96653575f};
  float y[4], d[4] = {1, 1, 1, 1};
  ss_silu_forward(y, x, 4);
  for (int i = 0; i < 4; i++) CHECK(fabsf(y[i] - want[i]) < 1e-6f * (1.0f + fabsf(want[i])));
  ss_silu_backward(d, x, 4); /* silu'(0) = 0.5, silu'(1) = s (1 + 1 - s) with s = 0.7310586 */
  CHECK(fabsf(d[0] - 0.5f) < 1e-6f);
  CHECK(fabsf(d[1] - 0.92767051f) < 1e-6f);
}

/* ------------------------------------------------------------ attention ---- */

enum { AB = 2, AT = 5, ANH = 4, AHS = 3 };

typedef struct att_ctx {
  float *q, *k, *v, *out, *att, *K, *V, *R;
  ss_attn_dims d;
  int window;
  float softcap;
} att_ctx;

static double att_loss(void *c_) {
  att_ctx *c = c_;
  ss_attention_forward_cap(c->out, ANH * AHS, c->att, 1, c->K, c->V, c->q, ANH * AHS, c->k, c->v,
                           c->d.NKV * AHS, NULL, NULL, &c->d, c->window, c->softcap);
  return dot(c->out, c->R, (size_t)(AB * AT * ANH * AHS));
}

/* window, softcap: Mistral/Gemma 2's sliding window and Gemma 2's logit soft-capping (0: none;
 * a cap of 0.5 on scores of the order of 1 bends most of them). */
static void test_attention_grad_ext(int nkv, int window, float softcap) {
  att_ctx c;
  size_t nq = (size_t)(AB * AT * ANH * AHS), nk = (size_t)(AB * AT * nkv * AHS);
  float *dq, *dk, *dv, *scratch = malloc((size_t)(2 * AT * AT) * sizeof(float));
  c.d = (ss_attn_dims){AB, AT, 0, ANH, nkv, AHS, 0.577f, 0};
  c.window = window, c.softcap = softcap;
  c.q = rnd(nq), c.k = rnd(nk), c.v = rnd(nk), c.out = rnd(nq), c.R = rnd(nq);
  c.att = rnd((size_t)(AB * ANH * AT * AT)), c.K = rnd(nk), c.V = rnd(nk);
  dq = rnd(nq), dk = rnd(nk), dv = rnd(nk); /* garbage: backward overwrites */
  att_loss(&c);
  ss_attention_backward_cap(dq, dk, dv, scratch, c.R, ANH * AHS, c.att, c.q, ANH * AHS, c.k, c.v,
                            nkv * AHS, &c.d, softcap);
  check_grad("attention dq", c.q, dq, nq, att_loss, &c);
  check_grad("attention dk", c.k, dk, nk, att_loss, &c);
  check_grad("attention dv", c.v, dv, nk, att_loss, &c);
  free(c.q), free(c.k), free(c.v), free(c.out), free(c.R), free(c.att), free(c.K), free(c.V);
  free(dq), free(dk), free(dv), free(scratch);
}

static void test_attention_grad(int nkv) { test_attention_grad_ext(nkv, 0, 0.0f); }

static int near(const float *a, const float *b, size_t n, float tol) {
  for (size_t i = 0; i < n; i++)
    if (fabsf(a[i] - b[i]) > tol) {
      fprintf(stderr, "  at %zu: %g vs %g\n", i, (double)a[i], (double)b[i]);
      return 0;
    }
  return 1;
}

/* Grouped heads (2 kv heads for 4 query heads) == every query head with its own copy. */
static void test_attention_gqa(void) {
  const int G = 2, T = 6;
  size_t nq = (size_t)(AB * T * ANH * AHS), nk = (size_t)(AB * T * G * AHS);
  float *q = rnd(nq), *k = rnd(nk), *v = rnd(nk), *k4 = rnd(nq), *v4 = rnd(nq);
  float *o = rnd(nq), *o4 = rnd(nq), *att = rnd(ss_attn_scratch(AHS));
  float *K = rnd(nq), *V = rnd(nq);
  ss_attn_dims dg = {AB, T, 0, ANH, G, AHS, 0.5f, 0}, dr = {AB, T, 0, ANH, ANH, AHS, 0.5f, 0};
  for (int r = 0; r < AB * T; r++)
    for (int h = 0; h < ANH; h++)
      for (int j = 0; j < AHS; j++) {
        k4[(r * ANH + h) * AHS + j] = k[(r * G + h / (ANH / G)) * AHS + j];
        v4[(r * ANH + h) * AHS + j] = v[(r * G + h / (ANH / G)) * AHS + j];
      }
  ss_attention_forward(o, ANH * AHS, att, 0, K, V, q, ANH * AHS, k, v, G * AHS, NULL, NULL, &dg);
  ss_attention_forward(o4, ANH * AHS, att, 0, K, V, q, ANH * AHS, k4, v4, ANH * AHS, NULL, NULL,
                       &dr);
  CHECK(near(o, o4, nq, 1e-6f));
  free(q), free(k), free(v), free(k4), free(v4), free(o), free(o4), free(att), free(K), free(V);
}

/* The last 2 of 7 tokens with the first 5 as past == all 7 in one call (rows 5, 6), and the
 * present window == the full call's K, V. Grouped heads (NKV 2), fused qkv rows. */
static void test_attention_past(void) {
  enum { T = 7, P = 5, G = 2, W = (ANH + 2 * G) * AHS };
  size_t nqkv = (size_t)(AB * T * W), no = (size_t)(AB * T * ANH * AHS);
  size_t nkv = (size_t)(AB * G * T * AHS);
  float *qkv = rnd(nqkv), *o = rnd(no), *att = rnd(ss_attn_scratch(AHS)), *K = rnd(nkv);
  float *V = rnd(nkv);
  float *qkv2 = rnd(nqkv), *o2 = rnd(no), *Kp = rnd(nkv), *Vp = rnd(nkv), *K2 = rnd(nkv),
        *V2 = rnd(nkv);
  ss_attn_dims full = {AB, T, 0, ANH, G, AHS, 0.6f, 0}, first = {AB, P, 0, ANH, G, AHS, 0.6f, 0};
  ss_attn_dims rest = {AB, T - P, P, ANH, G, AHS, 0.6f, 0};
  int ok = 1;
  const float *qp = qkv, *kp = qkv + ANH * AHS, *vp = kp + G * AHS;
  ss_attention_forward(o, ANH * AHS, att, 0, K, V, qp, W, kp, vp, W, NULL, NULL, &full);
  /* the first P tokens of each batch, packed [B, P, W] */
  for (int b = 0; b < AB; b++) {
    memcpy(qkv2 + (size_t)(b * P * W), qkv + (size_t)(b * T * W), (size_t)(P * W) * sizeof(float));
    memcpy(qkv2 + (size_t)(AB * P * W + b * (T - P) * W), qkv + (size_t)((b * T + P) * W),
           (size_t)((T - P) * W) * sizeof(float));
  }
  ss_attention_forward(o2, ANH * AHS, att, 0, Kp, Vp, qkv2, W, qkv2 + ANH * AHS,
                       qkv2 + (ANH + G) * AHS, W, NULL, NULL, &first);
  {
    const float *q2 = qkv2 + (size_t)(AB * P * W);
    ss_attention_forward(o2, ANH * AHS, att, 0, K2, V2, q2, W, q2 + ANH * AHS, q2 + (ANH + G) * AHS,
                         W, Kp, Vp, &rest);
  }
  for (int b = 0; b < AB; b++)
    ok &= near(o + (size_t)((b * T + P) * ANH * AHS), o2 + (size_t)(b * (T - P) * ANH * AHS),
               (size_t)((T - P) * ANH * AHS), 1e-5f);
  ok &= near(K, K2, nkv, 0.0f) && near(V, V2, nkv, 0.0f);
  CHECK(ok);
  free(qkv), free(o), free(att), free(K), free(V), free(qkv2), free(o2), free(Kp), free(Vp);
  free(K2), free(V2);
}

/* ------------------------------------------------------------ rope ---- */

typedef struct rope_ctx {
  float *x, *y, *R;
} rope_ctx;

enum { RB = 2, RT = 3, RNH = 2, RHS = 6, RLD = RNH * RHS + 1 };

static double rope_loss(void *c_) {
  rope_ctx *c = c_;
  memcpy(c->y, c->x, (size_t)(RB * RT * RLD) * sizeof(float));
  ss_rope_forward(c->y, RLD, RB, RT, RNH, RHS, 4, 100.0f);
  return dot(c->y, c->R, (size_t)(RB * RT * RLD));
}

static void test_rope(void) {
  size_t n = (size_t)(RB * RT * RLD);
  rope_ctx c = {rnd(n), rnd(n), rnd(n)};
  float *d = malloc(n * sizeof *d), v[4] = {1, 2, 0, 0};
  for (int r = 0; r < RB * RT; r++) c.R[r * RLD + RLD - 1] = 0.0f; /* the padding column */
  memcpy(d, c.R, n * sizeof *d);
  ss_rope_backward(d, RLD, RB, RT, RNH, RHS, 4, 100.0f);
  check_grad("rope", c.x, d, n, rope_loss, &c);
  /* by hand: HS 4, position 1, base 100: theta = 1, 0.1; (x0, x2) turns by 1 rad, (x1, x3) by 0.1
   */
  ss_rope_forward(v, 4, 1, 1, 1, 4, 1, 100.0f);
  CHECK(fabsf(v[0] - 0.54030231f) < 1e-6f && fabsf(v[2] - 0.84147098f) < 1e-6f);
  CHECK(fabsf(v[1] - 1.99000833f) < 1e-6f && fabsf(v[3] - 0.19966683f) < 1e-6f);
  free(c.x), free(c.y), free(c.R), free(d);
}

int main(void) {
  test_linear(SS_W_OUT_IN, 3);
  test_linear(SS_W_IN_OUT, 3);
  test_linear(SS_W_OUT_IN, 9); /* past the few-row threshold: sgemm */
  test_linear(SS_W_IN_OUT, 9);
  test_norm(0, 0);
  test_norm(1, 0);
  test_norm(1, 1);
  test_rmsnorm_by_hand();
  test_act("gelu_tanh", ss_gelu_tanh_forward, ss_gelu_tanh_backward);
  test_act("gelu_erf", ss_gelu_erf_forward, ss_gelu_erf_backward);
  test_act("relu", ss_relu_forward, ss_relu_backward);
  test_act("silu", ss_silu_forward, ss_silu_backward);
  test_silu_by_hand();
  test_attention_grad(ANH);
  test_attention_grad(2);
  test_attention_grad(1);
  test_attention_grad_ext(2, 3, 0.5f); /* Gemma 2: sliding window and soft-capping */
  test_attention_grad_ext(ANH, 0, 1.0f);
  test_attention_gqa();
  test_attention_past();
  test_rope();
  TEST_MAIN_END();
}
