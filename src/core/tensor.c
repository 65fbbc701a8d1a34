/*
 * tensor.c — dtype names, wire-tensor validation and f16/bf16 <-> f32 conversions.
 *
 * Thread: pure functions, any thread (the loop validates requests, workers convert).
 * Validation is overflow-safe: a shape such as [2147483647,2147483647,2147483647] is refused
 * with SS_ERANGE before any size is computed in a narrower type. Conversions assume a
 * little-endian host and IEEE-754 floats; float -> half rounds to nearest, ties to even.
 */
#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

size_t ss_dtype_size(ss_dtype dt) {
  switch (dt) {
    case SS_DTYPE_F16:
    case SS_DTYPE_BF16: return 2;
    case SS_DTYPE_F32:
    default: return 4;
  }
}

const char *ss_dtype_name(ss_dtype dt) {
  switch (dt) {
    case SS_DTYPE_F32: return "float32";
    case SS_DTYPE_F16: return "float16";
    case SS_DTYPE_BF16: return "bfloat16";
    default: return "unknown";
  }
}

int ss_dtype_parse(const char *s, ss_dtype *out) {
  static const struct {
    const char *name;
    ss_dtype dt;
  } names[] = {{"float32", SS_DTYPE_F32}, {"fp32", SS_DTYPE_F32},      {"f32", SS_DTYPE_F32},
               {"float16", SS_DTYPE_F16}, {"fp16", SS_DTYPE_F16},      {"f16", SS_DTYPE_F16},
               {"half", SS_DTYPE_F16},    {"bfloat16", SS_DTYPE_BF16}, {"bf16", SS_DTYPE_BF16}};
  if (s == NULL) return SS_EINVAL;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (strcmp(s, names[i].name) == 0) {
      *out = names[i].dt;
      return 0;
    }
  }
  return SS_EINVAL;
}

char *ss_shape_str(const int64_t *shape, int ndim, char *buf, size_t buflen) {
  size_t pos = 0;
  if (buflen == 0) return buf;
  buf[0] = '\0';
  for (int i = -1; i <= ndim && pos < buflen; i++) {
    int w;
    if (i == -1)
      w = snprintf(buf + pos, buflen - pos, "[");
    else if (i == ndim)
      w = snprintf(buf + pos, buflen - pos, "]");
    else
      w = snprintf(buf + pos, buflen - pos, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (w < 0) break;
    pos += (size_t)w;
  }
  if (pos >= buflen && buflen >= 4) memcpy(buf + buflen - 4, "...", 4); /* visibly cut */
  return buf;
}

/* Format an int32 wire shape (possibly with more than SS_MAX_DIMS dims) for messages; returns buf.
 */
static const char *wire_shape_str(const int32_t *shape, size_t ndim, char *buf, size_t buflen) {
  int64_t tmp[SS_MAX_DIMS + 1] = {0};
  size_t k = ndim < SS_MAX_DIMS + 1 ? ndim : SS_MAX_DIMS + 1;
  for (size_t i = 0; i < k; i++) tmp[i] = shape[i];
  ss_shape_str(tmp, (int)k, buf, buflen);
  if (ndim > k && buflen > 5) { /* more dims than we show: "[1,...,9...]" */
    size_t len = strlen(buf);
    if (len > 0 && len + 4 < buflen) memcpy(buf + len - 1, ",...]", 6);
  }
  return buf;
}

static int from_wire(const char *what, const int32_t *shape, size_t ndim, const void *data,
                     size_t data_len, int check_len, ss_dtype dt, ss_tensor *out, char *err,
                     size_t errlen) {
  char sbuf[160];
  uint64_t numel = 1, nbytes;
  const size_t esize = ss_dtype_size(dt);

  if (what == NULL) what = "data";
  if (ndim == 0) {
    snprintf(err, errlen, "%s: shape is empty; expected 1 to %d dimensions", what, SS_MAX_DIMS);
    return SS_EINVAL;
  }
  /* The shape is formatted only for a message (SHP): that costs more than a tiny call's checks. */
#define SHP wire_shape_str(shape, ndim, sbuf, sizeof sbuf)
  if (ndim > SS_MAX_DIMS) {
    snprintf(err, errlen, "%s: shape %s has %zu dimensions; expected 1 to %d", what, SHP, ndim,
             SS_MAX_DIMS);
    return SS_EINVAL;
  }
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      snprintf(err, errlen, "%s: shape %s has a negative dimension (%d at index %zu)", what, SHP,
               (int)shape[i], i);
      return SS_EINVAL;
    }
  }
  for (size_t i = 0; i < ndim; i++) {
    if (__builtin_mul_overflow(numel, (uint64_t)shape[i], &numel)) {
      snprintf(err, errlen, "%s: shape %s has too many elements (element count overflows)", what,
               SHP);
      return SS_ERANGE;
    }
  }
  if (__builtin_mul_overflow(numel, (uint64_t)esize, &nbytes) || nbytes > (uint64_t)SIZE_MAX) {
    snprintf(err, errlen, "%s: shape %s x %s is too large (byte size overflows)", what, SHP,
             ss_dtype_name(dt));
    return SS_ERANGE;
  }
  if (check_len && (uint64_t)data_len != nbytes) {
    snprintf(err, errlen, "%s has %zu bytes but shape %s x %s needs %llu", what, data_len, SHP,
             ss_dtype_name(dt), (unsigned long long)nbytes);
    return SS_EINVAL;
  }
  if (out != NULL) {
    memset(out, 0, sizeof *out);
    out->dtype = dt;
    out->ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) out->shape[i] = shape[i];
    out->numel = (size_t)numel;
    out->data = (void *)(uintptr_t)data; /* borrowed view; constness is the caller's contract */
    out->nbytes = (size_t)nbytes;
  }
  return 0;
