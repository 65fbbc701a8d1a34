/*
 * test_backends.c — the backend seam (src/models/nn/backend/): every op of the table run through
 * the cpu backend and the reference backend (plain loops accumulating in double) on the same
 * random inputs, forward and backward, and compared: max |cpu - ref| / (1 + |ref|) within a
 * tolerance per op (float rounding of the cpu kernels: oneDNN, the few-row kernels, vectorized
 * exp and GELU). Shapes hit both the few-row kernels (M <= 8) and oneDNN, both weight layouts,
 * strided rows, grouped heads, a KV-cache past (copied, or a session's in place), a sliding
 * window and soft-capping, short and long (key tiles, query blocks); the long attention cases
 * also on a team of 1 and 3 threads (heads split over it), bit for bit as on the default team.
 * Prints each op's measured difference. Also: allocation is aligned; ss_backend_find.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/nn/backend/backend.h"
#include "models/nn/rope.h"

static const ss_backend *cpu = &ss_backend_cpu, *ref = &ss_backend_reference;

static unsigned rs = 11;
static float frand(void) { /* uniform in [-1, 1) */
  rs = rs * 1103515245u + 12345u;
  return (float)((rs >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *rnd(size_t n, float scale) {
  float *a = malloc((n > 0 ? n : 1) * sizeof *a);
  for (size_t i = 0; i < n; i++) a[i] = scale * frand();
  return a;
}

static float *dup(const float *a, size_t n) {
  float *b = malloc((n > 0 ? n : 1) * sizeof *b);
  memcpy(b, a, n * sizeof *b);
  return b;
}

static double worst_all;

/* Compare got (cpu) with want (reference) over n floats; print and check against tol. */
static void cmp(const char *what, const float *got, const float *want, size_t n, double tol) {
  double worst = 0.0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - (double)want[i]) / (1.0 + fabs((double)want[i]));
    if (!(e <= worst)) worst = e; /* NaN counts as worst */
  }
  printf("  %-40s max rel diff %.2e\n", what, worst);
  if (worst > worst_all) worst_all = worst;
  if (!(worst <= tol)) fprintf(stderr, "%s: %.3e > %.1e\n", what, worst, tol);
  CHECK(worst <= tol);
}

static void test_alloc(void) {
  const ss_backend *bs[2] = {cpu, ref};
  for (int i = 0; i < 2; i++) {
    unsigned char *p = bs[i]->alloc(1000), *z = bs[i]->alloc(0);
    CHECK(p != NULL && ((uintptr_t)p & 63) == 0);
    CHECK(z != NULL && z != p);
    if (p != NULL) memset(p, 1, 1000); /* all of it is ours */
    bs[i]->release(p);
    bs[i]->release(z);
    bs[i]->release(NULL);
  }
  CHECK(ss_backend_find("cpu") == cpu);
  CHECK(ss_backend_find("reference") == ref);
  CHECK(ss_backend_find("cuda") == NULL);
  ss_compute cc = {SS_MM_F32, NULL, NULL};
  CHECK(ss_backend_of(NULL) == cpu && ss_backend_of(&cc) == cpu);
  cc.be = ref;
  CHECK(ss_backend_of(&cc) == ref);
}

