/*
 * settings.c — see settings.h: the table of server settings, and what reads it (defaults, argv,
 * values, --help, the README table). core/config.c reads it for the YAML keys.
 *
 * Thread: any; the table is immutable, the functions reentrant.
 */
#include "core/settings.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"

#define F(field) offsetof(ss_server_config, field)
#define DAY 86400.0

/* clang-format off */
const ss_setting ss_settings[] = {
  {"--listen", "HOST:PORT", "listen", SS_ST_HOSTPORT, F(listen_host), F(listen_port), 0, 0, 50051,
   "127.0.0.1", NULL,
   "numeric address; port 0 picks a free port. Prints `listening on HOST:PORT` on stderr when "
   "ready"},
  {"--workers", "N", "workers", SS_ST_INT, F(workers), 0, 0, 1024, -1, NULL, "online cores",
   "compute worker threads; `0` runs compute inline on the loop (one call at a time: a "
   "baseline)"},
  {"--intra-op-threads", "T", "intra_op_threads", SS_ST_INT, F(intra_op_threads), 0, 1, 1024, 1,
   NULL, NULL, "matmul engine (oneDNN, OpenMP) threads per worker"},
  {"--oversubscribe", NULL, "oversubscribe", SS_ST_BOOL, F(oversubscribe), 0, 0, 1, 0, NULL, NULL,
   "allow W x T > cores"},
  {"--io-threads", "N", "io_threads", SS_ST_INT, F(io_threads), 0, 1, 64, 1, NULL, NULL,
   "I/O loops: each has its own listener on the port (`SO_REUSEPORT`: the kernel spreads "
   "connections), its own connections, HTTP/2, framing and deadlines; handlers, admission and "
   "the model set stay on the first loop (calls are handed over and their answers travel back). "
   "Threads N + W x T. `splitserve_io_connections{io=\"k\"}` shows the spread. The port is "
   "checked free first: a second server on it still fails with \"address already in use\""},
  {"--max-inflight", "N", "max_inflight", SS_ST_INT, F(max_inflight), 0, 0, INT_MAX, 0, NULL,
   NULL, "per-model concurrent executions, 0 = unlimited (the semaphore Python servers use); "
   "worker models never exceed W"},
  {"--max-queue", "N", "max_queue", SS_ST_INT, F(max_queue), 0, 0, INT_MAX, 10000, NULL, NULL,
   "per-model bounded wait queue; beyond it `RESOURCE_EXHAUSTED` at once"},
  {"--max-message-bytes", "N", "max_message_bytes", SS_ST_SIZE, F(max_message_bytes), 0, 16,
   2147483647.0, 104857600, NULL, NULL,
   "largest request message (compressed ones: inflated); larger ones are refused from their "
   "5-byte prefix, before buffering"},
  {"--drain-timeout", "S", "drain_timeout", SS_ST_SECONDS, F(drain_timeout_s), 0, 0, 3600, 5,
   NULL, NULL, "on SIGINT/SIGTERM, how long in-flight calls may take to finish"},
  {"--max-connections", "N", "max_connections", SS_ST_INT, F(max_connections), 0, 1, 1e7, 10000,
   NULL, NULL,
   "open connections in all; more get GOAWAY `ENHANCE_YOUR_CALM` (reason in the debug data) and "
   "are closed at once; a log line at most once a second. Lowered to fit the open-file limit if "
   "needed"},
  {"--max-connections-per-peer", "N", "max_connections_per_peer", SS_ST_INT,
   F(max_connections_per_peer), 0, 1, 1e7, 1000, NULL, NULL,
   "open connections per client IP address, same answer"},
  {"--max-concurrent-streams", "N", "max_concurrent_streams", SS_ST_INT,
   F(max_concurrent_streams), 0, 1, 100000, 256, NULL, NULL,
   "`SETTINGS_MAX_CONCURRENT_STREAMS`, enforced by nghttp2"},
  {"--max-header-list-bytes", "N", "max_header_list_bytes", SS_ST_SIZE, F(max_header_list_bytes),
   0, 1024, 16 << 20, 16384, NULL, NULL,
   "`SETTINGS_MAX_HEADER_LIST_SIZE`, enforced on the decoded size (name + value + 32 per field, "
   "HPACK references in full, trailers too): over it `RST_STREAM ENHANCE_YOUR_CALM` (gRPC: "
   "`RESOURCE_EXHAUSTED`); the 16th on one connection: GOAWAY"},
  {"--max-connection-buffer-mb", "N", "max_connection_buffer_mb", SS_ST_MB,
   F(max_connection_buffer_bytes), 0, 1, 1 << 20, 64, NULL, NULL,
   "per connection and direction: request bytes held (the server sends `WINDOW_UPDATE` only as "
   "far as this allows; one message larger than it still arrives; a compressed request counts "
   "inflated, and may not inflate past what is left of it: `RESOURCE_EXHAUSTED`) and response "
   "bytes the client has not read (over it: `RESOURCE_EXHAUSTED`)"},
  {"--handshake-timeout", "S", "handshake_timeout", SS_ST_SECONDS, F(handshake_timeout_s), 0, 0,
   DAY, 10, NULL, NULL,
   "the TLS handshake (with `--tls-cert`), the HTTP/2 preface and SETTINGS must arrive within S, "
   "else GOAWAY (TLS: a plain close)"},
  {"--idle-timeout", "S", "idle_timeout", SS_ST_SECONDS, F(idle_timeout_s), 0, 0, 7 * DAY, 300,
   NULL, NULL,
   "GOAWAY a connection with no open stream that received nothing (PINGs count) for S; 0 = off. "
   "Clients that keep connections with keepalive pings need a ping interval below S (grpcio "
   "pings at most once a second); pinging is never punished"},
  {"--request-body-timeout", "S", "request_body_timeout", SS_ST_SECONDS,
   F(request_body_timeout_s), 0, 0, DAY, 30, NULL, NULL,
   "a request whose headers or body stop arriving for S is answered `DEADLINE_EXCEEDED`; a "
   "connection whose responses the client does not read for S is closed (GOAWAY "
   "`ENHANCE_YOUR_CALM`); 0 = off"},
  {"--tls-cert", "FILE", "tls_cert", SS_ST_STR, F(tls_cert), 0, 0, 0, 0, NULL, "off",
   "serve TLS 1.2+ (OpenSSL on memory BIOs; ALPN `h2` required) with this PEM certificate chain "
   "(and `--tls-key`); SIGHUP re-reads them (a broken file keeps the old context and logs an "
   "error). A cleartext client gets a TLS alert record before the close, from which "
   "`splitserve-call` and the C client tell that the server speaks TLS (use `--tls-ca`)"},
  {"--tls-key", "FILE", "tls_key", SS_ST_STR, F(tls_key), 0, 0, 0, 0, NULL, "off",
   "the certificate's PEM private key (with `--tls-cert`)"},
  {"--tls-client-ca", "FILE", "tls_client_ca", SS_ST_STR, F(tls_client_ca), 0, 0, 0, 0, NULL,
   "off", "mutual TLS: clients must present a certificate this PEM CA signed, else the "
   "handshake fails"},
  {"--compress-responses", NULL, "compress_responses", SS_ST_BOOL, F(compress_responses), 0, 0, 1,
   0, NULL, NULL,
   "compress responses with gzip or deflate when the client lists one in `grpc-accept-encoding` "
   "(level 1, on the loop thread). Compressed requests (`grpc-encoding: gzip` / `deflate`) are "
   "always accepted, `--max-message-bytes` and the connection's buffer budget limiting their "
   "inflated size (a zip bomb gets `RESOURCE_EXHAUSTED`); they are inflated 1 MiB per loop "
   "iteration, and only once the request headers passed authentication"},
  {"--model", "ID=KIND[,k=v...]", "models", SS_ST_MODEL, 0, 0, 0, 0, 0, NULL, "",
   "serve a model (repeatable; the first is the default). Kinds: identity, mlp (`weights`, "
   "`activation`), gpt2 (`weights`, `config`, `layers`), llama and gpt_neox (`weights`, "
   "`config`, `layers`, LoRA keys); test kinds scale, sleep, spin; see the model table below. "
   "YAML: a `models:` "
   "list of mappings with `id`, `kind` and the same keys"},
  {"--config", "FILE", NULL, SS_ST_CONFIG, 0, 0, 0, 0, 0, NULL, "",
   "YAML settings (the keys named here) and models; flags given on the command line override "
   "it; SIGHUP reloads its models and limits without a restart"},
  {"--session-memory-mb", "N", "session_memory_mb", SS_ST_MB, F(session_max_bytes), 0, 1,
   1 << 30, 1024, NULL, NULL,
   "total KV-cache memory of server-side decode sessions (metadata `session=ID`); LRU eviction "
   "beyond it"},
  {"--session-ttl", "S", "session_ttl", SS_ST_SECONDS, F(session_ttl_s), 0, 1, 7 * DAY, 600, NULL,
   NULL, "idle decode sessions are evicted after S seconds"},
  {"--activation-memory-mb", "N", "activation_memory_mb", SS_ST_MB, F(activation_max_bytes), 0, 1,
   1 << 30, 2048, NULL, NULL,
   "training: memory for activations awaiting their backward call; oldest evicted beyond it"},
  {"--activation-ttl", "S", "activation_ttl", SS_ST_SECONDS, F(activation_ttl_s), 0, 1, 7 * DAY,
   300, NULL, NULL, "training: a forward without a backward expires after S seconds"},
  {"--save-weights", "PATH", "save_weights", SS_ST_STR, F(save_weights), 0, 0, 0, 0, NULL, "off",
   "checkpoint of the default model (safetensors), written atomically on drain and SIGUSR1 "
   "(per model: the key `save=PATH`)"},
  {"--enable-test-models", NULL, "enable_test_models", SS_ST_BOOL, F(enable_test_models), 0, 0, 1,
   0, NULL, NULL,
   "serve the test-only kinds `scale`, `sleep`, `spin`; without it a call to them is NOT_FOUND "
   "\"exists but is disabled\" and a `--model` of those kinds refuses to start"},
  {"--max-metadata-entries", "N", "max_metadata_entries", SS_ST_INT, F(max_metadata_entries), 0,
   0, 1 << 20, 64, NULL, NULL,
   "metadata entries per ComputeRequest, counted on the wire before decoding; beyond: "
   "`RESOURCE_EXHAUSTED`"},
  {"--max-metadata-key-bytes", "N", "max_metadata_key_bytes", SS_ST_SIZE,
   F(max_metadata_key_bytes), 0, 1, 1 << 24, 256, NULL, NULL,
   "bytes of one metadata key (same check); NUL bytes in metadata, `model_id` or `forward_id`: "
   "`INVALID_ARGUMENT`"},
  {"--max-metadata-value-bytes", "N", "max_metadata_value_bytes", SS_ST_SIZE,
   F(max_metadata_value_bytes), 0, 1, 1 << 24, 4096, NULL, NULL,
   "bytes of one metadata value (same check)"},
  {"--max-session-id-bytes", "N", "max_session_id_bytes", SS_ST_SIZE, F(max_session_id_bytes), 0,
   1, 1 << 16, 256, NULL, NULL,
   "length of a decode session id (metadata `session`); longer: `INVALID_ARGUMENT`"},
  {"--auth-tokens", "FILE", "auth_tokens", SS_ST_STR, F(auth_tokens), 0, 0, 0, 0, NULL, "off",
   "bearer-token authentication: lines `TOKEN [model,model...]` (no list: every model; commas "
   "between model ids; `#` comments, blank lines ignored; tokens are RFC 6750 b64token "
   "characters, at most 1000 bytes). A line whose token seems to hold blanks (two words after "
   "it without a comma, or a word that is no model id) is refused naming the line; a model id "
   "the server does not serve is warned about at start and on reload (a typo). Clients send the request header `authorization: Bearer TOKEN`; missing or unknown "
   "token: `UNAUTHENTICATED` (Compute, ComputeBackward, GetServiceInfo, StreamMonitoring), a "
   "model outside the token's list: `PERMISSION_DENIED` (ComputeBackward: the forward's model). "
   "Training forwards (`forward_id`) and decode sessions (`session`) belong to the token that "
   "created them: another token's backward, session step, `session_end` or reuse of a live id "
   "gets `PERMISSION_DENIED` (\"belongs to another token\"), and learns nothing else about it; "
   "the record keeps an HMAC-SHA256 of its token under a key drawn at start, never the token, "
   "compared in constant time. Health checks (`HealthCheck`, `grpc.health.v1`) stay open. "
   "Tokens never appear in logs; `GetServiceInfo` reports `auth_tokens` (a count) and shows a "
   "model-scoped token only its own models (`models`, `model.ID`, `default_model`). `kill -HUP` "
   "re-reads it; a bad file keeps the old tokens and logs an error"},
  {"--log-level", "L", "log_level", SS_ST_LOGLEVEL, F(log_level), 0, 0, 0, 2, NULL, NULL,
   "error, warn, info, debug"},
  {"--metrics-listen", "HOST:PORT", "metrics_listen", SS_ST_HOSTPORT, F(metrics_host),
   F(metrics_port), 0, 0, -1, NULL, "off",
   "Prometheus text format on `http://HOST:PORT/metrics` (HTTP/1.1 on the loop, Debian's "
   "http-parser): requests by model, method and gRPC code; queue, compute and total time "
   "histograms; in flight, queue depth, batches, sessions, activations, connections, threads, "
   "RSS, build info"},
  {"--wire-dtype", "D", "wire_dtype", SS_ST_DTYPE, F(wire_dtype), 0, 0, 0, -1, NULL, "float32",
   "float32, float16 or bfloat16: how tensors travel when a request's metadata names no `dtype` "
   "(what the Python client's `TensorCodec(dtype=np.float16)` sends); the model key "
   "`wire_dtype` overrides it per model; metadata wins over both"},
  {"--wire-codec", "C", "wire_codec", SS_ST_CODEC, F(wire_codec), 0, 0, 0, -1, NULL, "none",
   "none or zlib: whether tensors are zlib-compressed when the metadata names no `codec` (the "
   "Python client's `CompressedTensorCodec`); the model key `wire_codec` overrides it per "
   "model; metadata wins over both"},
};
/* clang-format on */
const size_t ss_nsettings = sizeof ss_settings / sizeof ss_settings[0];
_Static_assert(sizeof ss_settings / sizeof ss_settings[0] <= SS_SETTINGS_MAX, "SS_SETTINGS_MAX");

