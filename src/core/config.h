/*
 * config.h — the server's YAML configuration file (`splitserve --config server.yaml`):
 * listen address, worker/thread counts, limits, session settings, log level and a list of
 * models, parsed into plain C values with the "has_" flag of each key telling whether the
 * file set it (so command-line flags and built-in defaults can fill in the rest).
 *
 * Thread: any thread; pure parsing (no global state, nothing started, no model loaded).
 * The whole file is read and walked as a libyaml document tree; every error is reported as
 * "PATH:LINE:COL: message" naming the key and what was expected vs what the file holds.
 *
 * Models: each entry of `models:` is a mapping with the required keys `id` and `kind`, the
 * optional admission limits `max_inflight` / `max_queue`, and any other scalar keys
 * (weights, config, layers, activation, ...), which are joined into the model spec string
 * "ID=KIND[,key=value...]" in file order, ready for ss_model_create() (which validates the
 * keys each kind accepts). Values containing ',' or '=' are refused here, since they would
 * break that spec string.
 */
#ifndef SS_CORE_CONFIG_H
#define SS_CORE_CONFIG_H

#include <stddef.h>

typedef struct ss_model_conf {
  char *id;            /* required, [A-Za-z0-9_.-]+, unique */
  char *kind;          /* required: identity|scale|sleep|spin|mlp|gpt2 (not validated here beyond non-empty) */
  char *spec;          /* "ID=KIND[,key=value...]" built from the other keys (weights, config, layers, activation, any other scalar key except id/kind/max_inflight/max_queue), ready for ss_model_create() */
  int max_inflight;    /* -1 = not set (server default) */
  int max_queue;       /* -1 = not set */
} ss_model_conf;

typedef struct ss_file_config {
  char *listen_host; int listen_port; int has_listen;      /* listen: "HOST:PORT" ([v6]:port ok) */
  char *metrics_host; int metrics_port; int has_metrics_listen; /* metrics_listen: HOST:PORT */
  int workers, has_workers;
  int io_threads, has_io_threads;
  int intra_op_threads, has_intra_op_threads;
  int oversubscribe, has_oversubscribe;                       /* bool: true/false/yes/no/1/0 */
  int max_inflight, has_max_inflight;
  int max_queue, has_max_queue;
  long long max_message_bytes; int has_max_message_bytes;
  double drain_timeout_s; int has_drain_timeout;              /* key drain_timeout (seconds) */
  long long session_memory_mb; int has_session_memory_mb;
  double session_ttl_s; int has_session_ttl;                  /* key session_ttl */
  long long activation_memory_mb; int has_activation_memory_mb;
  double activation_ttl_s; int has_activation_ttl;             /* key activation_ttl */
  int max_connections, has_max_connections;
  int max_connections_per_peer, has_max_connections_per_peer;
  int max_concurrent_streams, has_max_concurrent_streams;
  long long max_header_list_bytes; int has_max_header_list_bytes;
  long long max_connection_buffer_mb; int has_max_connection_buffer_mb;
  double handshake_timeout_s; int has_handshake_timeout;       /* key handshake_timeout */
  double idle_timeout_s; int has_idle_timeout;                 /* key idle_timeout */
  double request_body_timeout_s; int has_request_body_timeout; /* key request_body_timeout */
  char *save_weights; int has_save_weights;                    /* default model checkpoint */
  char *auth_tokens; int has_auth_tokens;                      /* bearer-token file */
  int enable_test_models, has_enable_test_models;            /* bool */
  char *tls_cert; int has_tls_cert;                            /* PEM paths (TLS) */
  char *tls_key; int has_tls_key;
  char *tls_client_ca; int has_tls_client_ca;
  int compress_responses, has_compress_responses;            /* bool */
  int max_metadata_entries, has_max_metadata_entries;
  long long max_metadata_key_bytes; int has_max_metadata_key_bytes;
  long long max_metadata_value_bytes; int has_max_metadata_value_bytes;
  long long max_session_id_bytes; int has_max_session_id_bytes;
  char *log_level; int has_log_level;
  ss_model_conf *models; size_t n_models;                     /* key models: a sequence of mappings */
} ss_file_config;

/* Bounds on a config file (refused beyond them, before the YAML tree is built): its size, and
 * how deeply mappings and sequences nest (a real config nests 4 deep; libyaml's document
 * loader takes time quadratic in the depth). */
#define SS_CONFIG_MAX_BYTES (1u << 20)
#define SS_CONFIG_MAX_DEPTH 32

/* Parse a YAML file. On error returns <0 (SS_EINVAL, SS_EIO) and writes "PATH:LINE:COL: message" naming the key and what was expected vs got. *out is zeroed first; free with ss_config_free (also after an error). */
int ss_config_load(const char *path, ss_file_config *out, char *err, size_t errlen);

/* Same from a string (name used in messages). */
int ss_config_parse(const char *name, const char *text, size_t len, ss_file_config *out, char *err, size_t errlen);

void ss_config_free(ss_file_config *c);

#endif
