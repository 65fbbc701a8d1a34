/*
 * metrics.c — see metrics.h. Series are created on first use (models x methods: a few dozen at
 * most, bounded because model ids come from the server's own model set, never from requests:
 * unknown model ids are counted under model="").
 *
 * Thread: loop thread only.
 */
#include "service/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kcache.h"
#include "core/strbuf.h"
#include "service/service_int.h"
#include "service/sessions.h"

static const double bounds[SS_METRIC_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                 0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                 1,      2.5,     5,      10};

static void phist_add(ss_phist *h, double v) {
  if (v < 0) return;
  int i = 0;
  while (i < SS_METRIC_BUCKETS && v > bounds[i]) i++;
  h->counts[i]++;
  h->n++;
  h->sum += v;
}

static ss_series *series_get(ss_service *s, const char *model, const char *method) {
  for (ss_series *x = s->series; x; x = x->next)
    if (x->method == method && strcmp(x->model, model) == 0) return x;
  ss_series *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  snprintf(x->model, sizeof x->model, "%s", model);
  x->method = method;
  x->next = s->series;
  s->series = x;
  return x;
}

void ss_metrics_observe(ss_service *s, const char *model, const char *method, int code,
                        double queue_s, double compute_s, double total_s) {
  ss_series *x = series_get(s, model ? model : "", method);
  if (!x) return;
  x->by_code[code >= 0 && code <= 16 ? code : SS_GRPC_UNKNOWN]++;
  phist_add(&x->queue, queue_s);
  phist_add(&x->compute, compute_s);
  phist_add(&x->total, total_s);
}

void ss_metrics_free(ss_service *s) {
  while (s->series) {
    ss_series *n = s->series->next;
    free(s->series);
    s->series = n;
  }
}

static void render_hist(ss_strbuf *b, const char *name, const ss_series *x, const ss_phist *h) {
  uint64_t cum = 0;
  for (int i = 0; i <= SS_METRIC_BUCKETS; i++) {
    cum += h->counts[i];
    if (i < SS_METRIC_BUCKETS)
      ss_strbuf_printf(b, "%s_bucket{model=\"%s\",method=\"%s\",le=\"%g\"} %llu\n", name, x->model,
                       x->method, bounds[i], (unsigned long long)cum);
    else
      ss_strbuf_printf(b, "%s_bucket{model=\"%s\",method=\"%s\",le=\"+Inf\"} %llu\n", name,
                       x->model, x->method, (unsigned long long)cum);
  }
  ss_strbuf_printf(b, "%s_sum{model=\"%s\",method=\"%s\"} %.9g\n", name, x->model, x->method,
                   h->sum);
  ss_strbuf_printf(b, "%s_count{model=\"%s\",method=\"%s\"} %llu\n", name, x->model, x->method,
                   (unsigned long long)h->n);
}

static void hist_family(ss_strbuf *b, const ss_service *s, const char *name, const char *help,
                        size_t offset) {
  ss_strbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  for (const ss_series *x = s->series; x; x = x->next) {
    const ss_phist *h = (const ss_phist *)(const void *)((const char *)x + offset);
    if (h->n) render_hist(b, name, x, h);
  }
}

/* Does m batch calls: stacking (max_batch_rows) or decode steps (decode_batch, on by default
 * for the kinds with forward_kv_batch)? Those get the batch counters. */
static int batches(const ss_model *m) {
  return m->max_batch_rows > 0 || (m->decode_batch && m->ops->forward_kv_batch != NULL);
}

