/*
 * compute_client.c — the blocking client's ComputeService helpers (Compute, HealthCheck,
 * GetServiceInfo): protobuf messages built and read here, carried by the generic gRPC client
 * transport (src/grpc/client.c, ss_client_unary).
 *
 * Thread: the caller's, inside each call (the ss_client's private loop runs there).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/tensor.h"
#include "splitserve.h"

int ss_client_compute(ss_client *c, const ss_tensor_buf *input, const ss_compute_opts *opts,
                      ss_compute_reply *reply) {
  memset(reply, 0, sizeof *reply);
  if (!c || !input || input->ndim < 1 || input->ndim > SS_MAX_DIMS) return SS_EINVAL;
  ss_compute_opts none = {0};
  if (!opts) opts = &none;

  Splitlearn__Comm__ComputeRequest req = SPLITLEARN__COMM__COMPUTE_REQUEST__INIT;
  int32_t shape[SS_MAX_DIMS];
  for (int i = 0; i < input->ndim; i++) {
    if (input->shape[i] < 0 || input->shape[i] > INT32_MAX) return SS_ERANGE;
    shape[i] = (int32_t)input->shape[i];
  }
  req.data.data = input->data;
  req.data.len = input->nbytes;
  /* Presence flags exist only when the generator gives the field one (proto2-style output). */
  const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(
      &splitlearn__comm__compute_request__descriptor, "data");
  if (fd && fd->quantifier_offset && fd->label == PROTOBUF_C_LABEL_OPTIONAL)
    *(protobuf_c_boolean *)((char *)&req + fd->quantifier_offset) = 1;
  req.n_shape = (size_t)input->ndim;
  req.shape = shape;
  if (opts->has_request_id) {
    req.has_request_id = 1;
    req.request_id = opts->request_id;
  }
  req.model_id = (char *)(opts->model_id ? opts->model_id : "");

  size_t nmeta = opts->n_metadata;
  int add_dtype = input->dtype != SS_DTYPE_F32;
  for (size_t i = 0; i < nmeta; i++)
    if (strcmp(opts->metadata[2 * i], "dtype") == 0) add_dtype = 0;
  size_t ntot = nmeta + (size_t)add_dtype;
  Splitlearn__Comm__ComputeRequest__MetadataEntry *ents = NULL, **eptr = NULL;
  if (ntot > 0) {
    ents = calloc(ntot, sizeof *ents);
    eptr = calloc(ntot, sizeof *eptr);
    if (!ents || !eptr) {
      free(ents);
      free(eptr);
      return SS_ENOMEM;
    }
    for (size_t i = 0; i < ntot; i++) {
      Splitlearn__Comm__ComputeRequest__MetadataEntry init =
          SPLITLEARN__COMM__COMPUTE_REQUEST__METADATA_ENTRY__INIT;
      ents[i] = init;
      if (i < nmeta) {
        ents[i].key = (char *)opts->metadata[2 * i];
        ents[i].value = (char *)opts->metadata[2 * i + 1];
      } else {
        ents[i].key = (char *)"dtype";
        ents[i].value = (char *)ss_dtype_name(input->dtype);
      }
      eptr[i] = &ents[i];
    }
  }
  req.n_metadata = ntot;
  req.metadata = eptr;

  size_t plen = splitlearn__comm__compute_request__get_packed_size(&req);
  uint8_t *pb = malloc(plen ? plen : 1);
  if (!pb) {
    free(ents);
    free(eptr);
    return SS_ENOMEM;
  }
  splitlearn__comm__compute_request__pack(&req, pb);
  free(ents);
  free(eptr);

  ss_unary_result res;
  int rv = ss_client_unary(c, "/splitlearn.comm.ComputeService/Compute", pb, plen, opts->timeout_s,
                           &res);
  free(pb);
  if (rv < 0) {
    free(res.body);
    return rv;
  }
  reply->grpc_status = res.grpc_status;
  reply->latency_s = res.latency_s;
  snprintf(reply->message, sizeof reply->message, "%s", res.message);
  if (res.grpc_status != SS_GRPC_OK) {
    free(res.body);
    return 0;
  }
  Splitlearn__Comm__ComputeResponse *resp =
      splitlearn__comm__compute_response__unpack(NULL, res.body_len, res.body);
  free(res.body);
  if (!resp) {
    reply->grpc_status = SS_GRPC_INTERNAL;
    snprintf(reply->message, sizeof reply->message, "cannot decode ComputeResponse");
    return 0;
  }
  reply->output.dtype = input->dtype;
  if (resp->n_shape > SS_MAX_DIMS) {
    reply->grpc_status = SS_GRPC_INTERNAL;
    snprintf(reply->message, sizeof reply->message, "response shape has %zu dims (max %d)",
             resp->n_shape, SS_MAX_DIMS);
    splitlearn__comm__compute_response__free_unpacked(resp, NULL);
    return 0;
  }
  reply->output.ndim = (int)resp->n_shape;
  for (size_t i = 0; i < resp->n_shape; i++) reply->output.shape[i] = resp->shape[i];
  reply->output.nbytes = resp->data.len;
  reply->output.data = malloc(resp->data.len ? resp->data.len : 1);
  if (!reply->output.data) {
    splitlearn__comm__compute_response__free_unpacked(resp, NULL);
    return SS_ENOMEM;
  }
  if (resp->data.len) memcpy(reply->output.data, resp->data.data, resp->data.len);
  reply->compute_time_ms = resp->compute_time_ms;
  reply->has_compute_time = resp->has_compute_time_ms;
  reply->request_id = resp->request_id;
  reply->has_request_id = resp->has_request_id;
  splitlearn__comm__compute_response__free_unpacked(resp, NULL);
  return 0;
}

