/*
 * sessions.c — see sessions.h: decode sessions on top of the keyed cache (core/kcache.c),
 * keyed "model\x1fid". Loop thread only.
 */
#include "service/sessions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/auth.h"

struct ss_sessions {
  ss_kcache *cache;
};

void ss_kv_free(ss_kv_layer *kv, int n) {
  if (!kv) return;
  for (int i = 0; i < n; i++) ss_kv_release(&kv[i]); /* the model backend's memory */
  free(kv);
}

static void session_free(void *v, void *user) {
  (void)user;
  ss_session *x = v;
  ss_kv_free(x->cache, x->n_layers);
  free(x);
}

int ss_sessions_new(size_t max_bytes, double ttl_s, ss_sessions **out) {
  ss_sessions *s = calloc(1, sizeof *s);
  if (!s) return SS_ENOMEM;
  int rv = ss_kcache_new(max_bytes, ttl_s, session_free, NULL, &s->cache);
  if (rv != 0) {
    free(s);
    return rv;
  }
  *out = s;
  return 0;
}

void ss_sessions_free(ss_sessions *s) {
  if (!s) return;
  ss_kcache_free(s->cache);
  free(s);
}

static char *make_key(const char *model, const char *id) {
  size_t a = strlen(model), b = strlen(id);
  char *k = malloc(a + b + 2);
  if (!k) return NULL;
  memcpy(k, model, a);
  k[a] = '\x1f';
  memcpy(k + a + 1, id, b + 1);
  return k;
}

int ss_session_acquire(ss_sessions *s, const char *model, const char *id, const uint8_t *owner,
                       ss_session **out, char *why, size_t whylen) {
  char *key = make_key(model, id);
  if (!key) return SS_SESSION_NOMEM;
  const char *gone = NULL;
  const uint8_t *tag = NULL;
  ss_kentry *e = ss_kcache_get(s->cache, key, 0, NULL);
  if (e)
    tag = e->tag;
  else
    gone = ss_kcache_gone(s->cache, key, &tag);
  /* Another owner's session, or its remembered eviction or end. */
  if (tag && !ss_auth_tag_equal(tag, owner)) {
    free(key);
    return SS_SESSION_FOREIGN;
  }
  if (!e && gone && strcmp(gone, SS_SESSION_ENDED_WHY) == 0) {
    free(key); /* an ended id names that session while it is remembered: never a new one */
    return SS_SESSION_ENDED;
  }
  if (e) ss_kcache_get(s->cache, key, 1, NULL); /* a use: LRU and idle time */
  if (!e && gone && strncmp(gone, "evicted", 7) == 0) {
    snprintf(why, whylen, "%s", gone); /* copied: forgetting frees the record */
    ss_kcache_forget(s->cache, key);   /* reported once: the client may start over */
    free(key);
    return SS_SESSION_EVICTED;
  }
  if (!e) {
    ss_session *x = calloc(1, sizeof *x);
    e = x ? ss_kcache_put(s->cache, key, x, sizeof *x) : NULL;
    if (!e) {
      free(key);
      return SS_SESSION_NOMEM;
    }
    memcpy(e->tag, owner, SS_KCACHE_TAG);
    x->entry = e;
  }
  free(key);
  if (e->busy) return SS_SESSION_BUSY;
  e->busy = 1;
  *out = e->value;
  return SS_SESSION_OK;
}

/* Everything a session keeps: its struct, the layer array and the key/value buffers at their
 * capacity (nbytes of an in-place entry; the key string and the cache entry are counted by the
 * cache). */
static size_t kv_bytes(const ss_kv_layer *kv, int n) {
  size_t b = sizeof(ss_session) + (kv ? (size_t)n * sizeof *kv : 0);
  for (int i = 0; kv && i < n; i++) b += kv[i].key.nbytes + kv[i].value.nbytes;
  return b;
}

ss_kv_layer *ss_session_cache(ss_session *x, int n_layers) {
  if (x->cache == NULL) {
    x->cache = calloc((size_t)n_layers, sizeof *x->cache);
    x->n_layers = x->cache ? n_layers : 0;
  }
  return x->cache;
}

void ss_session_release(ss_sessions *s, ss_session *x, int end) {
  ss_kentry *e = x->entry;
  e->busy = 0;
  if (end) {
    ss_kcache_remove(s->cache, e, SS_SESSION_ENDED_WHY, 0);
    return;
  }
  ss_kcache_resize(s->cache, e, kv_bytes(x->cache, x->n_layers)); /* may evict x (over budget) */
}

void ss_sessions_sweep(ss_sessions *s) { ss_kcache_sweep(s->cache); }

void ss_sessions_stats(const ss_sessions *s, size_t *count, size_t *bytes, uint64_t *evicted) {
  ss_kcache_stats(s->cache, count, bytes, evicted);
}
