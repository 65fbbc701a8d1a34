/*
 * packed.c — model weights kept in the dtype and layout a model's compute wants (the model key
 * compute=f32|bf16|int8; see matmul.h ss_matmul_w), made once per weight and reused by every
 * product, and the products' fused epilogues (ss_matmul_w_ep):
 *
 *   f32   oneDNN's brgemm layout (format_tag any), on CPUs with brgemm (AVX-512 and up):
 *         brgemm otherwise copies B into its blocks on every call (2.6x on GPT-2's c_fc), and
 *         the packed copy also beat the few-row kernels and gemv at 1..8 rows. Without brgemm
 *         (AVX2: oneDNN gemm:jit / OpenBLAS) products of up to 32 rows read the weight in
 *         16-column panels (panel.c, panel_rows below): OpenBLAS and oneDNN's gemm copied it
 *         into panels of their own on every call from 5 and 9 rows; prefill-sized products
 *         read it as stored (their per-call copy is under 1/32 of the work). A second f32
 *         copy there (RSS: the weight stays resident for prefill).
 *   bf16  oneDNN's brgemm layout (format_tag any: blocked, the same for every M), converted by a
 *         oneDNN reorder; products on oneDNN with A converted per call, f32 accumulation
 *         (matmul_int.h). Needs avx512_bf16 or AMX (the registry refuses it elsewhere).
 *   int8  weight-only: int8 weights with a scale per output channel (max |w| / 127, round to
 *         nearest); activations stay f32. The weight is laid out for the few-row kernels as one
 *         sequential stream (q8_pos): output channels in groups of 4, each group [K/16][4][16]
 *         (16 k of its 4 rows in turn: a cache line) then its K % 16 tail. A few rows (decode
 *         steps, small batches: M <= SS_Q8_ROWS) run a kernel that reads the group stream
 *         straight (a quarter of f32's bytes) with software prefetch, widening each 16-byte
 *         piece once for up to 4 rows of X (4 x 4 register block: AVX-512 and AVX2+FMA from one
 *         macro, plain loops elsewhere): a Qwen2-shaped decode step reads it at ~11-12 GB/s on
 *         one thread, near the 14.5 a plain read gets from DRAM here (mm_probe part 4).
 *         More rows dequantize the weight into the thread's f32 buffer and run the f32 engine
 *         (prefill is compute bound: the 4x fewer bytes buy nothing there).
 *
 * The table: keyed by owner (the model), weight address and how products read it (tb, K, N,
 * ldw); made on first use under nobody's lock (a racing thread's copy is dropped), read under a
 * read lock by every product, changed under the write lock. An entry lives until its weight
 * changes (ss_matmul_weight_changed: the optimizer step, under the model's write lock, so no
 * product of that model runs) or its owner is freed; a product holds no lock while it runs, which
 * is safe for the same reason.
 *
 * RSS. A trunk's f32 weights are views of its read-only checkpoint mapping (registered with
 * ss_matmul_weights_source); once a weight's copy serves every product (brgemm f32, bf16, int8)
 * its pages go back to the page cache (MADV_PAGEOUT), so RSS counts one copy per weight, not two.
 * A BF16/F16 checkpoint's matrices have no f32 copy at all where every product runs packed: their
 * f32 arrays are deferred (nn/deferred.h), packed from the checkpoint's values widened into a
 * temporary, and made real only by the product that must read f32 (the fallback below), or by
 * training and saving (models/trunk.c).
 *
 * Epilogues (bias, GELU/SiLU, a multiplier: matmul.h ss_mm_epilogue) run as oneDNN bias and
 * post-ops on the f32 and bf16 packed products; elsewhere (int8, unpacked f32) as passes over C
 * after the product.
 *
 * Thread: any worker (and the loop thread with --workers 0); per-thread dequantization buffers
 * (nn/tbuf.h; freed when the thread exits).
 */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "models/nn/deferred.h"
