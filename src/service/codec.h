/*
 * codec.h — how a model's tensors travel on the wire when the request says nothing: the Python
 * client's TensorCodec(dtype=np.float16) sends raw float16 bytes and its CompressedTensorCodec
 * sends zlib.compress(raw bytes), both without any metadata. Model keys wire_dtype=
 * float32|float16|bfloat16 and wire_codec=none|zlib (server-wide defaults: --wire-dtype,
 * --wire-codec) say which; request metadata `dtype` / `codec` still win. The reply and the
 * gradients use the same encoding.
 *
 * Bounds: a zlib payload is inflated to exactly the size its shape and dtype give, which must not
 * exceed --max-message-bytes (checked before any allocation): a zip bomb costs nothing.
 *
 * Thread: resolve on the loop thread; inflate/deflate on a worker.
 */
#ifndef SS_SERVICE_CODEC_H
#define SS_SERVICE_CODEC_H

#include <stddef.h>

#include "core/meta.h"
#include "models/model.h"

typedef struct ss_wire_enc {
  ss_dtype dtype;
  int zlib;
} ss_wire_enc;

struct ss_service;
/* The request's encoding: metadata dtype/codec, else the model's keys, else the server's flags.
 * Returns 0, or SS_EINVAL with a message naming the bad value. */
int ss_wire_enc_resolve(const struct ss_service *s, const ss_model *m, const ss_meta *meta,
                        ss_wire_enc *out, char *err, size_t errlen);
/* The shortest zlib stream (2-byte header, an empty final block, 4-byte Adler-32). */
#define SS_ZLIB_MIN_STREAM 8
/* 0 if a zlib payload of len bytes can be a stream; else SS_EINVAL with a message (an empty or
 * too short field is refused on the loop, before any job: it may arrive as a NULL view). */
int ss_codec_check_stream(const char *what, size_t len, char *err, size_t errlen);
/* Inflate src[len] (zlib format) into a malloc'd buffer of exactly want bytes. Returns 0, or
 * SS_EINVAL ("not zlib", "inflates to N bytes, shape needs M") with a message; what: field name. */
int ss_codec_inflate(const char *what, const void *src, size_t len, size_t want, void **out,
                     char *err, size_t errlen);
/* Deflate src[len] into a malloc'd buffer (*out, *outlen). Returns 0 or SS_ENOMEM. */
int ss_codec_deflate(const void *src, size_t len, void **out, size_t *outlen);
/* Parse "float32|float16|bfloat16" / "none|zlib" (model keys and flags). 0 or SS_EINVAL. */
int ss_codec_parse(const char *s, int *zlib);

#endif
