/*
 * simd.h — what the vectorized model kernels share: an 8-float GCC vector type and the
 * target_clones attribute that builds an AVX2+FMA version next to the baseline one (the loader
 * picks per CPU). Used by matmul.c and vmath.c. Thread: n/a (types and macros).
 */
#ifndef SS_MODELS_NN_SIMD_H
#define SS_MODELS_NN_SIMD_H

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
/* (not under TSan: its runtime is not ready when the loader runs ifunc resolvers) */
#define SS_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SS_CLONES
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#endif
