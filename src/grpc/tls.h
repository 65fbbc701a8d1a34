/*
 * tls.h — TLS for the transport (OpenSSL, memory BIOs): the server's context (certificate,
 * key, optional client CA for mutual TLS, ALPN "h2" required, TLS 1.2+) and one connection's
 * record layer. Private to src/grpc.
 *
 * Thread: the loop thread. No call here blocks: the socket is libuv's, OpenSSL only sees two
 * memory BIOs (ciphertext in, ciphertext out).
 *
 * A connection's way: ss_tls_feed() takes the bytes libuv read (ciphertext), runs the handshake
 * while it is incomplete, then hands the decrypted bytes to a callback (nghttp2). ss_tls_seal()
 * encrypts plaintext (nghttp2's gathered frames) and ss_tls_take() moves every ciphertext byte
 * waiting in the output BIO (handshake records, alerts, application data) into the caller's
 * buffer for one uv_write.
 */
#ifndef SS_GRPC_TLS_H
#define SS_GRPC_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct ss_tls_ctx ss_tls_ctx; /* reference-counted SSL_CTX wrapper */
typedef struct ss_tls_conn ss_tls_conn;

/* Build a server context from PEM files (client_ca may be NULL: no client certificates asked).
 * Returns 0, or <0 with a message (OpenSSL's reason included) in err. */
int ss_tls_ctx_new(const char *cert, const char *key, const char *client_ca, ss_tls_ctx **out,
                   char *err, size_t errlen);
void ss_tls_ctx_free(ss_tls_ctx *ctx); /* connections keep theirs alive (OpenSSL refcount) */

/* One connection's TLS state on ctx; NULL when out of memory. */
ss_tls_conn *ss_tls_conn_new(ss_tls_ctx *ctx);
void ss_tls_conn_free(ss_tls_conn *t);
/* Nonzero once the handshake is complete (and h2 was negotiated). */
int ss_tls_ready(const ss_tls_conn *t);

/* Feed n ciphertext bytes. Plaintext goes to deliver(arg, p, len) (which returns <0 to stop:
 * that value is returned), using scratch[scratch_len] as the buffer. Returns 0, SS_TLS_CLOSED
 * once the peer's close_notify has arrived (from then on input is dropped unread: the caller
 * stops reading), or SS_EPROTO on a failed handshake / bad record (why in err: the alert for
 * the peer is in the output). */
#define SS_TLS_CLOSED 1
int ss_tls_feed(ss_tls_conn *t, const uint8_t *in, size_t n, uint8_t *scratch, size_t scratch_len,
                int (*deliver)(void *arg, const uint8_t *p, size_t len), void *arg, char *err,
                size_t errlen);
/* Encrypt n plaintext bytes (only once ready). 0 or SS_EPROTO / SS_ENOMEM. */
int ss_tls_seal(ss_tls_conn *t, const uint8_t *p, size_t n);
/* Ciphertext waiting to be written. */
size_t ss_tls_pending(const ss_tls_conn *t);
/* Move up to cap pending ciphertext bytes to out; returns how many. */
size_t ss_tls_take(ss_tls_conn *t, uint8_t *out, size_t cap);
/* A graceful close: put a close_notify alert in the output (SSL_shutdown once; the peer's
 * close_notify is never awaited). Only after a complete handshake, on a record layer that has
 * not failed, and once per connection: returns 1 when the alert was queued now, else 0. */
int ss_tls_close_notify(ss_tls_conn *t);

/* ---- client side (src/grpc/client.c) ---- */
/* A client context: verify the server against ca_file (NULL: the system's default store),
 * optional client certificate (cert + key), ALPN h2, TLS 1.2+. */
int ss_tls_client_ctx_new(const char *ca_file, const char *cert, const char *key, ss_tls_ctx **out,
                          char *err, size_t errlen);
/* A client connection verifying name (an IP address literal or a DNS name, also sent as SNI). */
ss_tls_conn *ss_tls_client_conn_new(ss_tls_ctx *ctx, const char *name);
/* Start the client handshake (puts the ClientHello in the output). 0 or SS_EPROTO. */
int ss_tls_connect(ss_tls_conn *t, char *err, size_t errlen);

#endif
