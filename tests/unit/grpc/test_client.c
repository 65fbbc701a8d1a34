/*
 * test_client.c — the async gRPC client against an in-process fake HTTP/2 server on the same
 * libuv loop (nghttp2 server session; no real gRPC server needed): echo with many concurrent
 * streams, a trailers-only error with a percent-encoded grpc-message, an HTTP 503 without
 * grpc-status, two messages on a unary call, connection refused, connection loss,
 * ss_aclient_close() with calls pending, extra request headers (ss_aclient_set_header), a
 * TLS server's first bytes read by a cleartext client, and refused streams (RST_STREAM
 * REFUSED_STREAM: sent again; above a GOAWAY's last stream id: completed with refused set).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "check.h"
#include "grpc/grpc_frame.h"
#include "splitserve.h"

/* ------------------------------------------------------------------ fake server -- */

typedef struct fake_stream {
  int32_t id;
  char path[64];
  char auth[64];        /* the authorization header received, "" if none */
  int auth_never_index; /* it came HPACK never-indexed */
  uint8_t *body;
  size_t len, cap, sent;
  struct fake_stream *next;
} fake_stream;

typedef struct fake {
  uv_tcp_t listener, conn;
  int have_conn;
  int mode; /* 0: serve; 1: accept then close at once; 2: accept and never answer;
               3: send a TLS alert record; 4: refuse the first `refuse` streams, then serve;
               5: hold the first two requests, then GOAWAY(last 1) and answer stream 1 */
  int refuse, refused, held;
  nghttp2_session *ng;
  fake_stream *streams;
  uint8_t rbuf[65536];
} fake;

static fake_stream *fs_get(fake *f, int32_t id) {
  for (fake_stream *s = f->streams; s; s = s->next)
    if (s->id == id) return s;
  fake_stream *s = calloc(1, sizeof *s);
  s->id = id;
  s->next = f->streams;
  f->streams = s;
  return s;
}

static void on_fake_written(uv_write_t *w, int status) {
  (void)status;
  free(w->data);
  free(w);
}

static void fake_flush(fake *f) {
  for (;;) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(f->ng, &p);
    if (n <= 0) break;
    uv_write_t *w = malloc(sizeof *w);
    w->data = malloc((size_t)n);
    memcpy(w->data, p, (size_t)n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    uv_write(w, (uv_stream_t *)&f->conn, &b, 1, on_fake_written);
  }
}

