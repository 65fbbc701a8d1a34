/*
 * matmul.c — see matmul.h. The engine is oneDNN's matmul primitive (C API); this file is the
 * only one that names it.
 *
 * Primitives. A oneDNN primitive is made for one problem: (transposes, M, N, K, lda, ldb, ldc,
 * alpha, beta, intra-op threads). Making one (dispatch, and on some CPUs JIT code generation)
 * costs far more than a small product, so they are made once and kept in a process-wide table
 * (open addressing, SS_MM_CACHE slots, one mutex held only for the look-up or the insert).
 * Entries are never evicted (a worker may be running one); once the table is 3/4 full, a new
 * problem gets a primitive made, run and destroyed for that call only (counted; oneDNN's own
 * primitive cache still spares most of the cost). alpha maps to the primitive's output scale,
 * beta to a sum post-op (beta 0: C is not read).
 *
 * Sharing a primitive between threads. A primitive is immutable, but its scratchpad (the packed
 * copies of A and B that brgemm kernels work in) is not: in oneDNN's default mode the library
 * owns one scratchpad that concurrent executions share, and on AVX-512 (brgemm) two workers
 * running one primitive at once overwrote each other's packed blocks (wrong answers; the AVX2
 * gemm:jit path happened to use none). So every primitive is made with
 * dnnl_scratchpad_mode_user, its scratchpad size is read once from its descriptor and kept in its
 * slot, and each execution passes the calling thread's own scratchpad (DNNL_ARG_SCRATCHPAD).
 * A thread's scratchpad grows to the largest size among the primitives it ran and no further: at
 * most W x max(scratchpad) bytes in all, resident (counted in RSS) and reported by
 * ss_matmul_scratch_bytes. tests/unit/models/test_matmul_mt.c runs products from several threads
 * against lone answers, under every ISA level the CPU offers.
 *
 * Threads. Debian's libdnnl is the OpenMP build (libgomp): a product runs on the calling thread's
 * OpenMP team, sized by omp_set_num_threads in ss_compute_thread_init, so the process keeps
 * exactly 1 + W x T threads. Streams and scratchpads are per thread (oneDNN streams are not
 * thread-safe), made on a thread's first product and freed when it exits (a pthread key's
 * destructor).
 *
 * Few rows. For a few rows (M <= SS_SMALL_ROWS, op(A) = A, alpha 1, beta 0 or 1: a decode
 * step's token) hand-written kernels stream B once in place where they measured faster than
 * oneDNN's gemm (bench/mm_probe.c; see matmul.h). They use GCC vector extensions (8 floats);
 * with target_clones the compiler builds an AVX2+FMA version and a baseline one, and the loader
 * picks the right one for the CPU (ifunc). Large few-row products split their columns over the
 * calling worker's OpenMP team.
 *
 * Thread: any (worker threads, the loop thread with --workers 0); the engine state below is the
 * one process-wide object of the models library (made once, guarded by pthread_once + a mutex).
 */
#include "models/nn/matmul.h"
#include "models/nn/matmul_int.h"
#include "models/nn/simd.h"

#include <cblas.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

#define SS_BLAS_MIN_ROWS 16

/* Dot products of up to 4 X rows with 2 W rows, register-blocked: each W chunk is loaded once
 * and used 4 times. r: rows in this block (1..4); w1 may be NULL (odd out). */
SS_CLONES static void dot_block(const float *const x[4], int r, const float *w0, const float *w1,
                                size_t n, float out0[4], float out1[4]) {
  v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
  const float *x0 = x[0], *x1 = x[r > 1 ? 1 : 0], *x2 = x[r > 2 ? 2 : 0], *x3 = x[r > 3 ? 3 : 0];
  const float *v1 = w1 ? w1 : w0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 p = ld8(w0 + i), q = ld8(v1 + i);
    v8 c0 = ld8(x0 + i), c1 = ld8(x1 + i), c2 = ld8(x2 + i), c3 = ld8(x3 + i);
    a0 += c0 * p, a1 += c1 * p, a2 += c2 * p, a3 += c3 * p;
    b0 += c0 * q, b1 += c1 * q, b2 += c2 * q, b3 += c3 * q;
  }
  float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
  for (; i < n; i++) {
    s[0] += x0[i] * w0[i], s[1] += x1[i] * w0[i], s[2] += x2[i] * w0[i], s[3] += x3[i] * w0[i];
    s[4] += x0[i] * v1[i], s[5] += x1[i] * v1[i], s[6] += x2[i] * v1[i], s[7] += x3[i] * v1[i];
  }
  memcpy(out0, s, 4 * sizeof(float));
  memcpy(out1, s + 4, 4 * sizeof(float));
}

/* Up to 4 rows of Y[:, j0..j1) += X rows . W[:, j0..j1), streaming W row by row: each weight
 * row's slice is read sequentially (prefetch-friendly, one TLB page after another) while the
 * outputs stay in L1/L2. For a decode step this beats column strips, whose row stride touches a
 * new page per weight row. Two weight rows go together, so each output vector is loaded and
 * stored once per two rows (the loads and stores of Y, not the FMAs, bound the one-row form). */
