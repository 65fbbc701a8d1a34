/*
 * splitserve.h — the one public header of splitserve: a remote tensor-compute server that
 * speaks gRPC (splitlearn.comm.ComputeService + grpc.health.v1.Health), and its client.
 *
 * Threads (see DESIGN.md): a server runs one libuv loop thread (all I/O, HTTP/2, gRPC
 * framing, protobuf, routing, admission, timers) and a fixed pool of W compute workers,
 * each using T BLAS threads. Nothing else, whatever the load.
 *
 * Conventions: functions return 0 on success or a negative SS_E* code (ss_strerror()).
 * Ownership is stated on each prototype: "borrowed" (caller keeps it, must outlive the
 * call), "takes ownership", or "caller frees".
 */
#ifndef SPLITSERVE_H
#define SPLITSERVE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SS_VERSION "0.1.0"

#if defined(__GNUC__)
#define SS_API __attribute__((visibility("default")))
#else
#define SS_API
#endif

/* ---------------------------------------------------------------- errors ---- */

enum {
  SS_OK = 0,
  SS_EINVAL = -1,        /* invalid argument */
  SS_ENOMEM = -2,        /* out of memory */
  SS_EIO = -3,           /* I/O or system call failed */
  SS_ENOTFOUND = -4,     /* no such model / file / id */
  SS_ERANGE = -5,        /* value out of range (overflow, too large) */
  SS_EUNSUPPORTED = -6,  /* not implemented / unsupported */
  SS_EBUSY = -7,         /* queue full, resource exhausted */
  SS_ETIMEDOUT = -8,     /* deadline exceeded */
  SS_ECANCELLED = -9,    /* cancelled by the peer or by shutdown */
  SS_EPROTO = -10,       /* protocol error (HTTP/2, gRPC framing, protobuf) */
  SS_ECLOSED = -11,      /* connection closed / server draining */
  SS_EPRECONDITION = -12 /* state does not allow the operation */
};

/* A static string describing err (never NULL). */
SS_API const char *ss_strerror(int err);

/* gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
typedef enum {
  SS_GRPC_OK = 0,
  SS_GRPC_CANCELLED = 1,
  SS_GRPC_UNKNOWN = 2,
  SS_GRPC_INVALID_ARGUMENT = 3,
  SS_GRPC_DEADLINE_EXCEEDED = 4,
  SS_GRPC_NOT_FOUND = 5,
  SS_GRPC_ALREADY_EXISTS = 6,
  SS_GRPC_PERMISSION_DENIED = 7,
  SS_GRPC_RESOURCE_EXHAUSTED = 8,
  SS_GRPC_FAILED_PRECONDITION = 9,
  SS_GRPC_ABORTED = 10,
  SS_GRPC_OUT_OF_RANGE = 11,
  SS_GRPC_UNIMPLEMENTED = 12,
  SS_GRPC_INTERNAL = 13,
  SS_GRPC_UNAVAILABLE = 14,
  SS_GRPC_DATA_LOSS = 15,
  SS_GRPC_UNAUTHENTICATED = 16
} ss_grpc_code;

/* The one table from SS_E* codes to gRPC status codes. */
SS_API ss_grpc_code ss_error_to_grpc(int err);
/* "OK", "INVALID_ARGUMENT", ...; "UNKNOWN_CODE" outside 0..16. */
SS_API const char *ss_grpc_code_name(int code);

/* ---------------------------------------------------------------- tensors --- */

typedef enum { SS_DTYPE_F32 = 0, SS_DTYPE_F16 = 1, SS_DTYPE_BF16 = 2 } ss_dtype;

#define SS_MAX_DIMS 8

/* Bytes per element (4 or 2). */
SS_API size_t ss_dtype_size(ss_dtype dt);
/* "float32", "float16", "bfloat16". */
SS_API const char *ss_dtype_name(ss_dtype dt);
/* Parse a dtype name (float32/f32/fp32, float16/f16/half, bfloat16/bf16); 0 or SS_EINVAL. */
SS_API int ss_dtype_parse(const char *s, ss_dtype *out);
/* "[1,10,768]" into buf; returns buf. */
SS_API char *ss_shape_str(const int64_t *shape, int ndim, char *buf, size_t buflen);
/* Convert n elements of dtype dt to float32 and back (row-major, little-endian). */
SS_API void ss_to_f32(ss_dtype dt, const void *in, float *out, size_t n);
SS_API void ss_from_f32(ss_dtype dt, const float *in, void *out, size_t n);

