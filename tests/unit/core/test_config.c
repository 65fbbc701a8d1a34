/*
 * test_config.c — the YAML config file: a file with every key, each error path (YAML syntax
 * with its line number, unknown keys, bad integers/booleans/listen addresses, missing or
 * duplicate model ids, models not a sequence, ',' in a value), the empty file, the model
 * spec strings, and the checked-in examples/server.yaml (whose models must create).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "core/config.h"
#include "models/model.h"
#include "splitserve.h"

static char err[512];

static int parse(const char *text, ss_file_config *c) {
  err[0] = 0;
  return ss_config_parse("t.yaml", text, strlen(text), c, err, sizeof err);
}

/* Parse text expecting failure with a message containing `want`; frees the config. */
static void expect_error(const char *text, const char *want) {
  ss_file_config c;
  int rc = parse(text, &c);
  CHECK(rc < 0);
  CHECK_CONTAINS(err, want);
  ss_config_free(&c);
}

static void test_good(void) {
  const char *text =
      "# full config\n"
      "listen: 0.0.0.0:6000\n"
      "workers: 3\n"
      "intra_op_threads: 2\n"
      "oversubscribe: yes\n"
      "max_inflight: 10\n"
      "max_queue: 20\n"
      "max_message_bytes: 1048576\n"
      "drain_timeout: 2.5\n"
      "session_memory_mb: 256\n"
      "session_ttl: 30\n"
      "log_level: debug\n"
      "models:\n"
      "  - id: m1\n"
      "    kind: mlp\n"
      "    activation: gelu\n"
      "    max_inflight: 4\n"
      "    max_queue: 0\n"
      "  - {id: trunk.v2-a, kind: gpt2, weights: /w/model.safetensors, config: /w/config.json,"
      " layers: \"2:10\"}\n"
      "  - id: s\n"
      "    kind: sleep\n";
  ss_file_config c;
  CHECK_EQ_INT(parse(text, &c), 0);
  CHECK_EQ_INT(err[0], 0);
  CHECK(ss_file_has(&c, "listen") && c.set.listen_host &&
        strcmp(c.set.listen_host, "0.0.0.0") == 0);
  CHECK_EQ_INT(c.set.listen_port, 6000);
  CHECK(ss_file_has(&c, "workers") && c.set.workers == 3);
  CHECK(ss_file_has(&c, "intra_op_threads") && c.set.intra_op_threads == 2);
  CHECK(ss_file_has(&c, "oversubscribe") && c.set.oversubscribe == 1);
  CHECK(ss_file_has(&c, "max_inflight") && c.set.max_inflight == 10);
  CHECK(ss_file_has(&c, "max_queue") && c.set.max_queue == 20);
  CHECK(ss_file_has(&c, "max_message_bytes") && c.set.max_message_bytes == 1048576);
  CHECK(ss_file_has(&c, "drain_timeout") && c.set.drain_timeout_s == 2.5);
  CHECK(ss_file_has(&c, "session_memory_mb") && (c.set.session_max_bytes >> 20) == 256);
  CHECK(ss_file_has(&c, "session_ttl") && c.set.session_ttl_s == 30.0);
  CHECK(ss_file_has(&c, "log_level") && c.set.log_level == 3);
  CHECK_EQ_INT(c.n_models, 3);
  if (c.n_models == 3) {
    CHECK(strcmp(c.models[0].id, "m1") == 0 && strcmp(c.models[0].kind, "mlp") == 0);
    CHECK_CONTAINS(c.models[0].spec, "m1=mlp,activation=gelu");
    CHECK(strcmp(c.models[0].spec, "m1=mlp,activation=gelu") == 0);
    CHECK_EQ_INT(c.models[0].max_inflight, 4);
    CHECK_EQ_INT(c.models[0].max_queue, 0);
    CHECK(strcmp(c.models[1].spec,
                 "trunk.v2-a=gpt2,weights=/w/model.safetensors,"
                 "config=/w/config.json,layers=2:10") == 0);
    CHECK_EQ_INT(c.models[1].max_inflight, -1);
    CHECK_EQ_INT(c.models[1].max_queue, -1);
    CHECK(strcmp(c.models[2].spec, "s=sleep") == 0);
  }
  ss_config_free(&c);
  CHECK(c.models == NULL && c.n_models == 0 && c.set.listen_host == NULL);
}

static void test_listen_forms(void) {
  ss_file_config c;
  CHECK_EQ_INT(parse("listen: \"[::1]:50051\"\n", &c), 0);
  CHECK(c.set.listen_host && strcmp(c.set.listen_host, "::1") == 0);
  CHECK_EQ_INT(c.set.listen_port, 50051);
  ss_config_free(&c);
  CHECK_EQ_INT(parse("listen: localhost:0\n", &c), 0);
  CHECK(c.set.listen_host && strcmp(c.set.listen_host, "localhost") == 0);
  CHECK_EQ_INT(c.set.listen_port, 0);
  ss_config_free(&c);
  expect_error("listen: localhost\n", "listen: expected HOST:PORT");
  expect_error("listen: \"127.0.0.1:99999\"\n", "got '127.0.0.1:99999'");
  expect_error("listen: \":50051\"\n", "listen: expected HOST:PORT");
  expect_error("listen: \"::1:50051\"\n", "listen: expected HOST:PORT");
  expect_error("listen: \"[::1]50051\"\n", "listen: expected HOST:PORT");
  expect_error("listen: [a, b]\n", "got a sequence");
}

