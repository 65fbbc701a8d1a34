/*
 * splitserve_call.c — splitserve-call, a command-line gRPC client for splitserve (and any
 * splitlearn.comm.ComputeService server): health, info, and compute with tensors read from or
 * written to .npy files.
 *
 * Thread: one; the blocking ss_client runs its private libuv loop inside each call.
 * Credentials: --token / --token-file (token.c) become `authorization: Bearer TOKEN` on every
 * call; the token is never printed, and a --token argument is wiped from argv once read.
 * .npy support: format v1.0/v2.0, little-endian C-order '<f4' / '<f2' only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "splitserve.h"
#include "token.h"

#define MAX_META 64

static void usage(FILE *f) {
  fprintf(f,
          "usage: splitserve-call [--addr HOST:PORT] [--timeout S] COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  health                 HealthCheck: prints status and version\n"
          "  info                   GetServiceInfo: prints every field\n"
          "  compute                Compute on a tensor\n"
          "\n"
          "global options:\n"
          "  --addr HOST:PORT       server address (default 127.0.0.1:50051; numeric IPv4,\n"
          "                         [IPv6] or localhost)\n"
          "  --tls-ca FILE          connect with TLS, verifying the server against this PEM CA\n"
          "  --tls-cert FILE        client certificate for mutual TLS (with --tls-key)\n"
          "  --tls-key FILE         the client certificate's PEM private key\n"
          "  --token TOKEN          send 'authorization: Bearer TOKEN' with every call (servers\n"
          "                         with --auth-tokens); other users may see a command line:\n"
          "                         prefer --token-file\n"
          "  --token-file FILE      the same, the token read from FILE's first line (its\n"
          "                         newline stripped)\n"
          "  --timeout S            per-call deadline in seconds, sent as grpc-timeout\n"
          "                         (default: none; connecting waits up to 10 s)\n"
          "compute options:\n"
          "  --model ID             model_id (default: the server's default model)\n"
          "  --shape 1,10,768       input shape (required unless --input is given)\n"
          "  --input x.npy          input tensor (.npy '<f4' or '<f2', C order); without it\n"
          "                         the input is deterministic pseudo-random data in [-1, 1)\n"
          "  --output y.npy         write the output tensor: float32 -> '<f4', float16 -> '<f2';\n"
          "                         bfloat16 output is converted and stored as '<f4' (numpy has\n"
          "                         no bfloat16)\n"
          "  --dtype T              wire dtype: float32 | float16 | bfloat16 (default float32,\n"
          "                         or float16 for a '<f2' input file); sent as metadata dtype\n"
          "  --metadata K=V         request metadata entry (repeatable), e.g. factor=2, ms=50\n"
          "  --repeat N             send the request N times and report latency statistics\n"
          "\n"
          "On a non-OK status prints 'error: STATUS_NAME: message' and exits 1.\n");
}

static int die_status(int code, const char *msg) {
  fprintf(stderr, "error: %s: %s\n", ss_grpc_code_name(code),
          msg && *msg ? msg : "(no message from the server)");
  return 1;
}

/* ------------------------------------------------------------------ .npy ------- */

typedef struct npy {
  int is_f16;
  int ndim;
  int64_t shape[SS_MAX_DIMS];
  size_t numel;
  void *data; /* raw little-endian elements */
} npy;

