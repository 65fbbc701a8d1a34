/*
 * timerq.h — many one-shot timers on one uv_timer_t: a binary min-heap of intrusive entries
 * keyed by an absolute uv_hrtime() deadline. Used for per-call deadlines and the `sleep`
 * model's waits, so a call needs no libuv handle of its own (no close callbacks, no per-call
 * handle memory) and 10k waiting calls cost one heap.
 *
 * Thread: loop thread only.
 */
#ifndef SS_LOOP_TIMERQ_H
#define SS_LOOP_TIMERQ_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ss_tq_entry ss_tq_entry;
struct ss_tq_entry {
  uint64_t when_ns;           /* absolute, uv_hrtime() clock */
  size_t idx;                 /* heap slot + 1; 0 when not armed */
  void (*cb)(ss_tq_entry *e); /* fires once on the loop; e is disarmed before the call */
};

typedef struct ss_timerq {
  uv_timer_t timer;
  ss_tq_entry **heap;
  size_t n, cap;
  uint64_t armed_for; /* when the uv timer is due; 0 = stopped */
} ss_timerq;

int ss_tq_init(uv_loop_t *loop, ss_timerq *q);
/* Arm (or re-arm) e to fire at when_ns. Returns 0 or SS_ENOMEM. */
int ss_tq_arm(ss_timerq *q, ss_tq_entry *e, uint64_t when_ns, void (*cb)(ss_tq_entry *));
/* Disarm; no-op when not armed. */
void ss_tq_cancel(ss_timerq *q, ss_tq_entry *e);
static inline int ss_tq_armed(const ss_tq_entry *e) { return e->idx != 0; }
/* Close the timer handle and free the heap (entries left are simply forgotten). */
void ss_tq_close(ss_timerq *q);

#endif