static ssize_t fake_read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                              uint32_t *flags, nghttp2_data_source *src, void *u) {
  (void)u;
  fake_stream *st = src->ptr;
  size_t n = st->len - st->sent < length ? st->len - st->sent : length;
  memcpy(buf, st->body + st->sent, n);
  st->sent += n;
  if (st->sent == st->len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    nghttp2_nv tr[] = {{(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0}};
    nghttp2_submit_trailer(s, id, tr, 1);
  }
  return (ssize_t)n;
}

#define NV(N, V) \
  { (uint8_t *)(N), (uint8_t *)(V), sizeof(N) - 1, sizeof(V) - 1, 0 }

static void fake_respond(fake *f, fake_stream *st) {
  if (strcmp(st->path, "/t/auth") == 0) { /* answer "<authorization>|<never-indexed>" */
    char text[80];
    int tl = snprintf(text, sizeof text, "%s|%d", st->auth, st->auth_never_index);
    st->body = realloc(st->body, (size_t)tl + 5);
    ss_msg_prefix(st->body, (uint32_t)tl);
    memcpy(st->body + 5, text, (size_t)tl);
    st->len = (size_t)tl + 5;
    nghttp2_nv h[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = fake_read_body};
    nghttp2_submit_response(f->ng, st->id, h, 2, &prd);
  } else if (strcmp(st->path, "/t/echo") == 0 || strcmp(st->path, "/t/two") == 0) {
    if (strcmp(st->path, "/t/two") == 0) { /* duplicate the message */
      st->body = realloc(st->body, st->len * 2);
      memcpy(st->body + st->len, st->body, st->len);
      st->len *= 2;
    }
    nghttp2_nv h[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = fake_read_body};
    nghttp2_submit_response(f->ng, st->id, h, 2, &prd);
  } else if (strcmp(st->path, "/t/err") == 0) {
    nghttp2_nv h[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                      NV("grpc-status", "5"), NV("grpc-message", "no such thing: 100%25 %C3%A9")};
    nghttp2_submit_response(f->ng, st->id, h, 4, NULL);
  } else {
    nghttp2_nv h[] = {NV(":status", "503")};
    nghttp2_submit_response(f->ng, st->id, h, 1, NULL);
  }
}

static int fake_on_header(nghttp2_session *s, const nghttp2_frame *fr, const uint8_t *name,
                          size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                          void *u) {
  (void)s;
  if (fr->hd.type != NGHTTP2_HEADERS) return 0;
  fake_stream *st = fs_get(u, fr->hd.stream_id);
  if (namelen == 5 && memcmp(name, ":path", 5) == 0 && valuelen < sizeof st->path) {
    memcpy(st->path, value, valuelen);
    st->path[valuelen] = '\0';
  }
  if (namelen == 13 && memcmp(name, "authorization", 13) == 0 && valuelen < sizeof st->auth) {
    memcpy(st->auth, value, valuelen);
    st->auth[valuelen] = '\0';
    st->auth_never_index = (flags & NGHTTP2_NV_FLAG_NO_INDEX) != 0;
  }
  return 0;
}

static int fake_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                        size_t len, void *u) {
  (void)s, (void)flags;
  fake_stream *st = fs_get(u, id);
  if (st->len + len > st->cap) {
    st->cap = (st->len + len) * 2;
    st->body = realloc(st->body, st->cap);
  }
  memcpy(st->body + st->len, data, len);
  st->len += len;
  return 0;
}

static int fake_on_frame(nghttp2_session *s, const nghttp2_frame *fr, void *u) {
  fake *f = u;
  if ((fr->hd.type == NGHTTP2_DATA || fr->hd.type == NGHTTP2_HEADERS) &&
      (fr->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    if (f->mode == 4 && f->refused < f->refuse) {
      f->refused++;
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, fr->hd.stream_id, NGHTTP2_REFUSED_STREAM);
      return 0;
    }
    if (f->mode == 5) {
      if (++f->held < 2) return 0;
      nghttp2_submit_goaway(s, NGHTTP2_FLAG_NONE, 1, NGHTTP2_NO_ERROR, NULL, 0);
      fake_respond(u, fs_get(u, 1));
      return 0;
    }
    fake_respond(u, fs_get(u, fr->hd.stream_id));
  }
  return 0;
}

static void fake_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  fake *f = h->data;
  *b = uv_buf_init((char *)f->rbuf, sizeof f->rbuf);
}

static void fake_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  fake *f = st->data;
  if (n < 0) {
    uv_read_stop(st);
    return;
  }
  if (f->mode == 2) return;
  nghttp2_session_mem_recv(f->ng, (const uint8_t *)b->base, (size_t)n);
  fake_flush(f);
}

static void fake_on_conn(uv_stream_t *l, int status) {
  fake *f = l->data;
  if (status < 0) return;
  uv_tcp_init(l->loop, &f->conn);
  f->conn.data = f;
  uv_accept(l, (uv_stream_t *)&f->conn);
  uv_tcp_nodelay(&f->conn, 1);
  f->have_conn = 1;
  if (f->mode == 1) {
    uv_close((uv_handle_t *)&f->conn, NULL);
    f->have_conn = 0;
    return;
  }
  if (f->mode == 3) { /* what a TLS server answers to an h2c preface: a fatal alert */
    static const uint8_t alert[7] = {21, 3, 1, 0, 2, 2, 70};
    uv_write_t *w = malloc(sizeof *w);
    w->data = malloc(sizeof alert);
    memcpy(w->data, alert, sizeof alert);
    uv_buf_t b = uv_buf_init(w->data, sizeof alert);
    uv_write(w, (uv_stream_t *)&f->conn, &b, 1, on_fake_written);
    return;
  }
  nghttp2_session_callbacks *cb;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_header_callback(cb, fake_on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, fake_on_data);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, fake_on_frame);
  nghttp2_session_server_new(&f->ng, cb, f);
  nghttp2_session_callbacks_del(cb);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100}};
  nghttp2_submit_settings(f->ng, NGHTTP2_FLAG_NONE, iv, 1);
  uv_read_start((uv_stream_t *)&f->conn, fake_alloc, fake_on_read);
  fake_flush(f);
}

