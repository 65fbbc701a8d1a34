/*
 * auth.h — bearer-token authentication and per-model authorization (--auth-tokens FILE).
 *
 * The token file: one token per line, optionally followed by the models it may use
 * (`TOKEN model,model`, commas between model ids, blanks around them allowed; none listed =
 * every model); blank lines and `#` comments are ignored. A line with two blank-separated
 * words after the token, or a word that is not a model id, is refused: that is a token with
 * blanks in it, not a model list.
 * Tokens are RFC 6750 b64token characters (A-Z a-z 0-9 - . _ ~ + / and trailing =), at most
 * SS_AUTH_MAX_TOKEN bytes, each listed once.
 *
 * A presented token is compared with every token of the table, each comparison over the same
 * number of bytes (the longest token's), with no early exit: the time taken depends on the
 * table's size, not on which token matched, how many bytes of one matched, or their lengths.
 * Tokens never appear in a log line or an error message.
 *
 * Owners: a record a call creates (a training forward, a decode session) is bound to the
 * call's token through an owner tag, HMAC-SHA256(key, token) under a key drawn at random when
 * the service starts: the tag names the token without being it, so a record outlives a SIGHUP
 * reload for as long as its token stays, and nothing stored reveals a token. Tags are compared
 * in constant time.
 *
 * Thread: loop thread (the file is small and read there, at start and on SIGHUP).
 */
#ifndef SS_SERVICE_AUTH_H
#define SS_SERVICE_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define SS_AUTH_MAX_TOKEN 1000 /* "Bearer " + token must fit the 1 KiB kept-header bound */
#define SS_AUTH_TAG 32         /* bytes of an owner tag (and of its key) */

typedef struct ss_auth ss_auth;

/* Read the token file at path into *out (free with ss_auth_free). On failure returns <0 with
 * "path:line: message" in err (never quoting a token) and leaves *out NULL. */
int ss_auth_load(const char *path, ss_auth **out, char *err, size_t errlen);
void ss_auth_free(ss_auth *a);
/* Number of tokens. */
size_t ss_auth_count(const ss_auth *a);
/* The index of the token presented in an `authorization` header value ("Bearer TOKEN"), or
 * -1 when the value is NULL, not a bearer credential, or no token of the table (in constant
 * time over the table, see above). */
int ss_auth_find(const ss_auth *a, const char *authorization);
/* Nonzero when token idx may use model id. */
int ss_auth_allows(const ss_auth *a, int idx, const char *model);
/* Token idx's models as "a,b" (or "all models") into buf; returns buf. */
const char *ss_auth_models(const ss_auth *a, int idx, char *buf, size_t len);

/* fn(user, line, model) for every model id of every token's list, with the token's line in
 * the file (the service warns about ids it does not serve). */
void ss_auth_each_model(const ss_auth *a, void (*fn)(void *user, int line, const char *model),
                        void *user);

/* A fresh random key for owner tags. 0, or SS_EIO when the system has no randomness. */
int ss_auth_tag_key(uint8_t key[SS_AUTH_TAG]);
/* The owner tag of the token in an `authorization` value ("Bearer TOKEN") under key into tag;
 * all zero when the value is NULL or not a bearer credential. */
void ss_auth_tag(const uint8_t key[SS_AUTH_TAG], const char *authorization,
                 uint8_t tag[SS_AUTH_TAG]);
/* Nonzero when the two tags are equal (constant time). */
int ss_auth_tag_equal(const uint8_t a[SS_AUTH_TAG], const uint8_t b[SS_AUTH_TAG]);

#endif
