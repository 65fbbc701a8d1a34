/*
 * token.h — the bearer token of the client tools (--token TOKEN, --token-file FILE): read and
 * check it, build the `authorization: Bearer TOKEN` value the tools set on their clients
 * (ss_client_set_header / ss_aclient_set_header), and wipe it. No message here or in the tools
 * quotes a token.
 *
 * Thread: the tool's one thread.
 */
#ifndef SS_TOOLS_TOKEN_H
#define SS_TOOLS_TOKEN_H

#include <stddef.h>

#define TOOL_TOKEN_MAX 1024 /* bytes of a token; the server takes at most 1000 (auth.h) */

/* The authorization value "Bearer TOKEN" from --token (arg, may be NULL) or --token-file (path,
 * may be NULL; its first line, the newline and a CR before it stripped) into out[outlen]
 * (>= TOOL_TOKEN_MAX + 8); "" when neither is given. Both given, an unreadable file, an empty
 * token or one with a byte outside printable ASCII (or a space) is an error: returns -1 with a
 * message in err that names the option or file, never the token. The file's bytes read are
 * wiped before return. */
int tool_token_header(const char *arg, const char *path, char *out, size_t outlen, char *err,
                      size_t errlen);

/* Zero n bytes at p (stores the compiler keeps). */
void tool_token_wipe(void *p, size_t n);

#endif
