/*
 * admission.c — see admission.h. O(1) enter, leave and remove. Loop thread only.
 */
#include "loop/admission.h"

#include <stddef.h>

void ss_admit_init(ss_admit *a, int limit, int max_queue) {
  *a = (ss_admit){0};
  a->limit = limit;
  a->max_queue = max_queue;
}

int ss_admit_enter(ss_admit *a, ss_waiter *w) {
  if (a->limit <= 0 || a->inflight < a->limit) {
    a->inflight++;
    a->admitted++;
    return SS_ADMIT_RUN;
  }
  if (a->max_queue >= 0 && a->waiting >= (size_t)a->max_queue) {
    a->rejected++;
    return SS_ADMIT_FULL;
  }
  w->next = NULL;
  w->prev = a->tail;
  if (a->tail)
    a->tail->next = w;
  else
    a->head = w;
  a->tail = w;
  w->queued = 1;
  a->waiting++;
  return SS_ADMIT_QUEUED;
}

void ss_admit_remove(ss_admit *a, ss_waiter *w) {
  if (!w->queued) return;
  if (w->prev)
    w->prev->next = w->next;
  else
    a->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    a->tail = w->prev;
  w->prev = w->next = NULL;
  w->queued = 0;
  a->waiting--;
}

ss_waiter *ss_admit_leave(ss_admit *a) {
  ss_waiter *w = a->head;
  if (w) {
    ss_admit_remove(a, w); /* the slot passes to w: inflight unchanged */
    a->admitted++;
    return w;
  }
  if (a->inflight > 0) a->inflight--;
  return NULL;
}
