/*
 * config.c — the YAML configuration file, parsed with libyaml's document API.
 *
 * Thread: any thread; pure parsing. yaml_parser_load() builds the node tree of the first
 * document; we walk it once, converting each known key into its typed field and setting its
 * has_ flag. A second document in the same file is an error (a stray "---" is almost always
 * a mistake). Node marks give 1-based line and column for every message:
 *
 *   server.yaml:4:10: workers: expected an integer in [0, 1024], got 'abc'
 *
 * Invariants: on any error the partially filled ss_file_config stays consistent (every
 * pointer is NULL or owned, n_models counts only initialised entries), so ss_config_free()
 * is always safe. Scalars holding NUL bytes (YAML "\0" escapes) are refused.
 */
#include "core/config.h"
#include "core/file.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core/log.h"
#include "splitserve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct walk {
  const char *name; /* file name for messages */
  yaml_document_t *doc;
  char *err;
  size_t errlen;
} walk;

__attribute__((format(printf, 3, 4))) static int fail(walk *w, const yaml_node_t *n,
                                                      const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (w->err && w->errlen) {
    if (n)
      snprintf(w->err, w->errlen, "%s:%zu:%zu: %s", w->name, n->start_mark.line + 1,
               n->start_mark.column + 1, msg);
    else
      snprintf(w->err, w->errlen, "%s: %s", w->name, msg);
  }
  return SS_EINVAL;
}

static const char *node_kind(const yaml_node_t *n) {
  switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a sequence";
    default: return "a scalar";
  }
}

/* The scalar's text (NUL-terminated by libyaml), or NULL when n is not a usable scalar. */
static const char *scalar(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE) return NULL;
  const char *s = (const char *)n->data.scalar.value;
  if (strlen(s) != n->data.scalar.length) return NULL; /* embedded NUL */
  return s;
}

/* "got 'text'" or "got a mapping" for messages. */
static void describe_got(const yaml_node_t *n, char *buf, size_t len) {
  const char *s = scalar(n);
  if (s)
    snprintf(buf, len, "'%.80s%s'", s, strlen(s) > 80 ? "..." : "");
  else if (n->type == YAML_SCALAR_NODE)
    snprintf(buf, len, "a string with a NUL byte");
  else
    snprintf(buf, len, "%s", node_kind(n));
}

static int parse_ll(const char *s, long long lo, long long hi, long long *out) {
  if (!s || !(s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9'))) return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int get_ll(walk *w, const char *key, const yaml_node_t *n, long long lo, long long hi,
                  long long *out) {
  if (parse_ll(scalar(n), lo, hi, out) == 0) return 0;
  char got[100];
  describe_got(n, got, sizeof got);
  return fail(w, n, "%s: expected an integer in [%lld, %lld], got %s", key, lo, hi, got);
}

static int get_int(walk *w, const char *key, const yaml_node_t *n, int lo, int hi, int *out) {
  long long v = 0;
  int rc = get_ll(w, key, n, lo, hi, &v);
  if (rc == 0) *out = (int)v;
  return rc;
}

static int get_str(walk *w, const char *key, const yaml_node_t *n, char **out) {
  const char *s = scalar(n);
  if (!s || !s[0]) {
    char got[100];
    describe_got(n, got, sizeof got);
    return fail(w, n, "%s: expected a non-empty string, got %s", key, got);
  }
  free(*out);
  *out = strdup(s);
  return *out ? 0 : SS_ENOMEM;
}

static int valid_chars(const char *s, const char *extra) {
  if (!s || !*s) return 0;
  for (; *s; s++) {
    char ch = *s;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '_' || (extra && strchr(extra, ch))))
      return 0;
  }
  return 1;
}