#include "models/nn/gelu.h"
#include "models/nn/matmul.h"
#include "models/nn/matmul_int.h"
#include "models/nn/silu.h"
#include "models/nn/tbuf.h"

#define SS_Q8_ROWS 16 /* int8 products of at most this many rows read the int8 weight directly */
/* f32 products without brgemm that read the weight's panels (panel.c): up to 32 rows, whatever
 * the layout, so every decode-sized product reads one copy (mixing it with products that read
 * the weight as stored kept both copies in the caches: 8 GPT-2 sessions ran 1.2x instead of
 * 1.45x faster); the panels beat gemv at 1 row and the few-row kernels, and OpenBLAS and oneDNN's
 * gemm copied the weight into their own panels on every call from 5 and 9 rows. Larger products
 * (prefill) read the weight as stored: copying it per call costs under 1/32 of their work, and
 * the panel kernel ran 0.75-0.9x OpenBLAS at 128 rows (bench/results/2026-12-05-avx2-panels.md). */
static int panel_rows(int M) { return M <= 32; }

/* Does a product of M rows of cc's weights run on a packed copy? bf16, int8: always; f32: on
 * brgemm CPUs always, elsewhere in panels up to panel_rows. */
static int packs(const ss_compute *cc, int M) {
  return ss_matmul_w_always_packed(cc) || (cc != NULL && cc->dtype == SS_MM_F32 &&
                                           cc->owner != NULL && panel_rows(M) && ss__panel_ok());
}

typedef struct packed_w {
  struct packed_w *next;
  const void *owner;
  const float *w;
  int tb, K, N, ldw;
  ss_mm_dtype dt;
  int panel;             /* f32 without brgemm: 16-column panels (panel.c) in data */
  dnnl_memory_desc_t md; /* f32, bf16: the packed layout */
  void *data;            /* f32, bf16: as md; int8: q [N][K] */
  float *scale;          /* int8: [N] */
  size_t bytes;
} packed_w;

#define SS_PACK_BUCKETS 256
#define SS_PACK_SOURCES 64 /* models whose weights are views of a read-only file mapping */

static struct {
  pthread_rwlock_t lk;
  packed_w *bucket[SS_PACK_BUCKETS];
  size_t bytes, count;
  struct {
    const void *owner;
    uintptr_t lo, hi;
  } src[SS_PACK_SOURCES]; /* owner NULL: free */
} pk = {.lk = PTHREAD_RWLOCK_INITIALIZER};

static ss_tbuf deq_buf; /* each thread's dequantization buffer (prefill-sized int8 products) */

static size_t pack_hash(const float *w) {
  uintptr_t u = (uintptr_t)w;
  return (size_t)((u >> 6) ^ (u >> 16)) & (SS_PACK_BUCKETS - 1);
}

static packed_w *pack_find(const void *owner, const float *w, int tb, int K, int N, int ldw) {
  for (packed_w *e = pk.bucket[pack_hash(w)]; e; e = e->next)
    if (e->w == w && e->owner == owner && e->tb == tb && e->K == K && e->N == N && e->ldw == ldw)
      return e;
  return NULL;
}

static void pack_free(packed_w *e) {
  if (!e) return;
  free(e->data);
  free(e->scale);
  free(e);
}

/* W[k][j] as B: tb 0 [K, N], tb 1 [N, K]. */
static inline float wat(const float *W, int tb, size_t ldw, size_t k, size_t j) {
  return tb ? W[j * ldw + k] : W[k * ldw + j];
}

/* The int8 layout: output channels in groups of 4 (the last group has N % 4 if that is not 0:
 * nr rows), group g at byte 4 g K, so that a product reads the weight as one sequential stream:
 * [K / 16][nr][16] (16 k of each of the group's rows in turn: one cache line when nr is 4), then
 * the K % 16 tail as [nr][K % 16]. The byte of W[k][j]: */