static void test_matmul(void) {
  const int Ms[] = {1, 3, 8, 33}, N = 17, K = 29;
  for (int im = 0; im < 4; im++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (int bi = 0; bi < 2; bi++) {
          const int M = Ms[im], lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
          const float alpha = bi ? 0.5f : 1.0f, beta = bi ? 1.0f : 0.0f;
          float *A = rnd((size_t)(ta ? K : M) * (size_t)lda, 1.0f);
          float *B = rnd((size_t)(tb ? N : K) * (size_t)ldb, 1.0f);
          float *C1 = rnd((size_t)M * (size_t)ldc, 1.0f), *C2 = dup(C1, (size_t)M * (size_t)ldc);
          char what[64];
          cpu->matmul((ss_mm_trans)ta, (ss_mm_trans)tb, M, N, K, alpha, A, lda, B, ldb, beta, C1,
                      ldc);
          ref->matmul((ss_mm_trans)ta, (ss_mm_trans)tb, M, N, K, alpha, A, lda, B, ldb, beta, C2,
                      ldc);
          snprintf(what, sizeof what, "matmul M %d %c%c alpha %.1f beta %.0f", M, ta ? 'T' : 'N',
                   tb ? 'T' : 'N', (double)alpha, (double)beta);
          cmp(what, C1, C2, (size_t)M * (size_t)ldc, 1e-5);
          free(A), free(B), free(C1), free(C2);
        }
}

static void test_linear(void) {
  const int BTs[] = {1, 5, 40}, C = 23, OC = 19;
  static int owner; /* f32 weights packed (brgemm CPUs), dropped before they are freed */
  ss_compute cc = {SS_MM_F32, &owner, NULL}, rc = {SS_MM_F32, NULL, ref};
  for (int ib = 0; ib < 3; ib++)
    for (int lay = 0; lay < 2; lay++)
      for (int acc = 0; acc < 2; acc++) {
        const int BT = BTs[ib];
        const size_t ny = (size_t)BT * (size_t)OC, nx = (size_t)BT * (size_t)C;
        const size_t nw = (size_t)C * (size_t)OC;
        float *x = rnd(nx, 1.0f), *W = rnd(nw, 1.0f), *b = acc ? NULL : rnd((size_t)OC, 1.0f);
        float *y1 = rnd(ny, 1.0f), *y2 = dup(y1, ny), *dy = rnd(ny, 1.0f);
        float *dx1 = rnd(nx, 1.0f), *dx2 = dup(dx1, nx), *dW1 = rnd(nw, 1.0f), *dW2 = dup(dW1, nw);
        float *db1 = rnd((size_t)OC, 1.0f), *db2 = dup(db1, (size_t)OC);
        char what[64];
        ss_op_linear_forward(&cc, y1, x, W, b, BT, C, OC, (ss_w_layout)lay, acc);
        ss_op_linear_forward(&rc, y2, x, W, b, BT, C, OC, (ss_w_layout)lay, acc);
        snprintf(what, sizeof what, "linear fwd BT %d %s%s%s", BT, lay ? "in_out" : "out_in",
                 b ? " bias" : "", acc ? " +=" : "");
        cmp(what, y1, y2, ny, 1e-5);
        ss_op_linear_backward(&cc, dx1, dW1, db1, dy, x, W, BT, C, OC, (ss_w_layout)lay);
        ss_op_linear_backward(&rc, dx2, dW2, db2, dy, x, W, BT, C, OC, (ss_w_layout)lay);
        snprintf(what, sizeof what, "linear bwd BT %d %s dx", BT, lay ? "in_out" : "out_in");
        cmp(what, dx1, dx2, nx, 1e-5);
        snprintf(what, sizeof what, "linear bwd BT %d %s dW, db", BT, lay ? "in_out" : "out_in");
        cmp(what, dW1, dW2, nw, 1e-5);
        cmp(what, db1, db2, (size_t)OC, 1e-5);
        /* the weight product alone, W as stored (tb N: [K, N]; T: [N, K]) */
        cpu->matmul_w(&cc, lay ? SS_MM_N : SS_MM_T, BT, OC, C, x, C, W, lay ? OC : C, 0.0f, y1, OC);
        ref->matmul_w(&rc, lay ? SS_MM_N : SS_MM_T, BT, OC, C, x, C, W, lay ? OC : C, 0.0f, y2, OC);
        snprintf(what, sizeof what, "matmul_w BT %d tb %c", BT, lay ? 'N' : 'T');
        cmp(what, y1, y2, ny, 1e-5);
        ss_matmul_weights_drop(&owner);
        free(x), free(W), free(b), free(y1), free(y2), free(dy), free(dx1), free(dx2);
        free(dW1), free(dW2), free(db1), free(db2);
      }
  {
    const int BT = 7, ldy = 12, n = 9;
    float *dy = rnd((size_t)BT * ldy, 1.0f), *d1 = rnd((size_t)n, 1.0f), *d2 = dup(d1, (size_t)n);
    cpu->bias_backward(d1, dy, ldy, BT, n);
    ref->bias_backward(d2, dy, ldy, BT, n);
    cmp("bias_backward", d1, d2, (size_t)n, 1e-6);
    free(dy), free(d1), free(d2);
  }
}

/* The unfused form of an epilogue on cc's backend: linear, then act, then * mul. */
static void unfused_ep(const ss_compute *cc, float *y, const float *x, const float *W,
                       const ss_mm_epilogue *ep, int BT, int C, int OC, ss_w_layout lay, int acc) {
  size_t n = (size_t)BT * (size_t)OC;
  ss_op_linear_forward(cc, y, x, W, ep->bias, BT, C, OC, lay, acc);
  if (ep->act == SS_ACT_GELU_TANH) ss_op_gelu_tanh_forward(cc, y, y, n);
  if (ep->act == SS_ACT_GELU_ERF) ss_op_gelu_erf_forward(cc, y, y, n);
  if (ep->act == SS_ACT_SILU) ss_op_silu_forward(cc, y, y, n);
  if (ep->mul) ss_op_mul(cc, y, y, ep->mul, n);
}

/* linear_forward_ep (bias, activation, multiplier fused into packed products) against the
 * reference backend (f32) and against the same dtype's unfused ops (f32 packed and not, bf16
 * where the CPU has it, int8: separate passes). */
static void test_linear_ep(void) {
  const int BTs[] = {1, 5, 40, 130}, C = 37, OC = 45;
  static int owner;
  char why[128];
  int bf16 = ss_matmul_bf16_check(why, sizeof why) == 0;
  for (int dt = 0; dt < 4; dt++) {
    if (dt == 2 && !bf16) continue;
    /* 0: f32 packed (brgemm CPUs), 1: f32 unpacked (no owner), 2: bf16, 3: int8 */
    ss_compute cc = {dt == 2   ? SS_MM_BF16
                     : dt == 3 ? SS_MM_INT8
                               : SS_MM_F32,
                     dt == 1 ? NULL : &owner, NULL};
    ss_compute rc = {SS_MM_F32, NULL, ref};
    for (int ib = 0; ib < 4; ib++)
      for (int lay = 0; lay < 2; lay++)
        for (int v = 0; v < 10; v++) { /* act 0..3 x mul, bias; then accumulate with a bias */
          const int BT = BTs[ib], acc = v >= 8;
          const size_t ny = (size_t)BT * (size_t)OC, nx = (size_t)BT * (size_t)C;
          float *x = rnd(nx, 1.0f), *W = rnd((size_t)C * (size_t)OC, 0.3f);
          float *b = rnd((size_t)OC, 1.0f), *m = rnd(ny, 1.0f);
          float *y1 = rnd(ny, 1.0f), *y2 = dup(y1, ny), *y3 = dup(y1, ny);
          ss_mm_epilogue ep = {v % 2 || acc ? b : NULL, acc ? SS_ACT_NONE : (ss_mm_act)(v / 2 % 4),
                               !acc && v >= 4 ? m : NULL, OC};
          char what[80];
          ss_op_linear_forward_ep(&cc, y1, x, W, &ep, BT, C, OC, (ss_w_layout)lay, acc);
          unfused_ep(&cc, y3, x, W, &ep, BT, C, OC, (ss_w_layout)lay, acc);
          snprintf(what, sizeof what, "linear_ep %s BT %d %s act %d%s%s%s",
                   dt == 0   ? "f32"
                   : dt == 1 ? "f32 unpacked"
                   : dt == 2 ? "bf16"
                             : "int8",
                   BT, lay ? "in_out" : "out_in", (int)ep.act, ep.bias ? " bias" : "",
                   ep.mul ? " mul" : "", acc ? " +=" : "");
          cmp(what, y1, y3, ny, 1e-5);
          if (dt < 2) {
            ss_op_linear_forward_ep(&rc, y2, x, W, &ep, BT, C, OC, (ss_w_layout)lay, acc);
            cmp(what, y1, y2, ny, 1e-5);
          }
          ss_matmul_weights_drop(&owner);
          free(x), free(W), free(b), free(m), free(y1), free(y2), free(y3);
        }
  }
}

static void test_norms(void) {
  const int BT = 37, C = 48;
  const size_t n = (size_t)BT * (size_t)C;
  float *x = rnd(n, 2.0f), *w = rnd((size_t)C, 1.0f), *b = rnd((size_t)C, 1.0f);
  float *o1 = rnd(n, 1.0f), *o2 = rnd(n, 1.0f), *m1 = rnd((size_t)BT, 1.0f);
  float *m2 = rnd((size_t)BT, 1.0f), *r1 = rnd((size_t)BT, 1.0f), *r2 = rnd((size_t)BT, 1.0f);
  float *dout = rnd(n, 1.0f), *dx1 = rnd(n, 1.0f), *dx2 = dup(dx1, n);
  float *dw1 = rnd((size_t)C, 1.0f), *dw2 = dup(dw1, (size_t)C), *db1 = rnd((size_t)C, 1.0f);
  float *db2 = dup(db1, (size_t)C);
  cpu->layernorm_forward(o1, m1, r1, x, w, b, BT, C, 1e-5f);
  ref->layernorm_forward(o2, m2, r2, x, w, b, BT, C, 1e-5f);
  cmp("layernorm fwd out", o1, o2, n, 1e-5);
  cmp("layernorm fwd mean", m1, m2, (size_t)BT, 1e-6);
  cmp("layernorm fwd rstd", r1, r2, (size_t)BT, 1e-6);
  cpu->layernorm_backward(dx1, dw1, db1, dout, x, w, m2, r2, BT, C);
  ref->layernorm_backward(dx2, dw2, db2, dout, x, w, m2, r2, BT, C);
  cmp("layernorm bwd dx", dx1, dx2, n, 1e-5);
  cmp("layernorm bwd dw", dw1, dw2, (size_t)C, 1e-5);
  cmp("layernorm bwd db", db1, db2, (size_t)C, 1e-5);
  for (int op = 0; op < 2; op++) {
    float *ex = dup(dx1, n), *ew = dup(dw1, (size_t)C);
    cpu->rmsnorm_forward(o1, r1, x, w, BT, C, 1e-6f, op);
    ref->rmsnorm_forward(o2, r2, x, w, BT, C, 1e-6f, op);
    cmp(op ? "rmsnorm (1 + w) fwd out" : "rmsnorm fwd out", o1, o2, n, 1e-5);
    cmp(op ? "rmsnorm (1 + w) fwd rstd" : "rmsnorm fwd rstd", r1, r2, (size_t)BT, 1e-6);
    cpu->rmsnorm_backward(dx1, dw1, dout, x, w, r2, BT, C, op);
    ref->rmsnorm_backward(ex, ew, dout, x, w, r2, BT, C, op);
    cmp(op ? "rmsnorm (1 + w) bwd dx" : "rmsnorm bwd dx", dx1, ex, n, 1e-5);
    cmp(op ? "rmsnorm (1 + w) bwd dw" : "rmsnorm bwd dw", dw1, ew, (size_t)C, 1e-5);
    free(ex), free(ew);
  }
  free(x), free(w), free(b), free(o1), free(o2), free(m1), free(m2), free(r1), free(r2);
  free(dout), free(dx1), free(dx2), free(dw1), free(dw2), free(db1), free(db2);
}

typedef void (*fwd_fn)(float *, const float *, size_t);
typedef void (*bwd_fn)(float *, const float *, size_t);

static void test_pointwise(void) {
  const size_t n = 3001; /* large enough for the vectorized and threaded paths */
  struct {
    const char *name;
    fwd_fn f1, f2;
    bwd_fn b1, b2;
    double tol;
  } ops[] = {
      {"gelu_tanh", cpu->gelu_tanh_forward, ref->gelu_tanh_forward, cpu->gelu_tanh_backward,
       ref->gelu_tanh_backward, 2e-6},
      {"gelu_erf", cpu->gelu_erf_forward, ref->gelu_erf_forward, cpu->gelu_erf_backward,
       ref->gelu_erf_backward, 2e-6},
      {"relu", cpu->relu_forward, ref->relu_forward, cpu->relu_backward, ref->relu_backward, 0.0},
      {"silu", cpu->silu_forward, ref->silu_forward, cpu->silu_backward, ref->silu_backward, 2e-6},
  };
  float *x = rnd(n, 6.0f);
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
    float *o1 = malloc(n * sizeof *o1), *o2 = malloc(n * sizeof *o2), *d1 = rnd(n, 1.0f);
    float *d2 = dup(d1, n);
    char what[64];
    ops[k].f1(o1, x, n);
    ops[k].f2(o2, x, n);
    snprintf(what, sizeof what, "%s fwd", ops[k].name);
    cmp(what, o1, o2, n, ops[k].tol);
    ops[k].b1(d1, x, n);
    ops[k].b2(d2, x, n);
    snprintf(what, sizeof what, "%s bwd", ops[k].name);
    cmp(what, d1, d2, n, ops[k].tol);
    memcpy(o1, x, n * sizeof *o1); /* in place (out == x) */
    ops[k].f1(o1, o1, n);
    ops[k].f2(o2, x, n);
    snprintf(what, sizeof what, "%s fwd in place", ops[k].name);
    cmp(what, o1, o2, n, ops[k].tol);
    free(o1), free(o2), free(d1), free(d2);
  }
  free(x);
}

