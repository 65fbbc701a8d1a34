/*
 * token.c — see token.h: --token / --token-file for splitserve-call and splitserve-bench.
 *
 * Thread: the tool's one thread.
 */
#include "token.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void tool_token_wipe(void *p, size_t n) {
  volatile unsigned char *v = p;
  while (n--) *v++ = 0;
}

/* The first line of path into tok[cap] (NUL-terminated, the line end stripped). */
static int read_first_line(const char *path, char *tok, size_t cap, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "--token-file %s: %s", path, strerror(errno));
    return -1;
  }
  int rv = 0;
  if (!fgets(tok, (int)cap, f)) {
    snprintf(err, errlen, "--token-file %s: %s", path,
             ferror(f) ? "read error" : "the file is empty");
    rv = -1;
  } else {
    size_t n = strlen(tok);
    if (n > 0 && tok[n - 1] == '\n')
      tok[--n] = '\0';
    else if (!feof(f)) {
      snprintf(err, errlen, "--token-file %s: the first line is longer than %d bytes", path,
               TOOL_TOKEN_MAX);
      rv = -1;
    }
    if (n > 0 && tok[n - 1] == '\r') tok[--n] = '\0';
  }
  fclose(f);
  return rv;
}

int tool_token_header(const char *arg, const char *path, char *out, size_t outlen, char *err,
                      size_t errlen) {
  out[0] = '\0';
  if (arg && path) {
    snprintf(err, errlen, "give --token or --token-file, not both");
    return -1;
  }
  if (!arg && !path) return 0;
  const char *what = arg ? "--token" : "--token-file";
  char tok[TOOL_TOKEN_MAX + 2];
  int rv = 0;
  if (arg) {
    if (strlen(arg) > TOOL_TOKEN_MAX) {
      snprintf(err, errlen, "--token is longer than %d bytes", TOOL_TOKEN_MAX);
      return -1;
    }
    snprintf(tok, sizeof tok, "%s", arg);
  } else {
    rv = read_first_line(path, tok, sizeof tok, err, errlen);
  }
  size_t n = rv == 0 ? strlen(tok) : 0;
  if (rv == 0 && n == 0) {
    snprintf(err, errlen, "%s: the token is empty", what);
    rv = -1;
  }
  for (size_t i = 0; rv == 0 && i < n; i++)
    if (tok[i] < 0x21 || tok[i] > 0x7e) {
      snprintf(err, errlen,
               "%s: the token has a byte outside printable ASCII (or a blank) at "
               "position %zu",
               what, i + 1);
      rv = -1;
    }
  if (rv == 0 && n + 8 > outlen) {
    snprintf(err, errlen, "%s: the token is too long", what);
    rv = -1;
  }
  if (rv == 0) {
    memcpy(out, "Bearer ", 7);
    memcpy(out + 7, tok, n + 1);
  }
  tool_token_wipe(tok, sizeof tok);
  return rv;
}
