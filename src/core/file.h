/*
 * file.h — the one way the server opens, reads and writes files.
 *
 * Reading: every file the server reads (the YAML config, --auth-tokens, TLS certificates, keys
 * and CAs, model configs, sharded-checkpoint indexes, adapter configs, safetensors weights) is
 * opened by ss_file_open: O_NONBLOCK, so a FIFO (or a device) never blocks the thread that opens
 * it; then fstat: it must be a regular file of at most the caller's limit; then O_NONBLOCK is
 * cleared. An error names the path and what is wrong ("is a FIFO, not a regular file", "is
 * 2000000 bytes, over the limit of 1048576 bytes for this file").
 *
 * Writing: every file the server writes (checkpoints, adapter configs) goes through
 * ss_file_write_atomic: a fresh temporary in the same directory, created with
 * O_CREAT|O_EXCL|O_NOFOLLOW (so a symbolic link or file planted at a guessable name is never
 * followed or truncated), written, fsync'd, then renamed over the path, and the directory
 * fsync'd. A reader sees the old file or the new one, never a part.
 *
 * Thread: any; no state.
 */
#ifndef SS_CORE_FILE_H
#define SS_CORE_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

/* Flags of ss_file_open / ss_file_read. */
enum {
  SS_FILE_NOFOLLOW = 1 /* refuse a symbolic link as the last path component */
};

/* Check an open file: a regular file (not a FIFO, device or directory) of at most max_bytes;
 * *st (may be NULL) receives its status. 0, or SS_EINVAL / SS_EIO with "PATH: message" in err. */
int ss_file_check(const char *path, int fd, uint64_t max_bytes, struct stat *st, char *err,
                  size_t errlen);

/* Open path for reading, checked as above; the descriptor is blocking and close-on-exec.
 * Returns the descriptor (caller closes), or <0: SS_ENOTFOUND (no such file), SS_EINVAL (not a
 * regular file, too large, a link with SS_FILE_NOFOLLOW), SS_EIO; "PATH: message" in err. */
int ss_file_open(const char *path, int flags, uint64_t max_bytes, struct stat *st, char *err,
                 size_t errlen);

/* Read a whole file opened by ss_file_open. *out: malloc'd, NUL-terminated (the NUL is not
 * counted in *outlen), caller frees. 0 or <0 as ss_file_open (a file that grows while it is
 * read past the limit: SS_EINVAL). */
int ss_file_read(const char *path, int flags, size_t max_bytes, char **out, size_t *outlen,
                 char *err, size_t errlen);

/* Writes a file's contents to f; returns 0, or <0 with a message in err. */
typedef int (*ss_file_fill)(FILE *f, void *arg, char *err, size_t errlen);

/* Flags of ss_file_write_atomic. */
enum {
  SS_FILE_NOSYNC = 1 /* skip the fsyncs (scratch files of tests and tools) */
};

/* Replace path atomically with what fill(f, arg) writes (see the top of this file). On failure
 * the temporary is removed and path is untouched; <0 with "PATH: message" in err. */
int ss_file_write_atomic(const char *path, int flags, ss_file_fill fill, void *arg, char *err,
                         size_t errlen);

/* The same for a buffer of len bytes (borrowed). */
int ss_file_write_atomic_buf(const char *path, const void *buf, size_t len, char *err,
                             size_t errlen);

#endif