static void test_empty(void) {
  const char *empties[] = {"", "\n\n", "# only a comment\n", "---\n", "~\n"};
  for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
    ss_file_config c;
    CHECK_EQ_INT(parse(empties[i], &c), 0);
    CHECK(!ss_file_has(&c, "listen") && !ss_file_has(&c, "workers") &&
          !ss_file_has(&c, "log_level") && c.n_models == 0);
    CHECK(c.models == NULL);
    ss_config_free(&c);
  }
  ss_file_config c;
  CHECK_EQ_INT(ss_config_parse("n", NULL, 0, &c, err, sizeof err), 0);
  ss_config_free(&c);
  CHECK_EQ_INT(parse("models: []\n", &c), 0);
  CHECK_EQ_INT(c.n_models, 0);
  ss_config_free(&c);
}

static void test_errors(void) {
  /* YAML syntax errors carry libyaml's line and column */
  expect_error("workers: 2\nmodels:\n  - id: a\n    kind: [unclosed\n", "t.yaml:");
  expect_error("workers: 2\nmodels:\n  - id: a\n    kind: [unclosed\n", "YAML syntax error");
  expect_error("a: 1\n b: 2\nc: [\n", "t.yaml:2:");
  expect_error("workers: 1\n\tbad: 2\n", "t.yaml:2:");
  /* unknown keys name the key and where it is */
  expect_error("workers: 1\nworkerz: 2\n", "t.yaml:2:1: unknown key 'workerz'");
  expect_error("workers: 1\nworkers: 2\n", "duplicate key 'workers'");
  expect_error("- a\n- b\n", "expected a mapping of settings");
  /* bad integers and other values */
  expect_error("workers: abc\n",
               "t.yaml:1:10: workers: expected an integer in [0, 1024], got 'abc'");
  expect_error("workers: 2000\n", "workers: expected an integer in [0, 1024], got '2000'");
  expect_error("workers: -1\n", "got '-1'");
  expect_error("workers: 1.5\n", "got '1.5'");
  expect_error("workers: \" 3\"\n", "got ' 3'");
  expect_error("workers:\n", "got ''");
  expect_error("workers: {a: 1}\n", "got a mapping");
  expect_error("intra_op_threads: 0\n", "intra_op_threads: expected an integer in [1, 1024]");
  expect_error("max_queue: 99999999999999999999\n", "max_queue: expected an integer");
  expect_error("max_message_bytes: 1x\n", "max_message_bytes: expected an integer");
  expect_error("session_memory_mb: 0\n", "session_memory_mb: expected an integer");
  expect_error("oversubscribe: maybe\n", "oversubscribe: expected a boolean");
  expect_error("drain_timeout: soon\n", "drain_timeout: expected seconds in [0, 3600], got 'soon'");
  expect_error("drain_timeout: nan\n", "drain_timeout: expected seconds");
  expect_error("session_ttl: 0\n", "session_ttl: expected seconds");
  expect_error("log_level: loud\n",
               "log_level: expected one of error, warn, info, debug, got 'loud'");
  /* models */
  expect_error("models: mlp\n", "t.yaml:1:9: models: expected a sequence of mappings");
  expect_error("models:\n  id: a\n  kind: mlp\n", "got a mapping");
  expect_error("models:\n  - a=mlp\n", "models[0]: expected a mapping");
  expect_error("models:\n  - kind: mlp\n", "t.yaml:2:5: models[0]: missing required key 'id'");
  expect_error("models:\n  - id: a\n", "models[0] (id 'a'): missing required key 'kind'");
  expect_error("models:\n  - id: a\n    kind: mlp\n  - id: a\n    kind: sleep\n",
               "t.yaml:4:9: models[1].id: duplicate model id 'a'");
  expect_error("models:\n  - id: a b\n    kind: mlp\n",
               "models[0].id: expected [A-Za-z0-9_.-]+, got 'a b'");
  expect_error("models:\n  - id: \"\"\n    kind: mlp\n",
               "models[0].id: expected a non-empty string");
  expect_error("models:\n  - id: a\n    kind: \"\"\n",
               "models[0].kind: expected a non-empty string");
  expect_error("models:\n  - id: a\n    kind: mlp\n    weights: /x,y\n",
               "t.yaml:4:14: models[0].weights: value must not contain ',' or '='");
  expect_error("models:\n  - id: a\n    kind: mlp\n    activation: a=b\n",
               "models[0].activation: value must not contain");
  expect_error("models:\n  - id: a\n    kind: mlp\n    extra: []\n",
               "models[0].extra: expected a non-empty list");
  expect_error("models:\n  - id: a\n    kind: mlp\n    extra: [1, [2]]\n",
               "models[0].extra: list items must be non-empty scalars without ',' or '='");
  expect_error("models:\n  - id: a\n    kind: mlp\n    extra: {x: 1}\n",
               "models[0].extra: expected a non-empty scalar value, got a mapping");
  expect_error("models:\n  - id: a\n    kind: mlp\n    max_inflight: lots\n",
               "models[0].max_inflight: expected an integer in [0, 2147483647], got 'lots'");
  expect_error("models:\n  - id: a\n    kind: mlp\n    max_queue: -3\n",
               "models[0].max_queue: expected an integer");
  expect_error("models:\n  - id: a\n    kind: mlp\n    id: b\n", "models[0]: duplicate key 'id'");
  expect_error("workers: 1\n---\nworkers: 2\n", "t.yaml:3:1: expected a single YAML document");
  /* the config is left freeable and zeroed-or-partial after an error */
  ss_file_config c;
  CHECK(parse("workers: 2\nmodels:\n  - id: a\n    kind: mlp\n  - id: a\n    kind: mlp\n", &c) < 0);
  CHECK_EQ_INT(c.set.workers, 2);
  ss_config_free(&c);
}