int ss_client_health(ss_client *c, double timeout_s, int *grpc_status, char *status,
                     size_t status_len, char *version, size_t version_len) {
  if (!c || !grpc_status) return SS_EINVAL;
  if (status && status_len) status[0] = '\0';
  if (version && version_len) version[0] = '\0';
  Splitlearn__Comm__HealthRequest req = SPLITLEARN__COMM__HEALTH_REQUEST__INIT;
  uint8_t pb[16];
  size_t plen = splitlearn__comm__health_request__pack(&req, pb);
  ss_unary_result res;
  int rv =
      ss_client_unary(c, "/splitlearn.comm.ComputeService/HealthCheck", pb, plen, timeout_s, &res);
  if (rv < 0) {
    free(res.body);
    return rv;
  }
  *grpc_status = res.grpc_status;
  if (res.grpc_status != SS_GRPC_OK) {
    if (status && status_len) snprintf(status, status_len, "%s", res.message);
    free(res.body);
    return 0;
  }
  Splitlearn__Comm__HealthResponse *h =
      splitlearn__comm__health_response__unpack(NULL, res.body_len, res.body);
  free(res.body);
  if (!h) {
    *grpc_status = SS_GRPC_INTERNAL;
    if (status && status_len) snprintf(status, status_len, "cannot decode HealthResponse");
    return 0;
  }
  if (status && status_len) snprintf(status, status_len, "%s", h->status ? h->status : "");
  if (version && version_len) snprintf(version, version_len, "%s", h->version ? h->version : "");
  splitlearn__comm__health_response__free_unpacked(h, NULL);
  return 0;
}

int ss_client_info(ss_client *c, double timeout_s, int *grpc_status, char *message,
                   size_t message_len, void (*fn)(const char *key, const char *value, void *user),
                   void *user) {
  if (!c || !grpc_status || !fn) return SS_EINVAL;
  if (message && message_len) message[0] = '\0';
  Splitlearn__Comm__ServiceInfoRequest req = SPLITLEARN__COMM__SERVICE_INFO_REQUEST__INIT;
  uint8_t pb[16];
  size_t plen = splitlearn__comm__service_info_request__pack(&req, pb);
  ss_unary_result res;
  int rv = ss_client_unary(c, "/splitlearn.comm.ComputeService/GetServiceInfo", pb, plen, timeout_s,
                           &res);
  if (rv < 0) {
    free(res.body);
    return rv;
  }
  *grpc_status = res.grpc_status;
  if (res.grpc_status != SS_GRPC_OK) {
    if (message && message_len) snprintf(message, message_len, "%s", res.message);
    free(res.body);
    return 0;
  }
  Splitlearn__Comm__ServiceInfoResponse *r =
      splitlearn__comm__service_info_response__unpack(NULL, res.body_len, res.body);
  free(res.body);
  if (!r) {
    *grpc_status = SS_GRPC_INTERNAL;
    if (message && message_len) snprintf(message, message_len, "cannot decode ServiceInfoResponse");
    return 0;
  }
  char num[64];
  fn("service_name", r->service_name ? r->service_name : "", user);
  fn("version", r->version ? r->version : "", user);
  fn("device", r->device ? r->device : "", user);
  if (r->has_uptime_seconds) {
    snprintf(num, sizeof num, "%.3f", (double)r->uptime_seconds);
    fn("uptime_seconds", num, user);
  }
  snprintf(num, sizeof num, "%lld", (long long)r->total_requests);
  fn("total_requests", num, user);
  for (size_t i = 0; i < r->n_custom_info; i++)
    fn(r->custom_info[i]->key ? r->custom_info[i]->key : "",
       r->custom_info[i]->value ? r->custom_info[i]->value : "", user);
  splitlearn__comm__service_info_response__free_unpacked(r, NULL);
  return 0;
}
