/*
 * router.c — the method table: HTTP/2 :path -> handler. Loop thread; the table is constant.
 */
#include <string.h>

#include "service/handlers.h"

static const ss_method methods[] = {
    {"/splitlearn.comm.ComputeService/Compute", 0, ss_h_compute},
    {"/splitlearn.comm.ComputeService/ComputeBackward", 0, ss_h_backward},
    {"/splitlearn.comm.ComputeService/HealthCheck", 0, ss_h_health_check},
    {"/splitlearn.comm.ComputeService/GetServiceInfo", 0, ss_h_service_info},
    {"/splitlearn.comm.ComputeService/StreamMonitoring", 1, ss_h_stream_monitoring},
    {"/grpc.health.v1.Health/Check", 0, ss_h_grpc_health_check},
    {"/grpc.health.v1.Health/Watch", 1, ss_h_grpc_health_watch},
};

const ss_method *ss_route(const char *path, size_t len) {
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
    if (strlen(methods[i].path) == len && memcmp(methods[i].path, path, len) == 0) return &methods[i];
  return NULL;
}
