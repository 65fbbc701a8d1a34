/*
 * timerq.c — see timerq.h. Heap operations are O(log n); the single uv timer is re-armed to
 * the earliest deadline whenever the top changes. Loop thread only.
 */
#include "loop/timerq.h"

#include <stdlib.h>

#include "splitserve.h"

static void place(ss_timerq *q, size_t i, ss_tq_entry *e) {
  q->heap[i] = e;
  e->idx = i + 1;
}

static void sift_up(ss_timerq *q, size_t i) {
  ss_tq_entry *e = q->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (q->heap[parent]->when_ns <= e->when_ns) break;
    place(q, i, q->heap[parent]);
    i = parent;
  }
  place(q, i, e);
}

static void sift_down(ss_timerq *q, size_t i) {
  ss_tq_entry *e = q->heap[i];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    uint64_t best = e->when_ns;
    if (l < q->n && q->heap[l]->when_ns < best) {
      m = l;
      best = q->heap[l]->when_ns;
    }
    if (r < q->n && q->heap[r]->when_ns < best) m = r;
    if (m == i) break;
    place(q, i, q->heap[m]);
    i = m;
  }
  place(q, i, e);
}

static void on_timer(uv_timer_t *t);

static void rearm(ss_timerq *q) {
  if (q->n == 0) {
    if (q->armed_for) uv_timer_stop(&q->timer);
    q->armed_for = 0;
    return;
  }
  uint64_t when = q->heap[0]->when_ns;
  if (q->armed_for == when) return;
  uint64_t now = uv_hrtime();
  uint64_t ms = when > now ? (when - now + 999999) / 1000000 : 0;
  q->armed_for = when;
  uv_timer_start(&q->timer, on_timer, ms, 0);
}

static void remove_at(ss_timerq *q, size_t i) {
  ss_tq_entry *e = q->heap[i];
  e->idx = 0;
  q->n--;
  if (i == q->n) return;
  ss_tq_entry *moved = q->heap[q->n];
  place(q, i, moved);
  sift_down(q, i);
  sift_up(q, moved->idx - 1);
}

static void on_timer(uv_timer_t *t) {
  ss_timerq *q = t->data;
  q->armed_for = 0;
  /* uv timers have ms resolution: fire everything due within the next half millisecond. */
  uint64_t now = uv_hrtime() + 500000;
  while (q->n > 0 && q->heap[0]->when_ns <= now) {
    ss_tq_entry *e = q->heap[0];
    remove_at(q, 0);
    e->cb(e);
  }
  rearm(q);
}

int ss_tq_init(uv_loop_t *loop, ss_timerq *q) {
  *q = (ss_timerq){0};
  uv_timer_init(loop, &q->timer);
  q->timer.data = q;
  return 0;
}

int ss_tq_arm(ss_timerq *q, ss_tq_entry *e, uint64_t when_ns, void (*cb)(ss_tq_entry *)) {
  if (e->idx) remove_at(q, e->idx - 1);
  if (q->n == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 256;
    ss_tq_entry **h = realloc(q->heap, cap * sizeof *h);
    if (!h) return SS_ENOMEM;
    q->heap = h;
    q->cap = cap;
  }
  e->when_ns = when_ns;
  e->cb = cb;
  place(q, q->n, e);
  q->n++;
  sift_up(q, q->n - 1);
  rearm(q);
  return 0;
}

void ss_tq_cancel(ss_timerq *q, ss_tq_entry *e) {
  if (!e->idx) return;
  remove_at(q, e->idx - 1);
  rearm(q);
}

void ss_tq_close(ss_timerq *q) {
  for (size_t i = 0; i < q->n; i++) q->heap[i]->idx = 0;
  free(q->heap);
  q->heap = NULL;
  q->n = q->cap = 0;
  uv_close((uv_handle_t *)&q->timer, NULL);
}