/* ---------------------------------------------------------------- server ---- */

typedef struct ss_server ss_server;

typedef struct ss_server_config {
  const char *listen_host;  /* borrowed; default "127.0.0.1" */
  int listen_port;          /* default 50051; 0 picks a free port */
  int workers;              /* compute workers; -1 = online cores; 0 = inline on the loop */
  int intra_op_threads;     /* BLAS threads per worker (default 1) */
  int oversubscribe;        /* allow workers x intra_op_threads > cores */
  int io_threads;           /* I/O loops (default 1): connections spread over them; handlers
                             * and compute stay where they were. Threads: N + W x T. */
  int max_inflight;         /* per-model concurrent executions; 0 = unlimited */
  int max_queue;            /* per-model wait queue bound; -1 = unlimited */
  size_t max_message_bytes; /* largest request message accepted (default 100 MiB) */
  double drain_timeout_s;   /* graceful drain limit on stop (default 5) */
  /* Transport bounds: what one connection, peer or request may hold (0 timeouts = off). */
  int max_connections;          /* open connections in all (default 10000); more are refused */
  int max_connections_per_peer; /* open connections per client IP address (default 1000) */
  int max_concurrent_streams;   /* advertised and enforced per connection (default 256) */
  size_t max_header_list_bytes; /* decoded request headers per stream, name+value+32 per
                                 * field (default 16384); over it the stream is refused */
  size_t max_connection_buffer_bytes; /* request bytes received and response bytes unsent
                                       * held per connection, each direction (default 64 MiB) */
  double handshake_timeout_s;    /* client preface + SETTINGS must arrive within (default 10) */
  double idle_timeout_s;         /* no open stream and nothing received for this long: GOAWAY
                                  * (default 300; PINGs count as activity) */
  double request_body_timeout_s; /* a request whose headers or body stop arriving for this
                                  * long is answered DEADLINE_EXCEEDED (default 30) */
  const char *tls_cert;          /* borrowed; PEM certificate chain: serve TLS 1.2+ (ALPN h2) */
  const char *tls_key;           /* borrowed; PEM private key (with tls_cert) */
  const char *tls_client_ca; /* borrowed; PEM CA: clients must present a certificate it signed */
  int compress_responses;    /* gzip/deflate responses for clients that accept them (default 0) */
  const char *const *models; /* borrowed; "ID=KIND[,key=value...]"; first = default */
  size_t n_models;           /* 0: the embedded default model set */
  const int *model_max_inflight; /* borrowed, n_models entries or NULL; -1 = max_inflight */
  const int *model_max_queue;    /* borrowed, n_models entries or NULL; -1 = max_queue */
  const char *config_path;     /* borrowed; YAML file re-read on SIGHUP (models and their limits) */
  size_t session_max_bytes;    /* decode sessions (metadata session=ID): total KV bytes (1 GiB) */
  double session_ttl_s;        /* idle sessions are evicted after this (default 600) */
  size_t activation_max_bytes; /* training: activation cache budget (default 2 GiB) */
  double activation_ttl_s;     /* training forwards without a backward expire (default 300) */
  const char *save_weights; /* borrowed; checkpoint path for the default model (drain, SIGUSR1) */
  int enable_test_models;   /* serve the test-only kinds scale, sleep, spin (default 0) */
  int max_metadata_entries; /* ComputeRequest metadata: entries per request (default 64) */
  size_t max_metadata_key_bytes;   /* bytes per metadata key (default 256) */
  size_t max_metadata_value_bytes; /* bytes per metadata value (default 4096) */
  size_t max_session_id_bytes;     /* metadata session=ID length (default 256) */
  int log_level;                   /* 0 error, 1 warn, 2 info (default), 3 debug */
  const char *metrics_host; /* borrowed; Prometheus /metrics over HTTP/1.1 (NULL: 127.0.0.1) */
  int metrics_port;         /* -1 (default): no metrics endpoint; 0 picks a free port */
  int wire_dtype;          /* tensors without metadata dtype: -1 (default) float32, else ss_dtype */
  int wire_codec;          /* tensors without metadata codec: -1/0 (default) raw, 1 zlib */
  int handle_signals;      /* install SIGINT/SIGTERM handlers on the loop (daemon) */
  const char *auth_tokens; /* borrowed; bearer-token file (NULL: no authentication); lines
                            * "TOKEN [model,model...]", re-read on SIGHUP */
} ss_server_config;

