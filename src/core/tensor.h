/*
 * tensor.h — tensor descriptors, dtype names and conversions, and validation of tensors that
 * arrive on the wire (shape as int32 list + raw bytes).
 *
 * Thread: pure functions, any thread. No allocation except where stated.
 */
#ifndef SS_CORE_TENSOR_H
#define SS_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "splitserve.h"

/* A tensor view. data is borrowed unless the owner of the struct says otherwise. */
typedef struct ss_tensor {
  ss_dtype dtype;
  int ndim;
  int64_t shape[SS_MAX_DIMS];
  size_t numel;
  void *data;
  size_t nbytes;
} ss_tensor;

/* The shape checks of ss_tensor_from_wire without the byte count (compressed payloads): fills
 * *out with data NULL and nbytes = the decoded size numel x dtype size. */
int ss_tensor_shape_from_wire(const char *what, const int32_t *shape, size_t ndim, ss_dtype dt,
                              ss_tensor *out, char *err, size_t errlen);

/* Dtype names and sizes, ss_shape_str, ss_to_f32 / ss_from_f32: public, in splitserve.h. */

/*
 * Validate a tensor received on the wire and fill *out (data points at `data`, borrowed).
 * Checks: 1 <= ndim <= SS_MAX_DIMS, no negative dims, element count and byte size do not
 * overflow, data_len == numel * dtype size. what: the field name used in messages ("data").
 * On error returns SS_EINVAL (or SS_ERANGE for overflow) and writes a message naming the
 * field with expected vs got, e.g. "data has 100 bytes but shape [1,10,768] x float32 needs 30720".
 */
int ss_tensor_from_wire(const char *what, const int32_t *shape, size_t ndim, const void *data,
                        size_t data_len, ss_dtype dt, ss_tensor *out, char *err, size_t errlen);

/* Element conversions (little-endian host assumed). n elements each. in and out must not
 * overlap. F32 -> F16/BF16 round to nearest even; NaN stays NaN, overflow becomes inf. */
/* Scan t (any dtype; data may be unaligned) for NaN or +-Inf. Returns 0 when every element is
 * finite; else SS_EINVAL with a message naming the first bad element by flat index and
 * coordinates: "grad_output_data[37] (coordinates [0,0,37]) is NaN; ..." (what = the field). */
int ss_tensor_check_finite(const char *what, const ss_tensor *t, char *err, size_t errlen);

void ss_f16_to_f32(const uint16_t *in, float *out, size_t n);
void ss_f32_to_f16(const float *in, uint16_t *out, size_t n);
void ss_bf16_to_f32(const uint16_t *in, float *out, size_t n);
void ss_f32_to_bf16(const float *in, uint16_t *out, size_t n);

#endif