static void test_elementwise(void) {
  const size_t n = 1001;
  float *x = rnd(n, 3.0f), *y1 = rnd(n, 3.0f), *y2 = dup(y1, n), *b = rnd(n, 2.0f);
  cpu->add(y1, x, n);
  ref->add(y2, x, n);
  cmp("add", y1, y2, n, 1e-7);
  cpu->mul(y1, y1, b, n); /* in place */
  ref->mul(y2, y2, b, n);
  cmp("mul (in place)", y1, y2, n, 1e-7);
  cpu->mul(y1, x, b, n);
  ref->mul(y2, x, b, n);
  cmp("mul", y1, y2, n, 1e-7);
  cpu->dropout(y1, x, n, 12345u, 0.3f);
  ref->dropout(y2, x, n, 12345u, 0.3f);
  cmp("dropout", y1, y2, n, 1e-7);
  memcpy(y1, x, n * sizeof *y1);
  cpu->dropout(y1, y1, n, 12345u, 0.3f); /* in place */
  cmp("dropout (in place)", y1, y2, n, 1e-7);
  free(x), free(y1), free(y2), free(b);
}

static void test_rope(void) {
  const int B = 2, T = 5, NH = 3, HS = 8, ld = NH * HS + 4, pos0 = 7;
  const size_t n = (size_t)B * (size_t)T * (size_t)ld;
  double inv[4];
  int pos[3 * 2 * 5];
  const unsigned char stream[4] = {0, 1, 2, 1};
  float *x1 = rnd(n, 1.0f), *x2 = dup(x1, n);
  ss_rope_inv_freq(inv, HS, 10000.0);
  cpu->rope_forward_freq(x1, ld, B, T, NH, HS, pos0, inv);
  ref->rope_forward_freq(x2, ld, B, T, NH, HS, pos0, inv);
  cmp("rope fwd", x1, x2, n, 1e-6);
  cpu->rope_backward_freq(x1, ld, B, T, NH, HS, pos0, inv);
  ref->rope_backward_freq(x2, ld, B, T, NH, HS, pos0, inv);
  cmp("rope bwd", x1, x2, n, 1e-6);
  for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) pos[i] = (int)(i * 7 % 23);
  cpu->rope_forward_pos(x1, ld, B, T, NH, HS, pos, stream, inv);
  ref->rope_forward_pos(x2, ld, B, T, NH, HS, pos, stream, inv);
  cmp("rope fwd (M-RoPE positions)", x1, x2, n, 1e-6);
  free(x1), free(x2);
  { /* the bias gradient through the rotation: dk [B, T, NKV*HS] with dk summing to 0 over t */
    const int NKV = 2, KV = NKV * HS;
    float *dk = rnd((size_t)B * T * KV, 1.0f), *d1 = rnd((size_t)KV, 1.0f);
    float *d2 = dup(d1, (size_t)KV);
    for (int b = 0; b < B; b++)
      for (int j = 0; j < KV; j++) { /* make each column sum to 0 over t, as attention's does */
        double m = 0.0;
        for (int t = 0; t < T; t++) m += dk[((size_t)b * T + (size_t)t) * KV + (size_t)j];
        for (int t = 0; t < T; t++)
          dk[((size_t)b * T + (size_t)t) * KV + (size_t)j] -= (float)(m / T);
      }
    CHECK(cpu->rope_bias_backward(d1, dk, B, T, NKV, HS, inv) == 0);
    CHECK(ref->rope_bias_backward(d2, dk, B, T, NKV, HS, inv) == 0);
    cmp("rope bias backward", d1, d2, (size_t)KV, 1e-6);
    free(dk), free(d1), free(d2);
  }
}