static size_t q8_pos(size_t K, size_t N, size_t j, size_t k) {
  size_t g0 = j & ~(size_t)3, r = j - g0, nr = N - g0 < 4 ? N - g0 : 4, k16 = K & ~(size_t)15;
  if (k < k16) return g0 * K + (k >> 4) * nr * 16 + r * 16 + (k & 15);
  return g0 * K + k16 * nr + r * (K - k16) + (k - k16);
}

static int pack_int8(packed_w *e, const float *W) {
  size_t K = (size_t)e->K, N = (size_t)e->N, ldw = (size_t)e->ldw;
  int8_t *q = NULL;
  float *sc = malloc(N * sizeof *sc);
  if (posix_memalign((void **)&q, 64, N * K) != 0 || !sc) {
    free(q);
    free(sc);
    return -1;
  }
  for (size_t j = 0; j < N; j++) {
    float mx = 0.0f;
    for (size_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf(wat(W, e->tb, ldw, k, j)));
    float s = mx / 127.0f, inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (size_t k = 0; k < K; k++) {
      float v = nearbyintf(wat(W, e->tb, ldw, k, j) * inv);
      q[q8_pos(K, N, j, k)] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
    }
    sc[j] = s;
  }
  e->data = q, e->scale = sc;
  e->bytes = N * K + N * sizeof *sc;
  return 0;
}

/* Floats a product reads of its weight: from W to the end of its last row as stored. */
static size_t w_extent(int tb, int K, int N, int ldw) {
  return tb ? (size_t)(N - 1) * (size_t)ldw + (size_t)K : (size_t)(K - 1) * (size_t)ldw + (size_t)N;
}

/* W packed for dt; NULL if it cannot be (the caller computes in f32). A deferred weight not yet
 * made real (nn/deferred.h) is packed from its checkpoint values, widened into a temporary. */
static packed_w *pack_make(ss_mm_dtype dt, const void *owner, const float *W, int tb, int K, int N,
                           int ldw) {
  packed_w *e = calloc(1, sizeof *e);
  float *tmp = NULL;
  const float *src = W;
  if (!e) return NULL;
  e->owner = owner, e->w = W, e->tb = tb, e->K = K, e->N = N, e->ldw = ldw, e->dt = dt;
  int rc = -1;
  size_t ext = w_extent(tb, K, N, ldw);
  if (ss_weight_deferred_read(W, ext, NULL) == 1) {
    /* its own mapping, unmapped after: a heap block this size would stay resident */
    void *m =
        mmap(NULL, ext * sizeof *tmp, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      free(e);
      return NULL;
    }
    tmp = m;
    if (ss_weight_deferred_read(W, ext, tmp) == 1) src = tmp; /* else made real meanwhile */
  }
  if (dt == SS_MM_INT8) {
    rc = pack_int8(e, src);
  } else if (dt == SS_MM_F32 && !ss__mm_has_brgemm()) { /* f32 panels (AVX2) */
    e->panel = 1;
    e->bytes = ss__panel_bytes(K, N);
    if (posix_memalign(&e->data, 64, e->bytes) == 0) {
      ss__panel_pack(src, tb, K, N, ldw, e->data);
      rc = 0;
    }
  } else if (ss__mm_packed_layout(dt, K, N, &e->md) == 0) { /* f32, bf16 */
    e->bytes = dnnl_memory_desc_get_size(&e->md);
    if (posix_memalign(&e->data, 64, e->bytes) == 0)
      rc = ss__mm_pack(src, tb, K, N, ldw, &e->md, e->data);
  }
  if (tmp) munmap(tmp, ext * sizeof *tmp);
  if (rc != 0) {
    pack_free(e);
    return NULL;
  }
  return e;
}

/* A new copy (it serves every product of its weight): when the weight lies in its owner's read-only
 * file mapping, its pages go back to the page cache (MADV_PAGEOUT; read again from the file only if
 * something reads the f32 weight: a backward, a refused product), so RSS holds the packed copy and
 * not both. Under pk.lk. */
