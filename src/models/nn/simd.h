/*
 * simd.h — what the vectorized model kernels share: an 8-float GCC vector type and the
 * target_clones attribute that builds an AVX2+FMA version next to the baseline one (the loader
 * picks per CPU). Used by matmul.c, packed.c and vmath.c. Thread: n/a (types and macros).
 */
#ifndef SS_MODELS_NN_SIMD_H
#define SS_MODELS_NN_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
/* (not under TSan: its runtime is not ready when the loader runs ifunc resolvers) */
#define SS_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SS_CLONES
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Unaligned 8-float load and store, and a broadcast. Macros, not functions: a vector-typed
 * parameter or return value would change the ABI of the baseline clone (-Wpsabi). */
#define ld8(p)                   \
  ({                             \
    v8 v_;                       \
    memcpy(&v_, (p), sizeof v_); \
    v_;                          \
  })
#define st8(p, v)                \
  do {                           \
    v8 s_ = (v);                 \
    memcpy((p), &s_, sizeof s_); \
  } while (0)
#define splat(x) ((v8){0} + (x))

#endif