/* Fill cfg with the defaults (one row per setting in src/core/settings.c: flag, YAML key,
 * type, range, default, help). */
SS_API void ss_server_config_init(ss_server_config *cfg);

/* A YAML server configuration file (--config; examples/server.yaml), or the strings of a command
 * line, as loaded: cfg points into it. */
typedef struct ss_config_file ss_config_file;
/* Read path into cfg: every key the file sets overrides cfg's value, its models become
 * cfg->models (with their limits), cfg->config_path = path (SIGHUP re-reads it). The strings
 * cfg now points to live in *out: free it with ss_config_file_free after the server is freed.
 * On error returns <0 with "PATH:LINE:COL: message" in err; cfg is then untouched. */
SS_API int ss_server_config_load(ss_server_config *cfg, const char *path, ss_config_file **out,
                                 char *err, size_t errlen);
/* The daemon's command line into cfg: --config FILE first (its settings), then every flag of the
 * settings table over it, --model specs (repeatable; refused with --config). Returns 0 (strings
 * cfg points to live in *out: free with ss_config_file_free after the server), 1 when --help or
 * --help-markdown printed the help to stdout (*out NULL), or <0 with a message naming the flag
 * ("--workers: expected an integer in [0, 1024], got 'x'"). */
SS_API int ss_server_config_args(ss_server_config *cfg, int argc, char *const *argv,
                                 ss_config_file **out, char *err, size_t errlen);
SS_API void ss_config_file_free(ss_config_file *f);
/* `splitserve --help`, and the README's flag table (markdown), from the settings table. */
SS_API void ss_settings_usage(FILE *f);
SS_API void ss_settings_markdown(FILE *f);
/* `splitserve --help-model-keys`: every model spec key (kinds, value, default, meaning) as the
 * README's model key table (markdown), from the registry's key table (src/models/registry.c). */
SS_API void ss_model_keys_markdown(FILE *f);
/* "error", "warn", "info", "debug" -> 0..3; -1 otherwise. */
SS_API int ss_log_parse_level(const char *s);

/* Create a server: loads models, binds the listener (so ss_server_port() is valid after),
 * starts the workers. SIGPIPE is set to ignored if it was at its default (a client that
 * disconnects mid-write must not kill the process). cfg is borrowed for the call only. On failure
 * returns <0 and writes a human message into err (may be NULL). *out: caller frees with
 * ss_server_free(). */
SS_API int ss_server_new(const ss_server_config *cfg, ss_server **out, char *err, size_t errlen);

/* The bound port (useful with listen_port 0). Any thread after ss_server_new(). */
SS_API int ss_server_port(const ss_server *s);

/* Run the loop on the calling thread until stopped and drained. Returns 0, or SS_EBUSY when
 * the drain timed out (or a second stop came) while workers were still computing: their results
 * are dropped, and ss_server_free() waits for them to finish (a daemon may exit instead). */
SS_API int ss_server_run(ss_server *s);

/* Ask the server to drain and stop. Callable from any thread and from a signal handler.
 * A second call while draining stops at once (in-flight calls get UNAVAILABLE). */
SS_API void ss_server_stop(ss_server *s);

/* Counters for the exit summary; valid after ss_server_run() returns. */
typedef struct ss_server_stats {
  uint64_t served;       /* calls answered with OK */
  uint64_t failed;       /* calls answered with an error status other than those below */
  uint64_t rejected;     /* refused by admission (RESOURCE_EXHAUSTED) or while draining */
  uint64_t cancelled;    /* cancelled by the client or past their deadline */
  int checkpoint_failed; /* a checkpoint (drain, SIGUSR1) could not be written */
} ss_server_stats;
SS_API void ss_server_get_stats(const ss_server *s, ss_server_stats *out);

/* Free a server that is not running. NULL is fine. */
SS_API void ss_server_free(ss_server *s);

/* ---------------------------------------------------------------- client ---- */

