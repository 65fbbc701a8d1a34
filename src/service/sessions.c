/*
 * sessions.c — see sessions.h. A chained hash table keyed by "model\x1fid", an LRU list
 * (most recent at the head), and a ring of recently evicted keys. Loop thread only.
 */
#include "service/sessions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/log.h"

#define SS_EVICTED_RING 4096

struct ss_sessions {
  ss_session **buckets;
  size_t nbuckets, count, bytes, max_bytes;
  uint64_t ttl_ns;
  ss_session *lru_head, *lru_tail;
  char *evicted[SS_EVICTED_RING]; /* keys, each ending with a reason byte after the NUL */
  size_t evicted_pos;
  uint64_t n_evicted;
};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
  return h;
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

void ss_kv_free(ss_kv_layer *kv, int n) {
  if (!kv) return;
  for (int i = 0; i < n; i++) {
    free(kv[i].key.data);
    free(kv[i].value.data);
  }
  free(kv);
}

int ss_sessions_new(size_t max_bytes, double ttl_s, ss_sessions **out) {
  ss_sessions *s = calloc(1, sizeof *s);
  if (!s) return SS_ENOMEM;
  s->nbuckets = 1024;
  s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
  if (!s->buckets) {
    free(s);
    return SS_ENOMEM;
  }
  s->max_bytes = max_bytes;
  s->ttl_ns = (uint64_t)(ttl_s * 1e9);
  *out = s;
  return 0;
}

static void lru_unlink(ss_sessions *s, ss_session *x) {
  if (x->lru_prev) x->lru_prev->lru_next = x->lru_next;
  else s->lru_head = x->lru_next;
  if (x->lru_next) x->lru_next->lru_prev = x->lru_prev;
  else s->lru_tail = x->lru_prev;
  x->lru_prev = x->lru_next = NULL;
}

static void lru_push_front(ss_sessions *s, ss_session *x) {
  x->lru_prev = NULL;
  x->lru_next = s->lru_head;
  if (s->lru_head) s->lru_head->lru_prev = x;
  else s->lru_tail = x;
  s->lru_head = x;
}

static void destroy(ss_sessions *s, ss_session *x, const char *evict_reason) {
  ss_session **pp = &s->buckets[hash(x->key) % s->nbuckets];
  while (*pp && *pp != x) pp = &(*pp)->hnext;
  if (*pp) *pp = x->hnext;
  lru_unlink(s, x);
  s->count--;
  s->bytes -= x->bytes;
  ss_kv_free(x->past, x->n_layers);
  if (evict_reason) {
    size_t kl = strlen(x->key);
    char *rec = malloc(kl + 2 + strlen(evict_reason) + 1);
    if (rec) {
      memcpy(rec, x->key, kl + 1);
      strcpy(rec + kl + 1, evict_reason);
      free(s->evicted[s->evicted_pos]);
      s->evicted[s->evicted_pos] = rec;
      s->evicted_pos = (s->evicted_pos + 1) % SS_EVICTED_RING;
    }
    s->n_evicted++;
    SS_LOGD("session '%s' evicted (%s)", x->id, evict_reason);
  }
  free(x->key);
  free(x);
}

void ss_sessions_free(ss_sessions *s) {
  if (!s) return;
  while (s->lru_head) destroy(s, s->lru_head, NULL);
  for (size_t i = 0; i < SS_EVICTED_RING; i++) free(s->evicted[i]);
  free(s->buckets);
  free(s);
}

static ss_session *find(ss_sessions *s, const char *key) {
  for (ss_session *x = s->buckets[hash(key) % s->nbuckets]; x; x = x->hnext)
    if (strcmp(x->key, key) == 0) return x;
  return NULL;
}

static const char *was_evicted(ss_sessions *s, const char *key) {
  for (size_t i = 0; i < SS_EVICTED_RING; i++)
    if (s->evicted[i] && strcmp(s->evicted[i], key) == 0) return s->evicted[i] + strlen(key) + 1;
  return NULL;
}

static void forget_evicted(ss_sessions *s, const char *key) {
  for (size_t i = 0; i < SS_EVICTED_RING; i++)
    if (s->evicted[i] && strcmp(s->evicted[i], key) == 0) {
      free(s->evicted[i]);
      s->evicted[i] = NULL;
    }
}

int ss_session_acquire(ss_sessions *s, const char *model, const char *id, ss_session **out,
                       const char **why) {
  char *key = make_key(model, id);
  if (!key) return SS_SESSION_NOMEM;
  ss_session *x = find(s, key);
  if (x) {
    free(key);
    if (x->busy) return SS_SESSION_BUSY;
  } else {
    const char *r = was_evicted(s, key);
    if (r) {
      *why = r;
      forget_evicted(s, key); /* reported once: the client may start the session over */
      free(key);
      return SS_SESSION_EVICTED;
    }
    x = calloc(1, sizeof *x);
    if (!x) {
      free(key);
      return SS_SESSION_NOMEM;
    }
    x->key = key;
    x->id = key + strlen(model) + 1;
    ss_session **b = &s->buckets[hash(key) % s->nbuckets];
    x->hnext = *b;
    *b = x;
    s->count++;
    lru_push_front(s, x);
  }
  x->busy = 1;
  x->last_used_ns = uv_hrtime();
  lru_unlink(s, x);
  lru_push_front(s, x);
  *out = x;
  return SS_SESSION_OK;
}

static size_t kv_bytes(const ss_kv_layer *kv, int n) {
  size_t b = 0;
  for (int i = 0; kv && i < n; i++) b += kv[i].key.nbytes + kv[i].value.nbytes;
  return b;
}

static void enforce_budget(ss_sessions *s) {
  ss_session *x = s->lru_tail;
  while (s->bytes > s->max_bytes && x) {
    ss_session *prev = x->lru_prev;
    if (!x->busy) destroy(s, x, "memory");
    x = prev;
  }
}

void ss_session_release(ss_sessions *s, ss_session *x, ss_kv_layer *present, int n_layers, int end) {
  x->busy = 0;
  x->last_used_ns = uv_hrtime();
  if (present) {
    s->bytes -= x->bytes;
    ss_kv_free(x->past, x->n_layers);
    x->past = present;
    x->n_layers = n_layers;
    x->past_len = n_layers > 0 ? present[0].key.shape[2] : 0;
    x->bytes = kv_bytes(present, n_layers);
    s->bytes += x->bytes;
  }
  if (end) {
    destroy(s, x, NULL);
    return;
  }
  enforce_budget(s);
}

int ss_session_end(ss_sessions *s, const char *model, const char *id) {
  char *key = make_key(model, id);
  if (!key) return 0;
  ss_session *x = find(s, key);
  free(key);
  if (!x || x->busy) return 0;
  destroy(s, x, NULL);
  return 1;
}

void ss_sessions_sweep(ss_sessions *s) {
  uint64_t now = uv_hrtime();
  ss_session *x = s->lru_tail;
  while (x && now - x->last_used_ns > s->ttl_ns) {
    ss_session *prev = x->lru_prev;
    if (!x->busy) destroy(s, x, "ttl");
    x = prev;
  }
}

void ss_sessions_stats(const ss_sessions *s, size_t *count, size_t *bytes, uint64_t *evicted) {
  *count = s->count;
  *bytes = s->bytes;
  *evicted = s->n_evicted;
}