static void test_attention(void) {
  /* T 75: the cpu inference forward takes SS_ATTN_QBLOCK-query blocks (three here) */
  static const int Ts[] = {6, 75};
  const int B = 2, NH = 4, NKV = 2, HS = 8;
  for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
    for (int P = 0; P <= 3; P += 3)
      for (int window = 0; window <= 40; window += (window == 0 ? 4 : 36))
        for (int cap = 0; cap < 2; cap++)
          for (int all = 0; all < 2; all++) {
            const int T = Ts[ti], Tk = P + T, ldq = NH * HS, ldkv = NKV * HS;
            const float softcap = cap ? 3.0f : 0.0f;
            const ss_attn_dims d = {B, T, P, NH, NKV, HS, 0.6f, 0};
            const size_t nq = (size_t)B * T * ldq, nkv = (size_t)B * T * ldkv;
            const size_t nwin = (size_t)B * NKV * Tk * HS, npast = (size_t)B * NKV * P * HS;
            const size_t natt = all ? (size_t)B * NH * T * Tk : ss_attn_scratch(HS);
            float *q = rnd(nq, 1.5f), *k = rnd(nkv, 1.5f), *v = rnd(nkv, 1.0f);
            float *pk = rnd(npast, 1.0f), *pv = rnd(npast, 1.0f);
            float *o1 = rnd(nq, 1.0f), *o2 = rnd(nq, 1.0f), *K1 = rnd(nwin, 1.0f);
            float *K2 = rnd(nwin, 1.0f), *V1 = rnd(nwin, 1.0f), *V2 = rnd(nwin, 1.0f);
            float *a1 = rnd(natt, 1.0f), *a2 = rnd(natt, 1.0f);
            char what[96];
            cpu->attention_forward(o1, ldq, a1, all, K1, V1, q, ldq, k, v, ldkv, P ? pk : NULL,
                                   P ? pv : NULL, &d, window, softcap);
            ref->attention_forward(o2, ldq, a2, all, K2, V2, q, ldq, k, v, ldkv, P ? pk : NULL,
                                   P ? pv : NULL, &d, window, softcap);
            snprintf(what, sizeof what, "attention fwd T %d P %d window %d cap %.0f%s", T, P,
                     window, (double)softcap, all ? " att_all" : "");
            cmp(what, o1, o2, nq, 1e-5);
            cmp(what, K1, K2, nwin, 0.0);
            cmp(what, V1, V2, nwin, 0.0);
            if (all) cmp(what, a1, a2, natt, 1e-5);
            if (P == 0 && all) { /* backward: no past; the reference att for both */
              float *dout = rnd(nq, 1.0f), *dq1 = rnd(nq, 1.0f), *dq2 = rnd(nq, 1.0f);
              float *dk1 = rnd(nkv, 1.0f), *dk2 = rnd(nkv, 1.0f), *dv1 = rnd(nkv, 1.0f);
              float *dv2 = rnd(nkv, 1.0f), *s1 = rnd(2 * (size_t)T * T, 1.0f);
              float *s2 = rnd(2 * (size_t)T * T, 1.0f);
              cpu->attention_backward(dq1, dk1, dv1, s1, dout, ldq, a2, q, ldq, k, v, ldkv, &d,
                                      softcap);
              ref->attention_backward(dq2, dk2, dv2, s2, dout, ldq, a2, q, ldq, k, v, ldkv, &d,
                                      softcap);
              snprintf(what, sizeof what, "attention bwd window %d cap %.0f dq, dk, dv", window,
                       (double)softcap);
              cmp(what, dq1, dq2, nq, 1e-5);
              cmp(what, dk1, dk2, nkv, 1e-5);
              cmp(what, dv1, dv2, nkv, 1e-5);
              free(dout), free(dq1), free(dq2), free(dk1), free(dk2), free(dv1), free(dv2);
              free(s1), free(s2);
            }
            free(q), free(k), free(v), free(pk), free(pv), free(o1), free(o2), free(K1), free(K2);
            free(V1), free(V2), free(a1), free(a2);
          }
}

