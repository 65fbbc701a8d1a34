/*
 * metrics.h — the service's request metrics for Prometheus (rendered by ss_service_metrics):
 * per (model, method) request counts by gRPC status code and histograms of queue, compute and
 * total time, plus gauges read when scraped (in flight, queue depth, sessions, activations,
 * connections, threads, RSS, build info).
 *
 * Thread: loop thread only (handlers record in their release hooks; the scrape renders).
 */
#ifndef SS_SERVICE_METRICS_H
#define SS_SERVICE_METRICS_H

#include <stdint.h>

#define SS_METRIC_BUCKETS 16

typedef struct ss_phist {
  uint64_t counts[SS_METRIC_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
  uint64_t n;
  double sum;
} ss_phist;

typedef struct ss_series {
  char model[64];
  const char *method; /* static string */
  uint64_t by_code[17];
  ss_phist queue, compute, total;
  struct ss_series *next;
} ss_series;

struct ss_service;
/* Record one finished call. queue_s / compute_s < 0: the call never queued / computed. */
void ss_metrics_observe(struct ss_service *s, const char *model, const char *method, int code,
                        double queue_s, double compute_s, double total_s);
void ss_metrics_free(struct ss_service *s);

#endif
