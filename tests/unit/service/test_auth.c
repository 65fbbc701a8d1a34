/*
 * test_auth.c — the --auth-tokens table (service/auth.c): file format, errors that never quote
 * a token, bearer parsing, lookup over tokens of different lengths, per-token model lists, and
 * owner tags (a keyed hash per token, never the token).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "service/auth.h"

static char path[64];

static void write_file(const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  fputs(text, f);
  fclose(f);
}

static int load(const char *text, ss_auth **a, char *err, size_t errlen) {
  write_file(text);
  err[0] = 0;
  return ss_auth_load(path, a, err, errlen);
}

static void test_format_and_lookup(void) {
  ss_auth *a;
  char err[256];
  CHECK_EQ_INT(load("# comment\n\n  alpha-123\nbeta.long/token+= gpt2, mlp   # trailing\n"
                    "c mlp\r\n",
                    &a, err, sizeof err),
               0);
  CHECK_EQ_INT((int)ss_auth_count(a), 3);
  CHECK_EQ_INT(ss_auth_find(a, "Bearer alpha-123"), 0);
  CHECK_EQ_INT(ss_auth_find(a, "bearer beta.long/token+="), 1);
  CHECK_EQ_INT(ss_auth_find(a, "Bearer c"), 2);
  /* prefixes, extensions, other schemes, nothing */
  CHECK_EQ_INT(ss_auth_find(a, "Bearer alpha-12"), -1);
  CHECK_EQ_INT(ss_auth_find(a, "Bearer alpha-1234"), -1);
  CHECK_EQ_INT(ss_auth_find(a, "Bearer cc"), -1);
  CHECK_EQ_INT(ss_auth_find(a, "Bearer "), -1);
  CHECK_EQ_INT(ss_auth_find(a, "Basic alpha-123"), -1);
  CHECK_EQ_INT(ss_auth_find(a, "alpha-123"), -1);
  CHECK_EQ_INT(ss_auth_find(a, NULL), -1);
  char big[1200];
  memset(big, 'a', sizeof big);
  memcpy(big, "Bearer ", 7);
  big[sizeof big - 1] = 0;
  CHECK_EQ_INT(ss_auth_find(a, big), -1);
  /* models */
  CHECK(ss_auth_allows(a, 0, "anything"));
  CHECK(ss_auth_allows(a, 1, "gpt2") && ss_auth_allows(a, 1, "mlp"));
  CHECK(!ss_auth_allows(a, 1, "gpt") && !ss_auth_allows(a, 1, "identity"));
  CHECK(ss_auth_allows(a, 2, "mlp") && !ss_auth_allows(a, 2, "gpt2"));
  CHECK(!ss_auth_allows(a, -1, "mlp"));
  char buf[64];
  CHECK(strcmp(ss_auth_models(a, 1, buf, sizeof buf), "gpt2,mlp") == 0);
  CHECK(strcmp(ss_auth_models(a, 0, buf, sizeof buf), "all models") == 0);
  ss_auth_free(a);
}

static void test_errors(void) {
  ss_auth *a = (ss_auth *)1;
  char err[256];
  CHECK(load("", &a, err, sizeof err) < 0 && a == NULL);
  CHECK_CONTAINS(err, "no tokens");
  CHECK(load("good\nsecret\"quote\n", &a, err, sizeof err) < 0);
  CHECK_CONTAINS(err, ":2:");
  CHECK(strstr(err, "secret") == NULL); /* never quoted */
  CHECK(load("topsecret\ntopsecret mlp\n", &a, err, sizeof err) < 0);
  CHECK_CONTAINS(err, "twice");
  CHECK(strstr(err, "topsecret") == NULL);
  CHECK(ss_auth_load("/nonexistent/tokens", &a, err, sizeof err) < 0);
  CHECK_CONTAINS(err, "/nonexistent/tokens");
}

/* Issue 20.15: a token with blanks in it is refused naming the line, not loaded as a shorter
 * token with a model list; the words are never quoted (they may be part of a token). */