static int npy_read(const char *path, npy *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  unsigned char pre[12];
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
    snprintf(err, errlen, "%s: not a .npy file", path);
    fclose(f);
    return -1;
  }
  size_t hlen;
  if (pre[6] == 1) {
    hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (fread(pre + 10, 1, 2, f) != 2) {
      snprintf(err, errlen, "%s: truncated header", path);
      fclose(f);
      return -1;
    }
    hlen =
        (size_t)pre[8] | ((size_t)pre[9] << 8) | ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
  } else {
    snprintf(err, errlen, "%s: unsupported .npy version %d", path, pre[6]);
    fclose(f);
    return -1;
  }
  if (hlen > 1 << 20) {
    snprintf(err, errlen, "%s: header too large", path);
    fclose(f);
    return -1;
  }
  char *h = malloc(hlen + 1);
  if (!h || fread(h, 1, hlen, f) != hlen) {
    snprintf(err, errlen, "%s: truncated header", path);
    free(h);
    fclose(f);
    return -1;
  }
  h[hlen] = '\0';
  int rc = -1;
  const char *d = strstr(h, "'descr'");
  const char *fo = strstr(h, "'fortran_order'");
  const char *sh = strstr(h, "'shape'");
  if (!d || !fo || !sh) {
    snprintf(err, errlen, "%s: malformed header", path);
    goto out;
  }
  const char *q = strchr(d + 7, '\''); /* the value's opening quote */
  if (q && strncmp(q, "'<f4'", 5) == 0) {
    out->is_f16 = 0;
  } else if (q && strncmp(q, "'<f2'", 5) == 0) {
    out->is_f16 = 1;
  } else {
    snprintf(err, errlen, "%s: unsupported dtype (need '<f4' or '<f2'): %.12s", path, q ? q : d);
    goto out;
  }
  q = fo + 15;
  while (*q == ':' || *q == ' ') q++;
  if (strncmp(q, "True", 4) == 0) {
    snprintf(err, errlen, "%s: Fortran-order arrays are not supported", path);
    goto out;
  }
  const char *p = strchr(sh, '(');
  if (!p) {
    snprintf(err, errlen, "%s: malformed shape", path);
    goto out;
  }
  p++;
  out->numel = 1;
  while (*p && *p != ')') {
    while (*p == ' ' || *p == ',') p++;
    if (*p == ')') break;
    char *end;
    long long v = strtoll(p, &end, 10);
    if (end == p || v < 0 || out->ndim >= SS_MAX_DIMS) {
      snprintf(err, errlen, "%s: bad or too many dims in shape", path);
      goto out;
    }
    out->shape[out->ndim++] = v;
    out->numel *= (size_t)v;
    p = end;
  }
  if (out->ndim == 0) { /* a 0-d array: send it as shape [1] */
    out->shape[0] = 1;
    out->ndim = 1;
  }
  size_t esz = out->is_f16 ? 2 : 4;
  out->data = malloc(out->numel * esz + 1);
  if (!out->data || fread(out->data, esz, out->numel, f) != out->numel) {
    snprintf(err, errlen, "%s: truncated data (need %zu elements)", path, out->numel);
    free(out->data);
    out->data = NULL;
    goto out;
  }
  rc = 0;
out:
  free(h);
  fclose(f);
  return rc;
}

static int npy_write(const char *path, int is_f16, const int64_t *shape, int ndim, const void *data,
                     size_t nbytes, char *err, size_t errlen) {
  char dict[512];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                   is_f16 ? "<f2" : "<f4");
  for (int i = 0; i < ndim; i++)
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld%s", (long long)shape[i],
                  ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  /* Pad with spaces so that 10 + header length is a multiple of 64, ending in '\n'. */
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  size_t hlen = (size_t)n + pad + 1;
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  unsigned char pre[10] = {0x93,
                           'N',
                           'U',
                           'M',
                           'P',
                           'Y',
                           1,
                           0,
                           (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  ok = ok && (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
  ok = (fclose(f) == 0) && ok;
  if (!ok) {
    snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ helpers ---- */

static int parse_addr(const char *s, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s) return -1;
  size_t hl = (size_t)(colon - s);
  if (hl >= hostlen) return -1;
  memcpy(host, s, hl);
  host[hl] = '\0';
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end || p <= 0 || p > 65535) return -1;
  *port = (int)p;
  return 0;
}

static int parse_shape(const char *s, int64_t *shape, int *ndim) {
  *ndim = 0;
  while (*s) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v < 0 || *ndim >= SS_MAX_DIMS) return -1;
    shape[(*ndim)++] = v;
    s = end;
    if (*s == ',')
      s++;
    else if (*s)
      return -1;
  }
  return *ndim > 0 ? 0 : -1;
}

