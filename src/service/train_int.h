/*
 * train_int.h — a ComputeBackward call's state (kept inside the call: ss_call_state), shared by
 * train.c (its handler and job) and the method table (service.c sizes it). Private to
 * src/service.
 *
 * Thread: loop thread, except the fields the worker writes (marked below; train.c's bw_run).
 */
#ifndef SS_SERVICE_TRAIN_INT_H
#define SS_SERVICE_TRAIN_INT_H

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "service/service_int.h"

typedef struct act_rec act_rec; /* one training forward's record (train.c) */

typedef struct backward_state {
  ss_job job; /* the pool hands back &job */
  ss_service *svc;
  uint8_t *reqbuf; /* the call's request message (owned by the call) */
  size_t reqlen;
  ss_waiter waiter;
  ss_call *call;
  act_rec *rec; /* taken out of the cache: owned */
  Splitlearn__Comm__BackwardRequest *req;
  ss_tensor grad_out;   /* view into reqbuf (zlib: data NULL until the worker inflates) */
  const uint8_t *zdata; /* grad_output as it came when the forward's codec is zlib (may be
                         * NULL when zlen is 0: test enc->zlib, never this pointer) */
  size_t zlen;
  void *gbuf;  /* inflated / converted grad_output (worker) */
  void *reply; /* grad_input as it travels (converted, compressed), owned */
  size_t reply_len;
  ss_optim opt;
  int do_step;
  int holds_slot;
  int on_worker;
  /* The record as it was taken (zlib: its gradient is checked on the worker; a gradient refused
   * there puts the record back, as a raw one refused on the loop never took it). */
  uint8_t rec_tag[SS_KCACHE_TAG];
  size_t rec_bytes;
  int accum_before; /* the model's accumulation count before this call */
  int input_bad;    /* the worker refused grad_output before the backward ran */
  /* worker results */
  float *grad_in;
  double ms;
  int rc;
  char err[256];
  ss_arena arena;
  ProtobufCAllocator pballoc;
  _Alignas(16) char arena_buf[1024];
} backward_state;

#endif