/* Long sequences through the inference forward's key tiles (several SS_ATTN_KTILE) and
 * query blocks: decode steps (T 1; grouped heads as one block, also more heads per group than
 * a block holds) and prefills with and without a past, sliding windows, soft-capping, and the
 * in-place cache of a session (cap > P + T, the past already in K, V, past_k NULL: only keys
 * P .. P+T-1 written, the rest of the buffer untouched). */
static void test_attention_long(void) {
  static const struct {
    int B, T, P, NH, NKV, HS, cap, window;
    float softcap;
  } cs[] = {
      {1, 1, 1100, 14, 2, 64, 0, 0, 0.0f},     /* Qwen2-0.5B heads, decode, client past */
      {1, 1, 1100, 14, 2, 64, 1300, 0, 0.0f},  /* ... a session's cache in place */
      {2, 1, 700, 14, 2, 64, 900, 300, 0.0f},  /* window, batch 2 */
      {1, 1, 900, 8, 4, 32, 1000, 0, 30.0f},   /* softcap */
      {1, 1, 530, 40, 1, 16, 600, 0, 0.0f},    /* 40 heads per group: two blocks */
      {1, 1, 1030, 12, 12, 64, 1100, 0, 0.0f}, /* GPT-2 heads */
      {1, 1, 300, 3, 3, 20, 0, 0, 0.0f},       /* one row per head: 8 lanes + a tail */
      {1, 1, 600, 2, 2, 72, 700, 50, 10.0f},   /* ... 64 lanes + 8, window, softcap */
      {1, 520, 0, 4, 2, 32, 0, 0, 0.0f},       /* prefill */
      {1, 520, 0, 4, 2, 32, 0, 200, 50.0f},    /* prefill, window, softcap */
      {2, 100, 450, 8, 2, 64, 600, 0, 0.0f},   /* a prefill after a past, in place */
      {1, 260, 800, 4, 2, 32, 0, 333, 20.0f},  /* ... a client past, window, softcap */
  };
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
    const int B = cs[c].B, T = cs[c].T, P = cs[c].P, NH = cs[c].NH, NKV = cs[c].NKV;
    const int HS = cs[c].HS, ldq = NH * HS, ldkv = NKV * HS, inplace = cs[c].cap > 0;
    const ss_attn_dims d = {B, T, P, NH, NKV, HS, 1.0f / sqrtf((float)HS), cs[c].cap};
    const size_t nq = (size_t)B * T * ldq, nkv = (size_t)B * T * ldkv;
    const size_t nwin = (size_t)B * NKV * (size_t)ss_attn_cap(&d) * HS;
    const size_t npast = (size_t)B * NKV * P * HS;
    float *q = rnd(nq, 2.0f), *k = rnd(nkv, 2.0f), *v = rnd(nkv, 1.0f);
    float *pk = rnd(npast, 2.0f), *pv = rnd(npast, 1.0f);
    float *o1 = rnd(nq, 1.0f), *o2 = rnd(nq, 1.0f), *K1 = rnd(nwin, 1.0f), *V1 = rnd(nwin, 1.0f);
    float *K2 = dup(K1, nwin), *V2 = dup(V1, nwin), *a1 = rnd(ss_attn_scratch(HS), 1.0f);
    char what[128];
    if (inplace) /* the session's past, already in place at head stride cap */
      for (size_t bg = 0; bg < (size_t)B * NKV; bg++)
        for (size_t j = 0; j < (size_t)P; j++) {
          size_t src = (bg * (size_t)P + j) * (size_t)HS, dst = (bg * (size_t)d.cap + j) * HS;
          memcpy(K1 + dst, pk + src, (size_t)HS * sizeof(float));
          memcpy(V1 + dst, pv + src, (size_t)HS * sizeof(float));
          memcpy(K2 + dst, pk + src, (size_t)HS * sizeof(float));
          memcpy(V2 + dst, pv + src, (size_t)HS * sizeof(float));
        }
    float *K0 = dup(K1, nwin);
    cpu->attention_forward(o1, ldq, a1, 0, K1, V1, q, ldq, k, v, ldkv, inplace ? NULL : pk,
                           inplace ? NULL : pv, &d, cs[c].window, cs[c].softcap);
    ref->attention_forward(o2, ldq, NULL, 0, K2, V2, q, ldq, k, v, ldkv, inplace ? NULL : pk,
                           inplace ? NULL : pv, &d, cs[c].window, cs[c].softcap);
    snprintf(what, sizeof what, "attn B %d T %d P %d heads %d/%d cap %d win %d softcap %.0f", B, T,
             P, NH, NKV, d.cap, cs[c].window, (double)cs[c].softcap);
    cmp(what, o1, o2, nq, 1e-5);
    cmp(what, K1, K2, nwin, 0.0);
    cmp(what, V1, V2, nwin, 0.0);
    /* heads split over a team of 1 and of 3 threads: the same answer bit for bit (each head's
     * arithmetic is its own; the threads after the first use their own scratch) */
    int team0 = omp_get_max_threads(), same_team = 1;
    for (int nt = 1; nt <= 3; nt += 2) {
      float *o3 = rnd(nq, 1.0f);
      omp_set_num_threads(nt);
      cpu->attention_forward(o3, ldq, a1, 0, K1, V1, q, ldq, k, v, ldkv, inplace ? NULL : pk,
                             inplace ? NULL : pv, &d, cs[c].window, cs[c].softcap);
      same_team &= memcmp(o1, o3, nq * sizeof(float)) == 0;
      free(o3);
    }
    omp_set_num_threads(team0);
    CHECK(same_team);
    if (inplace) { /* keys past P + T: as they were */
      int same = 1;
      for (size_t bg = 0; bg < (size_t)B * NKV; bg++)
        same &= memcmp(K1 + (bg * (size_t)d.cap + (size_t)(P + T)) * HS,
                       K0 + (bg * (size_t)d.cap + (size_t)(P + T)) * HS,
                       (size_t)(d.cap - P - T) * HS * sizeof(float)) == 0;
      CHECK(same);
    }
    free(q), free(k), free(v), free(pk), free(pv), free(o1), free(o2), free(K1), free(V1);
    free(K2), free(V2), free(a1), free(K0);
  }
}

int main(void) {
  test_alloc();
  test_matmul();
  test_linear();
  test_linear_ep();
  test_norms();
  test_pointwise();
  test_elementwise();
  test_rope();
  test_attention();
  test_attention_long();
  printf("cpu vs reference: largest difference %.2e\n", worst_all);
  TEST_MAIN_END();
}
