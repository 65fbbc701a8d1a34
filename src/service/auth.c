/*
 * auth.c — the token table of --auth-tokens (see auth.h): loading, constant-time lookup,
 * per-token model lists.
 *
 * Layout: tokens are stored zero-padded in one array of n x width bytes (width = the longest
 * token), with their lengths beside; a lookup pads the presented token the same way and XORs it
 * against every row in full, folding the length difference into the same accumulator. Owner
 * tags (auth.h) are HMAC-SHA256 through OpenSSL's libcrypto, compared with CRYPTO_memcmp.
 *
 * Thread: loop thread.
 */
#include "service/auth.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "core/file.h"
#include "core/log.h"
#include "splitserve.h"

#define SS_AUTH_MAX_FILE_BYTES (16u << 20) /* --auth-tokens (a token line is at most ~1 KiB) */

struct ss_auth {
  size_t n, cap;
  size_t width;  /* bytes per row of pad (the longest token) */
  uint8_t *pad;  /* n x width, zero-padded tokens (built once the file is read) */
  size_t *len;   /* token lengths */
  char **tok;    /* the tokens while loading (freed once pad is built) */
  char **models; /* per token: "a,b", or NULL = every model */
  int *line;     /* per token: its line in the file (for warnings) */
};

void ss_auth_free(ss_auth *a) {
  if (!a) return;
  for (size_t i = 0; i < a->n; i++) {
    if (a->tok && a->tok[i]) {
      memset(a->tok[i], 0, a->len[i]);
      free(a->tok[i]);
    }
    free(a->models[i]);
  }
  if (a->pad) memset(a->pad, 0, a->n * a->width);
  free(a->pad);
  free(a->tok);
  free(a->len);
  free(a->models);
  free(a->line);
  free(a);
}

size_t ss_auth_count(const ss_auth *a) { return a ? a->n : 0; }

static int b64token_char(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '=';
}

/* A model id's characters (core/config.c: [A-Za-z0-9_.-]). */
static int model_char(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

static int add(ss_auth *a, const char *tok, size_t toklen, const char *models, int lineno) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 8;
    char **t = realloc(a->tok, cap * sizeof *t);
    if (t) a->tok = t;
    size_t *l = realloc(a->len, cap * sizeof *l);
    if (l) a->len = l;
    char **m = realloc(a->models, cap * sizeof *m);
    if (m) a->models = m;
    int *ln = realloc(a->line, cap * sizeof *ln);
    if (ln) a->line = ln;
    if (!t || !l || !m || !ln) return SS_ENOMEM;
    a->cap = cap;
  }
  char *t = strndup(tok, toklen);
  char *m = models ? strdup(models) : NULL;
  if (!t || (models && !m)) {
    free(t);
    free(m);
    return SS_ENOMEM;
  }
  a->tok[a->n] = t;
  a->len[a->n] = toklen;
  a->models[a->n] = m;
  a->line[a->n] = lineno;
  a->n++;
  if (toklen > a->width) a->width = toklen;
  return 0;
}

/* One line (NUL-terminated, no newline): TOKEN, then optionally model ids separated by commas
 * (blanks around the commas allowed), then optionally a # comment. A blank between two words
 * without a comma is refused, and so is a word that is not a model id: both are what a token
 * with blanks in it looks like, which must not load as a shorter token with a model list.
 * Messages name words by position, never quote them (a word may be part of a token).
 * 0, or <0 with the reason in why. */