/* A growing string for the spec. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
} sbuf;

static int sbuf_add(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return SS_ENOMEM;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
  return 0;
}

static int parse_model(walk *w, int idx, const yaml_node_t *mn, ss_model_conf *m,
                       const ss_model_conf *prev, size_t n_prev) {
  char key[160];
  const yaml_node_t *id_node = NULL;
  if (mn->type != YAML_MAPPING_NODE)
    return fail(w, mn, "models[%d]: expected a mapping (id, kind, ...), got %s", idx,
                node_kind(mn));
  /* pass 1: the reserved keys, and shape checks for all keys */
  for (yaml_node_pair_t *p = mn->data.mapping.pairs.start; p < mn->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
    yaml_node_t *v = yaml_document_get_node(w->doc, p->value);
    const char *ks = scalar(k);
    if (!valid_chars(ks, NULL))
      return fail(w, k, "models[%d]: expected a key of [A-Za-z0-9_], got %s", idx,
                  ks ? ks : node_kind(k));
    for (yaml_node_pair_t *q = mn->data.mapping.pairs.start; q < p; q++)
      if (strcmp(scalar(yaml_document_get_node(w->doc, q->key)), ks) == 0)
        return fail(w, k, "models[%d]: duplicate key '%s'", idx, ks);
    snprintf(key, sizeof key, "models[%d].%s", idx, ks);
    int rc = 0;
    if (strcmp(ks, "id") == 0) {
      if ((rc = get_str(w, key, v, &m->id)) != 0) return rc;
      if (!valid_chars(m->id, ".-"))
        return fail(w, v, "%s: expected [A-Za-z0-9_.-]+, got '%.80s'", key, m->id);
      id_node = v;
    } else if (strcmp(ks, "kind") == 0) {
      if ((rc = get_str(w, key, v, &m->kind)) != 0) return rc;
      if (!valid_chars(m->kind, NULL))
        return fail(w, v,
                    "%s: expected a model kind (identity, scale, sleep, spin, mlp, gpt2, llama), "
                    "got '%.80s'",
                    key, m->kind);
    } else if (strcmp(ks, "max_inflight") == 0) {
      rc = get_int(w, key, v, 0, INT_MAX, &m->max_inflight);
    } else if (strcmp(ks, "max_queue") == 0) {
      rc = get_int(w, key, v, 0, INT_MAX, &m->max_queue);
    } else {
      const char *vs = scalar(v);
      if (v && v->type == YAML_SEQUENCE_NODE) { /* a list (lora_targets: [q_proj, v_proj]) */
        yaml_node_item_t *it = v->data.sequence.items.start;
        if (it == v->data.sequence.items.top)
          return fail(w, v, "%s: expected a non-empty list", key);
        for (; it < v->data.sequence.items.top; it++) {
          yaml_node_t *e = yaml_document_get_node(w->doc, *it);
          const char *es = scalar(e);
          if (!es || !es[0] || strpbrk(es, ",="))
            return fail(w, e, "%s: list items must be non-empty scalars without ',' or '='", key);
        }
        continue;
      }
      if (!vs || !vs[0]) {
        char got[100];
        describe_got(v, got, sizeof got);
        return fail(w, v, "%s: expected a non-empty scalar value, got %s", key, got);
      }
      if (strpbrk(vs, ",="))
        return fail(w, v,
                    "%s: value must not contain ',' or '=' (it goes into the model spec "
                    "\"ID=KIND,key=value\"), got '%.80s'",
                    key, vs);
    }
    if (rc) return rc;
  }
  if (!m->id) return fail(w, mn, "models[%d]: missing required key 'id'", idx);
  if (!m->kind) return fail(w, mn, "models[%d] (id '%s'): missing required key 'kind'", idx, m->id);
  for (size_t j = 0; j < n_prev; j++)
    if (strcmp(prev[j].id, m->id) == 0)
      return fail(w, id_node, "models[%d].id: duplicate model id '%s' (also models[%zu])", idx,
                  m->id, j);
  /* pass 2: the spec, "ID=KIND" then the other keys in file order */
  sbuf b = {0};
  int rc = sbuf_add(&b, m->id);
  if (!rc) rc = sbuf_add(&b, "=");
  if (!rc) rc = sbuf_add(&b, m->kind);
  for (yaml_node_pair_t *p = mn->data.mapping.pairs.start; !rc && p < mn->data.mapping.pairs.top;
       p++) {
    const char *ks = scalar(yaml_document_get_node(w->doc, p->key));
    if (!strcmp(ks, "id") || !strcmp(ks, "kind") || !strcmp(ks, "max_inflight") ||
        !strcmp(ks, "max_queue"))
      continue;
    rc = sbuf_add(&b, ",");
    if (!rc) rc = sbuf_add(&b, ks);
    if (!rc) rc = sbuf_add(&b, "=");
    yaml_node_t *val = yaml_document_get_node(w->doc, p->value);
    if (!rc && val->type == YAML_SEQUENCE_NODE) { /* a list: "key=a,b" (registry.c) */
      for (yaml_node_item_t *it = val->data.sequence.items.start;
           !rc && it < val->data.sequence.items.top; it++) {
        if (it != val->data.sequence.items.start) rc = sbuf_add(&b, ",");
        if (!rc) rc = sbuf_add(&b, scalar(yaml_document_get_node(w->doc, *it)));
      }
    } else if (!rc) {
      rc = sbuf_add(&b, scalar(val));
    }
  }
  if (rc) {
    free(b.p);
    return rc;
  }
  m->spec = b.p;
  return 0;
}