void ss_service_metrics(ss_service *s, ss_strbuf *b) {
  ss_strbuf_printf(b,
                   "# HELP splitserve_requests_total Calls answered, by model, method and gRPC "
                   "status code.\n# TYPE splitserve_requests_total counter\n");
  for (const ss_series *x = s->series; x; x = x->next)
    for (int c = 0; c <= 16; c++)
      if (x->by_code[c])
        ss_strbuf_printf(
            b, "splitserve_requests_total{model=\"%s\",method=\"%s\",code=\"%s\"} %llu\n", x->model,
            x->method, ss_grpc_code_name(c), (unsigned long long)x->by_code[c]);
  hist_family(b, s, "splitserve_queue_seconds",
              "Time from admission to a worker starting the call.", offsetof(ss_series, queue));
  hist_family(b, s, "splitserve_compute_seconds", "Time the model computed on a worker.",
              offsetof(ss_series, compute));
  hist_family(b, s, "splitserve_request_seconds",
              "Time from the request headers to the end of the call.", offsetof(ss_series, total));
  ss_strbuf_printf(b,
                   "# HELP splitserve_inflight Calls executing now, by model.\n"
                   "# TYPE splitserve_inflight gauge\n");
  for (size_t i = 0; i < s->nmodels; i++)
    ss_strbuf_printf(b, "splitserve_inflight{model=\"%s\"} %d\n", s->models[i]->model->id,
                     s->models[i]->admit.inflight);
  ss_strbuf_printf(b,
                   "# HELP splitserve_queue_depth Calls waiting for admission, by model.\n"
                   "# TYPE splitserve_queue_depth gauge\n");
  for (size_t i = 0; i < s->nmodels; i++)
    ss_strbuf_printf(b, "splitserve_queue_depth{model=\"%s\"} %zu\n", s->models[i]->model->id,
                     s->models[i]->admit.waiting);
  ss_strbuf_printf(
      b,
      "# HELP splitserve_batches_total Batches computed (dynamic batching), by model.\n"
      "# TYPE splitserve_batches_total counter\n");
  for (size_t i = 0; i < s->nmodels; i++)
    if (batches(s->models[i]->model))
      ss_strbuf_printf(b, "splitserve_batches_total{model=\"%s\"} %llu\n", s->models[i]->model->id,
                       (unsigned long long)s->models[i]->batches);
  ss_strbuf_printf(b,
                   "# HELP splitserve_batched_calls_total Calls computed in those batches "
                   "(their ratio is the mean batch size).\n"
                   "# TYPE splitserve_batched_calls_total counter\n");
  for (size_t i = 0; i < s->nmodels; i++)
    if (batches(s->models[i]->model))
      ss_strbuf_printf(b, "splitserve_batched_calls_total{model=\"%s\"} %llu\n",
                       s->models[i]->model->id, (unsigned long long)s->models[i]->batched_calls);
  size_t n, bytes;
  uint64_t evicted;
  ss_sessions_stats(s->sessions, &n, &bytes, &evicted);
  ss_strbuf_printf(b,
                   "# HELP splitserve_sessions Decode sessions kept on the server.\n"
                   "# TYPE splitserve_sessions gauge\nsplitserve_sessions %zu\n"
                   "# HELP splitserve_session_bytes Bytes the decode sessions keep.\n"
                   "# TYPE splitserve_session_bytes gauge\nsplitserve_session_bytes %zu\n",
                   n, bytes);
  ss_kcache_stats(s->acts, &n, &bytes, &evicted);
  ss_strbuf_printf(b,
                   "# HELP splitserve_activations Training forwards awaiting their backward.\n"
                   "# TYPE splitserve_activations gauge\nsplitserve_activations %zu\n"
                   "# HELP splitserve_activation_bytes Bytes those activations keep.\n"
                   "# TYPE splitserve_activation_bytes gauge\nsplitserve_activation_bytes %zu\n",
                   n, bytes);
  ss_grpc_stats gs = {0};
  if (s->grpc) ss_grpc_server_stats(s->grpc, &gs);
  ss_strbuf_printf(
      b,
      "# HELP splitserve_connections Open gRPC connections.\n"
      "# TYPE splitserve_connections gauge\nsplitserve_connections %zu\n"
      "# HELP splitserve_threads Threads of the process (I/O loops + workers x intra-op).\n"
      "# TYPE splitserve_threads gauge\nsplitserve_threads %d\n"
      "# HELP splitserve_thread_budget The fixed thread budget N + W x T (N: --io-threads).\n"
      "# TYPE splitserve_thread_budget gauge\nsplitserve_thread_budget %d\n"
      "# HELP process_resident_memory_bytes Resident memory size in bytes (sampled each second).\n"
      "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %.0f\n"
      "# HELP splitserve_build_info Version of the running server.\n"
      "# TYPE splitserve_build_info gauge\nsplitserve_build_info{version=\"%s\"} 1\n",
      gs.connections, ss_thread_count(), ss_service_thread_budget(s),
      (double)s->mon.memory_mb * 1048576.0, SS_VERSION);
  ss_strbuf_printf(b,
                   "# HELP splitserve_io_connections Open gRPC connections per I/O loop.\n"
                   "# TYPE splitserve_io_connections gauge\n");
  for (size_t i = 0;
       i < gs.io_threads && i < sizeof gs.io_connections / sizeof gs.io_connections[0]; i++)
    ss_strbuf_printf(b, "splitserve_io_connections{io=\"%zu\"} %zu\n", i, gs.io_connections[i]);
}

int ss_service_thread_budget(const ss_service *s) {
  int io = s->cfg.io_threads > 1 ? s->cfg.io_threads : 1;
  return io + (s->cfg.workers > 0 ? s->cfg.workers : 0) * s->cfg.intra_op_threads;
}
