/*
 * test_file.c — core/file.c: checked reads refuse a FIFO (at once, never blocking), a directory
 * and a file over the caller's limit, naming the path and what is wrong; SS_FILE_NOFOLLOW
 * refuses a symbolic link; atomic writes never follow a link planted at PATH.tmp (or truncate
 * its target), replace the file whole and leave no temporary behind.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "core/file.h"
#include "splitserve.h"

static char err[512];
static char dir[] = "/tmp/ss-test-file-XXXXXX";

static void put(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if (!f) return;
  fputs(text, f);
  fclose(f);
}

static void test_read(void) {
  char p[256], *buf = NULL;
  size_t len = 0;
  snprintf(p, sizeof p, "%s/small", dir);
  put(p, "hello");
  CHECK_EQ_INT(ss_file_read(p, 0, 5, &buf, &len, err, sizeof err), 0);
  CHECK(buf && len == 5 && strcmp(buf, "hello") == 0);
  free(buf);
  CHECK_EQ_INT(ss_file_read(p, 0, 4, &buf, &len, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, p);
  CHECK_CONTAINS(err, "over the limit of 4 bytes");
  CHECK(buf == NULL);

  snprintf(p, sizeof p, "%s/fifo", dir);
  CHECK_EQ_INT(mkfifo(p, 0600), 0);
  CHECK_EQ_INT(ss_file_read(p, 0, 100, &buf, &len, err, sizeof err), SS_EINVAL); /* no hang */
  CHECK_CONTAINS(err, "is a FIFO, not a regular file");
  CHECK_EQ_INT(ss_file_open(p, 0, 100, NULL, err, sizeof err), SS_EINVAL);
  unlink(p);

  CHECK_EQ_INT(ss_file_read(dir, 0, 1 << 20, &buf, &len, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "is a directory");

  snprintf(p, sizeof p, "%s/missing", dir);
  CHECK_EQ_INT(ss_file_read(p, 0, 100, &buf, &len, err, sizeof err), SS_ENOTFOUND);
  CHECK_CONTAINS(err, p);

  char link[256];
  snprintf(p, sizeof p, "%s/small", dir);
  snprintf(link, sizeof link, "%s/link", dir);
  CHECK_EQ_INT(symlink(p, link), 0);
  CHECK_EQ_INT(ss_file_read(link, 0, 100, &buf, &len, err, sizeof err), 0); /* followed */
  free(buf);
  CHECK_EQ_INT(ss_file_open(link, SS_FILE_NOFOLLOW, 100, NULL, err, sizeof err), SS_EINVAL);
  CHECK_CONTAINS(err, "symbolic link");
  unlink(link);
  /* an open descriptor is blocking again */
  struct stat st;
  int fd = ss_file_open(p, 0, 100, &st, err, sizeof err);
  CHECK(fd >= 0);
  if (fd >= 0) {
    CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK));
    CHECK_EQ_INT(st.st_size, 5);
    close(fd);
  }
  unlink(p);
}

static int count_entries(void) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
  if (d) closedir(d);
  return n;
}

static int fill_fail(FILE *f, void *arg, char *e, size_t elen) {
  (void)arg;
  fputs("partial", f);
  snprintf(e, elen, "the writer gave up");
  return SS_EIO;
}

static void test_write_atomic(void) {
  char p[256], tmp[300], victim[256], *buf = NULL;
  size_t len;
  snprintf(p, sizeof p, "%s/ckpt", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", p);
  snprintf(victim, sizeof victim, "%s/victim", dir);
  put(victim, "precious");
  CHECK_EQ_INT(symlink(victim, tmp), 0); /* planted where the old code wrote its temporary */
  CHECK_EQ_INT(ss_file_write_atomic_buf(p, "new contents", 12, err, sizeof err), 0);
  CHECK_EQ_INT(ss_file_read(victim, 0, 100, &buf, &len, err, sizeof err), 0);
  CHECK(buf && strcmp(buf, "precious") == 0); /* the link's target is untouched */
  free(buf);
  CHECK_EQ_INT(ss_file_read(p, 0, 100, &buf, &len, err, sizeof err), 0);
  CHECK(buf && strcmp(buf, "new contents") == 0);
  free(buf);
  struct stat st;
  CHECK_EQ_INT(lstat(p, &st), 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK_EQ_INT(count_entries(), 3); /* ckpt, ckpt.tmp (the link), victim: no temporary left */

  /* a failed write leaves the old file and no temporary */
  CHECK(ss_file_write_atomic(p, 0, fill_fail, NULL, err, sizeof err) < 0);
  CHECK_CONTAINS(err, "the writer gave up");
  CHECK_EQ_INT(ss_file_read(p, 0, 100, &buf, &len, err, sizeof err), 0);
  CHECK(buf && strcmp(buf, "new contents") == 0);
  free(buf);
  CHECK_EQ_INT(count_entries(), 3);

  /* path itself a link: replaced by the new file, its target untouched */
  unlink(p);
  CHECK_EQ_INT(symlink(victim, p), 0);
  CHECK_EQ_INT(ss_file_write_atomic_buf(p, "x", 1, err, sizeof err), 0);
  CHECK_EQ_INT(ss_file_read(victim, 0, 100, &buf, &len, err, sizeof err), 0);
  CHECK(buf && strcmp(buf, "precious") == 0);
  free(buf);
  unlink(p);
  unlink(tmp);
  unlink(victim);
}

int main(void) {
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_read();
  test_write_atomic();
  rmdir(dir);
  TEST_MAIN_END();
}
