/*
 * fuzz_conn.c — a whole connection: the fuzz input is what a client writes on a TCP connection
 * to the real gRPC server (grpc/ listener, conn.c nghttp2 session, call.c, framing, deadlines)
 * serving the real service (fuzz_util.h's model set, 0 workers), all on this thread's loop.
 *
 * Per input: connect to 127.0.0.1:PORT, write the HTTP/2 client preface and an empty SETTINGS
 * frame (so the fuzzer need not find them), then the input as a sequence of HTTP/2 frames whose
 * 24-bit lengths are clipped to the bytes left (frame type, flags, stream id and payload are the
 * fuzzer's), then a PING with a marker payload. The loop runs until the server acknowledges that
 * PING (it has processed every frame before it and flushed what it answered), or closes the
 * connection, or 200 ms pass. Then the client resets the connection (SO_LINGER 0: no
 * TIME_WAIT, so a long run does not use up the ephemeral ports) and the loop runs until the
 * server has closed its side and every call is released.
 *
 * Checks: the server survives (sanitizers), the connection is gone afterwards, no call is live.
 *
 * FUZZ_VERBOSE=1 in the environment prints how each input ended and the server's counters.
 *
 * Thread: the fuzzer's (single), which is the server's loop thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "fuzz_util.h"
#include "grpc/grpc.h"
#include "service/service.h"

static uv_loop_t loop;
static ss_pool *pool;
static ss_service *svc;
static ss_grpc_server *grpc;
static int port;

static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
static const uint8_t marker[8] = {'s', 's', '-', 'f', 'u', 'z', 'z', '!'};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  ss_server_config cfg;
  fuzz_service_config(&cfg);
  cfg.max_message_bytes = 1u << 20;
  uv_loop_init(&loop);
  char err[512] = "";
  if (ss_pool_new(&loop, 0, NULL, NULL, &pool) != 0 ||
      ss_service_new(&loop, pool, &cfg, &svc, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_conn: cannot start the service: %s\n", err);
    abort();
  }
  size_t nm;
  const ss_method *methods = ss_service_methods(&nm);
  ss_grpc_config gc = {.host = "127.0.0.1",
                       .port = 0,
                       .max_message_bytes = cfg.max_message_bytes,
                       .drain_timeout_s = 1.0,   /* other limits: 0 = the transport defaults */
                       .compress_responses = 1}; /* a grpc-accept-encoding gets gzip/deflate */
  if (ss_grpc_server_new(&loop, &gc, methods, nm, svc, NULL, &grpc, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_conn: cannot start the server: %s\n", err);
    abort();
  }
  ss_service_attach(svc, grpc);
  port = ss_grpc_server_port(grpc);
  return 0;
}

/* What the client reads back: frames are scanned for the PING ACK carrying the marker. */
typedef struct client {
  int fd;
  uv_poll_t poll;
  uv_timer_t timer;
  uint8_t buf[1 << 16];
  size_t have;
  int done; /* 1: PING acknowledged, 2: EOF or error, 3: timer */
} client;

static void scan_frames(client *c) {
  size_t pos = 0;
  while (c->have - pos >= 9) {
    const uint8_t *h = c->buf + pos;
    size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
    if (len > sizeof c->buf - 9) { /* larger than we keep: skip it as it streams by */
      c->done = 2;
      return;
    }
    if (c->have - pos < 9 + len) break;
    if (h[3] == 6 && (h[4] & 1) && len == 8 && memcmp(h + 9, marker, 8) == 0) c->done = 1;
    pos += 9 + len;
  }
  memmove(c->buf, c->buf + pos, c->have - pos);
  c->have -= pos;
}

