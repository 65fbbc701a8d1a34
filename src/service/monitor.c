/*
 * monitor.c — process resource sampling for MonitoringSnapshot: CPU% from /proc/self/stat
 * (utime+stime delta over wall time), RSS from /proc/self/statm, memory % against MemTotal,
 * and the live thread count from /proc/self/status; ss_fill_snapshot copies the last sample
 * into the MonitoringSnapshot that replies carry.
 *
 * Thread: loop thread; sampling from a 1 s timer (never per request). /proc reads are small,
 * in-memory and do not block on disk; they do not use libuv's thread pool.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "compute_service.pb-c.h"
#include "service/service_int.h"

static int read_file(const char *path, char *buf, size_t len) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, len - 1, f);
  fclose(f);
  buf[n] = 0;
  return (int)n;
}

int ss_thread_count(void) {
  char buf[4096];
  if (read_file("/proc/self/status", buf, sizeof buf) < 0) return -1;
  const char *p = strstr(buf, "\nThreads:");
  return p ? atoi(p + 9) : -1;
}

void ss_monitor_sample(ss_monitor *m) {
  char buf[1024];
  struct timeval tv;
  gettimeofday(&tv, NULL);
  m->timestamp = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
  uint64_t now = uv_hrtime();
  if (m->mem_total_mb <= 0 && read_file("/proc/meminfo", buf, sizeof buf) > 0) {
    const char *p = strstr(buf, "MemTotal:");
    if (p) m->mem_total_mb = strtod(p + 9, NULL) / 1024.0;
  }
  if (read_file("/proc/self/stat", buf, sizeof buf) > 0) {
    /* Fields after the ")" of comm: state is field 3; utime 14, stime 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (p &&
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2) {
      uint64_t ticks = ut + st;
      if (m->last_ns && now > m->last_ns) {
        double secs = (double)(now - m->last_ns) / 1e9;
        double cpu = (double)(ticks - m->last_cpu_ticks) / (double)sysconf(_SC_CLK_TCK);
        m->cpu_percent = (float)(100.0 * cpu / secs);
      }
      m->last_cpu_ticks = ticks;
      m->last_ns = now;
    }
  }
  if (read_file("/proc/self/statm", buf, sizeof buf) > 0) {
    unsigned long long size = 0, rss = 0;
    if (sscanf(buf, "%llu %llu", &size, &rss) == 2) {
      m->memory_mb = (float)((double)rss * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0));
      if (m->mem_total_mb > 0) m->memory_percent = (float)(100.0 * m->memory_mb / m->mem_total_mb);
    }
  }
}

void ss_fill_snapshot(const ss_service *s, Splitlearn__Comm__MonitoringSnapshot *snap) {
  snap->has_timestamp = snap->has_cpu_percent = snap->has_memory_mb = 1;
  snap->has_memory_percent = snap->has_gpu_available = 1;
  snap->timestamp = s->mon.timestamp;
  snap->cpu_percent = s->mon.cpu_percent;
  snap->memory_mb = s->mon.memory_mb;
  snap->memory_percent = s->mon.memory_percent;
  snap->gpu_available = 0;
}