SS_CLONES static void stream_rows(const float *const x[4], int r, const float *W, size_t in,
                                  size_t ldw, size_t j0, size_t j1, float *const y[4]) {
  size_t jv = j0 + (j1 - j0) / 8 * 8, i = 0;
  float *y0 = y[0], *y1 = y[r > 1 ? 1 : 0], *y2 = y[r > 2 ? 2 : 0], *y3 = y[r > 3 ? 3 : 0];
  for (; i + 2 <= in; i += 2) {
    const float *w0 = W + i * ldw, *w1 = w0 + ldw;
    v8 a0 = splat(x[0][i]), b0 = splat(x[0][i + 1]);
    if (r == 1) {
      for (size_t j = j0; j < jv; j += 8)
        st8(y0 + j, ld8(y0 + j) + a0 * ld8(w0 + j) + b0 * ld8(w1 + j));
    } else if (r == 2) {
      v8 a1 = splat(x[1][i]), b1 = splat(x[1][i + 1]);
      for (size_t j = j0; j < jv; j += 8) {
        v8 p = ld8(w0 + j), q = ld8(w1 + j);
        st8(y0 + j, ld8(y0 + j) + a0 * p + b0 * q);
        st8(y1 + j, ld8(y1 + j) + a1 * p + b1 * q);
      }
    } else { /* 3 or 4 rows (with 3, the fourth is the third again: its result is not kept) */
      v8 a1 = splat(x[1][i]), b1 = splat(x[1][i + 1]);
      v8 a2 = splat(x[2][i]), b2 = splat(x[2][i + 1]);
      v8 a3 = splat(x[r > 3 ? 3 : 2][i]), b3 = splat(x[r > 3 ? 3 : 2][i + 1]);
      for (size_t j = j0; j < jv; j += 8) {
        v8 p = ld8(w0 + j), q = ld8(w1 + j);
        v8 c0 = ld8(y0 + j) + a0 * p + b0 * q, c1 = ld8(y1 + j) + a1 * p + b1 * q;
        v8 c2 = ld8(y2 + j) + a2 * p + b2 * q;
        st8(y0 + j, c0);
        st8(y1 + j, c1);
        st8(y2 + j, c2);
        if (r > 3) st8(y3 + j, ld8(y3 + j) + a3 * p + b3 * q);
      }
    }
    for (size_t j = jv; j < j1; j++)
      for (int k = 0; k < r; k++) y[k][j] += x[k][i] * w0[j] + x[k][i + 1] * w1[j];
  }
  for (; i < in; i++) { /* an odd last row */
    const float *w = W + i * ldw;
    for (int k = 0; k < r; k++) {
      v8 sk = splat(x[k][i]);
      for (size_t j = j0; j < jv; j += 8) st8(y[k] + j, ld8(y[k] + j) + sk * ld8(w + j));
      for (size_t j = jv; j < j1; j++) y[k][j] += x[k][i] * w[j];
    }
  }
}

/* C[rows, out] (=|+=) X[rows, in] W[out, in]^T: two W rows at a time against every group of 4 X
 * rows while the pair is in L1, so W is read from memory once whatever the row count. */
static void few_rows_bt(const float *X, size_t ldx, size_t rows, size_t in, const float *W,
                        size_t ldw, size_t out, float *Y, size_t ldy, int accumulate) {
  long npairs = (long)((out + 1) / 2);
#pragma omp parallel for schedule(static) if (npairs > 8 && in * out >= (1u << 18))
  for (long pi = 0; pi < npairs; pi++) {
    size_t o = (size_t)pi * 2;
    int two = o + 1 < out;
    for (size_t r0 = 0; r0 < rows; r0 += 4) {
      int r = (int)(rows - r0 < 4 ? rows - r0 : 4);
      const float *x[4];
      for (int k = 0; k < 4; k++) x[k] = X + (r0 + (size_t)(k < r ? k : 0)) * ldx;
      float d0[4], d1[4];
      dot_block(x, r, W + o * ldw, two ? W + (o + 1) * ldw : NULL, in, d0, d1);
      for (int k = 0; k < r; k++) {
        float *y = Y + (r0 + (size_t)k) * ldy + o;
        y[0] = accumulate ? y[0] + d0[k] : d0[k];
        if (two) y[1] = accumulate ? y[1] + d1[k] : d1[k];
      }
    }
  }
}