static int parse_line(ss_auth *a, char *line, int lineno, char *why, size_t whylen) {
  char *p = line;
  while (*p == ' ' || *p == '\t' || *p == '\r') p++;
  if (!*p || *p == '#') return 0;
  char *tok = p;
  while (*p && *p != ' ' && *p != '\t' && *p != '\r') p++;
  size_t toklen = (size_t)(p - tok);
  for (size_t i = 0; i < toklen; i++)
    if (!b64token_char((unsigned char)tok[i])) {
      snprintf(why, whylen,
               "the token has a character outside A-Z a-z 0-9 - . _ ~ + / = "
               "(RFC 6750 b64token) at byte %zu",
               i + 1);
      return SS_EINVAL;
    }
  if (toklen > SS_AUTH_MAX_TOKEN) {
    snprintf(why, whylen, "the token is %zu bytes long; at most %d", toklen, SS_AUTH_MAX_TOKEN);
    return SS_EINVAL;
  }
  char models[4096];
  size_t mlen = 0;
  int word = 1, after_name = 0;
  for (;;) {
    while (*p == ' ' || *p == '\t' || *p == '\r') p++;
    if (!*p || *p == '#') break;
    if (*p == ',') {
      p++;
      after_name = 0;
      continue;
    }
    word++;
    if (after_name) {
      snprintf(why, whylen,
               "word %d follows a model id without a comma: the line is "
               "'TOKEN model,model' (a token cannot contain blanks)",
               word);
      return SS_EINVAL;
    }
    char *m = p;
    while (model_char((unsigned char)*p)) p++;
    if (p == m || (*p && *p != ' ' && *p != '\t' && *p != '\r' && *p != ',' && *p != '#')) {
      snprintf(why, whylen,
               "word %d is not a model id (A-Z a-z 0-9 _ . -): the line is "
               "'TOKEN model,model' (a token cannot contain blanks)",
               word);
      return SS_EINVAL;
    }
    size_t n = (size_t)(p - m);
    if (mlen + n + 2 > sizeof models) {
      snprintf(why, whylen, "the model list is longer than %zu bytes", sizeof models);
      return SS_EINVAL;
    }
    if (mlen) models[mlen++] = ',';
    memcpy(models + mlen, m, n);
    mlen += n;
    after_name = 1;
  }
  models[mlen] = 0;
  for (size_t i = 0; i < a->n; i++)
    if (a->len[i] == toklen && memcmp(a->tok[i], tok, toklen) == 0) {
      snprintf(why, whylen, "this token is listed twice (each token once)");
      return SS_EINVAL;
    }
  if (add(a, tok, toklen, mlen ? models : NULL, lineno) != 0) {
    snprintf(why, whylen, "out of memory");
    return SS_ENOMEM;
  }
  return 0;
}

int ss_auth_load(const char *path, ss_auth **out, char *err, size_t errlen) {
  *out = NULL;
  struct stat st;
  /* Checked like every file (core/file.h): a FIFO here used to block the loop on SIGHUP. */
  int fd = ss_file_open(path, 0, SS_AUTH_MAX_FILE_BYTES, &st, err, errlen);
  if (fd < 0) return fd;
  FILE *f = fdopen(fd, "r");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    close(fd);
    return SS_EIO;
  }
  if (st.st_mode & S_IROTH)
    SS_LOGW("%s: the token file is readable by every user (chmod o-r)", path);
  ss_auth *a = calloc(1, sizeof *a);
  if (!a) {
    fclose(f);
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int lineno = 0, rv = 0;
  char why[200];
  while ((n = getline(&line, &cap, f)) >= 0) {
    lineno++;
    if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
    if (strlen(line) != (size_t)n) {
      snprintf(err, errlen, "%s:%d: a NUL byte in the line", path, lineno);
      rv = SS_EINVAL;
      break;
    }
    if ((rv = parse_line(a, line, lineno, why, sizeof why)) != 0) {
      snprintf(err, errlen, "%s:%d: %s", path, lineno, why);
      break;
    }
  }
  if (line) memset(line, 0, cap);
  free(line);
  if (rv == 0 && ferror(f)) {
    snprintf(err, errlen, "%s: read error", path);
    rv = SS_EIO;
  }
  fclose(f);
  if (rv == 0 && a->n == 0) {
    snprintf(err, errlen, "%s: no tokens (every call but health checks would be refused)", path);
    rv = SS_EINVAL;
  }
  if (rv == 0) {
    a->pad = calloc(a->n, a->width);
    if (!a->pad) {
      snprintf(err, errlen, "out of memory");
      rv = SS_ENOMEM;
    }
  }
  if (rv != 0) {
    ss_auth_free(a);
    return rv;
  }
  for (size_t i = 0; i < a->n; i++) {
    memcpy(a->pad + i * a->width, a->tok[i], a->len[i]);
    memset(a->tok[i], 0, a->len[i]);
    free(a->tok[i]);
  }
  free(a->tok);
  a->tok = NULL;
  *out = a;
  return 0;
}