/*
 * The client speaks gRPC over one HTTP/2 connection (h2c, prior knowledge).
 *
 * Asynchronous API: an ss_aclient lives on a caller-owned libuv loop (passed as void* so
 * this header does not need uv.h) and keeps any number of calls in flight on one
 * connection; callbacks run on that loop's thread. Blocking API: ss_client wraps an
 * ss_aclient with a private loop; one call at a time per ss_client.
 *
 * Refused streams (like grpcio's transparent retry): a call whose stream the server refused
 * before processing it (RST_STREAM REFUSED_STREAM, no response headers) is sent again on the
 * same connection, up to SS_CLIENT_REFUSED_RETRIES times, while that connection can still start
 * streams; after a GOAWAY it completes with UNAVAILABLE and ss_call_result.refused set, and
 * the blocking client sends it again on a new connection (it also starts each call on a new
 * connection when its connection went away or was lost since the last call). A call that may
 * have been processed is never sent twice.
 */
#define SS_CLIENT_REFUSED_RETRIES 3

typedef struct ss_aclient ss_aclient;

/* The outcome of one call, valid only during the callback. */
typedef struct ss_call_result {
  int grpc_status;     /* ss_grpc_code; or SS_GRPC_UNAVAILABLE on connection loss */
  const char *message; /* grpc-message, percent-decoded ("" if none); borrowed */
  const uint8_t *body; /* the response message (protobuf bytes, no 5-byte prefix) */
  size_t body_len;
  double latency_s; /* from the call's start to its trailers */
  int refused;      /* nonzero: the server never processed the request (its stream was
                       refused: REFUSED_STREAM, or above a GOAWAY's last stream id, or
                       never sent), so it is safe to send again on a new connection;
                       grpc_status is then UNAVAILABLE. The client itself already
                       retried it on this connection while that could start streams */
} ss_call_result;

typedef void (*ss_call_cb)(void *user, const ss_call_result *result);

/* Connect to host:port (numeric IPv4/IPv6 address, or "localhost") on uv_loop (a uv_loop_t*,
 * borrowed; must outlive the client). Connecting proceeds asynchronously; calls made before it
 * completes are queued. *out: free with ss_aclient_close(). */
SS_API int ss_aclient_new(void *uv_loop, const char *host, int port, ss_aclient **out);

/* TLS options of a client (all borrowed for the call only). */
typedef struct ss_client_tls {
  const char *ca_file;     /* PEM CA(s) to verify the server; NULL: the system's store */
  const char *cert_file;   /* PEM client certificate chain for mutual TLS, or NULL */
  const char *key_file;    /* its PEM private key (NULL: in cert_file) */
  const char *server_name; /* name to verify and send as SNI; NULL: the host given */
} ss_client_tls;

/* ss_aclient_new over TLS 1.2+ (ALPN h2; the server's certificate must verify for the host name
 * or IP address). tls NULL: cleartext, as ss_aclient_new. The handshake runs once TCP connects;
 * a failed one completes every call with UNAVAILABLE and its reason. On a local error (files,
 * names) returns <0 with a message in err (may be NULL). */
SS_API int ss_aclient_new_tls(void *uv_loop, const char *host, int port, const ss_client_tls *tls,
                              ss_aclient **out, char *err, size_t errlen);

/* Start a unary call of method path (e.g. "/splitlearn.comm.ComputeService/Compute") with a
 * serialized request message (borrowed; copied before return). timeout_s <= 0: no deadline
 * sent. cb fires exactly once, on the loop thread (also on failure, and on close). */
SS_API int ss_aclient_call(ss_aclient *c, const char *path, const void *msg, size_t len,
                           double timeout_s, ss_call_cb cb, void *user);

/* Request headers sent with every call started afterwards (calls in flight keep theirs), e.g.
 * name "authorization", value "Bearer TOKEN" for a server with --auth-tokens. Setting a name
 * again replaces its value; value NULL removes it. name and value are borrowed for this call
 * only: the client keeps copies, and wipes them (zeroes the bytes) when they are replaced,
 * removed or the client is freed. An "authorization" value is sent HPACK never-indexed (RFC 7541
 * 7.1.3), so it is not kept in either side's header compression table; the client never logs a
 * header value. Names must be lowercase HTTP tokens and not one the client sets itself (pseudo-
 * headers, content-type, te, user-agent, grpc-*) nor an HTTP/1 connection header; values are
 * printable ASCII (space and tab allowed inside). Returns 0; SS_EINVAL for a bad name or value,
 * SS_ERANGE beyond SS_CLIENT_MAX_HEADERS names, SS_ENOMEM. Loop thread (or before the loop runs).
 */