static void give_back_source(const packed_w *e) {
#ifdef MADV_PAGEOUT
  const void *from = e->w;
  size_t bytes = w_extent(e->tb, e->K, e->N, e->ldw) * sizeof(float);
  if (ss_weight_deferred_source(e->w, bytes / sizeof(float), &from, &bytes) != 0) from = e->w;
  uintptr_t w = (uintptr_t)from, pg = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t lo = (w + pg - 1) & ~(pg - 1), hi = (w + bytes) & ~(pg - 1);
  for (int i = 0; i < SS_PACK_SOURCES; i++)
    if (pk.src[i].owner == e->owner && w >= pk.src[i].lo && w + bytes <= pk.src[i].hi) {
      if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_PAGEOUT); /* a hint: failure is fine */
      return;
    }
#else
  (void)e;
#endif
}

void ss_matmul_weights_source(const void *owner, const void *base, size_t len) {
  if (!owner || !base || len == 0) return;
  pthread_rwlock_wrlock(&pk.lk);
  for (int i = 0; i < SS_PACK_SOURCES; i++)
    if (pk.src[i].owner == NULL) {
      pk.src[i].owner = owner;
      pk.src[i].lo = (uintptr_t)base, pk.src[i].hi = (uintptr_t)base + len;
      break;
    }
  pthread_rwlock_unlock(&pk.lk);
}

static packed_w *pack_get(ss_mm_dtype dt, const void *owner, const float *W, int tb, int K, int N,
                          int ldw) {
  pthread_rwlock_rdlock(&pk.lk);
  packed_w *e = pack_find(owner, W, tb, K, N, ldw);
  pthread_rwlock_unlock(&pk.lk);
  if (e) return e->dt == dt ? e : NULL;
  packed_w *made = pack_make(dt, owner, W, tb, K, N, ldw);
  if (!made) return NULL;
  pthread_rwlock_wrlock(&pk.lk);
  if ((e = pack_find(owner, W, tb, K, N, ldw)) == NULL) {
    size_t h = pack_hash(W);
    made->next = pk.bucket[h];
    pk.bucket[h] = made;
    pk.bytes += made->bytes;
    pk.count++;
    e = made, made = NULL;
    if (!e->panel) give_back_source(e); /* panels serve only some row counts */
  }
  pthread_rwlock_unlock(&pk.lk);
  pack_free(made);
  return e->dt == dt ? e : NULL;
}

/* Drop the entries that match (owner NULL: any owner; w NULL: any weight). */
static void pack_drop(const void *owner, const float *w) {
  pthread_rwlock_wrlock(&pk.lk);
  for (size_t h = 0; h < SS_PACK_BUCKETS; h++) {
    if (w && h != pack_hash(w)) continue;
    for (packed_w **pp = &pk.bucket[h]; *pp;) {
      packed_w *e = *pp;
      if ((!owner || e->owner == owner) && (!w || e->w == w)) {
        *pp = e->next;
        pk.bytes -= e->bytes;
        pk.count--;
        pack_free(e);
      } else {
        pp = &e->next;
      }
    }
  }
  pthread_rwlock_unlock(&pk.lk);
}

void ss_matmul_weight_changed(const float *W) { pack_drop(NULL, W); }

int ss_matmul_w_always_packed(const ss_compute *cc) {
  return cc != NULL && (cc->dtype != SS_MM_F32 || (cc->owner != NULL && ss__mm_has_brgemm()));
}

void ss_matmul_weights_drop(const void *owner) {
  if (!owner) return;
  pack_drop(owner, NULL);
  ss_weights_deferred_drop(owner);
  pthread_rwlock_wrlock(&pk.lk);
  for (int i = 0; i < SS_PACK_SOURCES; i++)
    if (pk.src[i].owner == owner) pk.src[i].owner = NULL;
  pthread_rwlock_unlock(&pk.lk);
}

size_t ss_matmul_packed_bytes(void) {
  pthread_rwlock_rdlock(&pk.lk);
  size_t n = pk.bytes;
  pthread_rwlock_unlock(&pk.lk);
  return n;
}

/* ------------------------------------------------------------------ int8 products */

