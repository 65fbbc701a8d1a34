/*
 * limits.c — the connection limits (--max-connections, --max-connections-per-peer): one count of
 * open connections and one table of open connections per client IP address (v4-mapped IPv6
 * counts as IPv4), shared by every I/O loop of a server (ss_grpc_shared). A connection is
 * admitted when accepted (conn.c) and released when it closes.
 *
 * Thread: any I/O loop; the table is guarded by its mutex (held for a lookup, never across I/O).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/grpc_int.h"

ss_grpc_shared *ss_limits_new(void) {
  ss_grpc_shared *sh = calloc(1, sizeof *sh);
  if (sh && uv_mutex_init(&sh->mu) != 0) {
    free(sh);
    return NULL;
  }
  return sh;
}

void ss_limits_free(ss_grpc_shared *sh) {
  if (!sh) return;
  for (size_t i = 0; i < SS_PEER_BUCKETS; i++) /* empty once every connection closed */
    while (sh->peers[i]) {
      ss_peer *p = sh->peers[i];
      sh->peers[i] = p->next;
      free(p);
    }
  uv_mutex_destroy(&sh->mu);
  free(sh);
}

static int peer_key(uv_tcp_t *tcp, uint8_t out[16], uint8_t *len) {
  struct sockaddr_storage ss;
  int n = sizeof ss;
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &n) != 0) return -1;
  if (ss.ss_family == AF_INET) {
    memcpy(out, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    *len = 4;
    return 0;
  }
  if (ss.ss_family != AF_INET6) return -1;
  const uint8_t *a = (const uint8_t *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
  static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(a, v4mapped, 12) == 0) {
    memcpy(out, a + 12, 4);
    *len = 4;
  } else {
    memcpy(out, a, 16);
    *len = 16;
  }
  return 0;
}

static size_t peer_bucket(const uint8_t *addr, uint8_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (uint8_t i = 0; i < len; i++) h = (h ^ addr[i]) * 16777619u;
  return h % SS_PEER_BUCKETS;
}

int ss_limits_admit(ss_grpc_server *s, uv_tcp_t *tcp, ss_peer **peer, char *why, size_t whylen) {
  ss_grpc_shared *sh = s->shared;
  uint8_t addr[16], alen;
  int known = peer_key(tcp, addr, &alen) == 0;
  *peer = NULL;
  why[0] = 0;
  int rv = 0;
  uv_mutex_lock(&sh->mu);
  if (sh->nconns >= s->cfg.max_connections) {
    snprintf(why, whylen, "server at its connection limit of %zu (--max-connections)",
             s->cfg.max_connections);
    rv = -1;
  } else if (known) {
    size_t b = peer_bucket(addr, alen);
    ss_peer *p = sh->peers[b];
    while (p && !(p->len == alen && memcmp(p->addr, addr, alen) == 0)) p = p->next;
    if (!p && (p = calloc(1, sizeof *p)) != NULL) {
      p->len = alen;
      memcpy(p->addr, addr, alen);
      p->next = sh->peers[b];
      sh->peers[b] = p;
    }
    if (!p) {
      rv = -1; /* out of memory: why stays empty */
    } else if (p->n >= s->cfg.max_connections_per_peer) {
      snprintf(why, whylen,
               "too many connections from this address (limit %zu, --max-connections-per-peer)",
               s->cfg.max_connections_per_peer);
      rv = -1;
    } else {
      p->n++;
      *peer = p;
    }
  }
  if (rv == 0) sh->nconns++;
  uv_mutex_unlock(&sh->mu);
  return rv;
}

void ss_limits_release(ss_grpc_server *s, ss_peer *peer) {
  ss_grpc_shared *sh = s->shared;
  uv_mutex_lock(&sh->mu);
  sh->nconns--;
  if (peer && --peer->n == 0) {
    ss_peer **pp = &sh->peers[peer_bucket(peer->addr, peer->len)];
    while (*pp != peer) pp = &(*pp)->next;
    *pp = peer->next;
    free(peer);
  }
  uv_mutex_unlock(&sh->mu);
}
