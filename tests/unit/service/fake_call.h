/*
 * fake_call.h — an in-memory implementation of the call half of the gRPC seam (grpc/grpc.h)
 * for testing the service without a socket, HTTP/2 or the transport library: a test makes a
 * call with a request message, runs a handler, and reads back what the handler answered.
 *
 * Thread: the test's loop thread, like the real transport.
 */
#ifndef SS_TEST_FAKE_CALL_H
#define SS_TEST_FAKE_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "grpc/grpc.h"

/* What a handler did to a fake call. */
typedef struct fake_result {
  int answered;       /* a status was decided, or the call was cancelled */
  int status;         /* gRPC code (-1: none yet) */
  char message[1024]; /* grpc-message */
  uint8_t *body;      /* the unary reply: packed message + its segments, concatenated */
  size_t body_len;
  int nsent;          /* messages queued with ss_call_send */
  uint8_t *last_sent; /* the last one */
  size_t last_sent_len;
} fake_result;

/* A call of method m carrying a copy of req[len]; *res is filled as the handler answers and
 * must outlive the call. The test holds one reference (the "stream"): fake_call_close drops it. */
ss_call *fake_call_new(const ss_method *m, const void *req, size_t len, fake_result *res);
/* A request header the handler will read with ss_call_header (copied; set before the handler
 * runs; a second value for the same name replaces the first). */
void fake_call_set_header(ss_call *call, const char *name, const char *value);
/* The client goes away: the cancel hook runs if the call is not answered yet. */
void fake_call_cancel(ss_call *call);
/* Drop the test's reference (the call is freed once the handler's references are gone too). */
void fake_call_close(ss_call *call);
/* Calls still allocated (a leak check for the tests). */
int fake_calls_alive(void);

#endif
