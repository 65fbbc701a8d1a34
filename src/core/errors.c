/*
 * errors.c — SS_E* error strings and the one table from SS_E* codes to gRPC status codes.
 * Thread: any; pure functions over static tables.
 */
#include "splitserve.h"

const char *ss_strerror(int err) {
  switch (err) {
    case SS_OK: return "success";
    case SS_EINVAL: return "invalid argument";
    case SS_ENOMEM: return "out of memory";
    case SS_EIO: return "I/O error";
    case SS_ENOTFOUND: return "not found";
    case SS_ERANGE: return "value out of range";
    case SS_EUNSUPPORTED: return "unsupported";
    case SS_EBUSY: return "resource exhausted";
    case SS_ETIMEDOUT: return "deadline exceeded";
    case SS_ECANCELLED: return "cancelled";
    case SS_EPROTO: return "protocol error";
    case SS_ECLOSED: return "connection closed";
    case SS_EPRECONDITION: return "failed precondition";
    default: return "unknown error";
  }
}

ss_grpc_code ss_error_to_grpc(int err) {
  switch (err) {
    case SS_OK: return SS_GRPC_OK;
    case SS_EINVAL: return SS_GRPC_INVALID_ARGUMENT;
    case SS_ENOMEM: return SS_GRPC_RESOURCE_EXHAUSTED;
    case SS_EIO: return SS_GRPC_INTERNAL;
    case SS_ENOTFOUND: return SS_GRPC_NOT_FOUND;
    case SS_ERANGE: return SS_GRPC_OUT_OF_RANGE;
    case SS_EUNSUPPORTED: return SS_GRPC_UNIMPLEMENTED;
    case SS_EBUSY: return SS_GRPC_RESOURCE_EXHAUSTED;
    case SS_ETIMEDOUT: return SS_GRPC_DEADLINE_EXCEEDED;
    case SS_ECANCELLED: return SS_GRPC_CANCELLED;
    case SS_EPROTO: return SS_GRPC_INTERNAL;
    case SS_ECLOSED: return SS_GRPC_UNAVAILABLE;
    case SS_EPRECONDITION: return SS_GRPC_FAILED_PRECONDITION;
    default: return SS_GRPC_UNKNOWN;
  }
}

static const char *const grpc_code_names[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

const char *ss_grpc_code_name(int code) {
  if (code < 0 || code > 16) return "UNKNOWN_CODE";
  return grpc_code_names[code];
}
