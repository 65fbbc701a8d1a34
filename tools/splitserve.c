/*
 * splitserve — the daemon: parses flags (ss_server_config_args: every flag is a row of the
 * settings table, src/core/settings.c), builds an ss_server, runs its loop on the main
 * thread until SIGINT/SIGTERM drains it, then prints a one-line summary and exits 0.
 * A second signal during the drain stops at once (exit 1).
 *
 * Thread: main thread = the server's loop thread. The server adds W worker threads (x T BLAS).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "splitserve.h"

int main(int argc, char **argv) {
  /* Tensor-sized buffers (30 KB .. MBs) are allocated and freed per call: keep glibc from
   * trimming and re-growing the heap (and mmapping/unmapping) around every one of them. This
   * halved server CPU per call for 1x10x768 tensors (bench notes). Freed memory is reused, not
   * returned to the kernel below 256 MB of slack. */
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--help-model-keys") == 0) {
      ss_model_keys_markdown(stdout);
      return 0;
    }
  ss_server_config cfg;
  ss_server_config_init(&cfg);
  cfg.handle_signals = 1;
  ss_config_file *fc = NULL;
  char err[1024];
  int rc = 2, rv = ss_server_config_args(&cfg, argc, argv, &fc, err, sizeof err);
  if (rv == 1) return 0; /* --help */
  if (rv != 0) {
    fprintf(stderr, "splitserve: %s\n", err);
    return 2;
  }

  ss_server *s;
  rv = ss_server_new(&cfg, &s, err, sizeof err);
  if (rv != 0) {
    fprintf(stderr, "splitserve: %s\n", err);
    rc = 1;
    goto out;
  }
  int busy = ss_server_run(s) == SS_EBUSY;
  ss_server_stats st;
  ss_server_get_stats(s, &st);
  fprintf(stderr, "splitserve: stopped: served %llu, rejected %llu, cancelled %llu, failed %llu\n",
          (unsigned long long)st.served, (unsigned long long)st.rejected,
          (unsigned long long)st.cancelled, (unsigned long long)st.failed);
  int ckpt_failed = st.checkpoint_failed;
  if (ckpt_failed)
    fprintf(stderr, "splitserve: a checkpoint could not be written (see the log); exit status 1\n");
  if (busy) { /* every call was answered; do not wait for abandoned computations */
    fflush(stderr);
    _exit(ckpt_failed ? 1 : 0);
  }
  ss_server_free(s);
  rc = ckpt_failed ? 1 : 0;
out:
  ss_config_file_free(fc);
  return rc;
}