static int fake_start(uv_loop_t *loop, fake *f, int mode) {
  memset(f, 0, sizeof *f);
  f->mode = mode;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &f->listener);
  f->listener.data = f;
  uv_tcp_bind(&f->listener, (struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&f->listener, 16, fake_on_conn);
  struct sockaddr_in got;
  int len = sizeof got;
  uv_tcp_getsockname(&f->listener, (struct sockaddr *)&got, &len);
  return ntohs(got.sin_port);
}

static void fake_stop(fake *f) {
  uv_close((uv_handle_t *)&f->listener, NULL);
  if (f->have_conn) uv_close((uv_handle_t *)&f->conn, NULL);
  nghttp2_session_del(f->ng);
  while (f->streams) {
    fake_stream *s = f->streams;
    f->streams = s->next;
    free(s->body);
    free(s);
  }
}

/* ------------------------------------------------------------------ tests -------- */

typedef struct outcome {
  int fired;
  int status;
  char msg[256];
  size_t body_len;
  int body_ok;
  const uint8_t *expect;
  char text[128]; /* the body's first bytes, NUL-terminated */
} outcome;

static int pending;
static ss_aclient *close_when_done;

static void on_done(void *u, const ss_call_result *r) {
  outcome *o = u;
  o->fired++;
  o->status = r->grpc_status;
  snprintf(o->msg, sizeof o->msg, "%s", r->message);
  o->body_len = r->body_len;
  o->body_ok = o->expect && r->body && memcmp(r->body, o->expect, r->body_len) == 0;
  size_t tl = r->body_len < sizeof o->text ? r->body_len : sizeof o->text - 1;
  if (r->body) memcpy(o->text, r->body, tl);
  o->text[r->body ? tl : 0] = '\0';
  if (--pending == 0 && close_when_done) ss_aclient_close(close_when_done);
}

