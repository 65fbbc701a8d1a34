/*
 * file.c — see file.h: checked opens and reads, atomic writes.
 *
 * Thread: any (the loop thread for --auth-tokens and TLS on SIGHUP, workers for model files);
 * no state, so nothing to lock.
 */
#include "core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "splitserve.h"

static const char *kind_of(mode_t m) {
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
  if (S_ISSOCK(m)) return "a socket";
  return "a special file";
}

int ss_file_check(const char *path, int fd, uint64_t max_bytes, struct stat *st, char *err,
                  size_t errlen) {
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
    return SS_EIO;
  }
  if (!S_ISREG(sb.st_mode)) {
    snprintf(err, errlen, "%s: is %s, not a regular file; give the path of a file", path,
             kind_of(sb.st_mode));
    return SS_EINVAL;
  }
  if ((uint64_t)sb.st_size > max_bytes) {
    snprintf(err, errlen, "%s: is %lld bytes, over the limit of %llu bytes for this file", path,
             (long long)sb.st_size, (unsigned long long)max_bytes);
    return SS_EINVAL;
  }
  if (st) *st = sb;
  return 0;
}

int ss_file_open(const char *path, int flags, uint64_t max_bytes, struct stat *st, char *err,
                 size_t errlen) {
  /* O_NONBLOCK: opening a FIFO with no writer would block this thread forever. */
  int oflags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | (flags & SS_FILE_NOFOLLOW ? O_NOFOLLOW : 0);
  int fd = open(path, oflags);
  if (fd < 0) {
    int e = errno;
    if (e == ELOOP && (flags & SS_FILE_NOFOLLOW)) {
      snprintf(err, errlen, "%s: is a symbolic link, which is not followed here", path);
      return SS_EINVAL;
    }
    snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
    return e == ENOENT ? SS_ENOTFOUND : SS_EIO;
  }
  int rc = ss_file_check(path, fd, max_bytes, st, err, errlen);
  if (rc == 0) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
      snprintf(err, errlen, "%s: fcntl: %s", path, strerror(errno));
      rc = SS_EIO;
    }
  }
  if (rc != 0) {
    close(fd);
    return rc;
  }
  return fd;
}

int ss_file_read(const char *path, int flags, size_t max_bytes, char **out, size_t *outlen,
                 char *err, size_t errlen) {
  struct stat sb;
  *out = NULL;
  *outlen = 0;
  int fd = ss_file_open(path, flags, max_bytes, &sb, err, errlen);
  if (fd < 0) return fd;
  size_t size = (size_t)sb.st_size, len = 0;
  char *buf = malloc(size + 1);
  int rc = 0;
  if (!buf) {
    snprintf(err, errlen, "%s: out of memory for %zu bytes", path, size);
    rc = SS_ENOMEM;
  }
  while (rc == 0) {
    if (len > size) { /* grew since fstat: one byte was read past the size */
      snprintf(err, errlen, "%s: the file grew while being read", path);
      rc = SS_EINVAL;
      break;
    }
    ssize_t got = read(fd, buf + len, size + 1 - len);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      snprintf(err, errlen, "%s: read error: %s", path, strerror(errno));
      rc = SS_EIO;
      break;
    }
    if (got == 0) break;
    len += (size_t)got;
  }
  close(fd);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  buf[len] = 0;
  *out = buf;
  *outlen = len;
  return 0;
}

/* Create a fresh temporary beside path: "PATH.tmp.<pid>.<n>", O_CREAT|O_EXCL|O_NOFOLLOW (mode
 * 0666 less the umask, as a plain create). *tmp: malloc'd name. The descriptor, or <0. */
static int create_temp(const char *path, char **tmp, char *err, size_t errlen) {
  size_t cap = strlen(path) + 64;
  char *name = malloc(cap);
  if (!name) {
    snprintf(err, errlen, "%s: out of memory", path);
    return SS_ENOMEM;
  }
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  unsigned long long seed = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)ts.tv_sec << 30) ^
                            (unsigned long long)(uintptr_t)name;
  for (int attempt = 0; attempt < 100; attempt++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    snprintf(name, cap, "%s.tmp.%ld.%llx", path, (long)getpid(), seed >> 20);
    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd >= 0) {
      *tmp = name;
      return fd;
    }
    if (errno != EEXIST) break;
  }
  snprintf(err, errlen, "%s: cannot create a temporary beside it: %s", path, strerror(errno));
  free(name);
  return SS_EIO;
}

/* fsync the directory of path, so the rename itself survives a crash (best effort). */
static void sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir) return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
  free(dir);
}

int ss_file_write_atomic(const char *path, int flags, ss_file_fill fill, void *arg, char *err,
                         size_t errlen) {
  char *tmp = NULL;
  int fd = create_temp(path, &tmp, err, errlen);
  if (fd < 0) return fd;
  FILE *f = fdopen(fd, "wb");
  int rc = 0;
  if (!f) {
    snprintf(err, errlen, "%s: fdopen: %s", tmp, strerror(errno));
    close(fd);
    rc = SS_EIO;
  } else {
    rc = fill(f, arg, err, errlen);
    if (rc == 0 && (fflush(f) != 0 || (!(flags & SS_FILE_NOSYNC) && fsync(fileno(f)) != 0))) {
      snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
      rc = SS_EIO;
    }
    if (fclose(f) != 0 && rc == 0) {
      snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
      rc = SS_EIO;
    }
  }
  if (rc == 0 && rename(tmp, path) != 0) {
    snprintf(err, errlen, "rename %s -> %s: %s", tmp, path, strerror(errno));
    rc = SS_EIO;
  }
  if (rc != 0)
    unlink(tmp);
  else if (!(flags & SS_FILE_NOSYNC))
    sync_dir(path);
  free(tmp);
  return rc;
}

typedef struct {
  const void *buf;
  size_t len;
} buf_arg;

static int fill_buf(FILE *f, void *arg, char *err, size_t errlen) {
  const buf_arg *b = arg;
  if (b->len && fwrite(b->buf, 1, b->len, f) != b->len) {
    snprintf(err, errlen, "write failed: %s", strerror(errno));
    return SS_EIO;
  }
  return 0;
}

int ss_file_write_atomic_buf(const char *path, const void *buf, size_t len, char *err,
                             size_t errlen) {
  buf_arg b = {buf, len};
  return ss_file_write_atomic(path, 0, fill_buf, &b, err, errlen);
}
