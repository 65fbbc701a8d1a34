/*
 * splitserve — the daemon: parses flags, builds an ss_server, runs its loop on the main
 * thread until SIGINT/SIGTERM drains it, then prints a one-line summary and exits 0.
 * A second signal during the drain stops at once (exit 1).
 *
 * Thread: main thread = the server's loop thread. The server adds W worker threads (x T BLAS).
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "splitserve.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: splitserve [flags]\n"
          "  --listen HOST:PORT        address to serve on (default 127.0.0.1:50051; port 0 picks one)\n"
          "  --workers N               compute worker threads (default: online cores; 0 = compute\n"
          "                            inline on the I/O loop: one call at a time, a baseline)\n"
          "  --intra-op-threads T      BLAS threads per worker (default 1)\n"
          "  --oversubscribe           allow workers x intra-op-threads > cores\n"
          "  --io-threads N            I/O loops, 1..64 (default 1): connections are spread over\n"
          "                            them (SO_REUSEPORT); handlers stay on the first. Threads:\n"
          "                            N + workers x intra-op-threads\n"
          "  --max-inflight N          per-model concurrent executions (default 0 = unlimited;\n"
          "                            worker models never exceed the worker count)\n"
          "  --max-queue N             per-model bounded wait queue; beyond it RESOURCE_EXHAUSTED\n"
          "                            at once (default 10000)\n"
          "  --max-message-bytes N     largest request message (default 104857600)\n"
          "  --drain-timeout S         graceful drain limit on SIGINT/SIGTERM (default 5)\n"
          "transport bounds (what one client can hold; see README):\n"
          "  --max-connections N       open connections in all; more are closed at once with\n"
          "                            GOAWAY ENHANCE_YOUR_CALM (default 10000)\n"
          "  --max-connections-per-peer N  open connections per client IP address (default 1000)\n"
          "  --max-concurrent-streams N    streams per connection, advertised and enforced (256)\n"
          "  --max-header-list-bytes N decoded request headers per stream, name+value+32 per field\n"
          "                            (default 16384); over it RST_STREAM ENHANCE_YOUR_CALM\n"
          "                            (RESOURCE_EXHAUSTED); 16 in one connection: GOAWAY\n"
          "  --max-connection-buffer-mb N  request bytes held and response bytes unsent per\n"
          "                            connection, each direction (default 64)\n"
          "  --handshake-timeout S     TLS handshake (with --tls-cert) + HTTP/2 preface + SETTINGS\n"
          "                            must arrive within S (default 10)\n"
          "  --tls-cert FILE           serve TLS 1.2+ (ALPN h2 required) with this PEM certificate\n"
          "                            chain; SIGHUP re-reads it (a bad file keeps the old one)\n"
          "  --tls-key FILE            the certificate's PEM private key (with --tls-cert)\n"
          "  --tls-client-ca FILE      mutual TLS: clients must present a certificate signed by\n"
          "                            this PEM CA, else the handshake fails\n"
          "  --compress-responses      compress responses with gzip/deflate when the client lists\n"
          "                            one in grpc-accept-encoding (costs loop time; default off).\n"
          "                            Compressed requests (gzip, deflate) are always accepted;\n"
          "                            --max-message-bytes and the connection buffer limit their\n"
          "                            inflated size\n"
          "  --idle-timeout S          GOAWAY a connection with no open stream that received\n"
          "                            nothing (PINGs count) for S seconds (default 300; 0 = off)\n"
          "  --request-body-timeout S  a request whose headers or body stop arriving for S s is\n"
          "                            answered DEADLINE_EXCEEDED; a connection whose responses\n"
          "                            are not read for S s is closed (default 30; 0 = off)\n"
          "  --model ID=KIND[,k=v...]  serve a model (repeatable; the first is the default). Kinds:\n"
          "                              identity, scale, sleep, spin (no keys)\n"
          "                              mlp   weights=FILE.safetensors, activation=relu|gelu\n"
          "                              gpt2  weights=FILE.safetensors, config=config.json, layers=A:B\n"
          "                              llama weights=FILE|DIR (llama, qwen2, mistral, gemma),\n"
          "                                    config=config.json, layers=A:B, lora_rank=R,\n"
          "                                    lora_alpha=A, lora_targets=q_proj,v_proj, adapter=DIR\n"
          "                            mlp, gpt2 and llama also take training keys: optimizer=sgd|adamw,\n"
          "                            beta1, beta2, eps, weight_decay, save=PATH (checkpoint).\n"
          "                            Built-ins mlp (embedded 768->768->768) and identity are\n"
          "                            always present; scale, sleep, spin with --enable-test-models.\n"
          "  --session-memory-mb N     total KV-cache memory of server-side decode sessions\n"
          "                            (metadata session=ID; default 1024); LRU eviction beyond it\n"
          "  --session-ttl S           idle decode sessions are evicted after S seconds (default 600)\n"
"  --activation-memory-mb N  training: memory for activations awaiting their backward call\n"
          "                            (default 2048); oldest evicted beyond it\n"
          "  --activation-ttl S        training: a forward without backward expires after S s (300)\n"
          "  --save-weights PATH       checkpoint of the default model (safetensors), written\n"
          "                            atomically on drain and on SIGUSR1 (per model: save=PATH)\n"
          "  --config FILE             YAML settings and models (examples/server.yaml); flags given on\n"
          "                            the command line override its settings; SIGHUP re-reads its\n"
          "                            models and limits without a restart\n"
          "  --auth-tokens FILE        require 'authorization: Bearer TOKEN' (off by default); lines\n"
          "                            'TOKEN [model,model...]' (no list: every model), # comments;\n"
          "                            missing/unknown token UNAUTHENTICATED, model outside the list\n"
          "                            PERMISSION_DENIED; health checks stay open; SIGHUP re-reads it\n"
          "                            (a bad file keeps the old tokens)\n"
          "  --enable-test-models      serve the test-only kinds scale, sleep, spin (off by\n"
          "                            default: they burn CPU or hold timers on request)\n"
          "  --max-metadata-entries N  metadata entries per request (default 64); checked on the\n"
          "                            wire before decoding, beyond it RESOURCE_EXHAUSTED\n"
          "  --max-metadata-key-bytes N    bytes of one metadata key (default 256)\n"
          "  --max-metadata-value-bytes N  bytes of one metadata value (default 4096)\n"
          "  --max-session-id-bytes N  length of a decode session id, metadata session=ID\n"
          "                            (default 256; longer: INVALID_ARGUMENT)\n"
          "  --log-level L             error|warn|info|debug (default info)\n"
          "  --wire-dtype D            float32|float16|bfloat16: how tensors travel when a request's\n"
          "                            metadata names no dtype (default float32; model key wire_dtype)\n"
          "  --wire-codec C            none|zlib: whether they are zlib-compressed when the metadata\n"
          "                            names no codec (default none; model key wire_codec)\n"
          "  --metrics-listen HOST:PORT  Prometheus metrics at http://HOST:PORT/metrics (default off;\n"
          "                            port 0 picks one; config key metrics_listen)\n"
          "  --help                    this text\n");
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out);

/* "HOST:PORT" or "[V6]:PORT" into host[hostlen] and *port. */
static int parse_hostport(const char *flag, const char *v, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(v, ':');
  long x;
  if (!colon || colon == v || parse_int(flag, colon + 1, 0, 65535, &x) != 0) {
    fprintf(stderr, "splitserve: %s expects HOST:PORT, got '%s'\n", flag, v);
    return -1;
  }
  size_t hl = (size_t)(colon - v);
  if (hl >= hostlen) hl = hostlen - 1;
  memcpy(host, v, hl);
  host[hl] = 0;
  if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') { /* [::1]:50051 */
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = 0;
  }
  *port = (int)x;
  return 0;
}