static void test_served(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fake f;
  int port = fake_start(&loop, &f, 0);
  ss_aclient *c;
  CHECK_EQ_INT(ss_aclient_new(&loop, "localhost", port, &c), 0);
  enum { N = 300 };
  static outcome o[N + 3];
  memset(o, 0, sizeof o);
  size_t big = 200000; /* crosses frames and flushes */
  uint8_t *msg = malloc(big);
  for (size_t i = 0; i < big; i++) msg[i] = (uint8_t)(i * 7);
  for (int i = 0; i < N; i++) {
    size_t len = i % 10 == 0 ? big : (size_t)i; /* includes one empty message */
    o[i].expect = msg;
    CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", msg, len, 10.0, on_done, &o[i]), 0);
  }
  CHECK_EQ_INT(ss_aclient_call(c, "/t/err", "x", 1, 0, on_done, &o[N]), 0);
  CHECK_EQ_INT(ss_aclient_call(c, "/t/503", "x", 1, 0, on_done, &o[N + 1]), 0);
  CHECK_EQ_INT(ss_aclient_call(c, "/t/two", "ab", 2, 0, on_done, &o[N + 2]), 0);
  CHECK_EQ_INT(ss_aclient_inflight(c), N + 3);
  pending = N + 3;
  close_when_done = c; /* closing from inside the last callback must be safe */
  while (pending > 0) uv_run(&loop, UV_RUN_ONCE);
  int bad = 0;
  for (int i = 0; i < N; i++) {
    size_t len = i % 10 == 0 ? big : (size_t)i;
    if (o[i].fired != 1 || o[i].status != 0 || o[i].body_len != len || (len && !o[i].body_ok))
      bad++;
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(o[N].status, SS_GRPC_NOT_FOUND);
  CHECK(strcmp(o[N].msg, "no such thing: 100% \xc3\xa9") == 0);
  CHECK_EQ_INT(o[N + 1].status, SS_GRPC_UNAVAILABLE);
  CHECK_CONTAINS(o[N + 1].msg, "503");
  CHECK_EQ_INT(o[N + 2].status, SS_GRPC_INTERNAL);
  CHECK_CONTAINS(o[N + 2].msg, "more than one");
  close_when_done = NULL;
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
  free(msg);
}

static void test_failures(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  outcome o[3];
  memset(o, 0, sizeof o);

  /* Refused: a port that was just closed. */
  fake f;
  int port = fake_start(&loop, &f, 0);
  uv_close((uv_handle_t *)&f.listener, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ss_aclient *c;
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 0, on_done, &o[0]), 0);
  while (!o[0].fired) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o[0].status, SS_GRPC_UNAVAILABLE);
  CHECK_CONTAINS(o[0].msg, "cannot connect");
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 0, on_done, &o[0]), SS_ECLOSED);
  ss_aclient_close(c);
  uv_run(&loop, UV_RUN_DEFAULT);

  /* Connection lost: the server accepts and closes. */
  port = fake_start(&loop, &f, 1);
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 0, on_done, &o[1]), 0);
  while (!o[1].fired) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o[1].status, SS_GRPC_UNAVAILABLE);
  CHECK_CONTAINS(o[1].msg, "127.0.0.1");
  ss_aclient_close(c);
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);

  /* Close with a call pending on a server that never answers. */
  port = fake_start(&loop, &f, 2);
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 0, on_done, &o[2]), 0);
  for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(o[2].fired, 0);
  ss_aclient_close(c);
  CHECK_EQ_INT(o[2].fired, 1);
  CHECK_EQ_INT(o[2].status, SS_GRPC_UNAVAILABLE);
  CHECK_CONTAINS(o[2].msg, "client closed");
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);

  /* Bad arguments. */
  CHECK_EQ_INT(ss_aclient_new(&loop, "not-an-address", 1, &c), SS_EINVAL);
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", 0, &c), SS_EINVAL);
}

/* One call of /t/auth: what the fake server saw ("<authorization>|<never-indexed>"). */
static void call_auth(uv_loop_t *loop, ss_aclient *c, char *out, size_t outlen) {
  outcome o;
  memset(&o, 0, sizeof o);
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/auth", "x", 1, 10.0, on_done, &o), 0);
  while (!o.fired) uv_run(loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o.status, 0);
  snprintf(out, outlen, "%s", o.text);
}

static void test_headers(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fake f;
  int port = fake_start(&loop, &f, 0);
  ss_aclient *c;
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  char got[128];
  call_auth(&loop, c, got, sizeof got);
  CHECK(strcmp(got, "|0") == 0); /* none set */
  CHECK_EQ_INT(ss_aclient_set_header(c, "authorization", "Bearer tok-1"), 0);
  CHECK_EQ_INT(ss_aclient_set_header(c, "x-extra", "v"), 0);
  call_auth(&loop, c, got, sizeof got);
  CHECK(strcmp(got, "Bearer tok-1|1") == 0); /* sent, never indexed */
  CHECK_EQ_INT(ss_aclient_set_header(c, "authorization", "Bearer tok-2"), 0); /* replaced */
  call_auth(&loop, c, got, sizeof got);
  CHECK(strcmp(got, "Bearer tok-2|1") == 0);
  CHECK_EQ_INT(ss_aclient_set_header(c, "authorization", NULL), 0); /* removed */
  call_auth(&loop, c, got, sizeof got);
  CHECK(strcmp(got, "|0") == 0);
  /* refused: reserved, pseudo, uppercase or empty names; control characters, edge blanks */
  const char *bad_names[] = {
      "", ":path", "content-type", "te", "grpc-timeout", "Authorization", "connection", "a b"};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
    CHECK_EQ_INT(ss_aclient_set_header(c, bad_names[i], "v"), SS_EINVAL);
  CHECK_EQ_INT(ss_aclient_set_header(c, "authorization", "Bearer a\r\nx: y"), SS_EINVAL);
  CHECK_EQ_INT(ss_aclient_set_header(c, "authorization", " Bearer a"), SS_EINVAL);
  CHECK_EQ_INT(ss_aclient_set_header(c, "authorization", "Bearer \x80"), SS_EINVAL);
  char name[16];
  int rv = 0;
  for (int i = 0; i < SS_CLIENT_MAX_HEADERS && rv == 0; i++) { /* x-extra is one already */
    snprintf(name, sizeof name, "x-h%d", i);
    rv = ss_aclient_set_header(c, name, "v");
  }
  CHECK_EQ_INT(rv, SS_ERANGE);
  ss_aclient_close(c); /* frees (and wipes) the copies */
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Issue 20.14: a cleartext client that reads a TLS record where it wanted SETTINGS says so. */
static void test_tls_server(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fake f;
  int port = fake_start(&loop, &f, 3);
  ss_aclient *c;
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  outcome o;
  memset(&o, 0, sizeof o);
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 10.0, on_done, &o), 0);
  while (!o.fired) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o.status, SS_GRPC_UNAVAILABLE);
  CHECK_CONTAINS(o.msg, "speaks TLS");
  CHECK_CONTAINS(o.msg, "--tls-ca");
  ss_aclient_close(c);
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static int refused_flag;
static void on_done_refused(void *u, const ss_call_result *r) {
  refused_flag = r->refused;
  on_done(u, r);
}