static void test_token_with_blanks(void) {
  ss_auth *a = (ss_auth *)1;
  char err[256];
  CHECK(load("# tokens\nbad token with spaces!! x y\n", &a, err, sizeof err) < 0 && a == NULL);
  CHECK_CONTAINS(err, ":2:");
  CHECK_CONTAINS(err, "word 3");
  CHECK_CONTAINS(err, "cannot contain blanks");
  CHECK(strstr(err, "spaces") == NULL && strstr(err, "bad") == NULL);
  CHECK(load("ok\nsecret-a secret!!b\n", &a, err, sizeof err) < 0); /* not a model id */
  CHECK_CONTAINS(err, ":2:");
  CHECK_CONTAINS(err, "word 2 is not a model id");
  CHECK(strstr(err, "secret") == NULL);
  CHECK(load("tok mlp identity\n", &a, err, sizeof err) < 0); /* commas between models */
  CHECK_CONTAINS(err, ":1:");
  /* commas, with or without blanks around them, and a comment right after */
  CHECK_EQ_INT(load("t1 mlp , identity,gpt2.small\nt2 mlp,# c\n", &a, err, sizeof err), 0);
  char buf[64];
  CHECK(strcmp(ss_auth_models(a, 0, buf, sizeof buf), "mlp,identity,gpt2.small") == 0);
  CHECK(strcmp(ss_auth_models(a, 1, buf, sizeof buf), "mlp") == 0);
  ss_auth_free(a);
}

typedef struct seen {
  char text[256];
} seen;

static void collect(void *user, int line, const char *model) {
  seen *s = user;
  size_t n = strlen(s->text);
  snprintf(s->text + n, sizeof s->text - n, "%d:%s ", line, model);
}

/* The model ids with their lines, for the service's "not served" warning. */
static void test_each_model(void) {
  ss_auth *a;
  char err[256];
  CHECK_EQ_INT(load("# c\nall-models\ntok mlpp\n\nt3 mlp,identity\n", &a, err, sizeof err), 0);
  seen s = {{0}};
  ss_auth_each_model(a, collect, &s);
  CHECK(strcmp(s.text, "3:mlpp 5:mlp 5:identity ") == 0);
  ss_auth_free(a);
}

static void test_owner_tags(void) {
  uint8_t k1[SS_AUTH_TAG], k2[SS_AUTH_TAG], a[SS_AUTH_TAG], b[SS_AUTH_TAG], zero[SS_AUTH_TAG];
  memset(zero, 0, sizeof zero);
  CHECK_EQ_INT(ss_auth_tag_key(k1), 0);
  CHECK_EQ_INT(ss_auth_tag_key(k2), 0);
  CHECK(!ss_auth_tag_equal(k1, k2)); /* drawn at random */
  ss_auth_tag(k1, "Bearer tok-A", a);
  ss_auth_tag(k1, "bearer   tok-A", b); /* the same token, however the header spells it */
  CHECK(ss_auth_tag_equal(a, b));
  CHECK(!ss_auth_tag_equal(a, zero));
  ss_auth_tag(k1, "Bearer tok-B", b);
  CHECK(!ss_auth_tag_equal(a, b));
  ss_auth_tag(k1, "Bearer tok-A2", b); /* a longer token with the same prefix */
  CHECK(!ss_auth_tag_equal(a, b));
  ss_auth_tag(k2, "Bearer tok-A", b); /* another key: another tag */
  CHECK(!ss_auth_tag_equal(a, b));
  const char *none[] = {NULL, "", "Basic tok-A", "Bearer ", "Bearer    "};
  for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
    memset(b, 0xff, sizeof b);
    ss_auth_tag(k1, none[i], b);
    CHECK(ss_auth_tag_equal(b, zero));
  }
}

int main(void) {
  snprintf(path, sizeof path, "/tmp/ss-test-auth-%d", (int)getpid());
  test_format_and_lookup();
  test_errors();
  test_token_with_blanks();
  test_each_model();
  test_owner_tags();
  unlink(path);
  TEST_MAIN_END();
}
