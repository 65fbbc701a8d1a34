/*
 * sessions.h — server-side decode sessions: the KV cache of a decoding client kept on the
 * server between calls (metadata `session=ID`), so each decode step sends only the new token's
 * hidden state instead of the whole cache.
 *
 * Bounds: an idle TTL, and a total byte budget across all sessions; over the budget the least
 * recently used idle sessions are evicted. Evicted ids are remembered (a bounded ring) so that a
 * client coming back to one gets FAILED_PRECONDITION saying it was evicted, rather than silently
 * starting over with an empty cache. A session used by a call in flight is "busy" and is never
 * evicted; a second concurrent call on it is refused (ABORTED). An ended session's id is not
 * reused: while it is remembered, a call naming it is refused (FAILED_PRECONDITION). A session
 * belongs to the owner
 * tag (access.c: the token, with --auth-tokens) of the call that created it: a call with another
 * owner gets SS_SESSION_FOREIGN, for a live session and for a remembered eviction alike, and
 * changes nothing (not even its idle time).
 *
 * The cache lives in place: per layer one key and one value buffer [batch, heads, cap,
 * head_dim] with a capacity (model.h's ss_kv_layer.cap). The worker of the call that holds the
 * session busy writes the step's keys and values straight into it at the current length and
 * attention reads [0, len + T) from it (ss_kv_io.cache): no per-step copy of the past. A buffer
 * that is full is moved once to one of twice the capacity (amortized O(1) per token). A failed
 * step does not advance the length, so the cache stays as it was. The byte budget and the
 * totals (GetServiceInfo session_bytes, metrics) count the capacity held, recounted whenever a
 * call gives the session back.
 *
 * Thread: loop thread only, except that a worker writes a busy session's cache (nobody else
 * touches a busy session: it is never evicted, and a second call is refused).
 */
#ifndef SS_SERVICE_SESSIONS_H
#define SS_SERVICE_SESSIONS_H

#include <stddef.h>
#include <stdint.h>

#include "core/kcache.h"
#include "models/model.h"

typedef struct ss_session {
  ss_kv_layer *cache; /* n_layers entries, owned (the model backend's memory), or NULL */
  int n_layers;
  struct ss_kentry *entry; /* its slot in the cache (core/kcache.h) */
} ss_session;

typedef struct ss_sessions ss_sessions;

int ss_sessions_new(size_t max_bytes, double ttl_s, ss_sessions **out);
void ss_sessions_free(ss_sessions *s);

enum {
  SS_SESSION_OK = 0,
  SS_SESSION_EVICTED = 1,
  SS_SESSION_BUSY = 2,
  SS_SESSION_NOMEM = 3,
  SS_SESSION_FOREIGN = 4,
  SS_SESSION_ENDED = 5
};

/* The reason an ended session's id is remembered with (core/kcache.h). */
#define SS_SESSION_ENDED_WHY "ended"

/* Find or create the session (model, id) for owner (SS_KCACHE_TAG bytes; a new session takes
 * it) and mark it busy. *out is set on SS_SESSION_OK. SS_SESSION_EVICTED: the id was evicted
 * earlier; why[whylen] receives the reason (reported once: a later call with the same id starts
 * a new session). SS_SESSION_ENDED: the id's session was ended (session_end) and the id is
 * still remembered: refused every time, so a late step of the ended session never silently
 * starts a new one with an empty cache (the memory is the cache's ring of removed ids, the
 * same that tells a backward its forward_id was used). SS_SESSION_FOREIGN: the session, or
 * its eviction or end, is another owner's. */
int ss_session_acquire(ss_sessions *s, const char *model, const char *id, const uint8_t *owner,
                       ss_session **out, char *why, size_t whylen);
/* The session's in-place cache of n_layers entries (all-zero, empty, when new): what a call
 * hands the model as ss_kv_io.cache while the session is busy. NULL when out of memory. */
ss_kv_layer *ss_session_cache(ss_session *sess, int n_layers);
/* The call finished (whatever the worker wrote to the cache stays: a failed step left its
 * length as it was); the session is no longer busy and its bytes are recounted (the capacity
 * held; over the budget this may evict it). end: free the session now. */
void ss_session_release(ss_sessions *s, ss_session *sess, int end);
/* Evict sessions idle past the TTL (call from a periodic timer). */
void ss_sessions_sweep(ss_sessions *s);
/* Totals for GetServiceInfo. */
void ss_sessions_stats(const ss_sessions *s, size_t *count, size_t *bytes, uint64_t *evicted);

/* Free the data of n cache layers and the array itself. */
void ss_kv_free(ss_kv_layer *kv, int n);

#endif
