/*
 * tls.c — TLS over memory BIOs (OpenSSL 3): contexts for the server (certificate, key,
 * optional client CA: mutual TLS) and the client (CA to verify the server, optional client
 * certificate), and the record layer of one connection. See tls.h.
 *
 * Thread: the loop thread that owns the connection. OpenSSL never touches a socket here: the
 * input BIO receives what libuv read, the output BIO collects what libuv will write, so nothing
 * blocks and the handshake simply runs in the read path.
 *
 * Policy: TLS 1.2 or newer; ALPN must select "h2" (gRPC): the server answers a client that
 * offers ALPN without h2 with a fatal no_application_protocol alert, and one that offers no ALPN
 * at all is refused once its handshake completes. With a client CA, a client without a
 * certificate that verifies is refused in the handshake.
 *
 * Closing: a graceful close sends close_notify (ss_tls_close_notify) so the peer can tell the end
 * of the stream from a truncation; a connection whose record layer failed does not (OpenSSL has
 * already put the fatal alert in the output).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <limits.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/file.h"
#include "grpc/tls.h"
#include "splitserve.h"

struct ss_tls_ctx {
  SSL_CTX *ctx;
};

struct ss_tls_conn {
  SSL *ssl;
  BIO *rbio, *wbio; /* owned by ssl */
  int ready;
  int failed; /* a bad record or a failed write: no close_notify */
  int bye;    /* close_notify queued */
  int first;  /* the peer's first byte, -1 before it came */
};

static const unsigned char k_alpn_h2[] = {2, 'h', '2'};