/* How far ahead of the weight stream the int8 kernels prefetch, in bytes: into L2 far ahead,
 * into L1 near. The groups' stream is sequential, yet on one Sapphire Rapids thread (Qwen2
 * up_proj, 256 MB of copies, noisy VM) the hardware prefetchers alone read it at 8-10 GB/s; with
 * L1 2 KiB ahead, 10-14.5; with L2 8 KiB and L1 512 B ahead, 12.5-14.7 (a plain read: 14.5). */
#define SS_Q8_AHEAD_L2 8192
#define SS_Q8_AHEAD_L1 512

/* The int8 kernels: AVX-512 and AVX2+FMA (the int8 -> f32 widening is vpmovsxbd + vcvtdq2ps,
 * which GCC does not make of vector-extension code), and plain loops for other CPUs; chosen once
 * (q8_level). A kernel takes one group of nr (1..4) weight rows g (the layout at q8_pos) and r
 * (1..4) rows of X x[0..r-1] and gives out[i][c] = x[i] . w_c: each 16-byte piece of the weight
 * is widened once and used by every X row, each piece of X loaded once and used by the 4 weight
 * rows (16 accumulators at r = 4). */
typedef void (*q8_group_fn)(const float *const x[4], int r, const int8_t *g, int nr, size_t K,
                            float out[4][4]);

/* A group of nr weight rows g back to f32 rows d[c * K + k] = w_c[k] * sc[c] (dequantizing a
 * weight for the products of many rows). */
typedef void (*q8_deq_fn)(float *d, const int8_t *g, int nr, size_t K, const float *sc);

/* The K % 16 tail of a group (p: its [nr][K % 16] bytes), added to out. */
static void q8_tail(const float *const x[4], int r, const int8_t *p, int nr, size_t k16, size_t kt,
                    float out[4][4]) {
  for (int c = 0; c < nr; c++, p += kt)
    for (int i = 0; i < r; i++) {
      float s = 0.0f;
      for (size_t u = 0; u < kt; u++) s += x[i][k16 + u] * (float)p[u];
      out[i][c] += s;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SS_Q8_AVX2 1
#define AVX2 __attribute__((target("avx2,fma")))
AVX2 static inline __m256 q8ld(const int8_t *p) {
  __m128i b;
  memcpy(&b, p, 8); /* (upper half unused) */
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
/* The four horizontal sums of a, b, c, d at once. */
AVX2 static inline void hsum4_8(__m256 a, __m256 b, __m256 c, __m256 d, float out[4]) {
  __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
  __m256 s = _mm256_add_ps(
      _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))),
      _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

/* The kernels, written once for a vector width: ATTR (its target), V (the vector type), L (its
 * lanes: 16 / L vectors a piece), and its zero, load, fma, int8 widening and 4-way horizontal
 * sum. q8_rx4_W is R X rows (a constant in each of the four copies q8_group_W switches to)
 * against the group's 4 rows. (Tried: 5..8 X rows as two passes of R x 2, widening each piece
 * once per 8 rows instead of twice: slower in the Qwen2 trunk's 8 sessions, 148-177 steps/s
 * against 190-195, as 8 rows of a 4864-wide X no longer fit L1 and each pass reads them.) */
#define Q8_KERNELS(W, ATTR, V, L, ZERO, LD, FMA, WIDEN, SUM4)                                      \
  ATTR static inline __attribute__((always_inline)) void q8_rx4_##W(                               \
      const float *const x[4], const int8_t *g, int nr, size_t K, float out[4][4], const int R) {  \
    V a[4][4];                                                                                     \
    size_t o[4], st = (size_t)nr * 16, k16 = K & ~(size_t)15;                                      \
    for (int c = 0; c < 4; c++) o[c] = (size_t)(c < nr ? c : nr - 1) * 16;                         \
    _Pragma("GCC unroll 4") for (int i = 0; i < R; i++)                                            \
        _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) a[i][c] = ZERO();                      \
    const int8_t *p = g;                                                                           \
    for (size_t k = 0; k < k16; k += 16, p += st) {                                                \
      _mm_prefetch((const char *)p + SS_Q8_AHEAD_L2, _MM_HINT_T1);                                 \
      _mm_prefetch((const char *)p + SS_Q8_AHEAD_L1, _MM_HINT_T0);                                 \
      _Pragma("GCC unroll 2") for (int h = 0; h < 16; h += (L)) {                                  \
        V xv[4];                                                                                   \
        _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) xv[i] = LD(x[i] + k + h);              \
        _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {                                      \
          V w = WIDEN(p + o[c] + h);                                                               \
          _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) a[i][c] = FMA(xv[i], w, a[i][c]);    \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
    _Pragma("GCC unroll 4") for (int i = 0; i < R; i++)                                            \
        SUM4(a[i][0], a[i][1], a[i][2], a[i][3], out[i]);                                          \
    if (K > k16) q8_tail(x, R, p, nr, k16, K - k16, out);                                          \
  }                                                                                                \
  ATTR static void q8_group_##W(const float *const x[4], int r, const int8_t *g, int nr, size_t K, \
                                float out[4][4]) {                                                 \
    if (r == 1)                                                                                    \
      q8_rx4_##W(x, g, nr, K, out, 1);                                                             \
    else if (r == 2)                                                                               \
      q8_rx4_##W(x, g, nr, K, out, 2);                                                             \
    else if (r == 3)                                                                               \
      q8_rx4_##W(x, g, nr, K, out, 3);                                                             \
    else                                                                                           \
      q8_rx4_##W(x, g, nr, K, out, 4);                                                             \
  }

