/*
 * metrics_http.c — see metrics_http.h. Each connection parses with its own http_parser; the
 * answer is written with one uv_write from a per-response buffer and the connection closes after
 * it (Connection: close), which keeps the state machine trivial: scrapes are rare and small.
 *
 * Thread: the loop thread only.
 */
#include "http/metrics_http.h"

#include <assert.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

#define HEAD_MAX 8192
#define IDLE_MS 5000 /* the whole request must come within this (a scraper sends it at once) */

typedef struct mconn mconn;

struct ss_metrics_http {
  uv_loop_t *loop;
  uv_tcp_t listener;
  int port;
  int closed;
  ss_metrics_render render;
  void *app;
  mconn *conns;
  int nconns;
  uint64_t evicted;       /* connections closed to make room for a new one */
  uint64_t evict_note_ms; /* last log line about it (at most one a second) */
};

struct mconn {
  ss_metrics_http *m;
  uv_tcp_t tcp;
  uv_timer_t idle;
  uv_write_t wreq;
  http_parser parser;
  size_t seen; /* request bytes so far */
  char url[256];
  size_t url_len;
  int url_too_long;
  int answered;
  int closing;
  int handles; /* open handles (tcp, timer): freed at 0 */
  ss_strbuf out;
  mconn *prev, *next;
};

static void conn_free_if_done(mconn *c) {
  if (c->handles > 0) return;
  ss_strbuf_free(&c->out);
  free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  mconn *c = h->data;
  c->handles--;
  conn_free_if_done(c);
}

static void conn_close(mconn *c) {
  if (c->closing) return;
  c->closing = 1;
  ss_metrics_http *m = c->m;
  if (c->prev)
    c->prev->next = c->next;
  else
    m->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  m->nconns--;
  uv_close((uv_handle_t *)&c->idle, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_written(uv_write_t *req, int status) {
  (void)status;
  conn_close(req->data);
}

/* Answer with one buffer (head + body) and close after it is written. */
static void respond(mconn *c, int code, const char *reason, const char *ctype, const char *body,
                    size_t len, int head_only) {
  if (c->answered) return;
  c->answered = 1;
  ss_strbuf_free(&c->out);
  ss_strbuf_printf(&c->out,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%.*s",
                   code, reason, ctype, len, head_only ? 0 : (int)len, body);
  if (!ss_strbuf_ok(&c->out)) {
    conn_close(c);
    return;
  }
  uv_buf_t buf = uv_buf_init(c->out.p, (unsigned)c->out.len);
  c->wreq.data = c;
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) conn_close(c);
}

#define RESPOND_TEXT(c, code, reason, text) \
  respond(c, code, reason, "text/plain", text, sizeof text - 1, 0)

static int on_url(http_parser *p, const char *at, size_t len) {
  mconn *c = p->data;
  if (c->url_len + len >= sizeof c->url) {
    c->url_too_long = 1;
    return 0;
  }
  memcpy(c->url + c->url_len, at, len);
  c->url_len += len;
  c->url[c->url_len] = 0;
  return 0;
}

static int on_message_complete(http_parser *p) {
  mconn *c = p->data;
  size_t plen = strcspn(c->url, "?");
  int is_metrics = plen == 8 && strncmp(c->url, "/metrics", 8) == 0;
  if (c->url_too_long) {
    RESPOND_TEXT(c, 414, "URI Too Long", "uri too long\n");
  } else if (!is_metrics) {
    RESPOND_TEXT(c, 404, "Not Found", "only /metrics is served here\n");
  } else if (p->method != HTTP_GET && p->method != HTTP_HEAD) {
    RESPOND_TEXT(c, 405, "Method Not Allowed", "use GET\n");
  } else {
    ss_strbuf body = {0};
    c->m->render(c->m->app, &body);
    if (!ss_strbuf_ok(&body) || !body.p)
      RESPOND_TEXT(c, 500, "Internal Server Error", "out of memory\n");
    else
      respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body.p, body.len,
              p->method == HTTP_HEAD);
    ss_strbuf_free(&body);
  }
  return 1; /* one request per connection: stop parsing */
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h, (void)suggested;
  static char rbuf[4096]; /* one loop thread reads one socket at a time */
  *buf = uv_buf_init(rbuf, sizeof rbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mconn *c = s->data;
  if (n == 0) return;
  if (n < 0 || c->answered) {
    if (n < 0) conn_close(c);
    return;
  }
  c->seen += (size_t)n;
  size_t used = http_parser_execute(&c->parser, &settings, buf->base, (size_t)n);
  if (c->answered) return;
  if (c->seen > HEAD_MAX) {
    RESPOND_TEXT(c, 431, "Request Header Fields Too Large", "request too large\n");
  } else if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || used != (size_t)n) {
    RESPOND_TEXT(c, 400, "Bad Request", "bad request\n");
  }
}