int ss_setting_by_flag(const char *flag) {
  for (size_t i = 0; i < ss_nsettings; i++)
    if (strcmp(ss_settings[i].flag, flag) == 0) return (int)i;
  return -1;
}

int ss_setting_by_key(const char *key) {
  for (size_t i = 0; i < ss_nsettings; i++)
    if (ss_settings[i].key && strcmp(ss_settings[i].key, key) == 0) return (int)i;
  return -1;
}

#define FIELD(cfg, off, type) ((type *)(void *)((char *)(cfg) + (off)))
#define CFIELD(cfg, off, type) ((const type *)(const void *)((const char *)(cfg) + (off)))

/* An integer in [lo, hi] (no sign-less junk, no trailing text). */
static int parse_ll(const char *s, double lo, double hi, long long *out) {
  if (!s || !(s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9'))) return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || (double)v < lo || (double)v > hi) return -1;
  *out = v;
  return 0;
}

/* "HOST:PORT" or "[V6]:PORT": host [hb, he), port. */
static int parse_hostport(const char *s, const char **hb, const char **he, int *port) {
  const char *p = NULL;
  *hb = *he = NULL;
  if (s && s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (rb && rb > s + 1 && rb[1] == ':') *hb = s + 1, *he = rb, p = rb + 2;
  } else if (s) {
    const char *colon = strrchr(s, ':');
    if (colon && colon > s && memchr(s, ':', (size_t)(colon - s)) == NULL)
      *hb = s, *he = colon, p = colon + 1;
  }
  long long v;
  if (!*hb || !p || p[0] == '+' || p[0] == '-' || parse_ll(p, 0, 65535, &v) != 0) return -1;
  *port = (int)v;
  return 0;
}

static int parse_bool(const char *s, int *out) {
  static const char *const yes[] = {"true", "yes", "on", "1", NULL};
  static const char *const no[] = {"false", "no", "off", "0", NULL};
  if (!s) return *out = 1, 0; /* a switch on the command line */
  for (int i = 0; yes[i]; i++)
    if (strcasecmp(s, yes[i]) == 0) return *out = 1, 0;
  for (int i = 0; no[i]; i++)
    if (strcasecmp(s, no[i]) == 0) return *out = 0, 0;
  return -1;
}

int ss_setting_set(ss_server_config *cfg, int i, const char *v, char **owned, char *err,
                   size_t errlen) {
  const ss_setting *s = &ss_settings[i];
  char got[100];
  long long x;
  *owned = NULL;
  snprintf(got, sizeof got, "'%.80s%s'", v ? v : "", v && strlen(v) > 80 ? "..." : "");
  switch (s->type) {
    case SS_ST_INT:
    case SS_ST_SIZE:
    case SS_ST_MB:
      if (parse_ll(v, s->lo, s->hi, &x) != 0) {
        snprintf(err, errlen, "expected an integer in [%.0f, %.0f], got %s", s->lo, s->hi, got);
        return SS_EINVAL;
      }
      if (s->type == SS_ST_INT)
        *FIELD(cfg, s->off, int) = (int)x;
      else
        *FIELD(cfg, s->off, size_t) = (size_t)x << (s->type == SS_ST_MB ? 20 : 0);
      return 0;
    case SS_ST_SECONDS: {
      char *end = NULL;
      double d = 0;
      int ok = v && (v[0] == '.' || v[0] == '+' || v[0] == '-' || (v[0] >= '0' && v[0] <= '9'));
      if (ok) {
        errno = 0;
        d = strtod(v, &end);
        ok = !errno && end != v && !*end && d >= s->lo && d <= s->hi;
      }
      if (!ok) {
        snprintf(err, errlen, "expected seconds in [%g, %g], got %s", s->lo, s->hi, got);
        return SS_EINVAL;
      }
      *FIELD(cfg, s->off, double) = d;
      return 0;
    }
    case SS_ST_BOOL:
      if (parse_bool(v, FIELD(cfg, s->off, int)) != 0) {
        snprintf(err, errlen, "expected a boolean (true/false/yes/no/1/0), got %s", got);
        return SS_EINVAL;
      }
      return 0;
    case SS_ST_STR:
      if (!v || !v[0]) {
        snprintf(err, errlen, "expected a non-empty string, got %s", got);
        return SS_EINVAL;
      }
      if (!(*owned = strdup(v))) return SS_ENOMEM;
      *FIELD(cfg, s->off, const char *) = *owned;
      return 0;
    case SS_ST_HOSTPORT: {
      const char *hb, *he;
      int port;
      if (parse_hostport(v, &hb, &he, &port) != 0) {
        snprintf(err, errlen,
                 "expected HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051, port in [0, 65535]), "
                 "got %s",
                 got);
        return SS_EINVAL;
      }
      if (!(*owned = strndup(hb, (size_t)(he - hb)))) return SS_ENOMEM;
      *FIELD(cfg, s->off, const char *) = *owned;
      *FIELD(cfg, s->off2, int) = port;
      return 0;
    }
    case SS_ST_LOGLEVEL: {
      int l = v ? ss_log_parse_level(v) : -1;
      if (l < 0) {
        snprintf(err, errlen, "expected one of error, warn, info, debug, got %s", got);
        return SS_EINVAL;
      }
      *FIELD(cfg, s->off, int) = l;
      return 0;
    }
    case SS_ST_DTYPE: {
      ss_dtype dt;
      if (!v || ss_dtype_parse(v, &dt) != 0) {
        snprintf(err, errlen, "expected float32, float16 or bfloat16, got %s", got);
        return SS_EINVAL;
      }
      *FIELD(cfg, s->off, int) = (int)dt;
      return 0;
    }
    case SS_ST_CODEC:
      if (!v || (strcmp(v, "zlib") != 0 && strcmp(v, "none") != 0)) {
        snprintf(err, errlen, "expected none or zlib, got %s", got);
        return SS_EINVAL;
      }
      *FIELD(cfg, s->off, int) = strcmp(v, "zlib") == 0;
      return 0;
    case SS_ST_MODEL:
    case SS_ST_CONFIG: break;
  }
  snprintf(err, errlen, "is not a plain setting");
  return SS_EINVAL;
}

void ss_setting_copy(ss_server_config *dst, const ss_server_config *src, int i) {
  const ss_setting *s = &ss_settings[i];
  switch (s->type) {
    case SS_ST_INT:
    case SS_ST_BOOL:
    case SS_ST_LOGLEVEL:
    case SS_ST_DTYPE:
    case SS_ST_CODEC: *FIELD(dst, s->off, int) = *CFIELD(src, s->off, int); break;
    case SS_ST_SIZE:
    case SS_ST_MB: *FIELD(dst, s->off, size_t) = *CFIELD(src, s->off, size_t); break;
    case SS_ST_SECONDS: *FIELD(dst, s->off, double) = *CFIELD(src, s->off, double); break;
    case SS_ST_HOSTPORT: *FIELD(dst, s->off2, int) = *CFIELD(src, s->off2, int); /* fall through */
    case SS_ST_STR: *FIELD(dst, s->off, const char *) = *CFIELD(src, s->off, const char *); break;
    case SS_ST_MODEL:
    case SS_ST_CONFIG: break;
  }
}

void ss_setting_format(const ss_server_config *cfg, int i, char *buf, size_t len) {
  static const char *const levels[] = {"error", "warn", "info", "debug"};
  const ss_setting *s = &ss_settings[i];
  const char *unset = s->unset ? s->unset : "";
  switch (s->type) {
    case SS_ST_INT: {
      int v = *CFIELD(cfg, s->off, int);
      if (v < 0 && s->unset)
        snprintf(buf, len, "%s", unset);
      else
        snprintf(buf, len, "%d", v);
      return;
    }
    case SS_ST_SIZE: snprintf(buf, len, "%zu", *CFIELD(cfg, s->off, size_t)); return;
    case SS_ST_MB: snprintf(buf, len, "%zu", *CFIELD(cfg, s->off, size_t) >> 20); return;
    case SS_ST_SECONDS: snprintf(buf, len, "%g", *CFIELD(cfg, s->off, double)); return;
    case SS_ST_BOOL: snprintf(buf, len, "%s", *CFIELD(cfg, s->off, int) ? "on" : "off"); return;
    case SS_ST_STR: {
      const char *v = *CFIELD(cfg, s->off, const char *);
      snprintf(buf, len, "%s", v ? v : unset);
      return;
    }
    case SS_ST_HOSTPORT: {
      const char *h = *CFIELD(cfg, s->off, const char *);
      int port = *CFIELD(cfg, s->off2, int);
      if (port < 0)
        snprintf(buf, len, "%s", unset);
      else if (h && strchr(h, ':'))
        snprintf(buf, len, "[%s]:%d", h, port);
      else
        snprintf(buf, len, "%s:%d", h ? h : "127.0.0.1", port);
      return;
    }
    case SS_ST_LOGLEVEL: {
      int l = *CFIELD(cfg, s->off, int);
      snprintf(buf, len, "%s", l >= 0 && l <= 3 ? levels[l] : "info");
      return;
    }
    case SS_ST_DTYPE: {
      int d = *CFIELD(cfg, s->off, int);
      snprintf(buf, len, "%s", d < 0 ? unset : ss_dtype_name((ss_dtype)d));
      return;
    }
    case SS_ST_CODEC: {
      int c = *CFIELD(cfg, s->off, int);
      snprintf(buf, len, "%s", c < 0 ? unset : c ? "zlib" : "none");
      return;
    }
    case SS_ST_MODEL:
    case SS_ST_CONFIG: snprintf(buf, len, "%s", unset); return;
  }
}

/* ------------------------------------------------------------------ defaults --- */

void ss_server_config_init(ss_server_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  for (size_t i = 0; i < ss_nsettings; i++) {
    const ss_setting *s = &ss_settings[i];
    switch (s->type) {
      case SS_ST_INT:
      case SS_ST_BOOL:
      case SS_ST_LOGLEVEL:
      case SS_ST_DTYPE:
      case SS_ST_CODEC: *FIELD(cfg, s->off, int) = (int)s->def; break;
      case SS_ST_SIZE: *FIELD(cfg, s->off, size_t) = (size_t)s->def; break;
      case SS_ST_MB: *FIELD(cfg, s->off, size_t) = (size_t)s->def << 20; break;
      case SS_ST_SECONDS: *FIELD(cfg, s->off, double) = s->def; break;
      case SS_ST_HOSTPORT: *FIELD(cfg, s->off2, int) = (int)s->def; /* fall through */
      case SS_ST_STR: *FIELD(cfg, s->off, const char *) = s->sdef; break;
      case SS_ST_MODEL:
      case SS_ST_CONFIG: break;
    }
  }
}

/* ------------------------------------------------------------------ help --- */

static void default_text(int i, char *buf, size_t len) {
  ss_server_config d;
  ss_server_config_init(&d);
  ss_setting_format(&d, i, buf, len);
}

void ss_settings_usage(FILE *f) {
  fprintf(f, "usage: splitserve [flags]   (defaults in brackets; YAML keys for --config)\n");
  for (size_t i = 0; i < ss_nsettings; i++) {
    const ss_setting *s = &ss_settings[i];
    char head[64], def[128];
    snprintf(head, sizeof head, "%s%s%s", s->flag, s->arg ? " " : "", s->arg ? s->arg : "");
    default_text((int)i, def, sizeof def);
    fprintf(f, "  %-27s", head);
    int col = 29;
    if (strlen(head) > 26) {
      fprintf(f, "\n%29s", "");
    }
    /* The help, wrapped at 100 columns, then [default] and the YAML key. */
    char tail[200];
    snprintf(tail, sizeof tail, "%s%s%s%s%s%s", def[0] ? " [" : "", def, def[0] ? "]" : "",
             s->key && s->type != SS_ST_MODEL ? " (YAML " : "",
             s->key && s->type != SS_ST_MODEL ? s->key : "",
             s->key && s->type != SS_ST_MODEL ? ")" : "");
    const char *parts[2] = {s->help, tail};
    for (int p = 0; p < 2; p++) {
      const char *w = parts[p];
      while (*w) {
        while (*w == ' ') w++;
        size_t n = strcspn(w, " ");
        if (n == 0) break;
        if (col + (int)n + 1 > 100 && col > 29) {
          fprintf(f, "\n%29s", "");
          col = 29;
        }
        fprintf(f, "%s%.*s", col > 29 ? " " : "", (int)n, w);
        col += (int)n + (col > 29 ? 1 : 0);
        w += n;
      }
    }
    fprintf(f, "\n");
  }
  fprintf(f, "  %-27s this text (--help-markdown: the README's flag table)\n", "--help");
  fprintf(f, "  %-27s the keys of --model specs, per kind (the README's model key table)\n",
          "--help-model-keys");
}

void ss_settings_markdown(FILE *f) {
  fprintf(f, "| flag | default | YAML key | meaning |\n|---|---|---|---|\n");
  for (size_t i = 0; i < ss_nsettings; i++) {
    const ss_setting *s = &ss_settings[i];
    char def[128];
    default_text((int)i, def, sizeof def);
    fprintf(f, "| `%s%s%s` | %s | %s%s%s | %s |\n", s->flag, s->arg ? " " : "",
            s->arg ? s->arg : "", def, s->key ? "`" : "", s->key ? s->key : "", s->key ? "`" : "",
            s->help);
  }
}