/* The most recent OpenSSL error as text (the queue is cleared). */
static void ossl_reason(char *buf, size_t len) {
  unsigned long e, last = 0;
  while ((e = ERR_get_error()) != 0) last = e;
  if (last)
    ERR_error_string_n(last, buf, len);
  else
    snprintf(buf, len, "unknown error");
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl, (void)arg;
  for (unsigned i = 0; i + 1 <= inlen;) {
    unsigned l = in[i];
    if (i + 1 + l > inlen) break;
    if (l == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + l;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL; /* gRPC needs HTTP/2 */
}

/* A context for method with what server and client share (TLS 1.2+, no compression or
 * renegotiation, no record buffers while idle); NULL with err set. */
static SSL_CTX *ctx_new(const SSL_METHOD *method, char *err, size_t errlen) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(method);
  if (ctx && SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle connections hold no record buffers */
    return ctx;
  }
  char why[256];
  ossl_reason(why, sizeof why);
  snprintf(err, errlen, "TLS context: %s", why);
  SSL_CTX_free(ctx);
  return NULL;
}

/* ---------------------------------------------------------- PEM files --- */

/* Every TLS file is read through core/file.h (a regular file of at most this size; a FIFO used
 * to block the loop on SIGHUP inside OpenSSL's own fopen) and parsed from memory. */
#define SS_TLS_MAX_FILE_BYTES (4u << 20)

/* path's contents as a memory BIO; NULL with err set ("TLS <what> PATH: ..."). */
static BIO *pem_bio(const char *what, const char *path, char *err, size_t errlen) {
  char *text = NULL, msg[400];
  size_t len = 0;
  int rc = ss_file_read(path, 0, SS_TLS_MAX_FILE_BYTES, &text, &len, msg, sizeof msg);
  if (rc != 0) {
    snprintf(err, errlen, "TLS %s %s", what, msg);
    return NULL;
  }
  BIO *b = len <= INT_MAX ? BIO_new(BIO_s_mem()) : NULL;
  if (!b || BIO_write(b, text, (int)len) != (int)len) {
    BIO_free(b);
    b = NULL;
    snprintf(err, errlen, "TLS %s %s: out of memory", what, path);
  }
  OPENSSL_cleanse(text, len); /* a key's bytes do not linger in freed memory */
  free(text);
  return b;
}

/* The end of a PEM sequence: "no start line" after at least one object is no error. */
static void pem_end_ok(void) {
  unsigned long e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ERR_clear_error();
}

/* A certificate chain (leaf first) into ctx, as SSL_CTX_use_certificate_chain_file. 1 or 0. */
static int use_chain(SSL_CTX *ctx, BIO *b) {
  X509 *leaf = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL);
  int ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1 && SSL_CTX_clear_chain_certs(ctx) == 1;
  X509_free(leaf);
  X509 *ca;
  while (ok && (ca = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
    if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
      X509_free(ca);
      ok = 0;
    }
  if (ok) pem_end_ok();
  return ok && ERR_peek_error() == 0;
}

/* The private key into ctx. 1 or 0. */
static int use_key(SSL_CTX *ctx, BIO *b) {
  EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  int ok = k && SSL_CTX_use_PrivateKey(ctx, k) == 1;
  EVP_PKEY_free(k);
  return ok;
}

/* Trusted certificates (and CRLs) into ctx's store, as SSL_CTX_load_verify_locations; with
 * client_names, their subjects become the CA names the server sends. 1 or 0. */
static int use_cas(SSL_CTX *ctx, BIO *b, int client_names) {
  STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(b, NULL, NULL, NULL);
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  int n = 0, ok = infos != NULL;
  for (int i = 0; ok && i < sk_X509_INFO_num(infos); i++) {
    X509_INFO *x = sk_X509_INFO_value(infos, i);
    if (x->x509) {
      ok = X509_STORE_add_cert(store, x->x509) == 1 &&
           (!client_names || SSL_CTX_add_client_CA(ctx, x->x509) == 1);
      n++;
    }
    if (ok && x->crl) ok = X509_STORE_add_crl(store, x->crl) == 1;
  }
  sk_X509_INFO_pop_free(infos, X509_INFO_free);
  if (ok && n == 0) ok = 0; /* no certificate at all */
  return ok;
}

/* Load file (what: for messages) with use(ctx, bio). 0, or SS_EINVAL with err set. */
static int load_pem(SSL_CTX *ctx, const char *what, const char *file, int (*use)(SSL_CTX *, BIO *),
                    char *err, size_t errlen) {
  ERR_clear_error();
  BIO *b = pem_bio(what, file, err, errlen);
  if (!b) return SS_EINVAL;
  int ok = use(ctx, b);
  BIO_free(b);
  if (ok) return 0;
  char why[256];
  ossl_reason(why, sizeof why);
  snprintf(err, errlen, "TLS %s %s: %s", what, file, why);
  return SS_EINVAL;
}

static int use_server_cas(SSL_CTX *ctx, BIO *b) { return use_cas(ctx, b, 1); }
static int use_client_cas(SSL_CTX *ctx, BIO *b) { return use_cas(ctx, b, 0); }

int ss_tls_ctx_new(const char *cert, const char *key, const char *client_ca, ss_tls_ctx **out,
                   char *err, size_t errlen) {
  *out = NULL;
  char why[256];
  SSL_CTX *ctx = ctx_new(TLS_server_method(), err, errlen);
  if (!ctx) return SS_ENOMEM;
  int rc = load_pem(ctx, "certificate", cert, use_chain, err, errlen);
  if (rc == 0) rc = load_pem(ctx, "key", key, use_key, err, errlen);
  if (rc == 0 && SSL_CTX_check_private_key(ctx) != 1) {
    ossl_reason(why, sizeof why);
    snprintf(err, errlen, "TLS key (does not match the certificate) %s: %s", key, why);
    rc = SS_EINVAL;
  }
  if (rc == 0 && client_ca && *client_ca) {
    rc = load_pem(ctx, "client CA", client_ca, use_server_cas, err, errlen);
    if (rc == 0) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  if (rc != 0) {
    SSL_CTX_free(ctx);
    return rc;
  }
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  /* Session resumption needs an id context when client certificates are verified. */
  static const unsigned char sid[] = "splitserve";
  SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
  ss_tls_ctx *t = calloc(1, sizeof *t);
  if (!t) {
    SSL_CTX_free(ctx);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  t->ctx = ctx;
  *out = t;
  return 0;
}

int ss_tls_client_ctx_new(const char *ca_file, const char *cert, const char *key, ss_tls_ctx **out,
                          char *err, size_t errlen) {
  *out = NULL;
  char why[256];
  SSL_CTX *ctx = ctx_new(TLS_client_method(), err, errlen);
  if (!ctx) return SS_ENOMEM;
  int rc = 0;
  if (ca_file && *ca_file) {
    rc = load_pem(ctx, "CA", ca_file, use_client_cas, err, errlen);
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    ossl_reason(why, sizeof why);
    snprintf(err, errlen, "TLS CA (system store): %s", why);
    rc = SS_EINVAL;
  }
  if (rc == 0 && cert && *cert)
    rc = load_pem(ctx, "client certificate", cert, use_chain, err, errlen);
  if (rc == 0 && cert && *cert)
    rc = load_pem(ctx, "client key", key && *key ? key : cert, use_key, err, errlen);
  if (rc != 0) {
    SSL_CTX_free(ctx);
    return rc;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_set_alpn_protos(ctx, k_alpn_h2, sizeof k_alpn_h2) != 0) {
    SSL_CTX_free(ctx);
    snprintf(err, errlen, "TLS: cannot set ALPN");
    return SS_ENOMEM;
  }
  ss_tls_ctx *t = calloc(1, sizeof *t);
  if (!t) {
    SSL_CTX_free(ctx);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  t->ctx = ctx;
  *out = t;
  return 0;
}

void ss_tls_ctx_free(ss_tls_ctx *t) {
  if (!t) return;
  SSL_CTX_free(t->ctx);
  free(t);
}

static ss_tls_conn *conn_new(ss_tls_ctx *ctx) {
  ss_tls_conn *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->first = -1;
  t->ssl = SSL_new(ctx->ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->ssl || !t->rbio || !t->wbio) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    free(t);
    return NULL;
  }
  /* An empty input BIO means "would block", not EOF. */
  BIO_set_mem_eof_return(t->rbio, -1);
  BIO_set_mem_eof_return(t->wbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  return t;
}

ss_tls_conn *ss_tls_conn_new(ss_tls_ctx *ctx) {
  ss_tls_conn *t = conn_new(ctx);
  if (t) SSL_set_accept_state(t->ssl);
  return t;
}

ss_tls_conn *ss_tls_client_conn_new(ss_tls_ctx *ctx, const char *name) {
  ss_tls_conn *t = conn_new(ctx);
  if (!t) return NULL;
  SSL_set_connect_state(t->ssl);
  X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
  int ok = 1;
  if (name && *name) {
    if (strchr(name, ':') || strspn(name, "0123456789.") == strlen(name)) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(vp, name) == 1;
    } else {
      ok = SSL_set_tlsext_host_name(t->ssl, name) == 1 && SSL_set1_host(t->ssl, name) == 1;
    }
  }
  if (!ok) {
    ss_tls_conn_free(t);
    return NULL;
  }
  return t;
}

void ss_tls_conn_free(ss_tls_conn *t) {
  if (!t) return;
  SSL_free(t->ssl); /* frees both BIOs */
  free(t);
}

int ss_tls_ready(const ss_tls_conn *t) { return t->ready; }

static int handshake(ss_tls_conn *t, char *err, size_t errlen) {
  ERR_clear_error();
  int rv = SSL_do_handshake(t->ssl);
  if (rv == 1) {
    const unsigned char *p = NULL;
    unsigned int l = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &l);
    if (l != 2 || memcmp(p, "h2", 2) != 0) {
      snprintf(err, errlen, "TLS handshake: ALPN did not select h2 (gRPC needs HTTP/2)");
      return SS_EPROTO;
    }
    t->ready = 1;
    return 0;
  }
  int e = SSL_get_error(t->ssl, rv);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  char why[256];
  ossl_reason(why, sizeof why);
  long vr = SSL_get_verify_result(t->ssl);
  if (vr != X509_V_OK)
    snprintf(err, errlen, "TLS handshake failed: %s (certificate: %s)", why,
             X509_verify_cert_error_string(vr));
  else
    snprintf(err, errlen, "TLS handshake failed: %s", why);
  return SS_EPROTO;
}

int ss_tls_connect(ss_tls_conn *t, char *err, size_t errlen) { return handshake(t, err, errlen); }

int ss_tls_feed(ss_tls_conn *t, const uint8_t *in, size_t n, uint8_t *scratch, size_t scratch_len,
                int (*deliver)(void *arg, const uint8_t *p, size_t len), void *arg, char *err,
                size_t errlen) {
  /* After the peer's close_notify nothing more is read: bytes it still sends would pile up in
   * the input BIO without limit (SSL_read returns 0 without consuming them). */
  if (SSL_get_shutdown(t->ssl) & SSL_RECEIVED_SHUTDOWN) return SS_TLS_CLOSED;
  if (n > 0 && BIO_write(t->rbio, in, (int)n) != (int)n) {
    snprintf(err, errlen, "TLS: out of memory");
    return SS_ENOMEM;
  }
  if (t->first < 0 && n > 0) t->first = in[0];
  if (!t->ready) {
    int rv = handshake(t, err, errlen);
    if (rv != 0 && SSL_is_server(t->ssl) && t->first != 22 && BIO_ctrl_pending(t->wbio) == 0) {
      /* Not TLS at all (e.g. an h2c preface): OpenSSL answers nothing, so the peer would only
       * see the close. A fatal protocol_version alert record (type 21, version 3.1) tells a
       * cleartext gRPC client, from its first bytes, that this port speaks TLS. */
      static const uint8_t alert[7] = {21, 3, 1, 0, 2, 2, 70};
      (void)BIO_write(t->wbio, alert, (int)sizeof alert);
    }
    if (rv != 0 || !t->ready) return rv;
  }
  int cap = scratch_len > INT32_MAX ? INT32_MAX : (int)scratch_len;
  for (;;) {
    ERR_clear_error();
    int r = SSL_read(t->ssl, scratch, cap);
    if (r > 0) {
      int rv = deliver(arg, scratch, (size_t)r);
      if (rv < 0) return rv;
      continue;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return SS_TLS_CLOSED; /* close_notify */
    char why[256];
    ossl_reason(why, sizeof why);
    snprintf(err, errlen, "TLS record: %s", why);
    t->failed = 1;
    return SS_EPROTO;
  }
}

int ss_tls_seal(ss_tls_conn *t, const uint8_t *p, size_t n) {
  while (n > 0) {
    int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
    ERR_clear_error();
    int r = SSL_write(t->ssl, p, chunk);
    if (r <= 0) {
      t->failed = 1;
      return SS_EPROTO;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

size_t ss_tls_pending(const ss_tls_conn *t) { return BIO_ctrl_pending(t->wbio); }

size_t ss_tls_take(ss_tls_conn *t, uint8_t *out, size_t cap) {
  int c = cap > INT32_MAX ? INT32_MAX : (int)cap;
  int r = BIO_read(t->wbio, out, c);
  return r > 0 ? (size_t)r : 0;
}

int ss_tls_close_notify(ss_tls_conn *t) {
  if (!t->ready || t->failed || t->bye) return 0;
  t->bye = 1;
  ERR_clear_error();
  if (SSL_shutdown(t->ssl) < 0) { /* 0: ours sent, the peer's not seen; 1: both */
    ERR_clear_error();
    return 0;
  }
  return BIO_ctrl_pending(t->wbio) > 0;
}