static void on_idle(uv_timer_t *t) { conn_close(t->data); }

/* At the connection limit: close the oldest connection still waiting for its request (idle, or
 * sent in part), so that idle or slow clients cannot lock scrapers out; 0 when one was closed,
 * -1 when every connection is being answered. */
static int evict_oldest_waiting(ss_metrics_http *m) {
  mconn *victim = NULL;
  for (mconn *c = m->conns; c; c = c->next) /* newest first: the last one found is the oldest */
    if (!c->answered && !c->closing) victim = c;
  if (!victim) return -1;
  conn_close(victim);
  return 0;
}

static void on_connection(uv_stream_t *server, int status) {
  ss_metrics_http *m = server->data;
  if (status < 0) return;
  if (m->nconns >= SS_METRICS_MAX_CONNS && evict_oldest_waiting(m) == 0) {
    m->evicted++;
    uint64_t now = uv_now(m->loop);
    if (now - m->evict_note_ms >= 1000) {
      SS_LOGW(
          "metrics: %d connections open: closed the oldest one still waiting for its request "
          "(%llu such closes so far)",
          SS_METRICS_MAX_CONNS, (unsigned long long)m->evicted);
      m->evict_note_ms = now;
    }
  }
  mconn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->m = m;
  uv_tcp_init(m->loop, &c->tcp);
  uv_timer_init(m->loop, &c->idle);
  c->tcp.data = c->idle.data = c;
  c->handles = 2;
  c->next = m->conns;
  if (m->conns) m->conns->prev = c;
  m->conns = c;
  m->nconns++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || m->nconns > SS_METRICS_MAX_CONNS ||
      uv_timer_start(&c->idle, on_idle, IDLE_MS, 0) != 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
}

int ss_metrics_http_new(uv_loop_t *loop, const char *host, int port, ss_metrics_render render,
                        void *app, ss_metrics_http **out, char *err, size_t errlen) {
  *out = NULL;
  ss_metrics_http *m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, errlen, "out of memory");
    return SS_ENOMEM;
  }
  m->loop = loop;
  m->render = render;
  m->app = app;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (!host || !*host || strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
    snprintf(err, errlen, "--metrics-listen: '%s' is not a numeric IPv4/IPv6 address", host);
    free(m);
    return SS_EINVAL;
  }
  uv_tcp_init(loop, &m->listener);
  m->listener.data = m;
  int rv = uv_tcp_bind(&m->listener, (const struct sockaddr *)&ss, 0);
  if (rv == 0) rv = uv_listen((uv_stream_t *)&m->listener, 64, on_connection);
  struct sockaddr_storage bound;
  int len = sizeof bound;
  if (rv == 0) rv = uv_tcp_getsockname(&m->listener, (struct sockaddr *)&bound, &len);
  if (rv != 0) {
    snprintf(err, errlen, "--metrics-listen: cannot listen on %s:%d: %s", host, port,
             uv_strerror(rv));
    m->closed = 1;
    uv_close((uv_handle_t *)&m->listener, NULL);
    *out = m; /* the caller frees it with ss_metrics_http_free once the loop ran the close */
    return SS_EIO;
  }
  m->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
  *out = m;
  return 0;
}

int ss_metrics_http_port(const ss_metrics_http *m) { return m->port; }

void ss_metrics_http_close(ss_metrics_http *m) {
  if (!m || m->closed) return;
  m->closed = 1;
  uv_close((uv_handle_t *)&m->listener, NULL);
  while (m->conns) conn_close(m->conns);
}

void ss_metrics_http_free(ss_metrics_http *m) {
  if (!m) return;
  assert(m->closed && m->nconns == 0); /* closed, and the loop ran the close callbacks */
  free(m);
}
