/*
 * kcache.h — a string-keyed cache of owned values with byte accounting, an idle TTL, a total
 * byte budget (least recently used idle entries are evicted first), "busy" pinning (a pinned
 * entry is never evicted), and a bounded memory of removed keys with the reason they went
 * ("evicted: ttl", "used by a backward call", ...) so a client asking for one gets a precise
 * answer instead of a bare "not found". An entry carries an opaque tag that its user sets (the
 * service: the owner of a session or a training forward); a removed key is remembered with it.
 *
 * Used for server-side decode sessions (KV caches) and the training activation cache.
 * Thread: loop thread only (no locks). Values are freed through the free callback.
 */
#ifndef SS_CORE_KCACHE_H
#define SS_CORE_KCACHE_H

#include <stddef.h>
#include <stdint.h>

#define SS_KCACHE_TAG 32 /* bytes of an entry's tag */

typedef struct ss_kentry {
  char *key;
  void *value; /* owned; freed with the cache's free_value */
  size_t bytes;
  uint64_t last_used_ns;
  int busy;                   /* pinned: in use by a call */
  uint8_t tag[SS_KCACHE_TAG]; /* the user's (zero after put); remembered with a removed key */
  struct ss_kentry *hnext, *prev, *next; /* hash chain; LRU list (head = most recent) */
} ss_kentry;

typedef struct ss_kcache ss_kcache;

/* max_bytes: budget (0 = unlimited); ttl_s: idle time limit (<= 0: none); free_value(value, user)
 * frees a value. *out: free with ss_kcache_free. */
int ss_kcache_new(size_t max_bytes, double ttl_s, void (*free_value)(void *value, void *user),
                  void *user, ss_kcache **out);
void ss_kcache_free(ss_kcache *c);

/* The entry for key, or NULL. When NULL and the key was removed recently, *why (if why != NULL)
 * is the reason given then (borrowed, valid until the next call); else *why = NULL. touch:
 * count as a use (LRU, TTL). */
ss_kentry *ss_kcache_get(ss_kcache *c, const char *key, int touch, const char **why);
/* The reason a recently removed key went (borrowed, valid until the next call), with the tag its
 * entry had in *tag; NULL when key is not remembered. */
const char *ss_kcache_gone(const ss_kcache *c, const char *key, const uint8_t **tag);
/* Bytes the cache adds to an entry's own: the entry struct and its key copy. The budget and the
 * stats count them, and the remembered keys of removed entries with their reasons, too (those
 * are kept within a quarter of the budget, oldest forgotten first). */
size_t ss_kcache_overhead(const char *key);
/* Insert a new entry (key copied; value owned from now on, also on failure). bytes: the value's
 * memory (the cache adds ss_kcache_overhead). Returns the entry or NULL (out of memory, the key
 * exists, or the entry alone is larger than the whole budget). Enforces the budget afterwards
 * (the new entry is the most recent, so it is evicted last). */
ss_kentry *ss_kcache_put(ss_kcache *c, const char *key, void *value, size_t bytes);
/* The value's size changed (e.g. a session's cache grew): re-account, enforce the budget.
 * Returns 1 when e itself went (idle and alone larger than the budget: e is freed), else 0. */
int ss_kcache_resize(ss_kcache *c, ss_kentry *e, size_t bytes);
/* Remove e. reason != NULL: remember the key with this reason; take: return the value instead
 * of freeing it. */
void *ss_kcache_remove(ss_kcache *c, ss_kentry *e, const char *reason, int take);
/* Forget the remembered reasons for key (it may be reused with a fresh meaning). */
void ss_kcache_forget(ss_kcache *c, const char *key);
/* Evict idle entries past the TTL (periodic timer). */
void ss_kcache_sweep(ss_kcache *c);
void ss_kcache_stats(const ss_kcache *c, size_t *count, size_t *bytes, uint64_t *evicted);

#endif
