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
int ss_grpc_inflate(int enc, const uint8_t *in, size_t n, size_t max, uint8_t **out,
                    size_t *outlen);

/* Inflation in bounded slices (the loop thread inflates a big message a slice per iteration, so
 * other connections are served in between). The input stays the caller's (the same in[n] at
 * every step); the output is kept inside until the message is complete. */
typedef struct ss_inflater ss_inflater;
#define SS_INFLATE_MORE 1
/* A new inflater for enc (deflate or gzip). 0 or SS_ENOMEM. */
int ss_inflater_new(int enc, ss_inflater **out);
/* Inflate at most `slice` more output bytes from at most `slice` more input bytes, never
 * holding more than max output bytes in all (max may change between steps: below what is out
 * already, the message is too large). Returns SS_INFLATE_MORE when work is left, 0 when the
 * message is complete (*out, *outlen; the caller frees it with ss_grpc_inflated_free(*out,
 * *out_map)), SS_ERANGE when it inflates to more than max, SS_EPROTO for invalid data,
 * SS_ENOMEM. After 0 or an error only _free is valid. */
int ss_inflater_step(ss_inflater *f, const uint8_t *in, size_t n, size_t max, size_t slice,
                     uint8_t **out, size_t *outlen, size_t *out_map);
/* Free an inflated message: map_len 0 = malloc'd, else an anonymous mapping of that length
 * (large messages: their pages go back to the system at once). */
void ss_grpc_inflated_free(uint8_t *p, size_t map_len);
/* Output bytes made so far (what the inflater costs in memory: its buffer's pages beyond them
 * are reserved, never touched). */
size_t ss_inflater_held(const ss_inflater *f);
void ss_inflater_free(ss_inflater *f); /* NULL is fine */

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
