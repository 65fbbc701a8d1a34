/*
 * test_kcache.c — the keyed cache: put/get, byte budget with LRU eviction (busy entries pinned,
 * the newest kept), remembered reasons and tags, forget, resize, TTL sweep, and that every value
 * is freed exactly once.
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "core/kcache.h"

static int freed;
static void free_val(void *v, void *user) {
  (void)user;
  freed++;
  free(v);
}

int main(void) {
  ss_kcache *c;
  /* Every key here is one letter: the cache adds O bytes per entry (struct + key), and a
   * remembered key costs G (the tag, "b\0" + the reason). */
  const size_t O = ss_kcache_overhead("a");
  const size_t G =
      SS_KCACHE_TAG + 2 + strlen("evicted: over the memory budget, least recently used first") + 1;
  CHECK_EQ_INT(ss_kcache_new(300 + 2 * O + G, 0.05, free_val, NULL, &c), 0);
  ss_kentry *a = ss_kcache_put(c, "a", malloc(1), 100);
  ss_kentry *b = ss_kcache_put(c, "b", malloc(1), 100);
  CHECK(a && b);
  CHECK(ss_kcache_put(c, "a", malloc(1), 1) == NULL); /* duplicate: refused, value freed */
  CHECK_EQ_INT(freed, 1);
  a->busy = 1;
  CHECK(ss_kcache_get(c, "b", 1, NULL) == b); /* b is now the most recent */
  ss_kcache_put(c, "c", malloc(1), 150);      /* 350 > 300: evict LRU idle: b (a is busy) */
  const char *why = NULL;
  CHECK(ss_kcache_get(c, "b", 0, &why) == NULL);
  CHECK_CONTAINS(why, "memory budget");
  CHECK(ss_kcache_get(c, "a", 0, NULL) == a);
  size_t n, bytes;
  uint64_t ev;
  ss_kcache_stats(c, &n, &bytes, &ev);
  CHECK_EQ_INT(n, 2);
  CHECK_EQ_INT(bytes, 250 + 2 * O + G); /* a, c and the memory of b's eviction */
  CHECK_EQ_INT(ev, 1);
  ss_kcache_forget(c, "b");
  CHECK(ss_kcache_get(c, "b", 0, &why) == NULL && why == NULL);
  /* take: the value comes back instead of being freed */
  void *v = ss_kcache_remove(c, ss_kcache_get(c, "c", 0, NULL), "used", 1);
  CHECK(v != NULL);
  free(v);
  CHECK(ss_kcache_get(c, "c", 0, &why) == NULL);
  CHECK_CONTAINS(why, "used");
  /* resize past the budget evicts others, never the resized newest */
  ss_kentry *d = ss_kcache_put(c, "d", malloc(1), 10);
  a->busy = 0;
  ss_kcache_resize(c, d, 290);
  CHECK(ss_kcache_get(c, "a", 0, NULL) == NULL); /* a (older, idle) evicted */
  CHECK(ss_kcache_get(c, "d", 0, NULL) == d);
  /* the newest is bound by the budget too: alone larger than it, it goes (resize) or is refused
   * (put, value freed) */
  CHECK_EQ_INT(ss_kcache_resize(c, d, 10000), 1);
  CHECK(ss_kcache_get(c, "d", 0, &why) == NULL);
  CHECK_CONTAINS(why, "larger than the whole memory budget");
  int f0 = freed;
  CHECK(ss_kcache_put(c, "e", malloc(1), 10000) == NULL);
  CHECK_EQ_INT(freed - f0, 1);
  d = ss_kcache_put(c, "d", malloc(1), 10);
  CHECK(d != NULL);
  /* remembered keys count, within a quarter of the budget (oldest forgotten first) */
  ss_kcache *small;
  CHECK_EQ_INT(ss_kcache_new(4000, 0, free_val, NULL, &small), 0);
  char big_key[200];
  memset(big_key, 'k', sizeof big_key - 1);
  big_key[sizeof big_key - 1] = 0;
  ss_kcache_put(small, "x", malloc(1), 100);
  ss_kcache_remove(small, ss_kcache_put(small, big_key, malloc(1), 10), "ended", 0);
  ss_kcache_stats(small, &n, &bytes, &ev);
  CHECK_EQ_INT(bytes, 100 + O + SS_KCACHE_TAG + sizeof big_key + strlen("ended") + 1);
  for (int i = 0; i < 10; i++) { /* 10 x 238 > 1000: the first ones are forgotten */
    big_key[0] = (char)('a' + i);
    ss_kcache_remove(small, ss_kcache_put(small, big_key, malloc(1), 10), "ended", 0);
  }
  ss_kcache_stats(small, &n, &bytes, &ev);
  CHECK(bytes <= 100 + O + 1000);
  CHECK(ss_kcache_get(small, big_key, 0, &why) == NULL && why != NULL); /* the newest is kept */
  big_key[0] = 'k';
  CHECK(ss_kcache_get(small, big_key, 0, &why) == NULL && why == NULL); /* the oldest went */
  CHECK(ss_kcache_get(small, "x", 0, NULL) != NULL);
  ss_kcache_free(small);
  /* tags: a removed key is remembered with its entry's tag; the latest removal wins */
  ss_kcache *tc;
  CHECK_EQ_INT(ss_kcache_new(0, 0, free_val, NULL, &tc), 0);
  ss_kentry *t = ss_kcache_put(tc, "s", malloc(1), 1);
  CHECK(t && t->tag[0] == 0 && t->tag[SS_KCACHE_TAG - 1] == 0); /* zero after put */
  memset(t->tag, 0xA1, SS_KCACHE_TAG);
  ss_kcache_remove(tc, t, "ended", 0);
  const uint8_t *tag = NULL;
  CHECK(strcmp(ss_kcache_gone(tc, "s", &tag), "ended") == 0 && tag && tag[0] == 0xA1);
  t = ss_kcache_put(tc, "s", malloc(1), 1);
  memset(t->tag, 0xB2, SS_KCACHE_TAG);
  ss_kcache_remove(tc, t, "evicted: test", 0);
  CHECK(strcmp(ss_kcache_gone(tc, "s", &tag), "evicted: test") == 0 && tag[31] == 0xB2);
  CHECK(ss_kcache_gone(tc, "nope", &tag) == NULL);
  ss_kcache_free(tc);
  /* TTL */
  uv_sleep(80);
  ss_kcache_sweep(c);
  CHECK(ss_kcache_get(c, "d", 0, &why) == NULL);
  CHECK_CONTAINS(why, "time-to-live");
  /* many keys: the table grows and everything stays reachable */
  ss_kcache *big;
  CHECK_EQ_INT(ss_kcache_new(0, 0, free_val, NULL, &big), 0);
  char key[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    ss_kcache_put(big, key, malloc(1), 1);
  }
  int found = 0;
  for (int i = 0; i < 5000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    found += ss_kcache_get(big, key, 0, NULL) != NULL;
  }
  CHECK_EQ_INT(found, 5000);
  int before = freed;
  ss_kcache_free(big);
  CHECK_EQ_INT(freed - before, 5000);
  ss_kcache_free(c);
  TEST_MAIN_END();
}