static void test_unknown_scalar_keys(void) {
  ss_file_config c;
  CHECK_EQ_INT(parse("models:\n  - id: s\n    kind: scale\n    factor: 2\n    max_queue: 5\n"
                     "    note: \"x y\"\n",
                     &c),
               0);
  CHECK(c.n_models == 1 && strcmp(c.models[0].spec, "s=scale,factor=2,note=x y") == 0);
  CHECK_EQ_INT(c.models[0].max_queue, 5);
  ss_config_free(&c);
  /* a list value becomes "key=a,b" (a bare word continues the key's list: models/registry.c) */
  CHECK_EQ_INT(parse("models:\n  - id: l\n    kind: llama\n    lora_targets: [q_proj, v_proj]\n"
                     "    lora_rank: 4\n",
                     &c),
               0);
  CHECK(c.n_models == 1 &&
        strcmp(c.models[0].spec, "l=llama,lora_targets=q_proj,v_proj,lora_rank=4") == 0);
  ss_config_free(&c);
}

static void test_load(void) {
  ss_file_config c;
  int rc = ss_config_load("/nonexistent/dir/server.yaml", &c, err, sizeof err);
  CHECK_EQ_INT(rc, SS_ENOTFOUND); /* core/file.c: a missing file is "not found" */
  CHECK_CONTAINS(err, "/nonexistent/dir/server.yaml");
  ss_config_free(&c);

  char path[] = "/tmp/ss_test_config_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  FILE *f = fdopen(fd, "w");
  fputs("workers: 1\nlisten: [oops\n", f);
  fclose(f);
  rc = ss_config_load(path, &c, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, path);
  CHECK_CONTAINS(err, "YAML syntax error");
  ss_config_free(&c);
  remove(path);
}

/* The checked-in example parses and its models create. */
static void test_example(void) {
  char path[1024];
  const char *here = __FILE__, *slash = strstr(here, "tests/unit/core/test_config.c");
  if (!slash) {
    fprintf(stderr, "test_example: cannot locate the source tree from %s; skipped\n", here);
    return;
  }
  snprintf(path, sizeof path, "%.*sexamples/server.yaml", (int)(slash - here), here);
  ss_file_config c;
  int rc = ss_config_load(path, &c, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  CHECK_EQ_INT(rc, 0);
  CHECK(ss_file_has(&c, "listen") && ss_file_has(&c, "workers") &&
        ss_file_has(&c, "intra_op_threads") && ss_file_has(&c, "max_inflight") &&
        ss_file_has(&c, "max_queue") && ss_file_has(&c, "session_memory_mb") &&
        ss_file_has(&c, "session_ttl"));
  CHECK_EQ_INT(c.n_models, 2);
  for (size_t i = 0; i < c.n_models; i++) {
    ss_model *m = NULL;
    char merr[256] = "";
    int mrc = ss_model_create(c.models[i].spec, &m, merr, sizeof merr);
    if (mrc) fprintf(stderr, "%s: %s\n", c.models[i].spec, merr);
    CHECK_EQ_INT(mrc, 0);
    ss_model_free(m);
    /* it starts as written: no test-only kind unless the file enables them (issue 20.17) */
    const char *k = c.models[i].kind;
    if (strcmp(k, "scale") == 0 || strcmp(k, "sleep") == 0 || strcmp(k, "spin") == 0)
      CHECK(ss_file_has(&c, "enable_test_models") && c.set.enable_test_models);
  }
  ss_config_free(&c);
}

int main(void) {
  test_good();
  test_listen_forms();
  test_empty();
  test_errors();
  test_unknown_scalar_keys();
  test_load();
  test_example();
  TEST_MAIN_END();
}