static int parse_models(walk *w, const yaml_node_t *n, ss_file_config *c) {
  if (n->type != YAML_SEQUENCE_NODE) {
    char got[100];
    describe_got(n, got, sizeof got);
    return fail(w, n, "models: expected a sequence of mappings (- id: ..., kind: ...), got %s",
                got);
  }
  size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  if (count == 0) return 0;
  c->models = calloc(count, sizeof *c->models);
  if (!c->models) return SS_ENOMEM;
  for (size_t i = 0; i < count; i++) {
    ss_model_conf *m = &c->models[c->n_models++];
    m->max_inflight = -1;
    m->max_queue = -1;
    yaml_node_t *mn = yaml_document_get_node(w->doc, n->data.sequence.items.start[i]);
    int rc = parse_model(w, (int)i, mn, m, c->models, i);
    if (rc) return rc;
  }
  return 0;
}

/* A setting of the table (row i, YAML key ks) from node v into c->set. */
static int parse_setting(walk *w, int i, const char *ks, const yaml_node_t *v, ss_file_config *c) {
  const char *s = scalar(v);
  char got[100], msg[300], *owned = NULL;
  if (!s) {
    describe_got(v, got, sizeof got);
    return fail(w, v, "%s: expected a single value, got %s", ks, got);
  }
  int rc = ss_setting_set(&c->set, i, s, &owned, msg, sizeof msg);
  if (rc == SS_ENOMEM) return fail(w, v, "%s: out of memory", ks);
  if (rc != 0) return fail(w, v, "%s: %s", ks, msg);
  if (owned) {
    char **strs = realloc(c->strs, (c->nstrs + 1) * sizeof *strs);
    if (!strs) {
      free(owned);
      return fail(w, v, "%s: out of memory", ks);
    }
    c->strs = strs;
    c->strs[c->nstrs++] = owned;
  }
  c->has[i] = 1;
  return 0;
}

int ss_file_has(const ss_file_config *c, const char *key) {
  int i = ss_setting_by_key(key);
  return i >= 0 && c->has[i];
}

static int parse_top(walk *w, const yaml_node_t *root, ss_file_config *c) {
  if (root->type == YAML_SCALAR_NODE && root->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
    const char *s = scalar(root);
    if (s && (!s[0] || !strcmp(s, "~") || !strcmp(s, "null"))) return 0; /* empty document */
  }
  if (root->type != YAML_MAPPING_NODE) {
    char got[100];
    describe_got(root, got, sizeof got);
    return fail(w, root,
                "expected a mapping of settings (listen:, workers:, models:, ...) at "
                "the top level, got %s",
                got);
  }
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
       p++) {
    yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
    yaml_node_t *v = yaml_document_get_node(w->doc, p->value);
    const char *ks = scalar(k);
    if (!ks) return fail(w, k, "expected a key, got %s", node_kind(k));
    for (yaml_node_pair_t *q = root->data.mapping.pairs.start; q < p; q++) {
      const char *qs = scalar(yaml_document_get_node(w->doc, q->key));
      if (qs && strcmp(qs, ks) == 0) return fail(w, k, "duplicate key '%.80s'", ks);
    }
    int rc, i = ss_setting_by_key(ks);
    if (!strcmp(ks, "models")) {
      rc = parse_models(w, v, c);
    } else if (i >= 0) {
      rc = parse_setting(w, i, ks, v, c);
    } else {
      char list[1200];
      size_t pos = 0;
      list[0] = 0;
      for (size_t j = 0; j < ss_nsettings && pos < sizeof list; j++) {
        if (!ss_settings[j].key) continue;
        int n =
            snprintf(list + pos, sizeof list - pos, "%s%s", pos ? ", " : "", ss_settings[j].key);
        if (n < 0) break;
        pos += (size_t)n;
      }
      return fail(w, k, "unknown key '%.80s' (known keys: %s)", ks, list);
    }
    if (rc) return rc;
  }
  return 0;
}