/* The token of an authorization value "Bearer TOKEN" (scheme case-insensitive, blanks after it
 * skipped), or NULL when it is not a bearer credential or the token is empty. */
static const char *bearer_token(const char *authorization) {
  if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return NULL;
  const char *t = authorization + 7;
  while (*t == ' ') t++;
  return *t ? t : NULL;
}

int ss_auth_find(const ss_auth *a, const char *authorization) {
  const char *t = bearer_token(authorization);
  if (!a || !t) return -1;
  size_t tlen = strlen(t);
  uint8_t buf[SS_AUTH_MAX_TOKEN];
  size_t w = a->width, k = tlen < w ? tlen : w;
  memset(buf, 0, w);
  memcpy(buf, t, k);
  uint32_t found = 0; /* index + 1 of the match (tokens are distinct: at most one) */
  for (size_t i = 0; i < a->n; i++) {
    const uint8_t *row = a->pad + i * w;
    uint64_t dl = (uint64_t)(tlen ^ a->len[i]);
    uint32_t d = (uint32_t)dl | (uint32_t)(dl >> 32);
    for (size_t j = 0; j < w; j++) d |= (uint32_t)(row[j] ^ buf[j]);
    uint32_t nz = (d | (0u - d)) >> 31; /* 1 when they differ */
    uint32_t mask = nz - 1u;            /* all ones on a match */
    found = (found & ~mask) | ((uint32_t)(i + 1) & mask);
  }
  memset(buf, 0, w);
  return (int)found - 1;
}

int ss_auth_allows(const ss_auth *a, int idx, const char *model) {
  if (!a || idx < 0 || (size_t)idx >= a->n) return 0;
  const char *m = a->models[idx];
  if (!m) return 1;
  size_t ml = strlen(model);
  while (*m) {
    const char *e = strchr(m, ',');
    size_t n = e ? (size_t)(e - m) : strlen(m);
    if (n == ml && memcmp(m, model, n) == 0) return 1;
    if (!e) break;
    m = e + 1;
  }
  return 0;
}

const char *ss_auth_models(const ss_auth *a, int idx, char *buf, size_t len) {
  const char *m = a && idx >= 0 && (size_t)idx < a->n ? a->models[idx] : NULL;
  snprintf(buf, len, "%s", m ? m : "all models");
  return buf;
}

void ss_auth_each_model(const ss_auth *a, void (*fn)(void *user, int line, const char *model),
                        void *user) {
  char id[4096];
  for (size_t i = 0; a && i < a->n; i++) {
    const char *m = a->models[i];
    while (m && *m) {
      const char *e = strchr(m, ',');
      size_t n = e ? (size_t)(e - m) : strlen(m);
      snprintf(id, sizeof id, "%.*s", (int)n, m);
      fn(user, a->line[i], id);
      m = e ? e + 1 : NULL;
    }
  }
}

int ss_auth_tag_key(uint8_t key[SS_AUTH_TAG]) {
  return RAND_bytes(key, SS_AUTH_TAG) == 1 ? 0 : SS_EIO;
}

void ss_auth_tag(const uint8_t key[SS_AUTH_TAG], const char *authorization,
                 uint8_t tag[SS_AUTH_TAG]) {
  const char *t = bearer_token(authorization);
  unsigned int n = 0;
  if (!t || !HMAC(EVP_sha256(), key, SS_AUTH_TAG, (const unsigned char *)t, strlen(t), tag, &n) ||
      n != SS_AUTH_TAG)
    memset(tag, 0, SS_AUTH_TAG);
}

int ss_auth_tag_equal(const uint8_t a[SS_AUTH_TAG], const uint8_t b[SS_AUTH_TAG]) {
  return CRYPTO_memcmp(a, b, SS_AUTH_TAG) == 0;
}
