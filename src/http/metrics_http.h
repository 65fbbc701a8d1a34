/*
 * metrics_http.h — a minimal HTTP/1.1 endpoint on the loop for Prometheus: GET /metrics answers
 * the text exposition format produced by a render callback; everything else is 404/405.
 *
 * Requests are parsed with Debian's http-parser (libhttp-parser-dev), never by hand. It knows
 * nothing of gRPC or the service: the composition root passes the render callback.
 *
 * Bounds: at most SS_METRICS_MAX_CONNS connections; when a new one comes at the limit, the oldest
 * connection still waiting for its request (idle or sent in part) is closed to make room (only
 * when every one is being answered is the new one closed), so idle or half-sent connections
 * cannot lock a scraper out. A request head of at most 8 KiB, which must arrive within 5 s of
 * the connect; one request per connection.
 *
 * Thread: the loop thread only.
 */
#ifndef SS_HTTP_METRICS_HTTP_H
#define SS_HTTP_METRICS_HTTP_H

#include <uv.h>

#include "core/strbuf.h"

#define SS_METRICS_MAX_CONNS 64

typedef struct ss_metrics_http ss_metrics_http;

/* Append the exposition text to out. */
typedef void (*ss_metrics_render)(void *app, ss_strbuf *out);

/* Listen on host:port (port 0 picks one). render(app, out) runs per scrape. *out: free with
 * ss_metrics_http_free. Returns 0 or <0 with a message in err. */
int ss_metrics_http_new(uv_loop_t *loop, const char *host, int port, ss_metrics_render render,
                        void *app, ss_metrics_http **out, char *err, size_t errlen);
int ss_metrics_http_port(const ss_metrics_http *m);
/* Stop listening and close every connection (the loop may end once their closes ran). */
void ss_metrics_http_close(ss_metrics_http *m);
/* Free after ss_metrics_http_close and after the loop ran the close callbacks (also when
 * ss_metrics_http_new failed with *out set). NULL is fine. */
void ss_metrics_http_free(ss_metrics_http *m);

#endif