/* C[rows, out] (=|+=) X[rows, in] W[in, out], streaming W row by row. */
static void few_rows_b(const float *X, size_t ldx, size_t rows, size_t in, const float *W,
                       size_t ldw, size_t out, float *Y, size_t ldy, int accumulate) {
  if (!accumulate)
    for (size_t r = 0; r < rows; r++) memset(Y + r * ldy, 0, out * sizeof(float));
  for (size_t r0 = 0; r0 < rows; r0 += 4) {
    int r = (int)(rows - r0 < 4 ? rows - r0 : 4);
    const float *x[4];
    float *y[4];
    for (int k = 0; k < 4; k++) {
      size_t row = r0 + (size_t)(k < r ? k : 0);
      x[k] = X + row * ldx;
      y[k] = Y + row * ldy;
    }
    /* The worker's intra-op threads take contiguous column ranges (multiples of 16 floats). */
#pragma omp parallel if (in * out >= (1u << 18))
    {
      size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
      size_t per = (out / nt + 15) / 16 * 16;
      size_t j0 = t * per, j1 = t + 1 == nt ? out : (t + 1) * per;
      if (j0 < out) stream_rows(x, r, W, in, ldw, j0, j1 < out ? j1 : out, y);
    }
  }
}

/* ------------------------------------------------------------------ the oneDNN engine */

#define SS_MM_CACHE 1024 /* slots (a power of two); filled to 3/4 at most */

typedef struct mm_key {
  int ta, tb, M, N, K, lda, ldb, ldc, nthr;
  uint32_t alpha, beta; /* bit patterns */
  int dt;               /* 0: f32; 1: bf16 A [M, lda] and packed bf16 B (tb, ldb unused);
                         * 2: f32 A [M, lda] and packed f32 B (tb, ldb unused) */
  int act;              /* epilogue (packed B only): ss_mm_act applied after the bias */
  int bias;             /* 1: a bias [N] added to every row (DNNL_ARG_BIAS) */
  int ldm;              /* > 0: the result multiplied by a [M, N] f32 tensor of row stride ldm */
} mm_key;

typedef struct mm_slot {
  mm_key key;
  dnnl_primitive_t prim; /* NULL: empty slot */
  size_t scratch;        /* its scratchpad's size in bytes (user mode; 0: none) */
} mm_slot;

/* A thread's engine state: its stream and its scratchpad (see the top comment). */
typedef struct mm_thread {
  dnnl_stream_t stream;
  void *scratch; /* 64-byte aligned, cap bytes */
  size_t cap;
  uint16_t *abuf; /* A converted to bf16 (packed-weight products), acap elements */
  size_t acap;
} mm_thread;

static struct {
  pthread_once_t once;
  dnnl_engine_t engine;     /* NULL: oneDNN unusable (portable loops run instead) */
  pthread_key_t thread_key; /* -> mm_thread */
  pthread_mutex_t mu;
  mm_slot slot[SS_MM_CACHE];
  size_t used;
  unsigned long long uncached;
  size_t scratch_total; /* bytes of every thread's scratchpad (under mu) */
  int isa;
  int blas_large; /* products of >= SS_BLAS_MIN_ROWS rows go to OpenBLAS (no brgemm here) */
  char info[256];
} eng = {.once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER};

static const char *isa_name(int isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "generic";
  }
}

static void thread_free(void *p) {
  mm_thread *t = p;
  pthread_mutex_lock(&eng.mu);
  eng.scratch_total -= t->cap;
  pthread_mutex_unlock(&eng.mu);
  if (t->stream) dnnl_stream_destroy(t->stream);
  free(t->scratch);
  free(t->abuf);
  free(t);
}

/* The calling thread's state with a scratchpad of at least need bytes, made or grown on demand;
 * NULL if oneDNN or memory refused. */
static mm_thread *thread_state(size_t need) {
  mm_thread *t = pthread_getspecific(eng.thread_key);
  if (t == NULL) {
    if ((t = calloc(1, sizeof *t)) == NULL) return NULL;
    if (dnnl_stream_create(&t->stream, eng.engine, dnnl_stream_default_flags) != dnnl_success ||
        pthread_setspecific(eng.thread_key, t) != 0) {
      if (t->stream) dnnl_stream_destroy(t->stream);
      free(t);
      return NULL;
    }
  }
  if (need > t->cap) {
    size_t cap = (need + 4095) / 4096 * 4096;
    void *buf = NULL;
    if (posix_memalign(&buf, 64, cap) != 0) return NULL;
    free(t->scratch);
    pthread_mutex_lock(&eng.mu);
    eng.scratch_total += cap - t->cap;
    pthread_mutex_unlock(&eng.mu);
    t->scratch = buf, t->cap = cap;
  }
  return t;
}

static int desc_init(dnnl_memory_desc_t *md, int rows, int cols, int trans, int ld) {
  dnnl_dims_t dims = {rows, cols}, strides = {trans ? 1 : ld, trans ? ld : 1};
  return dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides) == dnnl_success ? 0 : -1;
}

