/*
 * grpc_frame.h — gRPC-over-HTTP/2 message framing and header values
 * (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
 *
 * Length-Prefixed-Message: 1 byte compressed flag, 4 bytes big-endian length, message.
 * The reader reassembles messages from DATA chunks of any size and enforces a size limit on
 * the announced length *before* buffering the body.
 * Thread: pure data structures, used on the loop thread (server and client).
 */
#ifndef SS_GRPC_FRAME_H
#define SS_GRPC_FRAME_H

#include <stddef.h>
#include <stdint.h>

typedef struct ss_msg_reader {
  uint8_t hdr[5];
  size_t hdr_have; /* bytes of the prefix seen so far */
  uint8_t *buf;    /* message body being assembled (owned) */
  size_t len;      /* announced length of the current message */
  size_t have;     /* body bytes seen so far */
  size_t max_len;  /* limit on the announced length */
  int compressed;  /* flag of the current message */
} ss_msg_reader;

enum {
  SS_MSG_NEED_MORE = 0,  /* consumed all input, no complete message yet */
  SS_MSG_COMPLETE = 1,   /* a message is complete: take it with ss_msg_reader_take() */
  SS_MSG_TOO_LARGE = -1, /* announced length > max_len (see reader->len) */
  SS_MSG_NOMEM = -2
};

void ss_msg_reader_init(ss_msg_reader *r, size_t max_len);
/* Feed up to len bytes; *used receives how many were consumed. Returns one of SS_MSG_*.
 * After SS_MSG_COMPLETE, call ss_msg_reader_take() before feeding more. */
int ss_msg_reader_feed(ss_msg_reader *r, const uint8_t *data, size_t len, size_t *used);
/* Take the completed message: *msg (caller frees with free(); may be NULL when *len is 0),
 * *compressed = the flag. Resets the reader for the next message. */
void ss_msg_reader_take(ss_msg_reader *r, uint8_t **msg, size_t *len, int *compressed);
/* True when the reader is between messages (no partial prefix/body). */
int ss_msg_reader_idle(const ss_msg_reader *r);
void ss_msg_reader_free(ss_msg_reader *r);

/* Write the 5-byte prefix for an uncompressed message of len bytes. */
void ss_msg_prefix(uint8_t out[5], uint32_t len);

/* Parse a grpc-timeout value ("1-8 digits" + unit H M S m u n) into nanoseconds.
 * Returns 0 or SS_EINVAL. */
int ss_grpc_timeout_parse(const char *s, size_t len, int64_t *ns);
/* Format a timeout (ns > 0) into out as the shortest exact-enough grpc-timeout value
 * (<= 8 digits). out must hold 16 bytes. */
void ss_grpc_timeout_format(int64_t ns, char out[16]);

/* Percent-encode a grpc-message value (bytes outside 0x20..0x7E and '%' become %XX).
 * Returns bytes written (excluding NUL); out is always NUL-terminated; output is truncated at
 * outlen-1 without splitting an escape. */
size_t ss_pct_encode(const char *in, size_t inlen, char *out, size_t outlen);
/* Percent-decode (invalid escapes are copied verbatim). Same output contract. */
size_t ss_pct_decode(const char *in, size_t inlen, char *out, size_t outlen);

#endif