#undef SHP
}

int ss_tensor_from_wire(const char *what, const int32_t *shape, size_t ndim, const void *data,
                        size_t data_len, ss_dtype dt, ss_tensor *out, char *err, size_t errlen) {
  return from_wire(what, shape, ndim, data, data_len, 1, dt, out, err, errlen);
}

int ss_tensor_shape_from_wire(const char *what, const int32_t *shape, size_t ndim, ss_dtype dt,
                              ss_tensor *out, char *err, size_t errlen) {
  return from_wire(what, shape, ndim, NULL, 0, 0, dt, out, err, errlen);
}

/* ------------------------------------------------------------ conversions ---- */

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    /* zero or subnormal: mant x 2^-24, exact in float */
    float v = (float)mant * 0x1p-24f;
    return bits_f32(f32_bits(v) | sign);
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13)); /* inf / NaN (payload kept) */
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline uint16_t float_to_half(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t h;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) { /* inf or NaN; NaN stays a (quiet) NaN */
    h = 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0u);
  } else if (x >= 0x477ff000u) { /* >= 65520 rounds (ties-to-even) past 65504: inf */
    h = 0x7c00u;
  } else if (x >= 0x38800000u) { /* normal half (>= 2^-14) */
    uint32_t rem = x & 0x1fffu;
    h = (x >> 13) - (112u << 10);
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  } else if (x > 0x33000000u) { /* subnormal half; 2^-25 exactly ties to 0 */
    uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    h = m >> shift;
    if (rem > half || (rem == half && (h & 1u))) h++;
  } else {
    h = 0;
  }
  return (uint16_t)(sign | h);
}

static inline uint16_t float_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even; overflow carries into inf */
  return (uint16_t)(x >> 16);
}

void ss_f16_to_f32(const uint16_t *in, float *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = half_to_float(in[i]);
}

void ss_f32_to_f16(const float *in, uint16_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = float_to_half(in[i]);
}

void ss_bf16_to_f32(const uint16_t *in, float *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = bits_f32((uint32_t)in[i] << 16);
}

void ss_f32_to_bf16(const float *in, uint16_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = float_to_bf16(in[i]);
}