/* Issue 20.16: refused streams were never processed, so the client sends them again (like
 * grpcio's transparent retry): on the same connection after RST_STREAM REFUSED_STREAM (up to
 * SS_CLIENT_REFUSED_RETRIES times), and reports refused after a GOAWAY. */
static void test_refused_streams(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fake f;
  int port = fake_start(&loop, &f, 4);
  f.refuse = SS_CLIENT_REFUSED_RETRIES; /* the last retry is served */
  ss_aclient *c;
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  outcome o[4];
  memset(o, 0, sizeof o);
  o[0].expect = (const uint8_t *)"hello";
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "hello", 5, 10.0, on_done_refused, &o[0]), 0);
  while (!o[0].fired) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o[0].status, 0);
  CHECK(o[0].body_ok && o[0].body_len == 5);
  CHECK_EQ_INT(f.refused, SS_CLIENT_REFUSED_RETRIES);
  CHECK_EQ_INT(refused_flag, 0);
  /* refused once more than the client retries: UNAVAILABLE, refused set */
  f.refused = 0;
  f.refuse = SS_CLIENT_REFUSED_RETRIES + 1;
  pending = 1;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 10.0, on_done_refused, &o[1]), 0);
  while (!o[1].fired) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o[1].status, SS_GRPC_UNAVAILABLE);
  CHECK_EQ_INT(refused_flag, 1);
  CHECK_CONTAINS(o[1].msg, "REFUSED_STREAM");
  CHECK_EQ_INT(f.refused, SS_CLIENT_REFUSED_RETRIES + 1);
  ss_aclient_close(c);
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);

  /* GOAWAY with last stream 1: stream 1 is answered, stream 3 was never processed */
  port = fake_start(&loop, &f, 5);
  CHECK_EQ_INT(ss_aclient_new(&loop, "127.0.0.1", port, &c), 0);
  o[2].expect = (const uint8_t *)"one";
  pending = 2;
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "one", 3, 10.0, on_done, &o[2]), 0);
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "two", 3, 10.0, on_done_refused, &o[3]), 0);
  while (!o[2].fired || !o[3].fired) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(o[2].status, 0);
  CHECK(o[2].body_ok);
  CHECK_EQ_INT(o[3].status, SS_GRPC_UNAVAILABLE);
  CHECK_EQ_INT(refused_flag, 1);
  CHECK_CONTAINS(o[3].msg, "GOAWAY");
  CHECK_EQ_INT(ss_aclient_call(c, "/t/echo", "x", 1, 0, on_done, &o[0]), SS_ECLOSED);
  ss_aclient_close(c);
  fake_stop(&f);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void) {
  test_served();
  test_failures();
  test_headers();
  test_tls_server();
  test_refused_streams();
  TEST_MAIN_END();
}