/* A primitive for the problem k, or NULL (oneDNN has no implementation for it), with a
 * user-managed scratchpad of *scratch bytes. Packed-weight problems (k->dt 1 bf16, 2 f32) take B
 * in the layout wmd, or, with wmd NULL, in the layout the kernel prefers, written to *wmd_out,
 * and may carry an epilogue (k->bias, k->act, k->ldm) as oneDNN bias and post-ops. *impl, when not
 * NULL, gets the implementation's name (e.g. "gemm:jit", "brg:avx512_core"). */
static dnnl_primitive_t make_prim(const mm_key *k, const dnnl_memory_desc_t *wmd,
                                  dnnl_memory_desc_t *wmd_out, size_t *scratch, char *impl,
                                  size_t implen) {
  dnnl_memory_desc_t a, b, c, bias, mul;
  dnnl_matmul_desc_t md;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_t prim = NULL;
  float alpha, beta;
  memcpy(&alpha, &k->alpha, sizeof alpha);
  memcpy(&beta, &k->beta, sizeof beta);
  if (k->dt != 0) { /* a packed weight: B in the layout wmd, or the one the kernel prefers */
    dnnl_data_type_t dt = k->dt == 1 ? dnnl_bf16 : dnnl_f32;
    dnnl_dims_t ad = {k->M, k->K}, as = {k->lda, 1}, bd = {k->K, k->N};
    if (dnnl_memory_desc_init_by_strides(&a, 2, ad, dt, as) != dnnl_success) goto out;
    if (wmd)
      b = *wmd;
    else if (dnnl_memory_desc_init_by_tag(&b, 2, bd, dt, dnnl_format_tag_any) != dnnl_success)
      goto out;
  } else if (desc_init(&a, k->M, k->K, k->ta, k->lda) || desc_init(&b, k->K, k->N, k->tb, k->ldb)) {
    goto out;
  }
  if (k->bias && desc_init(&bias, 1, k->N, 0, k->N)) goto out;
  if (desc_init(&c, k->M, k->N, 0, k->ldc) ||
      dnnl_matmul_desc_init(&md, &a, &b, k->bias ? &bias : NULL, &c) != dnnl_success ||
      dnnl_primitive_attr_create(&attr) != dnnl_success ||
      dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success)
    goto out;
  if (alpha != 1.0f && dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) != dnnl_success)
    goto out;
  /* Post-ops in order: the activation, the product with the multiplier, then beta * C. */
  if (beta != 0.0f || k->act != SS_ACT_NONE || k->ldm > 0) {
    static const dnnl_alg_kind_t alg[] = {dnnl_eltwise_linear, dnnl_eltwise_gelu_tanh,
                                          dnnl_eltwise_gelu_erf, dnnl_eltwise_swish};
    if (dnnl_post_ops_create(&po) != dnnl_success) goto out;
    if (k->act != SS_ACT_NONE &&
        dnnl_post_ops_append_eltwise(po, 1.0f, alg[k->act], 1.0f, 0.0f) != dnnl_success)
      goto out;
    if (k->ldm > 0 && (desc_init(&mul, k->M, k->N, 0, k->ldm) ||
                       dnnl_post_ops_append_binary(po, dnnl_binary_mul, &mul) != dnnl_success))
      goto out;
    if (beta != 0.0f && dnnl_post_ops_append_sum(po, beta) != dnnl_success) goto out;
    if (dnnl_primitive_attr_set_post_ops(attr, po) != dnnl_success) goto out;
  }
  if (dnnl_primitive_desc_create(&pd, &md, attr, eng.engine, NULL) != dnnl_success) goto out;
  const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
  *scratch = smd ? dnnl_memory_desc_get_size(smd) : 0;
  if (wmd_out) {
    const dnnl_memory_desc_t *w = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (!w) goto out;
    *wmd_out = *w;
  }
  if (impl != NULL) {
    const char *s = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) == dnnl_success && s)
      snprintf(impl, implen, "%s", s);
  }
  if (dnnl_primitive_create(&prim, pd) != dnnl_success) prim = NULL;
out:
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (po) dnnl_post_ops_destroy(po);
  if (attr) dnnl_primitive_attr_destroy(attr);
  return prim;
}