void ss_to_f32(ss_dtype dt, const void *in, float *out, size_t n) {
  if (dt != SS_DTYPE_F32 && ((uintptr_t)in & 1u)) { /* wire bytes at an odd offset */
    const unsigned char *b = in;
    for (size_t i = 0; i < n; i++) {
      uint16_t u;
      memcpy(&u, b + 2 * i, 2);
      out[i] = dt == SS_DTYPE_F16 ? half_to_float(u) : bits_f32((uint32_t)u << 16);
    }
    return;
  }
  switch (dt) {
    case SS_DTYPE_F16: ss_f16_to_f32((const uint16_t *)in, out, n); break;
    case SS_DTYPE_BF16: ss_bf16_to_f32((const uint16_t *)in, out, n); break;
    case SS_DTYPE_F32:
    default:
      if (n) memcpy(out, in, n * sizeof(float));
      break;
  }
}

void ss_from_f32(ss_dtype dt, const float *in, void *out, size_t n) {
  if (dt != SS_DTYPE_F32 && ((uintptr_t)out & 1u)) {
    unsigned char *b = out;
    for (size_t i = 0; i < n; i++) {
      uint16_t u = dt == SS_DTYPE_F16 ? float_to_half(in[i]) : float_to_bf16(in[i]);
      memcpy(b + 2 * i, &u, 2);
    }
    return;
  }
  switch (dt) {
    case SS_DTYPE_F16: ss_f32_to_f16(in, (uint16_t *)out, n); break;
    case SS_DTYPE_BF16: ss_f32_to_bf16(in, (uint16_t *)out, n); break;
    case SS_DTYPE_F32:
    default:
      if (n) memcpy(out, in, n * sizeof(float));
      break;
  }
}

int ss_tensor_check_finite(const char *what, const ss_tensor *t, char *err, size_t errlen) {
  const uint8_t *p = t->data;
  size_t i, n = t->numel;
  int kind = 0; /* 1 NaN, 2 +Inf, 3 -Inf */
  if (t->dtype == SS_DTYPE_F32) {
    for (i = 0; i < n; i++) {
      uint32_t u;
      memcpy(&u, p + 4 * i, 4);
      if ((u & 0x7f800000u) == 0x7f800000u) {
        kind = (u & 0x007fffffu) ? 1 : (u >> 31) ? 3 : 2;
        break;
      }
    }
  } else { /* f16: exponent 0x7c00, mantissa 0x03ff; bf16: exponent 0x7f80, mantissa 0x007f */
    uint16_t em = t->dtype == SS_DTYPE_F16 ? 0x7c00 : 0x7f80;
    uint16_t mm = t->dtype == SS_DTYPE_F16 ? 0x03ff : 0x007f;
    for (i = 0; i < n; i++) {
      uint16_t u;
      memcpy(&u, p + 2 * i, 2);
      if ((u & em) == em) {
        kind = (u & mm) ? 1 : (u >> 15) ? 3 : 2;
        break;
      }
    }
  }
  if (!kind) return 0;
  char coords[160];
  size_t off = 0, rest = i;
  int64_t idx[SS_MAX_DIMS];
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = t->shape[d] > 0 ? (int64_t)(rest % (size_t)t->shape[d]) : 0;
    rest = t->shape[d] > 0 ? rest / (size_t)t->shape[d] : 0;
  }
  coords[off++] = '[';
  for (int d = 0; d < t->ndim && off + 24 < sizeof coords; d++)
    off += (size_t)snprintf(coords + off, sizeof coords - off, "%s%lld", d ? "," : "",
                            (long long)idx[d]);
  snprintf(coords + off, sizeof coords - off, "]");
  snprintf(err, errlen,
           "%s[%zu] (coordinates %s) is %s; training inputs and gradients must be "
           "finite",
           what, i, coords,
           kind == 1   ? "NaN"
           : kind == 2 ? "+Inf"
                       : "-Inf");
  return SS_EINVAL;
}
