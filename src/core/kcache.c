/*
 * kcache.c — see kcache.h. A chained hash table (FNV-1a, grows x2 past load 1), an LRU list,
 * and a ring of recently removed keys with reasons and tags. Every byte the cache keeps is counted:
 * entries (the caller's bytes + the entry struct + its key) and the remembered keys with their
 * reasons (at most a quarter of the budget; the oldest are forgotten first). Loop thread only.
 */
#include "core/kcache.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "splitserve.h"

#define SS_GONE_RING 4096

struct ss_kcache {
  ss_kentry **buckets;
  size_t nbuckets, count, bytes, max_bytes;
  uint64_t ttl_ns;
  ss_kentry *head, *tail;
  void (*free_value)(void *, void *);
  void *user;
  char *gone[SS_GONE_RING];        /* tag (SS_KCACHE_TAG bytes), then "key\0reason" */
  size_t gone_bytes[SS_GONE_RING]; /* each record's bytes, counted in bytes */
  size_t gone_pos, gone_total;
  uint64_t n_evicted;
};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
  return h;
}

int ss_kcache_new(size_t max_bytes, double ttl_s, void (*free_value)(void *, void *), void *user,
                  ss_kcache **out) {
  ss_kcache *c = calloc(1, sizeof *c);
  if (!c) return SS_ENOMEM;
  c->nbuckets = 256;
  c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    free(c);
    return SS_ENOMEM;
  }
  c->max_bytes = max_bytes;
  c->ttl_ns = ttl_s > 0 ? (uint64_t)(ttl_s * 1e9) : 0;
  c->free_value = free_value;
  c->user = user;
  *out = c;
  return 0;
}