Q8_KERNELS(avx2, AVX2, __m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, q8ld,
           hsum4_8)

/* q8_deq_fn, 8 lanes wide (also on AVX-512 CPUs: a 16-lane copy of it held a 128-row int8
 * product (mm_probe, weight hot) to 97-110 GFLOP/s against 126-138 with this one; the widening
 * and the f32 stores are the same work, the measured cost is not). */
AVX2 static void q8_deq_avx2(float *d, const int8_t *g, int nr, size_t K, const float *sc) {
  size_t k16 = K & ~(size_t)15, kt = K - k16;
  for (int c = 0; c < nr; c++) /* row by row: one write stream */
    for (size_t k = 0; k < k16; k += 16)
      for (size_t h = 0; h < 16; h += 8) {
        __m256 w =
            _mm256_mul_ps(q8ld(g + k * (size_t)nr + (size_t)c * 16 + h), _mm256_set1_ps(sc[c]));
        _mm256_storeu_ps(d + (size_t)c * K + k + h, w);
      }
  g += k16 * (size_t)nr;
  for (int c = 0; c < nr; c++, g += kt)
    for (size_t t = 0; t < kt; t++) d[(size_t)c * K + k16 + t] = (float)g[t] * sc[c];
}

/* The same 16 lanes wide (AVX-512F/BW): twice the lanes per widening and FMA. */
#define AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw")))
AVX512 static inline __m512 q8ld16(const int8_t *p) {
  __m128i b;
  memcpy(&b, p, 16);
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}
/* Each folded to 8 lanes, then hsum4_8 (a few more operations than a 16-lane fold, once per
 * 4 outputs). */