static void print_info(const char *k, const char *v, void *u) {
  (void)u;
  printf("%s: %s\n", k, v);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ main ------- */

int main(int argc, char **argv) {
  const char *addr = "127.0.0.1:50051", *cmd = NULL, *model = NULL, *shape_s = NULL;
  const char *tls_ca = NULL, *tls_cert = NULL, *tls_key = NULL;
  char *token_arg = NULL;
  const char *token_file = NULL;
  const char *in_path = NULL, *out_path = NULL, *dtype_s = NULL;
  const char *meta[2 * MAX_META];
  char *meta_buf[MAX_META];
  size_t nmeta = 0;
  double timeout = 0;
  long repeat = 1;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_ARG()                                               \
  do {                                                           \
    if (!v) {                                                    \
      fprintf(stderr, "splitserve-call: %s needs a value\n", a); \
      return 2;                                                  \
    }                                                            \
    i++;                                                         \
  } while (0)
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--addr") == 0) {
      NEED_ARG();
      addr = v;
    } else if (strcmp(a, "--tls-ca") == 0) {
      NEED_ARG();
      tls_ca = v;
    } else if (strcmp(a, "--tls-cert") == 0) {
      NEED_ARG();
      tls_cert = v;
    } else if (strcmp(a, "--tls-key") == 0) {
      NEED_ARG();
      tls_key = v;
    } else if (strcmp(a, "--token") == 0) {
      NEED_ARG();
      token_arg = argv[i];
    } else if (strcmp(a, "--token-file") == 0) {
      NEED_ARG();
      token_file = v;
    } else if (strcmp(a, "--timeout") == 0) {
      NEED_ARG();
      char *end;
      timeout = strtod(v, &end);
      if (*end || timeout < 0) {
        fprintf(stderr, "splitserve-call: bad --timeout '%s'\n", v);
        return 2;
      }
    } else if (strcmp(a, "--model") == 0) {
      NEED_ARG();
      model = v;
    } else if (strcmp(a, "--shape") == 0) {
      NEED_ARG();
      shape_s = v;
    } else if (strcmp(a, "--input") == 0) {
      NEED_ARG();
      in_path = v;
    } else if (strcmp(a, "--output") == 0) {
      NEED_ARG();
      out_path = v;
    } else if (strcmp(a, "--dtype") == 0) {
      NEED_ARG();
      dtype_s = v;
    } else if (strcmp(a, "--repeat") == 0) {
      NEED_ARG();
      char *end;
      repeat = strtol(v, &end, 10);
      if (*end || repeat < 1) {
        fprintf(stderr, "splitserve-call: bad --repeat '%s'\n", v);
        return 2;
      }
    } else if (strcmp(a, "--metadata") == 0) {
      NEED_ARG();
      const char *eq = strchr(v, '=');
      if (!eq || eq == v || nmeta >= MAX_META) {
        fprintf(stderr, "splitserve-call: bad --metadata '%s' (want KEY=VALUE)\n", v);
        return 2;
      }
      char *kv = strdup(v);
      if (!kv) return 2;
      kv[eq - v] = '\0';
      meta_buf[nmeta] = kv;
      meta[2 * nmeta] = kv;
      meta[2 * nmeta + 1] = kv + (eq - v) + 1;
      nmeta++;
    } else if (a[0] == '-') {
      fprintf(stderr, "splitserve-call: unknown option %s (see --help)\n", a);
      return 2;
    } else if (!cmd) {
      cmd = a;
    } else {
      fprintf(stderr, "splitserve-call: unexpected argument %s\n", a);
      return 2;
    }
#undef NEED_ARG
  }
  if (!cmd) {
    usage(stderr);
    return 2;
  }
  if (strcmp(cmd, "health") != 0 && strcmp(cmd, "info") != 0 && strcmp(cmd, "compute") != 0) {
    fprintf(stderr, "splitserve-call: unknown command '%s' (health, info, compute)\n", cmd);
    return 2;
  }

  char auth[TOOL_TOKEN_MAX + 8], terr[256];
  int trv = tool_token_header(token_arg, token_file, auth, sizeof auth, terr, sizeof terr);
  if (token_arg) tool_token_wipe(token_arg, strlen(token_arg)); /* out of ps and /proc */
  if (trv != 0) {
    fprintf(stderr, "splitserve-call: %s\n", terr);
    return 2;
  }

  char host[256];
  int port;
  if (parse_addr(addr, host, sizeof host, &port) != 0) {
    fprintf(stderr, "splitserve-call: bad --addr '%s' (want HOST:PORT)\n", addr);
    return 2;
  }

  /* Prepare the compute input before connecting, so argument errors come first. */
  ss_tensor_buf input;
  memset(&input, 0, sizeof input);
  if (strcmp(cmd, "compute") == 0) {
    char err[512];
    ss_dtype dt = SS_DTYPE_F32;
    int have_dt = 0;
    if (dtype_s) {
      if (ss_dtype_parse(dtype_s, &dt) != 0) {
        fprintf(stderr, "splitserve-call: bad --dtype '%s' (float32, float16, bfloat16)\n",
                dtype_s);
        return 2;
      }
      have_dt = 1;
    }
    float *f32 = NULL;
    if (in_path) {
      npy a;
      if (npy_read(in_path, &a, err, sizeof err) != 0) {
        fprintf(stderr, "splitserve-call: %s\n", err);
        return 2;
      }
      if (!have_dt) dt = a.is_f16 ? SS_DTYPE_F16 : SS_DTYPE_F32;
      input.ndim = a.ndim;
      memcpy(input.shape, a.shape, sizeof a.shape);
      f32 = malloc(a.numel * sizeof(float) + 1);
      if (!f32) return 2;
      ss_to_f32(a.is_f16 ? SS_DTYPE_F16 : SS_DTYPE_F32, a.data, f32, a.numel);
      free(a.data);
      if (shape_s) {
        int64_t s2[SS_MAX_DIMS];
        int n2;
        if (parse_shape(shape_s, s2, &n2) != 0) {
          fprintf(stderr, "splitserve-call: bad --shape '%s'\n", shape_s);
          return 2;
        }
        size_t numel2 = 1;
        for (int i = 0; i < n2; i++) numel2 *= (size_t)s2[i];
        if (numel2 != a.numel) {
          fprintf(stderr, "splitserve-call: --shape has %zu elements but %s has %zu\n", numel2,
                  in_path, a.numel);
          return 2;
        }
        input.ndim = n2; /* reshape */
        memcpy(input.shape, s2, sizeof s2);
      }
    } else {
      if (!shape_s) {
        fprintf(stderr, "splitserve-call: compute needs --shape or --input\n");
        return 2;
      }
      if (parse_shape(shape_s, input.shape, &input.ndim) != 0) {
        fprintf(stderr, "splitserve-call: bad --shape '%s' (want e.g. 1,10,768)\n", shape_s);
        return 2;
      }
      size_t numel = 1;
      for (int i = 0; i < input.ndim; i++) numel *= (size_t)input.shape[i];
      f32 = malloc(numel * sizeof(float) + 1);
      if (!f32) {
        fprintf(stderr, "splitserve-call: out of memory for %zu elements\n", numel);
        return 2;
      }
      uint64_t x = 0x9E3779B97F4A7C15ull; /* xorshift64*: same data on every run */
      for (size_t i = 0; i < numel; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t r = x * 0x2545F4914F6CDD1Dull;
        f32[i] = (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
      }
    }
    size_t numel = 1;
    for (int i = 0; i < input.ndim; i++) numel *= (size_t)input.shape[i];
    input.dtype = dt;
    input.nbytes = numel * ss_dtype_size(dt);
    input.data = malloc(input.nbytes + 1);
    if (!input.data) return 2;
    ss_from_f32(dt, f32, input.data, numel);
    free(f32);
  }

  ss_client *cl;
  ss_client_tls tls = {tls_ca, tls_cert, tls_key, NULL};
  char cerr[400];
  int rv = ss_client_connect_tls(host, port, 10.0, tls_ca || tls_cert ? &tls : NULL, &cl, cerr,
                                 sizeof cerr);
  if (rv < 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "cannot connect to %s: %s", addr, cerr[0] ? cerr : ss_strerror(rv));
    return die_status(SS_GRPC_UNAVAILABLE, msg);
  }
  if (auth[0]) {
    rv = ss_client_set_header(cl, "authorization", auth);
    tool_token_wipe(auth, sizeof auth);
    if (rv < 0) {
      fprintf(stderr, "splitserve-call: cannot send the token: %s\n", ss_strerror(rv));
      ss_client_close(cl);
      return 2;
    }
  }

  int exit_code = 0;
  if (strcmp(cmd, "health") == 0) {
    int st;
    char status[256], version[128];
    rv = ss_client_health(cl, timeout, &st, status, sizeof status, version, sizeof version);
    if (rv < 0)
      exit_code = die_status(SS_GRPC_INTERNAL, ss_strerror(rv));
    else if (st != SS_GRPC_OK)
      exit_code = die_status(st, status);
    else {
      printf("status: %s\nversion: %s\n", status, version);
      exit_code = strcmp(status, "ok") == 0 ? 0 : 1;
    }
  } else if (strcmp(cmd, "info") == 0) {
    int st;
    char msg[512];
    rv = ss_client_info(cl, timeout, &st, msg, sizeof msg, print_info, NULL);
    if (rv < 0)
      exit_code = die_status(SS_GRPC_INTERNAL, ss_strerror(rv));
    else if (st != SS_GRPC_OK)
      exit_code = die_status(st, msg[0] ? msg : "GetServiceInfo failed");
  } else {
    ss_compute_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.model_id = model;
    opts.metadata = meta;
    opts.n_metadata = nmeta;
    opts.timeout_s = timeout;
    double *lat = calloc((size_t)repeat, sizeof *lat);
    ss_compute_reply rep;
    memset(&rep, 0, sizeof rep);
    if (!lat) return 2;
    for (long i = 0; i < repeat; i++) {
      opts.request_id = (int32_t)(i + 1);
      opts.has_request_id = 1;
      if (i > 0) free(rep.output.data);
      rv = ss_client_compute(cl, &input, &opts, &rep);
      if (rv < 0) {
        exit_code = die_status(SS_GRPC_INTERNAL, ss_strerror(rv));
        break;
      }
      if (rep.grpc_status != SS_GRPC_OK) {
        exit_code = die_status(rep.grpc_status, rep.message);
        break;
      }
      lat[i] = rep.latency_s;
    }
    if (exit_code == 0) {
      char sh[160];
      size_t numel = rep.output.nbytes / ss_dtype_size(rep.output.dtype);
      printf("output shape: %s %s\n",
             ss_shape_str(rep.output.shape, rep.output.ndim, sh, sizeof sh),
             ss_dtype_name(rep.output.dtype));
      float *of = malloc(numel * sizeof(float) + 1);
      if (of) {
        ss_to_f32(rep.output.dtype, rep.output.data, of, numel);
        printf("first values:");
        for (size_t i = 0; i < numel && i < 8; i++) printf(" %.6g", (double)of[i]);
        printf("%s\n", numel > 8 ? " ..." : "");
      }
      if (rep.has_compute_time)
        printf("compute_time_ms: %.3f\n", (double)rep.compute_time_ms);
      else
        printf("compute_time_ms: (not reported)\n");
      if (repeat == 1) {
        printf("latency_ms: %.3f\n", lat[0] * 1e3);
      } else {
        double sum = 0;
        for (long i = 0; i < repeat; i++) sum += lat[i];
        qsort(lat, (size_t)repeat, sizeof *lat, cmp_double);
        printf("latency_ms: n=%ld min %.3f mean %.3f p50 %.3f p99 %.3f max %.3f\n", repeat,
               lat[0] * 1e3, sum / (double)repeat * 1e3, lat[repeat / 2] * 1e3,
               lat[(size_t)((double)(repeat - 1) * 0.99)] * 1e3, lat[repeat - 1] * 1e3);
      }
      if (out_path) {
        char err[512];
        int w;
        if (rep.output.dtype == SS_DTYPE_F16)
          w = npy_write(out_path, 1, rep.output.shape, rep.output.ndim, rep.output.data,
                        rep.output.nbytes, err, sizeof err);
        else if (of)
          w = npy_write(out_path, 0, rep.output.shape, rep.output.ndim, of, numel * sizeof(float),
                        err, sizeof err);
        else
          w = -1, snprintf(err, sizeof err, "out of memory");
        if (w != 0) {
          fprintf(stderr, "splitserve-call: %s\n", err);
          exit_code = 1;
        } else {
          printf("wrote %s\n", out_path);
        }
      }
      free(of);
    }
    free(rep.output.data);
    free(lat);
  }
  ss_client_close(cl);
  free(input.data);
  for (size_t i = 0; i < nmeta; i++) free(meta_buf[i]);
  return exit_code;
}
