/*
 * access.c — who may call what (--auth-tokens): the service's token table (auth.c) loaded and
 * swapped, and the checks the handlers and the transport run against it.
 *
 * Compute, ComputeBackward, GetServiceInfo and StreamMonitoring need a bearer token
 * (`authorization: Bearer TOKEN`); Compute and ComputeBackward also need the token to allow the
 * model. Health checks stay open (probes and load balancers carry no token). Training forwards
 * and decode sessions belong to the token that created them (ss_access_owner): another token
 * gets PERMISSION_DENIED. The token is checked twice: by the transport at END_HEADERS
 * (ss_access_precheck, so an unauthenticated request is never buffered, inflated or decoded) and
 * again by the handler (the table may be reloaded between).
 *
 * Thread: loop thread, except ss_access_precheck (any I/O loop: it reads the table under
 * auth_mu, which ss_access_load holds while it swaps the table).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "service/auth.h"
#include "service/service_int.h"

_Static_assert(SS_KCACHE_TAG == SS_AUTH_TAG, "a cache entry's tag holds an owner tag");

/* The token index for an authorization header value, or -1 with the reason in msg. */
static int auth_verdict(const ss_auth *a, const char *h, char *msg, size_t msglen) {
  int tok = ss_auth_find(a, h);
  if (tok >= 0) return tok;
  if (!h)
    snprintf(msg, msglen,
             "missing credentials: this server requires the request header "
             "'authorization: Bearer <token>' (--auth-tokens)");
  else if (strncasecmp(h, "Bearer ", 7) != 0)
    snprintf(msg, msglen,
             "the authorization header is not a bearer credential: send 'Bearer "
             "<token>'");
  else
    snprintf(msg, msglen, "invalid token");
  return -1;
}

int ss_access_authenticate(ss_service *s, ss_call *call) {
  if (!s->auth) return SS_AUTH_OFF;
  char msg[160];
  int tok = auth_verdict(s->auth, ss_call_header(call, "authorization"), msg, sizeof msg);
  if (tok < 0) ss_call_fail(call, SS_GRPC_UNAUTHENTICATED, "%s", msg);
  return tok;
}

int ss_access_precheck(const ss_call *call, void *app, char *msg, size_t msglen) {
  ss_service *s = app;
  if (!s->cfg.auth_tokens) return 0;
  uv_mutex_lock(&s->auth_mu);
  int tok = s->auth ? auth_verdict(s->auth, ss_call_header(call, "authorization"), msg, msglen) : 0;
  uv_mutex_unlock(&s->auth_mu);
  return tok < 0 ? SS_GRPC_UNAUTHENTICATED : 0;
}

int ss_access_authorize(ss_service *s, ss_call *call, int tok, const char *model) {
  if (tok == SS_AUTH_OFF || ss_auth_allows(s->auth, tok, model)) return 0;
  char list[512];
  ss_call_fail(call, SS_GRPC_PERMISSION_DENIED,
               "this token may not use model '%s' (it may use: %s)", model,
               ss_auth_models(s->auth, tok, list, sizeof list));
  return -1;
}

void ss_access_owner(const ss_service *s, ss_call *call, uint8_t tag[SS_KCACHE_TAG]) {
  if (s->auth)
    ss_auth_tag(s->owner_key, ss_call_header(call, "authorization"), tag);
  else
    memset(tag, 0, SS_KCACHE_TAG);
}

int ss_access_check_owner(const ss_service *s, ss_call *call, const uint8_t *owner,
                          const uint8_t *rec_tag, const char *what, const char *id) {
  if (!s->auth || ss_auth_tag_equal(owner, rec_tag)) return 0;
  ss_call_fail(call, SS_GRPC_PERMISSION_DENIED,
               "%s '%s' belongs to another token: only the token that created it may use it", what,
               id);
  return -1;
}

int ss_access_load(ss_service *s, const char *why, char *err, size_t errlen) {
  ss_auth *a;
  int rv = ss_auth_load(s->cfg.auth_tokens, &a, err, errlen);
  if (rv != 0) return rv;
  uv_mutex_lock(&s->auth_mu); /* the transport's precheck may be reading it on an I/O loop */
  ss_auth *old = s->auth;
  s->auth = a;
  uv_mutex_unlock(&s->auth_mu);
  ss_auth_free(old);
  SS_LOGI("%s: %zu auth tokens from %s", why, ss_auth_count(a), s->cfg.auth_tokens);
  return 0;
}