/* Once per process: the engine, and what it runs on this CPU (logged; a generic kernel loudly). */
static void engine_init(void) {
  char impl[64] = "none";
  eng.isa = (int)dnnl_get_effective_cpu_isa();
  if (pthread_key_create(&eng.thread_key, thread_free) != 0 ||
      dnnl_engine_create(&eng.engine, dnnl_cpu, 0) != dnnl_success) {
    eng.engine = NULL;
    snprintf(eng.info, sizeof eng.info, "portable loops (oneDNN engine unavailable)");
    SS_LOGW("matmul: oneDNN engine unavailable; running portable loops (slow)");
    return;
  }
  /* A GPT-2 prefill product stands for all: which implementation does oneDNN pick here? */
  mm_key k = {0, 0, 128, 768, 768, 768, 768, 768, 1, 0x3f800000u, 0, 0, 0, 0, 0};
  size_t scratch;
  dnnl_primitive_t p = make_prim(&k, NULL, NULL, &scratch, impl, sizeof impl);
  if (p) dnnl_primitive_destroy(p);
  const dnnl_version_t *v = dnnl_version();
  /* Without a brgemm kernel (AVX2: oneDNN 2.6 runs gemm:jit) OpenBLAS sgemm measured faster on
   * the large prefill products (128x768x3072: 45 vs 31 GFLOP/s, one thread; bench/mm_probe.c),
   * oneDNN faster on small ones: large products go to OpenBLAS there. */
  eng.blas_large = strstr(impl, "brg") == NULL;
  snprintf(eng.info, sizeof eng.info, "onednn %d.%d.%d %s, isa %s%s", v->major, v->minor, v->patch,
           impl, isa_name(eng.isa),
           eng.blas_large ? "; openblas sgemm for products of >= 16 rows (>= 5 with B as stored on "
                            "one thread; faster without brgemm); model weights in f32 panels up "
                            "to 32 rows"
                          : "");
  int generic = strstr(impl, "ref") != NULL || p == NULL;
  int no_brg = eng.isa >= dnnl_cpu_isa_avx512_core && eng.isa != dnnl_cpu_isa_avx2_vnni &&
               strstr(impl, "brg") == NULL;
  if (generic || no_brg)
    SS_LOGW("matmul: oneDNN runs a %s kernel (%s) on this CPU (isa %s): expect slow products",
            generic ? "generic reference" : "non-brgemm", impl, isa_name(eng.isa));
  else
    SS_LOGI("matmul engine: %s", eng.info);
}

const char *ss_matmul_engine_info(void) {
  pthread_once(&eng.once, engine_init);
  return eng.info;
}

int ss_matmul_bf16_check(char *err, size_t errlen) {
  pthread_once(&eng.once, engine_init);
  if (eng.engine != NULL && eng.isa >= dnnl_cpu_isa_avx512_core_bf16 &&
      eng.isa != dnnl_cpu_isa_avx2_vnni)
    return 0;
  snprintf(err, errlen, "compute=bf16 needs avx512_bf16 or amx_bf16 (this CPU has %s)",
           isa_name(eng.isa));
  return -1;
}

static size_t key_hash(const mm_key *k) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char *p = (const unsigned char *)k;
  for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
  return (size_t)(h ^ (h >> 29));
}

/* The cached primitive for k (made on a miss; bf16: B in the layout wmd) and its scratchpad
 * size. *owned = 1: not cached, the caller destroys it. */
static dnnl_primitive_t get_prim(const mm_key *k, const dnnl_memory_desc_t *wmd, size_t *scratch,
                                 int *owned) {
  size_t i = key_hash(k) & (SS_MM_CACHE - 1);
  dnnl_primitive_t p;
  *owned = 0;
  pthread_mutex_lock(&eng.mu);
  for (; eng.slot[i].prim != NULL; i = (i + 1) & (SS_MM_CACHE - 1))
    if (memcmp(&eng.slot[i].key, k, sizeof *k) == 0) {
      p = eng.slot[i].prim;
      *scratch = eng.slot[i].scratch;
      pthread_mutex_unlock(&eng.mu);
      return p;
    }
  pthread_mutex_unlock(&eng.mu);
  /* Made outside the lock (it may JIT); a racing thread may make the same one: first wins. */
  if ((p = make_prim(k, wmd, NULL, scratch, NULL, 0)) == NULL) return NULL;
  pthread_mutex_lock(&eng.mu);
  for (i = key_hash(k) & (SS_MM_CACHE - 1); eng.slot[i].prim != NULL;
       i = (i + 1) & (SS_MM_CACHE - 1))
    if (memcmp(&eng.slot[i].key, k, sizeof *k) == 0) break;
  if (eng.slot[i].prim != NULL) { /* lost the race */
    dnnl_primitive_destroy(p);
    p = eng.slot[i].prim;
    *scratch = eng.slot[i].scratch;
  } else if (eng.used + 1 > SS_MM_CACHE / 4 * 3) {
    eng.uncached++;
    *owned = 1;
  } else {
    eng.slot[i].key = *k;
    eng.slot[i].prim = p;
    eng.slot[i].scratch = *scratch;
    eng.used++;
  }
  pthread_mutex_unlock(&eng.mu);
  return p;
}

size_t ss_matmul_scratch_bytes(void) {
  pthread_mutex_lock(&eng.mu);
  size_t n = eng.scratch_total;
  pthread_mutex_unlock(&eng.mu);
  return n;
}

