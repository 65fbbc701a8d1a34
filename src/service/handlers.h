/*
 * handlers.h — the RPC handlers behind the method table (router.c). Each runs on the loop
 * thread when a call's request message is complete, and answers through net/call.c.
 */
#ifndef SS_SERVICE_HANDLERS_H
#define SS_SERVICE_HANDLERS_H

#include "net/server_int.h"

void ss_h_compute(ss_call *call);          /* compute.c */
void ss_h_backward(ss_call *call);         /* train.c */
void ss_h_health_check(ss_call *call);     /* info.c: ComputeService.HealthCheck */
void ss_h_service_info(ss_call *call);     /* info.c */
void ss_h_stream_monitoring(ss_call *call);/* info.c */
void ss_h_grpc_health_check(ss_call *call);/* info.c: grpc.health.v1.Health/Check */
void ss_h_grpc_health_watch(ss_call *call);/* info.c: grpc.health.v1.Health/Watch */

/* Fill a MonitoringSnapshot from the server's last sample. */
struct Splitlearn__Comm__MonitoringSnapshot;
void ss_fill_snapshot(ss_server *s, struct Splitlearn__Comm__MonitoringSnapshot *snap);

#endif