AVX512 static inline __m256 fold256(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
AVX512 static inline void hsum4_16(__m512 a, __m512 b, __m512 c, __m512 d, float out[4]) {
  hsum4_8(fold256(a), fold256(b), fold256(c), fold256(d), out);
}

Q8_KERNELS(avx512, AVX512, __m512, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, q8ld16,
           hsum4_16)
#endif

static void q8_group_plain(const float *const x[4], int r, const int8_t *g, int nr, size_t K,
                           float out[4][4]) {
  for (int i = 0; i < r; i++)
    for (int c = 0; c < nr; c++) {
      float s = 0.0f;
      for (size_t k = 0; k < K; k++) s += x[i][k] * (float)g[q8_pos(K, (size_t)nr, (size_t)c, k)];
      out[i][c] = s;
    }
}

static void q8_deq_plain(float *d, const int8_t *g, int nr, size_t K, const float *sc) {
  for (int c = 0; c < nr; c++)
    for (size_t k = 0; k < K; k++)
      d[(size_t)c * K + k] = (float)g[q8_pos(K, (size_t)nr, (size_t)c, k)] * sc[c];
}

/* Which int8 kernels run: 2 AVX-512, 1 AVX2, 0 plain (ss__simd_level: the CPU's, capped by
 * ONEDNN_MAX_CPU_ISA, so the capped test runs exercise each level's kernels). */
static int q8_level(void) {
#ifdef SS_Q8_AVX2
  return ss__simd_level();
#else
  return 0;
#endif
}

/* The kernels of q8_level: the product's and the dequantizer. */
typedef struct q8_kernels {
  q8_group_fn group;
  q8_deq_fn deq;
} q8_kernels;

static q8_kernels q8_kernel(void) {
#ifdef SS_Q8_AVX2
  int l = q8_level();
  if (l == 2) return (q8_kernels){q8_group_avx512, q8_deq_avx2};
  if (l == 1) return (q8_kernels){q8_group_avx2, q8_deq_avx2};
#endif
  return (q8_kernels){q8_group_plain, q8_deq_plain};
}

static inline void q8_store(const packed_w *e, float *C, int ldc, int row, long j, float d,
                            float beta) {
  float *c = C + (size_t)row * (size_t)ldc + (size_t)j, v = d * e->scale[j];
  *c = beta != 0.0f ? *c + v : v;
}

/* C [M, N] (=|+=) A [M, K] W^T from the int8 groups: each group of 4 output channels against
 * every group of 4 rows of A in turn, so the group's bytes come from memory once (later row
 * groups find them in L1/L2) and the weight is one sequential stream. Groups split over the
 * worker's OpenMP team (contiguous ranges: a stream each). */
static void q8_few_rows(const packed_w *e, int M, const float *A, int lda, float beta, float *C,
                        int ldc) {
  long N = e->N, ng = (N + 3) / 4;
  size_t K = (size_t)e->K;
  const int8_t *q = e->data;
  q8_group_fn kern = q8_kernel().group;
  int par = N > 64 && (size_t)N * K >= (1u << 18);
#pragma omp parallel for schedule(static) if (par)
  for (long gi = 0; gi < ng; gi++) {
    long j = gi * 4;
    int nr = N - j < 4 ? (int)(N - j) : 4;
    for (int r0 = 0; r0 < M; r0 += 4) {
      int r = M - r0 < 4 ? M - r0 : 4;
      const float *x[4];
      float d[4][4];
      for (int i = 0; i < 4; i++) x[i] = A + (size_t)(r0 + (i < r ? i : 0)) * (size_t)lda;
      kern(x, r, q + (size_t)j * K, nr, K, d);
      for (int i = 0; i < r; i++)
        for (int c = 0; c < nr; c++) q8_store(e, C, ldc, r0 + i, j + c, d[i][c], beta);
    }
  }
}

/* The whole weight back to f32 [N][K] in the thread's buffer (prefill-sized products). */
static const float *q8_dequant(const packed_w *e) {
  size_t K = (size_t)e->K, N = (size_t)e->N;
  float *d = ss_tbuf_floats(&deq_buf, N * K);
  if (!d) return NULL;
  q8_deq_fn deq = q8_kernel().deq;
  const int8_t *q = e->data;
  for (size_t g0 = 0; g0 < N; g0 += 4)
    deq(d + g0 * K, q + g0 * K, N - g0 < 4 ? (int)(N - g0) : 4, K, e->scale + g0);
  return d;
}

/* The epilogue as separate passes over C's rows (the products that run unfused). */
static void ep_apply(const ss_mm_epilogue *ep, int M, int N, float *C, int ldc) {
  if (ldc == N && (!ep->mul || ep->ldm == N)) { /* contiguous: one pass over all rows */
    int all = M * N;
    M = 1, N = all, ldc = all;
  }
  for (size_t r = 0; r < (size_t)M; r++) {
    float *c = C + r * (size_t)ldc;
    if (ep->act == SS_ACT_GELU_TANH)
      ss_gelu_tanh_forward(c, c, (size_t)N);
    else if (ep->act == SS_ACT_GELU_ERF)
      ss_gelu_erf_forward(c, c, (size_t)N);
    else if (ep->act == SS_ACT_SILU)
      ss_silu_forward(c, c, (size_t)N);
    if (ep->mul) {
      const float *m = ep->mul + r * (size_t)ep->ldm;
      for (size_t j = 0; j < (size_t)N; j++) c[j] *= m[j];
    }
  }
}

void ss_matmul_w_ep(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K, const float *A,
                    int lda, const float *W, int ldw, const ss_mm_epilogue *ep, float beta,
                    float *C, int ldc) {
  packed_w *e;
  if (ep && !ep->bias && ep->act == SS_ACT_NONE && !ep->mul) ep = NULL;
  if (cc && M > 0 && N > 0 && K > 0 && (beta == 0.0f || beta == 1.0f) && packs(cc, M) &&
      (e = pack_get(cc->dtype, cc->owner, W, tb == SS_MM_T, K, N, ldw)) != NULL) {
    if (e->panel) { /* (packs: only products of up to panel_rows rows get here) */
      ss__panel_matmul(M, N, K, A, lda, e->data, ep ? ep->bias : NULL, beta, C, ldc);
      if (ep && (ep->act != SS_ACT_NONE || ep->mul)) ep_apply(ep, M, N, C, ldc);
      return;
    } else if (e->dt != SS_MM_INT8) {
      if (ss__mm_packed(e->dt, M, N, K, A, lda, &e->md, e->data, beta, C, ldc, ep) == 0) return;
    } else if (!ep && M <= SS_Q8_ROWS) {
      q8_few_rows(e, M, A, lda, beta, C, ldc);
      return;
    } else if (!ep) {
      const float *d = q8_dequant(e);
      if (d) {
        ss_matmul(SS_MM_N, SS_MM_T, M, N, K, 1.0f, A, lda, d, K, beta, C, ldc);
        return;
      }
    }
  }
  if (ep && ep->bias) { /* the bias laid down first, the product added onto it */
    for (size_t r = 0; r < (size_t)M; r++) {
      float *c = C + r * (size_t)ldc;
      if (beta != 0.0f)
        for (size_t j = 0; j < (size_t)N; j++) c[j] += ep->bias[j];
      else
        memcpy(c, ep->bias, (size_t)N * sizeof(float));
    }
    ss_matmul_w_ep(cc, tb, M, N, K, A, lda, W, ldw, NULL, 1.0f, C, ldc);
  } else if (ep) {
    ss_matmul_w_ep(cc, tb, M, N, K, A, lda, W, ldw, NULL, beta, C, ldc);
  } else {
    if (ss_weight_deferred_make_at(W) != 0) { /* a deferred weight read in f32: made real */
      for (size_t r = 0; r < (size_t)M; r++)  /* could not be: the answer is NaN, never zeros */
        for (size_t j = 0; j < (size_t)N; j++) C[r * (size_t)ldc + j] = NAN;
      return;
    }
    ss_matmul(SS_MM_N, tb, M, N, K, 1.0f, A, lda, W, ldw, beta, C, ldc);
    return;
  }
  if (ep->act != SS_ACT_NONE || ep->mul) ep_apply(ep, M, N, C, ldc);
}

void ss_matmul_w(const ss_compute *cc, ss_mm_trans tb, int M, int N, int K, const float *A, int lda,
                 const float *W, int ldw, float beta, float *C, int ldc) {
  ss_matmul_w_ep(cc, tb, M, N, K, A, lda, W, ldw, NULL, beta, C, ldc);
}
