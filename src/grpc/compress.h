/*
 * compress.h — gRPC message compression (grpc-encoding gzip / deflate, zlib). Private to
 * src/grpc (server and client).
 *
 * Thread: any (pure functions on caller buffers); the transport calls them on the loop thread.
 */
#ifndef SS_GRPC_COMPRESS_H
#define SS_GRPC_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

enum { SS_ENC_IDENTITY = 0, SS_ENC_DEFLATE = 1, SS_ENC_GZIP = 2 };

/* The encoding named by a grpc-encoding value; -1 when not one we implement. */
int ss_grpc_encoding_parse(const char *s, size_t len);
/* "identity", "deflate", "gzip". */
const char *ss_grpc_encoding_name(int enc);
/* The first of gzip/deflate listed in a grpc-accept-encoding value (comma separated, spaces
 * allowed), or SS_ENC_IDENTITY. */
int ss_grpc_accept_encoding_pick(const char *s, size_t len);

/* Inflate in[n] (enc: deflate = zlib stream, gzip) into *out (malloc'd: caller frees), never
 * allocating more than max bytes of output: 0, SS_ERANGE when the message inflates to more than
 * max (nothing kept), SS_EPROTO when the data is not a valid stream, SS_ENOMEM. */
int ss_grpc_inflate(int enc, const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen);

typedef struct ss_zpart {
  const uint8_t *p;
  size_t len;
} ss_zpart;
/* Compress the concatenation of parts[n] (enc: deflate or gzip) into *out (malloc'd; caller
 * frees), leaving room for `reserve` bytes before the data (the 5-byte message prefix).
 * 0 or SS_ENOMEM / SS_EPROTO. */
int ss_grpc_deflate(int enc, const ss_zpart *parts, size_t n, size_t reserve, uint8_t **out,
                    size_t *outlen);

#endif