/* f32 -> bf16, round to nearest even (NaN stays NaN): rows of A into a contiguous buffer. */
SS_CLONES static void rows_to_bf16_c(const float *A, size_t lda, size_t M, size_t K,
                                     uint16_t *out) {
  for (size_t i = 0; i < M; i++) {
    const float *a = A + i * lda;
    uint16_t *o = out + i * K;
    for (size_t j = 0; j < K; j++) {
      uint32_t u;
      memcpy(&u, &a[j], sizeof u);
      uint32_t r =
          (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
      o[j] = (uint16_t)(r >> 16);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* The same with avx512_bf16's VCVTNEPS2BF16 (round to nearest even; NaN stays NaN; it takes
 * denormal inputs as zero, as oneDNN's own conversions do): 16 floats per instruction. The
 * scalar loop above ran at ~1.4 G floats/s and took 8% of a bf16 GPT-2 prefill. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void rows_to_bf16_avx512(
    const float *A, size_t lda, size_t M, size_t K, uint16_t *out) {
  for (size_t i = 0; i < M; i++) {
    const float *a = A + i * lda;
    uint16_t *o = out + i * K;
    size_t j = 0;
    for (; j + 16 <= K; j += 16)
      _mm256_storeu_si256((__m256i *)(void *)(o + j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a + j)));
    if (j < K) {
      __mmask16 m = (__mmask16)((1u << (K - j)) - 1u);
      _mm256_mask_storeu_epi16(o + j, m,
                               (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, a + j)));
    }
  }
}

int ss__mm_to_bf16(const float *A, size_t lda, size_t M, size_t K, uint16_t *out, int portable) {
  static int have = -1; /* every thread computes the same answer: relaxed atomics suffice */
  int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
  if (h < 0) {
    __builtin_cpu_init();
    h = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    __atomic_store_n(&have, h, __ATOMIC_RELAXED);
  }
  if (h && !portable) {
    rows_to_bf16_avx512(A, lda, M, K, out);
    return 1;
  }
  rows_to_bf16_c(A, lda, M, K, out);
  return 0;
}
#else
int ss__mm_to_bf16(const float *A, size_t lda, size_t M, size_t K, uint16_t *out, int portable) {
  (void)portable;
  rows_to_bf16_c(A, lda, M, K, out);
  return 0;
}
#endif

/* C = alpha op(A) op(B) + beta C on oneDNN; -1 if it cannot (the caller falls back). f32
 * problems read A and B as stored; packed-weight ones read B in the layout wmd, and bf16 ones
 * (k->dt 1) convert A (row stride lda32) into the thread's buffer first. ep: the epilogue's
 * tensors (bias, multiplier) when k names them. */
static int engine_matmul(const mm_key *k, const dnnl_memory_desc_t *wmd, const float *A, int lda32,
                         const void *B, float *C, const ss_mm_epilogue *ep) {
  dnnl_memory_desc_t a, b, c, sd, bd, mud;
  dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL, mbias = NULL, mmul = NULL;
  mm_thread *t;
  size_t scratch = 0;
  int owned, rc = -1;
  const void *Ause = A;
  pthread_once(&eng.once, engine_init);
  if (eng.engine == NULL) return -1;
  dnnl_primitive_t p = get_prim(k, wmd, &scratch, &owned);
  if (p == NULL) return -1;
  if ((t = thread_state(scratch)) == NULL) goto out;
  if (k->dt == 1) {
    dnnl_dims_t ad = {k->M, k->K}, as = {k->lda, 1};
    size_t need = (size_t)k->M * (size_t)k->K;
    if (need > t->acap) {
      uint16_t *buf = NULL;
      if (posix_memalign((void **)&buf, 64, need * sizeof *buf) != 0) goto out;
      free(t->abuf);
      t->abuf = buf, t->acap = need;
    }
    (void)ss__mm_to_bf16(A, (size_t)lda32, (size_t)k->M, (size_t)k->K, t->abuf, 0);
    Ause = t->abuf;
    b = *wmd;
    if (dnnl_memory_desc_init_by_strides(&a, 2, ad, dnnl_bf16, as) != dnnl_success) goto out;
  } else if (k->dt == 2) {
    b = *wmd;
    if (desc_init(&a, k->M, k->K, 0, k->lda)) goto out;
  } else if (desc_init(&a, k->M, k->K, k->ta, k->lda) || desc_init(&b, k->K, k->N, k->tb, k->ldb)) {
    goto out;
  }
  if (desc_init(&c, k->M, k->N, 0, k->ldc) ||
      dnnl_memory_create(&ma, &a, eng.engine, (void *)(uintptr_t)Ause) != dnnl_success ||
      dnnl_memory_create(&mb, &b, eng.engine, (void *)(uintptr_t)B) != dnnl_success ||
      dnnl_memory_create(&mc, &c, eng.engine, C) != dnnl_success)
    goto out;
  dnnl_exec_arg_t args[6] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
  int nargs = 3;
  if (k->bias) {
    if (desc_init(&bd, 1, k->N, 0, k->N) ||
        dnnl_memory_create(&mbias, &bd, eng.engine, (void *)(uintptr_t)ep->bias) != dnnl_success)
      goto out;
    args[nargs].arg = DNNL_ARG_BIAS, args[nargs++].memory = mbias;
  }
  if (k->ldm > 0) { /* the binary post-op follows the activation's, if any */
    if (desc_init(&mud, k->M, k->N, 0, k->ldm) ||
        dnnl_memory_create(&mmul, &mud, eng.engine, (void *)(uintptr_t)ep->mul) != dnnl_success)
      goto out;
    args[nargs].arg =
        DNNL_ARG_ATTR_MULTIPLE_POST_OP(k->act != SS_ACT_NONE ? 1 : 0) | DNNL_ARG_SRC_1;
    args[nargs++].memory = mmul;
  }
  if (scratch > 0) { /* the calling thread's own scratchpad, never another's */
    dnnl_dims_t sdim = {(dnnl_dim_t)scratch};
    if (dnnl_memory_desc_init_by_tag(&sd, 1, sdim, dnnl_u8, dnnl_a) != dnnl_success ||
        dnnl_memory_create(&ms, &sd, eng.engine, t->scratch) != dnnl_success)
      goto out;
    args[nargs].arg = DNNL_ARG_SCRATCHPAD, args[nargs++].memory = ms;
  }
  if (dnnl_primitive_execute(p, t->stream, nargs, args) == dnnl_success &&
      dnnl_stream_wait(t->stream) == dnnl_success)
    rc = 0;
out:
  if (ma) dnnl_memory_destroy(ma);
  if (mb) dnnl_memory_destroy(mb);
  if (mc) dnnl_memory_destroy(mc);
  if (ms) dnnl_memory_destroy(ms);
  if (mbias) dnnl_memory_destroy(mbias);
  if (mmul) dnnl_memory_destroy(mmul);
  if (owned) dnnl_primitive_destroy(p);
  return rc;
}

/* ------------------------------------------------------------------ products on packed
 * weights (nn/packed.c keeps the copies; see matmul_int.h) */

int ss__simd_level(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  static int v = -1; /* every thread computes the same answer: relaxed atomics suffice */
  int l = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (l < 0) {
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    __builtin_cpu_init();
    l = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                (isa & (unsigned)dnnl_cpu_isa_avx2) == (unsigned)dnnl_cpu_isa_avx2
            ? 1
            : 0;
    if (l && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        (isa & (unsigned)dnnl_cpu_isa_avx512_core) == (unsigned)dnnl_cpu_isa_avx512_core)
      l = 2;
    __atomic_store_n(&v, l, __ATOMIC_RELAXED);
  }
  return l;
#else
  return 0;
#endif
}

int ss__mm_has_brgemm(void) {
  pthread_once(&eng.once, engine_init);
  return eng.engine != NULL && !eng.blas_large;
}

int ss__mm_packed_layout(ss_mm_dtype dt, int K, int N, dnnl_memory_desc_t *md) {
  mm_key k;
  size_t scratch;
  memset(&k, 0, sizeof k);
  k.M = 16, k.N = N, k.K = K, k.lda = K, k.ldc = N, k.nthr = omp_get_max_threads();
  k.alpha = 0x3f800000u, k.dt = dt == SS_MM_BF16 ? 1 : 2;
  pthread_once(&eng.once, engine_init);
  if (eng.engine == NULL) return -1;
  dnnl_primitive_t probe = make_prim(&k, NULL, md, &scratch, NULL, 0);
  if (!probe) return -1;
  dnnl_primitive_destroy(probe);
  return 0;
}

int ss__mm_pack(const float *W, int tb, int K, int N, int ldw, const dnnl_memory_desc_t *md,
                void *dst) {
  dnnl_memory_desc_t src;
  dnnl_primitive_desc_t rpd = NULL;
  dnnl_primitive_t rp = NULL;
  dnnl_memory_t ms = NULL, mdst = NULL;
  mm_thread *t = thread_state(0);
  int ok = 0;
  if (t && desc_init(&src, K, N, tb, ldw) == 0 &&
      dnnl_reorder_primitive_desc_create(&rpd, &src, eng.engine, md, eng.engine, NULL) ==
          dnnl_success &&
      dnnl_primitive_create(&rp, rpd) == dnnl_success &&
      dnnl_memory_create(&ms, &src, eng.engine, (void *)(uintptr_t)W) == dnnl_success &&
      dnnl_memory_create(&mdst, md, eng.engine, dst) == dnnl_success) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, mdst}};
    ok = dnnl_primitive_execute(rp, t->stream, 2, args) == dnnl_success &&
         dnnl_stream_wait(t->stream) == dnnl_success;
  }
  if (ms) dnnl_memory_destroy(ms);
  if (mdst) dnnl_memory_destroy(mdst);
  if (rp) dnnl_primitive_destroy(rp);
  if (rpd) dnnl_primitive_desc_destroy(rpd);
  return ok ? 0 : -1;
}