static void on_readable(uv_poll_t *p, int status, int events) {
  client *c = p->data;
  (void)events;
  if (status < 0) {
    c->done = 2;
    return;
  }
  for (;;) {
    ssize_t n = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
    if (n > 0) {
      c->have += (size_t)n;
      scan_frames(c);
      if (c->done) return;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    c->done = 2; /* EOF or reset */
    return;
  }
}

static void on_timer(uv_timer_t *t) {
  client *c = t->data;
  if (!c->done) c->done = 3;
}

static void on_close_noop(uv_handle_t *h) { (void)h; }

/* The client's bytes: preface, SETTINGS, the input's frames (lengths clipped), PING. */
static uint8_t *client_bytes(const uint8_t *data, size_t size, size_t *outlen) {
  size_t cap = sizeof preface - 1 + 9 + size + 17;
  uint8_t *out = malloc(cap), *o = out;
  CHECK_FUZZ(out != NULL);
  memcpy(o, preface, sizeof preface - 1), o += sizeof preface - 1;
  static const uint8_t settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
  memcpy(o, settings, 9), o += 9;
  size_t pos = 0;
  while (size - pos >= 9) {
    size_t len = (size_t)data[pos] << 16 | (size_t)data[pos + 1] << 8 | data[pos + 2];
    if (len > size - pos - 9) len = size - pos - 9;
    o[0] = (uint8_t)(len >> 16), o[1] = (uint8_t)(len >> 8), o[2] = (uint8_t)len;
    memcpy(o + 3, data + pos + 3, 6 + len);
    o += 9 + len;
    pos += 9 + len;
  }
  static const uint8_t ping[9] = {0, 0, 8, 6, 0, 0, 0, 0, 0};
  memcpy(o, ping, 9), o += 9;
  memcpy(o, marker, 8), o += 8;
  *outlen = (size_t)(o - out);
  return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!grpc) LLVMFuzzerInitialize(NULL, NULL);
  static client c;
  memset(&c, 0, sizeof c);
  c.fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK_FUZZ(c.fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1, big = 4 << 20;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(c.fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  /* Blocking connect: the kernel completes it from the listen backlog; accept happens in the
   * loop below. */
  int rc = connect(c.fd, (struct sockaddr *)&sa, sizeof sa);
  while (rc != 0 && (errno == EINTR || errno == EALREADY)) { /* libFuzzer's SIGALRM */
    struct pollfd pfd = {c.fd, POLLOUT, 0};
    poll(&pfd, 1, 100);
    rc = connect(c.fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc != 0 && errno == EISCONN) rc = 0;
  }
  if (rc != 0) {
    fprintf(stderr, "fuzz_conn: connect: %s\n", strerror(errno));
    abort();
  }
  size_t blen;
  uint8_t *bytes = client_bytes(data, size, &blen);
  size_t off = 0;
  while (off < blen) { /* fits the socket buffers: inputs are small (-max_len) */
    ssize_t n = write(c.fd, bytes + off, blen - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += (size_t)n;
  }
  free(bytes);
  fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
  uv_poll_init(&loop, &c.poll, c.fd);
  c.poll.data = &c;
  uv_poll_start(&c.poll, UV_READABLE | UV_DISCONNECT, on_readable);
  uv_timer_init(&loop, &c.timer);
  c.timer.data = &c;
  uv_timer_start(&c.timer, on_timer, 200, 0);
  while (!c.done) uv_run(&loop, UV_RUN_ONCE);
  uv_poll_stop(&c.poll);
  uv_timer_stop(&c.timer);
  uv_close((uv_handle_t *)&c.poll, on_close_noop);
  uv_close((uv_handle_t *)&c.timer, on_close_noop);
  struct linger lg = {1, 0};
  setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  uv_run(&loop, UV_RUN_NOWAIT); /* the poll handle is closed before its fd */
  close(c.fd);
  ss_grpc_stats st;
  for (int i = 0; i < 100000; i++) {
    ss_grpc_server_stats(grpc, &st);
    if (st.connections == 0 && st.live == 0) break;
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  ss_grpc_server_stats(grpc, &st);
  CHECK_FUZZ(st.connections == 0);
  CHECK_FUZZ(st.live == 0);
  if (getenv("FUZZ_VERBOSE"))
    fprintf(stderr,
            "fuzz_conn: end %d (1 ping acked, 2 closed, 3 timer), %zu bytes back; totals: "
            "%llu requests, %llu served, %llu failed, %llu rejected, %llu cancelled\n",
            c.done, c.have, (unsigned long long)st.requests, (unsigned long long)st.served,
            (unsigned long long)st.failed, (unsigned long long)st.rejected,
            (unsigned long long)st.cancelled);
  return 0;
}