static int syntax_error(walk *w, const yaml_parser_t *parser) {
  if (parser->error == YAML_MEMORY_ERROR) {
    snprintf(w->err, w->errlen, "%s: out of memory while parsing YAML", w->name);
    return SS_ENOMEM;
  }
  const yaml_mark_t *m = &parser->problem_mark;
  char ctx[200] = "";
  if (parser->context)
    snprintf(ctx, sizeof ctx, " (%s at line %zu, column %zu)", parser->context,
             parser->context_mark.line + 1, parser->context_mark.column + 1);
  snprintf(w->err, w->errlen, "%s:%zu:%zu: YAML syntax error: %s%s", w->name, m->line + 1,
           m->column + 1, parser->problem ? parser->problem : "malformed document", ctx);
  return SS_EINVAL;
}

/* A first pass over the event stream (linear time, no tree built): refuse nesting deeper than
 * SS_CONFIG_MAX_DEPTH before yaml_parser_load builds the document, whose cost grows
 * quadratically with the depth (200 KB of "[[[[..." took 5 s). Syntax errors are left to the
 * real parse, which reports them with their position. */
static int check_depth(walk *w, const char *text, size_t len) {
  yaml_parser_t parser;
  yaml_event_t ev;
  int depth = 0, rc = 0, done = 0;
  if (!yaml_parser_initialize(&parser)) return SS_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  while (!done && rc == 0) {
    if (!yaml_parser_parse(&parser, &ev)) break;
    switch (ev.type) {
      case YAML_SEQUENCE_START_EVENT:
      case YAML_MAPPING_START_EVENT:
        if (++depth > SS_CONFIG_MAX_DEPTH) {
          snprintf(w->err, w->errlen,
                   "%s:%zu:%zu: nesting deeper than %d levels; a splitserve "
                   "config needs 4",
                   w->name, ev.start_mark.line + 1, ev.start_mark.column + 1, SS_CONFIG_MAX_DEPTH);
          rc = SS_EINVAL;
        }
        break;
      case YAML_SEQUENCE_END_EVENT:
      case YAML_MAPPING_END_EVENT: depth--; break;
      case YAML_STREAM_END_EVENT: done = 1; break;
      default: break;
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&parser);
  return rc;
}

int ss_config_parse(const char *name, const char *text, size_t len, ss_file_config *out, char *err,
                    size_t errlen) {
  char dummy[1];
  walk w = {name ? name : "<config>", NULL, err ? err : dummy, err ? errlen : sizeof dummy};
  yaml_parser_t parser;
  yaml_document_t doc, extra;
  int rc = 0;

  memset(out, 0, sizeof *out);
  ss_server_config_init(&out->set);
  if (w.errlen) w.err[0] = '\0';
  if (!text) {
    if (len) return fail(&w, NULL, "no text");
    text = "";
  }
  if (len > SS_CONFIG_MAX_BYTES)
    return fail(&w, NULL, "%zu bytes is over the limit of %u bytes for a config file", len,
                SS_CONFIG_MAX_BYTES);
  if ((rc = check_depth(&w, text, len)) != 0) return rc;
  if (!yaml_parser_initialize(&parser)) return SS_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    rc = syntax_error(&w, &parser);
    yaml_parser_delete(&parser);
    return rc;
  }
  w.doc = &doc;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root) rc = parse_top(&w, root, out);
  if (rc == 0 && root) {
    /* a second document: refuse rather than silently ignore it */
    if (!yaml_parser_load(&parser, &extra)) {
      rc = syntax_error(&w, &parser);
    } else {
      yaml_node_t *r2 = yaml_document_get_root_node(&extra);
      if (r2) {
        w.doc = &extra;
        rc = fail(&w, r2, "expected a single YAML document, found a second one");
      }
      yaml_document_delete(&extra);
    }
  }
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  return rc;
}

int ss_config_load(const char *path, ss_file_config *out, char *err, size_t errlen) {
  char dummy[1];
  if (!err) err = dummy, errlen = sizeof dummy;
  memset(out, 0, sizeof *out);
  size_t len = 0;
  char *buf = NULL;
  int rc = ss_file_read(path, 0, SS_CONFIG_MAX_BYTES, &buf, &len, err, errlen);
  if (rc == 0) rc = ss_config_parse(path, buf, len, out, err, errlen);
  free(buf);
  return rc;
}

void ss_config_free(ss_file_config *c) {
  if (!c) return;
  for (size_t i = 0; i < c->nstrs; i++) free(c->strs[i]);
  free(c->strs);
  for (size_t i = 0; i < c->n_models; i++) {
    free(c->models[i].id);
    free(c->models[i].kind);
    free(c->models[i].spec);
  }
  free(c->models);
  memset(c, 0, sizeof *c);
}