int ss__mm_packed(ss_mm_dtype dt, int M, int N, int K, const float *A, int lda,
                  const dnnl_memory_desc_t *md, const void *B, float beta, float *C, int ldc,
                  const ss_mm_epilogue *ep) {
  mm_key k;
  memset(&k, 0, sizeof k); /* hashed and compared as bytes */
  k.M = M, k.N = N, k.K = K, k.ldc = ldc, k.nthr = omp_get_max_threads();
  k.alpha = 0x3f800000u, k.dt = dt == SS_MM_BF16 ? 1 : 2;
  k.lda = k.dt == 1 ? K : lda; /* bf16: A converted into a contiguous buffer */
  memcpy(&k.beta, &beta, sizeof beta);
  if (ep) {
    k.act = (int)ep->act, k.bias = ep->bias != NULL, k.ldm = ep->mul ? ep->ldm : 0;
  }
  return engine_matmul(&k, md, A, lda, B, C, ep);
}

/* The portable fallback (oneDNN refused the problem): plain loops, same contract. */
static void loops_matmul(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C,
                         int ldc) {
  for (size_t i = 0; i < (size_t)M; i++)
    for (size_t j = 0; j < (size_t)N; j++) {
      float s = 0.0f;
      for (size_t p = 0; p < (size_t)K; p++)
        s += (ta ? A[p * (size_t)lda + i] : A[i * (size_t)lda + p]) *
             (tb ? B[j * (size_t)ldb + p] : B[p * (size_t)ldb + j]);
      float *c = C + i * (size_t)ldc + j;
      *c = alpha * s + (beta == 0.0f ? 0.0f : beta * *c);
    }
}