static void lru_unlink(ss_kcache *c, ss_kentry *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    c->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_front(ss_kcache *c, ss_kentry *e) {
  e->prev = NULL;
  e->next = c->head;
  if (c->head)
    c->head->prev = e;
  else
    c->tail = e;
  c->head = e;
}

static void gone_drop(ss_kcache *c, size_t i) {
  free(c->gone[i]);
  c->gone[i] = NULL;
  c->bytes -= c->gone_bytes[i];
  c->gone_total -= c->gone_bytes[i];
  c->gone_bytes[i] = 0;
}

static void remember(ss_kcache *c, const ss_kentry *e, const char *reason) {
  size_t kl = strlen(e->key), rl = strlen(reason), n = SS_KCACHE_TAG + kl + rl + 2;
  char *rec = malloc(n);
  if (!rec) return;
  memcpy(rec, e->tag, SS_KCACHE_TAG);
  memcpy(rec + SS_KCACHE_TAG, e->key, kl + 1);
  memcpy(rec + SS_KCACHE_TAG + kl + 1, reason, rl + 1);
  gone_drop(c, c->gone_pos);
  c->gone[c->gone_pos] = rec;
  c->gone_bytes[c->gone_pos] = n;
  c->bytes += n;
  c->gone_total += n;
  c->gone_pos = (c->gone_pos + 1) % SS_GONE_RING;
  /* The remembered keys may use at most a quarter of the budget: oldest forgotten first. */
  for (size_t k = 0; k < SS_GONE_RING && c->max_bytes && c->gone_total > c->max_bytes / 4; k++) {
    size_t i = (c->gone_pos + k) % SS_GONE_RING; /* the slot written longest ago */
    if (c->gone[i]) gone_drop(c, i);
  }
}

size_t ss_kcache_overhead(const char *key) { return sizeof(ss_kentry) + strlen(key) + 1; }

void *ss_kcache_remove(ss_kcache *c, ss_kentry *e, const char *reason, int take) {
  ss_kentry **pp = &c->buckets[hash(e->key) % c->nbuckets];
  while (*pp && *pp != e) pp = &(*pp)->hnext;
  if (*pp) *pp = e->hnext;
  lru_unlink(c, e);
  c->count--;
  c->bytes -= e->bytes;
  if (reason) remember(c, e, reason);
  void *v = e->value;
  if (!take) {
    if (c->free_value) c->free_value(v, c->user);
    v = NULL;
  }
  free(e->key);
  free(e);
  return v;
}

void ss_kcache_free(ss_kcache *c) {
  if (!c) return;
  while (c->head) ss_kcache_remove(c, c->head, NULL, 0);
  for (size_t i = 0; i < SS_GONE_RING; i++) gone_drop(c, i);
  free(c->buckets);
  free(c);
}

ss_kentry *ss_kcache_get(ss_kcache *c, const char *key, int touch, const char **why) {
  if (why) *why = NULL;
  for (ss_kentry *e = c->buckets[hash(key) % c->nbuckets]; e; e = e->hnext)
    if (strcmp(e->key, key) == 0) {
      if (touch) {
        e->last_used_ns = uv_hrtime();
        lru_unlink(c, e);
        lru_front(c, e);
      }
      return e;
    }
  if (why) *why = ss_kcache_gone(c, key, NULL);
  return NULL;
}

const char *ss_kcache_gone(const ss_kcache *c, const char *key, const uint8_t **tag) {
  const char *why = NULL;
  for (size_t k = 0; k < SS_GONE_RING; k++) { /* oldest first: the latest record wins */
    size_t i = (c->gone_pos + k) % SS_GONE_RING;
    if (c->gone[i] && strcmp(c->gone[i] + SS_KCACHE_TAG, key) == 0) {
      why = c->gone[i] + SS_KCACHE_TAG + strlen(key) + 1;
      if (tag) *tag = (const uint8_t *)c->gone[i];
    }
  }
  return why;
}

/* Over the budget: evict idle entries, least recently used first, the newest last. */
static void enforce_budget(ss_kcache *c) {
  ss_kentry *e = c->tail;
  while (c->max_bytes && c->bytes > c->max_bytes && e) {
    ss_kentry *prev = e->prev;
    if (!e->busy && e != c->head) {
      c->n_evicted++;
      ss_kcache_remove(c, e, "evicted: over the memory budget, least recently used first", 0);
    }
    e = prev;
  }
}

static void grow(ss_kcache *c) {
  size_t n = c->nbuckets * 2;
  ss_kentry **b = calloc(n, sizeof *b);
  if (!b) return; /* keep the old table: longer chains, still correct */
  for (size_t i = 0; i < c->nbuckets; i++) {
    ss_kentry *e = c->buckets[i];
    while (e) {
      ss_kentry *next = e->hnext;
      ss_kentry **slot = &b[hash(e->key) % n];
      e->hnext = *slot;
      *slot = e;
      e = next;
    }
  }
  free(c->buckets);
  c->buckets = b;
  c->nbuckets = n;
}

ss_kentry *ss_kcache_put(ss_kcache *c, const char *key, void *value, size_t bytes) {
  bytes += ss_kcache_overhead(key);
  int too_big = c->max_bytes && bytes > c->max_bytes; /* the newest is bound by it too */
  ss_kentry *e = too_big || ss_kcache_get(c, key, 0, NULL) ? NULL : calloc(1, sizeof *e);
  if (e) e->key = strdup(key);
  if (!e || !e->key) {
    free(e);
    if (c->free_value) c->free_value(value, c->user);
    return NULL;
  }
  if (c->count >= c->nbuckets) grow(c);
  e->value = value;
  e->bytes = bytes;
  e->last_used_ns = uv_hrtime();
  ss_kentry **slot = &c->buckets[hash(key) % c->nbuckets];
  e->hnext = *slot;
  *slot = e;
  lru_front(c, e);
  c->count++;
  c->bytes += bytes;
  enforce_budget(c);
  return e;
}

int ss_kcache_resize(ss_kcache *c, ss_kentry *e, size_t bytes) {
  bytes += ss_kcache_overhead(e->key);
  c->bytes = c->bytes - e->bytes + bytes;
  e->bytes = bytes;
  if (c->max_bytes && bytes > c->max_bytes && !e->busy) {
    c->n_evicted++;
    ss_kcache_remove(c, e, "evicted: larger than the whole memory budget on its own", 0);
    return 1;
  }
  enforce_budget(c);
  return 0;
}

void ss_kcache_forget(ss_kcache *c, const char *key) {
  for (size_t i = 0; i < SS_GONE_RING; i++)
    if (c->gone[i] && strcmp(c->gone[i] + SS_KCACHE_TAG, key) == 0) gone_drop(c, i);
}

void ss_kcache_sweep(ss_kcache *c) {
  if (!c->ttl_ns) return;
  uint64_t now = uv_hrtime();
  ss_kentry *e = c->tail;
  while (e && now - e->last_used_ns > c->ttl_ns) {
    ss_kentry *prev = e->prev;
    if (!e->busy) {
      c->n_evicted++;
      ss_kcache_remove(c, e, "evicted: idle longer than its time-to-live", 0);
    }
    e = prev;
  }
}

void ss_kcache_stats(const ss_kcache *c, size_t *count, size_t *bytes, uint64_t *evicted) {
  *count = c->count;
  *bytes = c->bytes;
  *evicted = c->n_evicted;
}