#define SS_CLIENT_MAX_HEADERS 16
SS_API int ss_aclient_set_header(ss_aclient *c, const char *name, const char *value);

/* Calls started and not yet completed. */
SS_API size_t ss_aclient_inflight(const ss_aclient *c);

/* Close: pending calls complete with UNAVAILABLE "client closed"; memory is freed once the
 * loop has closed the handle (run the loop once more). */
SS_API void ss_aclient_close(ss_aclient *c);

/* Blocking client. */
typedef struct ss_client ss_client;

/* Connect (blocking, up to timeout_s). *out: caller frees with ss_client_close(). */
SS_API int ss_client_connect(const char *host, int port, double timeout_s, ss_client **out);
/* Connect over TLS (tls NULL: cleartext), blocking until the handshake completes or fails;
 * on failure the reason (certificate, ALPN, timeout) is written to err (may be NULL). */
SS_API int ss_client_connect_tls(const char *host, int port, double timeout_s,
                                 const ss_client_tls *tls, ss_client **out, char *err,
                                 size_t errlen);
SS_API void ss_client_close(ss_client *c);
/* ss_aclient_set_header for a blocking client: every later call sends the header. */
SS_API int ss_client_set_header(ss_client *c, const char *name, const char *value);

/* The outcome of a blocking unary call. body: the response message (no prefix), malloc'd:
 * caller frees (NULL when empty). */
typedef struct ss_unary_result {
  int grpc_status;
  char message[512];
  uint8_t *body;
  size_t body_len;
  double latency_s;
} ss_unary_result;

/* Run one unary call of method path with a serialized request (borrowed) to completion on the
 * client's private loop. Returns 0 when a status was received (also a connection loss:
 * UNAVAILABLE) and fills *out, or <0 on a local error. */
SS_API int ss_client_unary(ss_client *c, const char *path, const void *msg, size_t len,
                           double timeout_s, ss_unary_result *out);

/* A tensor handed to or returned by the client. */
typedef struct ss_tensor_buf {
  ss_dtype dtype;
  int ndim;
  int64_t shape[SS_MAX_DIMS];
  void *data; /* row-major little-endian bytes */
  size_t nbytes;
} ss_tensor_buf;

typedef struct ss_compute_opts {
  const char *model_id;        /* NULL or "": the server's default model */
  const char *const *metadata; /* borrowed; alternating keys and values */
  size_t n_metadata;           /* number of key/value pairs */
  int32_t request_id;          /* sent when has_request_id */
  int has_request_id;
  double timeout_s; /* <= 0: none */
} ss_compute_opts;

typedef struct ss_compute_reply {
  int grpc_status;
  char message[512];
  ss_tensor_buf output; /* output.data: caller frees with free() */
  float compute_time_ms;
  int has_compute_time;
  int32_t request_id;
  int has_request_id;
  double latency_s;
} ss_compute_reply;

/* Compute: input borrowed. Returns 0 when a status was received (see reply->grpc_status),
 * <0 on a local error. On OK, reply->output.data is malloc'd: caller frees. */
SS_API int ss_client_compute(ss_client *c, const ss_tensor_buf *input, const ss_compute_opts *opts,
                             ss_compute_reply *reply);

/* HealthCheck: writes status ("ok") and version into the buffers (caller's, may be NULL).
 * Returns 0 or <0; *grpc_status receives the call's status; when it is not OK, status holds
 * the server's (or the connection's) status message instead. */
SS_API int ss_client_health(ss_client *c, double timeout_s, int *grpc_status, char *status,
                            size_t status_len, char *version, size_t version_len);

/* GetServiceInfo: calls fn(key, value, user) for service_name, version, device,
 * uptime_seconds, total_requests and every custom_info entry. Returns 0 or <0; *grpc_status
 * receives the call's status; when it is not OK, message (caller's buffer of message_len
 * bytes, may be NULL) receives the server's (or the connection's) status message, e.g. which
 * header a token server wants. */
SS_API int ss_client_info(ss_client *c, double timeout_s, int *grpc_status, char *message,
                          size_t message_len,
                          void (*fn)(const char *key, const char *value, void *user), void *user);

#ifdef __cplusplus
}
#endif
#endif /* SPLITSERVE_H */
