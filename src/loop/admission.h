/*
 * admission.h — per-model admission control: a limit on concurrent executions (a semaphore,
 * as Python servers use) and a bounded FIFO of waiting calls. Beyond the bound a call is refused
 * at once (the caller answers RESOURCE_EXHAUSTED): nothing ever queues without limit.
 *
 * Thread: loop thread only (no locks). Waiters are intrusive nodes owned by the caller.
 */
#ifndef SS_LOOP_ADMISSION_H
#define SS_LOOP_ADMISSION_H

#include <stddef.h>
#include <stdint.h>

typedef struct ss_waiter ss_waiter;
struct ss_waiter {
  ss_waiter *prev, *next;
  int queued;                  /* 1 while in the wait list */
  void (*start)(ss_waiter *w); /* how its owner starts it once admitted (one queue may
                                * hold waiters of different kinds: calls and batches) */
};

typedef struct ss_admit {
  int limit;     /* max concurrent executions; 0 = unlimited */
  int max_queue; /* max waiting; < 0 = unlimited */
  int inflight;
  size_t waiting;
  ss_waiter *head, *tail;
  uint64_t admitted, rejected;
} ss_admit;

enum { SS_ADMIT_RUN = 0, SS_ADMIT_QUEUED = 1, SS_ADMIT_FULL = 2 };

void ss_admit_init(ss_admit *a, int limit, int max_queue);
/* Ask to run: SS_ADMIT_RUN (inflight taken), SS_ADMIT_QUEUED (w is in the list), or
 * SS_ADMIT_FULL (refused; nothing changed except the rejected counter). */
int ss_admit_enter(ss_admit *a, ss_waiter *w);
/* An execution finished: give its slot to the first waiter, returned (now counted in flight;
 * the caller starts it), or NULL when none waits (the slot is freed). */
ss_waiter *ss_admit_leave(ss_admit *a);
/* Remove a waiting call (cancelled, deadline). No-op when w is not queued. */
void ss_admit_remove(ss_admit *a, ss_waiter *w);

#endif
