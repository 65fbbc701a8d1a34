/*
 * ckpt.c — see ckpt.h. Thread: main thread at start-up.
 */
#include "models/ckpt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "splitserve.h"

json_t *ss_ckpt_json(const char *what, const char *path, size_t max_bytes, int *rc, char *err,
                     size_t errlen) {
  char *text = NULL, msg[400];
  size_t len = 0;
  json_error_t je;
  json_t *root;
  *rc = ss_file_read(path, 0, max_bytes, &text, &len, msg, sizeof msg);
  if (*rc != 0) {
    snprintf(err, errlen, "%s %s", what, msg);
    return NULL;
  }
  root = json_loadb(text, len, 0, &je);
  free(text);
  if (root == NULL) {
    snprintf(err, errlen, "%s %.200s: %s (line %d)", what, path, je.text, je.line);
    *rc = SS_EINVAL;
  }
  return root;
}

static int is_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

static int add_file(ss_ckpt *c, ss_st_file *f) {
  ss_st_file **nf = realloc(c->files, (size_t)(c->n_files + 1) * sizeof *nf);
  if (nf == NULL) return SS_ENOMEM;
  c->files = nf;
  c->files[c->n_files++] = f;
  return 0;
}

int ss_ckpt_open(ss_ckpt *c, const char *path, char *cfg_dir, size_t cfg_len, char *err,
                 size_t errlen) {
  char buf[1200], index[1200];
  const char *file = NULL;
  ss_st_file *f;
  int rc;

  memset(c, 0, sizeof *c);
  index[0] = '\0';
  if (is_dir(path)) {
    const char *sep = path[0] != '\0' && path[strlen(path) - 1] == '/' ? "" : "/";
    snprintf(cfg_dir, cfg_len, "%s%s", path, sep);
    snprintf(buf, sizeof buf, "%s%smodel.safetensors", path, sep);
    if (access(buf, F_OK) == 0) {
      file = buf;
    } else {
      snprintf(index, sizeof index, "%s%smodel.safetensors.index.json", path, sep);
      if (access(index, F_OK) != 0) {
        snprintf(err, errlen,
                 "weights %.200s: a directory without model.safetensors or "
                 "model.safetensors.index.json",
                 path);
        return SS_ENOTFOUND;
      }
    }
  } else {
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) + 1 : 0;
    snprintf(cfg_dir, cfg_len, "%.*s", dl, path);
    if (ends_with(path, ".index.json"))
      snprintf(index, sizeof index, "%s", path);
    else
      file = path;
  }
  if (file != NULL) {
    if ((rc = ss_st_open(file, &f, err, errlen)) != 0) return rc;
    if (add_file(c, f) != 0) {
      ss_st_close(f);
      snprintf(err, errlen, "out of memory");
      return SS_ENOMEM;
    }
    return 0;
  }
  const char *slash = strrchr(index, '/');
  if ((c->idx = ss_ckpt_json("weights index", index, SS_INDEX_MAX_BYTES, &rc, err, errlen)) == NULL)
    return rc;
  c->wmap = json_is_object(c->idx) ? json_object_get(c->idx, "weight_map") : NULL;
  if (c->wmap == NULL || !json_is_object(c->wmap)) {
    snprintf(err, errlen, "weights index %.200s: no 'weight_map' object", index);
    return SS_EINVAL;
  }
  snprintf(c->dir, sizeof c->dir, "%.*s", slash ? (int)(slash - index) + 1 : 0, index);
  return 0;
}

const ss_st_tensor *ss_ckpt_find(ss_ckpt *c, const char *name, int *rc, char *err, size_t errlen) {
  json_t *fn;
  const char *shard;
  char path[1400];
  ss_st_file *f;
  char **nn;
  *rc = 0;
  if (c->wmap == NULL) return c->n_files > 0 ? ss_st_find(c->files[0], name) : NULL;
  fn = json_object_get(c->wmap, name);
  if (fn == NULL || !json_is_string(fn)) return NULL;
  shard = json_string_value(fn);
  for (int i = 0; i < c->n_files; i++)
    if (strcmp(c->names[i], shard) == 0) return ss_st_find(c->files[i], name);
  if (strchr(shard, '/') != NULL || strcmp(shard, "..") == 0) {
    snprintf(err, errlen, "weights index: shard name '%.100s' must be a plain file name", shard);
    *rc = SS_EINVAL;
    return NULL;
  }
  snprintf(path, sizeof path, "%s%s", c->dir, shard);
  if ((*rc = ss_st_open(path, &f, err, errlen)) != 0) return NULL;
  nn = realloc(c->names, (size_t)(c->n_files + 1) * sizeof *nn);
  if (nn != NULL) c->names = nn;
  if (nn == NULL || (nn[c->n_files] = strdup(shard)) == NULL || add_file(c, f) != 0) {
    if (nn != NULL) free(nn[c->n_files]);
    ss_st_close(f);
    snprintf(err, errlen, "out of memory");
    *rc = SS_ENOMEM;
    return NULL;
  }
  return ss_st_find(f, name);
}

int ss_ckpt_has_prefix(const ss_ckpt *c, const char *prefix) {
  size_t n = strlen(prefix);
  if (c->wmap != NULL) {
    const char *key;
    json_t *v;
    json_object_foreach(c->wmap, key, v) {
      if (strncmp(key, prefix, n) == 0) return 1;
    }
    return 0;
  }
  for (size_t i = 0; c->n_files > 0 && i < ss_st_count(c->files[0]); i++)
    if (strncmp(ss_st_at(c->files[0], i)->name, prefix, n) == 0) return 1;
  return 0;
}

void ss_ckpt_done(ss_ckpt *c) {
  /* Loading read the narrow tensors it converted, and the kernel maps the whole large folio (up
   * to 2 MiB) around each read: 57 MiB of a BF16 GPT-2 file stayed mapped for a few KiB of norms
   * and biases. Unmapped now (the pages stay in the page cache; a later read maps them again):
   * the files are read-only and privately mapped, so nothing is lost. */
  for (int i = 0; i < c->n_files; i++) {
    const void *map;
    size_t len;
    ss_st_mapping(c->files[i], &map, &len);
    if (map != NULL) (void)madvise((void *)(uintptr_t)map, len, MADV_DONTNEED);
  }
  if (c->names != NULL)
    for (int i = 0; i < c->n_files; i++) free(c->names[i]);
  free(c->names);
  c->names = NULL;
  json_decref(c->idx);
  c->idx = c->wmap = NULL;
}

void ss_ckpt_close(ss_ckpt *c) {
  ss_ckpt_done(c);
  for (int i = 0; i < c->n_files; i++) ss_st_close(c->files[i]);
  free(c->files);
  c->files = NULL;
  c->n_files = 0;
}
