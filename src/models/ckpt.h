/*
 * ckpt.h — a Hugging Face checkpoint's files, as every trunk architecture reads them: the weights
 * (one .safetensors file, a directory holding model.safetensors, or a sharded checkpoint: a
 * directory with model.safetensors.index.json, or that index, whose shards are opened on first
 * use and stay mapped), and its JSON side files (config.json, the index) read through
 * core/file.h (regular files of bounded size: a FIFO or a directory is refused, never blocks).
 *
 * Thread: main thread at start-up (model constructors); the opened files then live with the
 * model and are only read (ss_st_check after forwards, any worker).
 */
#ifndef SS_MODELS_CKPT_H
#define SS_MODELS_CKPT_H

#include <jansson.h>
#include <stddef.h>

#include "models/safetensors.h"

#define SS_INDEX_MAX_BYTES (64u << 20) /* model.safetensors.index.json (real ones: < 1 MiB) */

/* Parse the JSON file path (at most max_bytes). what: "config", "weights index", ... for
 * messages. NULL with err set and *rc SS_ENOTFOUND, SS_EINVAL, ... */
json_t *ss_ckpt_json(const char *what, const char *path, size_t max_bytes, int *rc, char *err,
                     size_t errlen);

/* A checkpoint's weight files. files[0 .. n_files) are mapped (owned: ss_ckpt_close); the index
 * and shard names are kept while loading (ss_ckpt_done drops them). */
typedef struct ss_ckpt {
  ss_st_file **files;
  int n_files;
  json_t *idx;    /* the sharded index (owned), NULL for one file */
  json_t *wmap;   /* its weight_map (owned by idx) */
  char dir[1024]; /* the shards' directory */
  char **names;   /* shard file names, parallel to files (sharded only) */
} ss_ckpt;

/* Resolve path (see the top) into *c (zeroed first); cfg_dir: the directory config.json is
 * looked for in ("" or ending in '/'). 0, or an error with err written (*c is then still safe
 * to close). */
int ss_ckpt_open(ss_ckpt *c, const char *path, char *cfg_dir, size_t cfg_len, char *err,
                 size_t errlen);
/* The tensor called name, or NULL when the checkpoint has none (*rc = 0), or NULL with *rc < 0
 * and a message when its shard cannot be opened. */
const ss_st_tensor *ss_ckpt_find(ss_ckpt *c, const char *name, int *rc, char *err, size_t errlen);
/* Does some tensor's name start with prefix? (The first file's names, or the index's.) */
int ss_ckpt_has_prefix(const ss_ckpt *c, const char *prefix);
/* The first mapped file (a model's optimizer state and its mapping check), or NULL. */
static inline const ss_st_file *ss_ckpt_first(const ss_ckpt *c) {
  return c->n_files > 0 ? c->files[0] : NULL;
}
/* Loading is over: drop the index and the shard names, keep the mapped files, and unmap the pages
 * loading touched (they stay in the page cache; read again, they map again). */
void ss_ckpt_done(ss_ckpt *c);
/* Close every file (and what ss_ckpt_done drops). */
void ss_ckpt_close(ss_ckpt *c);

#endif