static int parse_seconds(const char *flag, const char *v, double hi, double *out) {
  char *end;
  double d = strtod(v, &end);
  if (end == v || *end || !(d >= 0 && d <= hi)) {
    fprintf(stderr, "splitserve: %s expects seconds in [0, %g], got '%s'\n", flag, hi, v);
    return -1;
  }
  *out = d;
  return 0;
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "splitserve: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
    return -1;
  }
  *out = x;
  return 0;
}

int main(int argc, char **argv) {
  /* Tensor-sized buffers (30 KB .. MBs) are allocated and freed per call: keep glibc from
   * trimming and re-growing the heap (and mmapping/unmapping) around every one of them. This
   * halved server CPU per call for 1x10x768 tensors (bench notes). Freed memory is reused, not
   * returned to the kernel below 256 MB of slack. */
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  ss_server_config cfg;
  ss_server_config_init(&cfg);
  cfg.handle_signals = 1;
  const char *models[256];
  int model_inflight[256], model_queue[256];
  size_t nmodels = 0;
  char host[256] = "127.0.0.1", mhost[256] = "127.0.0.1";
  ss_config_file *fc = NULL;
  const char *config_path = NULL;
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--config") == 0) config_path = argv[i + 1];
  if (config_path) {
    char cerr[1024];
    if (ss_server_config_load(&cfg, config_path, &fc, cerr, sizeof cerr) != 0) {
      fprintf(stderr, "splitserve: --config: %s\n", cerr);
      return 2;
    }
  }
  int rc = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      rc = 0;
      goto out;
    }
    if (strcmp(a, "--oversubscribe") == 0) {
      cfg.oversubscribe = 1;
      continue;
    }
    if (strcmp(a, "--enable-test-models") == 0) {
      cfg.enable_test_models = 1;
      continue;
    }
    if (strcmp(a, "--compress-responses") == 0) {
      cfg.compress_responses = 1;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "splitserve: unknown flag or missing value: %s\n", a);
      usage(stderr);
      goto out;
    }
    const char *v = argv[++i];
    long x;
    if (strcmp(a, "--listen") == 0) {
      if (parse_hostport(a, v, host, sizeof host, &cfg.listen_port) != 0) goto out;
      cfg.listen_host = host;
    } else if (strcmp(a, "--wire-dtype") == 0) {
      ss_dtype dt;
      if (ss_dtype_parse(v, &dt) != 0) {
        fprintf(stderr, "splitserve: --wire-dtype expects float32|float16|bfloat16, got '%s'\n", v);
        goto out;
      }
      cfg.wire_dtype = (int)dt;
    } else if (strcmp(a, "--wire-codec") == 0) {
      if (strcmp(v, "zlib") != 0 && strcmp(v, "none") != 0) {
        fprintf(stderr, "splitserve: --wire-codec expects none|zlib, got '%s'\n", v);
        goto out;
      }
      cfg.wire_codec = strcmp(v, "zlib") == 0;
    } else if (strcmp(a, "--metrics-listen") == 0) {
      if (parse_hostport(a, v, mhost, sizeof mhost, &cfg.metrics_port) != 0) goto out;
      cfg.metrics_host = mhost;
    } else if (strcmp(a, "--workers") == 0) {
      if (parse_int(a, v, 0, 1024, &x) != 0) goto out;
      cfg.workers = (int)x;
    } else if (strcmp(a, "--io-threads") == 0) {
      if (parse_int(a, v, 1, 64, &x) != 0) goto out;
      cfg.io_threads = (int)x;
    } else if (strcmp(a, "--intra-op-threads") == 0) {
      if (parse_int(a, v, 1, 1024, &x) != 0) goto out;
      cfg.intra_op_threads = (int)x;
    } else if (strcmp(a, "--max-inflight") == 0) {
      if (parse_int(a, v, 0, INT_MAX, &x) != 0) goto out;
      cfg.max_inflight = (int)x;
    } else if (strcmp(a, "--max-queue") == 0) {
      if (parse_int(a, v, 0, INT_MAX, &x) != 0) goto out;
      cfg.max_queue = (int)x;
    } else if (strcmp(a, "--max-message-bytes") == 0) {
      if (parse_int(a, v, 16, 2147483647L, &x) != 0) goto out;
      cfg.max_message_bytes = (size_t)x;
    } else if (strcmp(a, "--drain-timeout") == 0) {
      char *end;
      double d = strtod(v, &end);
      if (end == v || *end || !(d >= 0 && d <= 3600)) {
        fprintf(stderr, "splitserve: --drain-timeout expects seconds in [0, 3600], got '%s'\n", v);
        goto out;
      }
      cfg.drain_timeout_s = d;
    } else if (strcmp(a, "--max-connections") == 0) {
      if (parse_int(a, v, 1, 10000000, &x) != 0) goto out;
      cfg.max_connections = (int)x;
    } else if (strcmp(a, "--max-connections-per-peer") == 0) {
      if (parse_int(a, v, 1, 10000000, &x) != 0) goto out;
      cfg.max_connections_per_peer = (int)x;
    } else if (strcmp(a, "--max-concurrent-streams") == 0) {
      if (parse_int(a, v, 1, 100000, &x) != 0) goto out;
      cfg.max_concurrent_streams = (int)x;
    } else if (strcmp(a, "--max-header-list-bytes") == 0) {
      if (parse_int(a, v, 1024, 16L << 20, &x) != 0) goto out;
      cfg.max_header_list_bytes = (size_t)x;
    } else if (strcmp(a, "--max-connection-buffer-mb") == 0) {
      if (parse_int(a, v, 1, 1L << 20, &x) != 0) goto out;
      cfg.max_connection_buffer_bytes = (size_t)x << 20;
    } else if (strcmp(a, "--handshake-timeout") == 0) {
      if (parse_seconds(a, v, 86400, &cfg.handshake_timeout_s) != 0) goto out;
    } else if (strcmp(a, "--tls-cert") == 0) {
      cfg.tls_cert = v;
    } else if (strcmp(a, "--tls-key") == 0) {
      cfg.tls_key = v;
    } else if (strcmp(a, "--tls-client-ca") == 0) {
      cfg.tls_client_ca = v;
    } else if (strcmp(a, "--idle-timeout") == 0) {
      if (parse_seconds(a, v, 86400 * 7, &cfg.idle_timeout_s) != 0) goto out;
    } else if (strcmp(a, "--request-body-timeout") == 0) {
      if (parse_seconds(a, v, 86400, &cfg.request_body_timeout_s) != 0) goto out;
    } else if (strcmp(a, "--session-memory-mb") == 0) {
      if (parse_int(a, v, 1, 1L << 30, &x) != 0) goto out;
      cfg.session_max_bytes = (size_t)x << 20;
    } else if (strcmp(a, "--session-ttl") == 0) {
      if (parse_int(a, v, 1, 86400 * 7, &x) != 0) goto out;
      cfg.session_ttl_s = (double)x;
    } else if (strcmp(a, "--activation-memory-mb") == 0) {
      if (parse_int(a, v, 1, 1L << 30, &x) != 0) goto out;
      cfg.activation_max_bytes = (size_t)x << 20;
    } else if (strcmp(a, "--activation-ttl") == 0) {
      if (parse_int(a, v, 1, 86400 * 7, &x) != 0) goto out;
      cfg.activation_ttl_s = (double)x;
    } else if (strcmp(a, "--max-metadata-entries") == 0) {
      if (parse_int(a, v, 0, 1L << 20, &x) != 0) goto out;
      cfg.max_metadata_entries = (int)x;
    } else if (strcmp(a, "--max-metadata-key-bytes") == 0) {
      if (parse_int(a, v, 1, 1L << 24, &x) != 0) goto out;
      cfg.max_metadata_key_bytes = (size_t)x;
    } else if (strcmp(a, "--max-metadata-value-bytes") == 0) {
      if (parse_int(a, v, 1, 1L << 24, &x) != 0) goto out;
      cfg.max_metadata_value_bytes = (size_t)x;
    } else if (strcmp(a, "--max-session-id-bytes") == 0) {
      if (parse_int(a, v, 1, 1L << 16, &x) != 0) goto out;
      cfg.max_session_id_bytes = (size_t)x;
    } else if (strcmp(a, "--save-weights") == 0) {
      cfg.save_weights = v;
    } else if (strcmp(a, "--auth-tokens") == 0) {
      cfg.auth_tokens = v;
    } else if (strcmp(a, "--config") == 0) {
      /* applied above */
    } else if (strcmp(a, "--model") == 0) {
      if (config_path) {
        fprintf(stderr, "splitserve: --model with --config: list the models in %s (SIGHUP reloads "
                        "them from there)\n", config_path);
        goto out;
      }
      model_inflight[nmodels] = model_queue[nmodels] = -1;
      if (nmodels == sizeof models / sizeof models[0]) {
        fprintf(stderr, "splitserve: at most %zu --model flags\n", nmodels);
        goto out;
      }
      models[nmodels++] = v;
    } else if (strcmp(a, "--log-level") == 0) {
      int l = ss_log_parse_level(v);
      if (l < 0) {
        fprintf(stderr, "splitserve: --log-level expects error|warn|info|debug, got '%s'\n", v);
        goto out;
      }
      cfg.log_level = l;
    } else {
      fprintf(stderr, "splitserve: unknown flag %s\n", a);
      usage(stderr);
      goto out;
    }
  }
  if (!config_path) { /* with --config the file lists the models (--model is refused above) */
    cfg.models = models;
    cfg.n_models = nmodels;
    cfg.model_max_inflight = model_inflight;
    cfg.model_max_queue = model_queue;
  }

  ss_server *s;
  char err[1024];
  int rv = ss_server_new(&cfg, &s, err, sizeof err);
  if (rv != 0) {
    fprintf(stderr, "splitserve: %s\n", err);
    rc = 1;
    goto out;
  }
  int busy = ss_server_run(s) == SS_EBUSY;
  ss_server_stats st;
  ss_server_get_stats(s, &st);
  fprintf(stderr, "splitserve: stopped: served %llu, rejected %llu, cancelled %llu, failed %llu\n",
          (unsigned long long)st.served, (unsigned long long)st.rejected,
          (unsigned long long)st.cancelled, (unsigned long long)st.failed);
  int ckpt_failed = st.checkpoint_failed;
  if (ckpt_failed)
    fprintf(stderr, "splitserve: a checkpoint could not be written (see the log); exit status 1\n");
  if (busy) { /* every call was answered; do not wait for abandoned computations */
    fflush(stderr);
    _exit(ckpt_failed ? 1 : 0);
  }
  ss_server_free(s);
  rc = ckpt_failed ? 1 : 0;
out:
  ss_config_file_free(fc);
  return rc;
}
