/*
 * safetensors.h — read-only, mmapped safetensors files
 * (https://huggingface.co/docs/safetensors: u64 LE header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the byte buffer; offsets are relative to the buffer start).
 *
 * Every header field is checked against the file: a truncated file, a header length past the
 * end, offsets outside the buffer or overlapping/inconsistent with shape x dtype size, unknown
 * dtypes and non-object JSON are all rejected with a message naming the tensor and the numbers.
 * Thread: open on any thread; the returned views are immutable and shareable across threads.
 */
#ifndef SS_MODELS_SAFETENSORS_H
#define SS_MODELS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "splitserve.h"

typedef struct ss_st_tensor {
  char *name;     /* owned by the file object */
  ss_dtype dtype; /* F32, F16, BF16 (other dtypes are refused at open) */
  int ndim;
  int64_t shape[SS_MAX_DIMS];
  size_t numel;
  const void *data; /* points into the mmap; valid until ss_st_close() */
  size_t nbytes;
} ss_st_tensor;

typedef struct ss_st_file ss_st_file;

/* Open and validate path. *out: caller frees with ss_st_close(). Returns 0 or <0 + message. */
int ss_st_open(const char *path, ss_st_file **out, char *err, size_t errlen);
/* Parse from memory (borrowed; must outlive the object) — used by tests and ss_st_open. */
int ss_st_parse(const void *buf, size_t len, ss_st_file **out, char *err, size_t errlen);
size_t ss_st_count(const ss_st_file *f);
const ss_st_tensor *ss_st_at(const ss_st_file *f, size_t i);
/* Tensor by name, or NULL. */
const ss_st_tensor *ss_st_find(const ss_st_file *f, const char *name);
void ss_st_close(ss_st_file *f);
/* f's read-only file mapping: *base, *len (NULL, 0 when f was parsed from memory). */
void ss_st_mapping(const ss_st_file *f, const void **base, size_t *len);

/* Are f's mapped bytes still the file's? Fails (SS_EPRECONDITION, message naming the file) when
 * the file was truncated under the mapping (a read faulted: see the SIGBUS guard in
 * safetensors.c) or rewritten in place (same inode, new size or mtime). Any thread; cheap
 * (one fstat): called after every forward of a model that reads mapped weights. */
int ss_st_check(const ss_st_file *f, char *err, size_t errlen);
/* Does the path f was opened from now name other bytes (renamed-over, changed in place or
 * damaged)? Used by a reload to load such a model afresh even when its spec is unchanged. */
int ss_st_changed_on_disk(const ss_st_file *f);

/* A float32 view of t's data: the mmapped bytes themselves when t is F32 and 4-byte aligned
 * (*own = NULL), else a converted copy in *own, from alloc (the model backend's allocator, so
 * the caller releases it with the same backend; NULL: malloc, the caller frees). Returns 0 or
 * SS_ENOMEM. */
int ss_st_f32(const ss_st_tensor *t, const float **view, float **own, void *(*alloc)(size_t));

/* Write a safetensors file (F32 tensors only; tests and tools). Through a fresh temporary
 * renamed over path (core/file.h), without fsync. names/shapes/data borrowed. Returns 0 or <0. */
int ss_st_write_f32(const char *path, size_t n, const char *const *names,
                    const int64_t *const *shapes, const int *ndims, const float *const *data,
                    char *err, size_t errlen);

/* The same, durably (checkpoints): ss_file_write_atomic writes a fresh temporary beside path
 * (O_CREAT|O_EXCL|O_NOFOLLOW: a link planted at PATH.tmp is never followed), fsyncs it, renames
 * it over path and fsyncs the directory, so a reader sees the old file or the new one, never a
 * torn one. On error the temporary is removed and path is untouched. */
int ss_st_write_f32_atomic(const char *path, size_t n, const char *const *names,
                           const int64_t *const *shapes, const int *ndims, const float *const *data,
                           char *err, size_t errlen);

#endif