int ss__matmul_engine(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
  mm_key k;
  memset(&k, 0, sizeof k); /* the key is hashed and compared as bytes */
  k.ta = ta == SS_MM_T, k.tb = tb == SS_MM_T, k.M = M, k.N = N, k.K = K;
  k.lda = lda, k.ldb = ldb, k.ldc = ldc, k.nthr = omp_get_max_threads();
  memcpy(&k.alpha, &alpha, sizeof alpha);
  memcpy(&k.beta, &beta, sizeof beta);
  return engine_matmul(&k, NULL, A, lda, B, C, NULL);
}

void ss__matmul_few_rows(ss_mm_trans tb, int M, int N, int K, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc) {
  if (tb == SS_MM_T)
    few_rows_bt(A, (size_t)lda, (size_t)M, (size_t)K, B, (size_t)ldb, (size_t)N, C, (size_t)ldc,
                beta != 0.0f);
  else
    few_rows_b(A, (size_t)lda, (size_t)M, (size_t)K, B, (size_t)ldb, (size_t)N, C, (size_t)ldc,
               beta != 0.0f);
}

/* Where the hand-written kernels measured faster than oneDNN's gemm and OpenBLAS (bench/mm_probe.c
 * parts 2 and 3, weights cold as in a trunk, one and two threads; see matmul.h): B^T 2..8 rows
 * (the pair-outer kernel reads W once for any row count); B 2..4 rows on one thread, 2..3 on
 * more (it streams W once per 4 rows). nthr: the calling worker's intra-op threads. */
static int prefer_few_rows(ss_mm_trans tb, int M, int nthr) {
  return M >= 2 && (tb == SS_MM_T || M <= (nthr == 1 ? 4 : 3));
}

/* On CPUs without brgemm, OpenBLAS for products of this many rows and more: 16, and with B as
 * stored on one thread already from 5 (its packed kernel beat oneDNN's gemm 1.3-1.4x on 6..12-row
 * decode batches there; on two threads oneDNN's was faster). */
static int blas_min_rows(ss_mm_trans tb, int nthr) {
  return tb == SS_MM_N && nthr == 1 ? 5 : SS_BLAS_MIN_ROWS;
}

void ss_matmul(ss_mm_trans ta, ss_mm_trans tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) { /* an empty sum: C = beta C (beta 0: C is not read) */
    for (size_t i = 0; i < (size_t)M; i++)
      for (size_t j = 0; j < (size_t)N; j++) {
        float *c = C + i * (size_t)ldc + j;
        *c = beta == 0.0f ? 0.0f : beta * *c;
      }
    return;
  }
  int nthr = omp_get_max_threads();
  if (ta == SS_MM_N && M <= SS_SMALL_ROWS && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) &&
      prefer_few_rows(tb, M, nthr)) {
    ss__matmul_few_rows(tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  pthread_once(&eng.once, engine_init);
  if (eng.blas_large && M >= blas_min_rows(tb, nthr)) {
    cblas_sgemm(CblasRowMajor, ta == SS_MM_T ? CblasTrans : CblasNoTrans,
                tb == SS_MM_T ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
    return;
  }
  if (ss__matmul_engine(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) != 0)
    loops_matmul(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The engine's threads: each worker's OpenMP team (oneDNN's and OpenBLAS's OpenMP builds follow
 * it). */
void ss_compute_thread_init(int intra_op_threads) {
  int n = intra_op_threads > 0 ? intra_op_threads : 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  (void)ss_matmul_engine_info(); /* made (and logged) at start-up, not on the first request */
}
