/*
 * safetensors.c — open, validate and view safetensors files; write simple F32 files.
 *
 * Layout: [u64 LE N][N bytes JSON header][byte buffer]. The file is mmapped read-only and
 * every tensor's data pointer points into the mapping (no copy); ss_st_close() unmaps.
 * Validation trusts nothing in the header: N against the file size, JSON shape and types,
 * dtype (F32/F16/BF16 only), dims (0..INT64 non-negative, count overflow-checked), offsets
 * inside the buffer, end - begin == numel x dtype size, and no two tensors overlapping.
 * "__metadata__" is ignored. Thread: any; the opened object is immutable and shareable.
 */
#include "models/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "core/tensor.h"

struct ss_st_file {
  void *map; /* mmap base (NULL when parsed from a borrowed buffer) */
  size_t map_len;
  char *path; /* the file it was opened from (NULL when parsed from memory) */
  dev_t dev;  /* its identity when opened (ss_st_changed_on_disk) */
  ino_t ino;
  off_t size;
  struct timespec mtime;
  size_t n;
  ss_st_tensor *t; /* n tensors, in header order */
};

/*
 * Mappings are shared per file: two models loaded from one checkpoint (two trunks, or a model and
 * its reload) map it once, so resident memory counts the weights once. This table is the one
 * piece of process-wide state here, like the page cache it mirrors; it is guarded by a mutex
 * (models are loaded on the main thread and, on SIGHUP, on a worker). A file is the same file
 * when device, inode, size and modification time all match; checkpoints are written to a new
 * inode (rename), so a rewritten file is mapped afresh.
 *
 * In-place changes. A mapped file that is truncated or rewritten in place (`cp new model.st`
 * truncates first) would raise SIGBUS on the next read of a page past the new end, killing the
 * process. splitserve guards against that instead of copying the weights:
 *   - every mapping is registered in a fixed, lock-free table of address ranges (guard[]);
 *   - a SIGBUS handler whose fault address lies in a registered range maps a zero page over the
 *     faulting page (MAP_FIXED anonymous, so the read completes and reads zeros), marks the
 *     mapping damaged and returns; a fault anywhere else restores the previous handler, so the
 *     process dies as it would have;
 *   - the file descriptor stays open, and ss_st_check() (called after every forward) fails when
 *     the mapping was damaged or when fstat shows a new size or mtime on the same inode;
 *     the service then fails the call with FAILED_PRECONDITION and the model keeps refusing
 *     until it is reloaded. Replacing the file by rename leaves the mapped inode intact (calls
 *     go on with the old weights) and SIGHUP loads the new one.
 */
typedef struct shared_map {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
  void *map;
  int fd;   /* kept open: fstat tells an in-place change from a rename */
  int slot; /* index in guard[], or -1 when the table was full (no SIGBUS guard) */
  int refs;
  struct shared_map *next;
} shared_map;

#define SS_GUARD_SLOTS 256
typedef struct guard_slot {
  _Atomic uintptr_t base; /* 0 = free */
  _Atomic size_t len;
  atomic_int damaged;
} guard_slot;
static guard_slot guard[SS_GUARD_SLOTS];
static struct sigaction prev_bus;
static int guard_installed; /* under maps_mu */

static pthread_mutex_t maps_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_map *maps;

static void on_sigbus(int sig, siginfo_t *si, void *uctx) {
  uintptr_t a = (uintptr_t)si->si_addr;
  for (int i = 0; i < SS_GUARD_SLOTS; i++) {
    uintptr_t b = atomic_load(&guard[i].base);
    if (b && a >= b && a < b + atomic_load(&guard[i].len)) {
      long pg = sysconf(_SC_PAGESIZE);
      uintptr_t page = a & ~((uintptr_t)pg - 1);
      void *p =
          mmap((void *)page, (size_t)pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      atomic_store(&guard[i].damaged, 1);
      if (p != MAP_FAILED) return; /* the read is retried and sees zeros */
      break;
    }
  }
  /* Not ours: the previous disposition decides (the default kills the process). */
  if (prev_bus.sa_flags & SA_SIGINFO) {
    if (prev_bus.sa_sigaction) {
      prev_bus.sa_sigaction(sig, si, uctx);
      return;
    }
  } else if (prev_bus.sa_handler != SIG_DFL && prev_bus.sa_handler != SIG_IGN) {
    prev_bus.sa_handler(sig);
    return;
  }
  sigaction(SIGBUS, &prev_bus, NULL); /* returning re-faults into the old disposition */
}

static void guard_install_locked(void) {
  if (guard_installed) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &prev_bus) == 0) guard_installed = 1;
}

static int guard_add(void *base, size_t len) {
  for (int i = 0; i < SS_GUARD_SLOTS; i++)
    if (atomic_load(&guard[i].base) == 0) {
      atomic_store(&guard[i].damaged, 0);
      atomic_store(&guard[i].len, len);
      atomic_store(&guard[i].base, (uintptr_t)base);
      return i;
    }
  return -1;
}

static void *map_acquire(int fd, const struct stat *st) {
  void *map = NULL;
  pthread_mutex_lock(&maps_mu);
  for (shared_map *m = maps; m; m = m->next)
    if (m->dev == st->st_dev && m->ino == st->st_ino && m->size == st->st_size &&
        m->mtime.tv_sec == st->st_mtim.tv_sec && m->mtime.tv_nsec == st->st_mtim.tv_nsec &&
        (m->slot < 0 || !atomic_load(&guard[m->slot].damaged))) {
      m->refs++;
      map = m->map;
      break;
    }
  if (!map) {
    shared_map *m = calloc(1, sizeof *m);
    int dfd = m ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    void *p =
        dfd >= 0 ? mmap(NULL, (size_t)st->st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    if (p != MAP_FAILED) {
      guard_install_locked();
      *m = (shared_map){st->st_dev,
                        st->st_ino,
                        st->st_size,
                        st->st_mtim,
                        p,
                        dfd,
                        guard_add(p, (size_t)st->st_size),
                        1,
                        maps};
      maps = m;
      map = p;
    } else {
      if (dfd >= 0) close(dfd);
      free(m);
    }
  }
  pthread_mutex_unlock(&maps_mu);
  return map;
}

static void map_release(void *map) {
  pthread_mutex_lock(&maps_mu);
  for (shared_map **pp = &maps; *pp; pp = &(*pp)->next)
    if ((*pp)->map == map) {
      shared_map *m = *pp;
      if (--m->refs == 0) {
        *pp = m->next;
        if (m->slot >= 0) atomic_store(&guard[m->slot].base, 0);
        munmap(m->map, (size_t)m->size);
        close(m->fd);
        free(m);
      }
      break;
    }
  pthread_mutex_unlock(&maps_mu);
}

int ss_st_check(const ss_st_file *f, char *err, size_t errlen) {
  if (f == NULL || f->map == NULL) return 0;
  int rc = 0;
  pthread_mutex_lock(&maps_mu);
  for (shared_map *m = maps; m; m = m->next) {
    if (m->map != f->map) continue;
    struct stat st;
    if (m->slot >= 0 && atomic_load(&guard[m->slot].damaged)) {
      snprintf(err, errlen,
               "weights file %s was truncated while being served (a read past its "
               "new end faulted); replace weights files by rename, then send SIGHUP",
               f->path);
      rc = SS_EPRECONDITION;
    } else if (fstat(m->fd, &st) == 0 &&
               (st.st_size != m->size || st.st_mtim.tv_sec != m->mtime.tv_sec ||
                st.st_mtim.tv_nsec != m->mtime.tv_nsec)) {
      snprintf(err, errlen,
               "weights file %s was changed in place while being served (size %lld "
               "-> %lld bytes); replace weights files by rename, then send SIGHUP",
               f->path, (long long)m->size, (long long)st.st_size);
      rc = SS_EPRECONDITION;
    }
    break;
  }
  pthread_mutex_unlock(&maps_mu);
  return rc;
}

int ss_st_changed_on_disk(const ss_st_file *f) {
  if (f == NULL || f->map == NULL || f->path == NULL) return 0;
  char e[8];
  if (ss_st_check(f, e, sizeof e) != 0) return 1;
  struct stat st;
  if (stat(f->path, &st) != 0) return 0; /* gone: keep what is mapped */
  return st.st_dev != f->dev || st.st_ino != f->ino || st.st_size != f->size ||
         st.st_mtim.tv_sec != f->mtime.tv_sec || st.st_mtim.tv_nsec != f->mtime.tv_nsec;
}

/* The byte range of a tensor inside the buffer, for the overlap check. */
typedef struct st_range {
  uint64_t begin, end;
  const char *name;
} st_range;

static int range_cmp(const void *a, const void *b) {
  const st_range *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static void st_free(ss_st_file *f) {
  if (f == NULL) return;
  for (size_t i = 0; i < f->n; i++) free(f->t[i].name);
  free(f->t);
  free(f->path);
  if (f->map != NULL) map_release(f->map);
  free(f);
}

static int parse_dtype(const char *s, ss_dtype *dt) {
  if (strcmp(s, "F32") == 0)
    *dt = SS_DTYPE_F32;
  else if (strcmp(s, "F16") == 0)
    *dt = SS_DTYPE_F16;
  else if (strcmp(s, "BF16") == 0)
    *dt = SS_DTYPE_BF16;
  else
    return -1;
  return 0;
}

/* Validate one header entry and fill *t (name not set). bufsize: bytes after the header. */
static int parse_entry(const char *name, json_t *v, const uint8_t *base, uint64_t bufsize,
                       ss_st_tensor *t, st_range *r, char *err, size_t errlen) {
  json_t *jd, *js, *jo, *jb, *je;
  const char *dts;
  uint64_t numel = 1, nbytes, begin, end;
  size_t i, ndim;

  if (!json_is_object(v)) {
    snprintf(err, errlen, "tensor '%s': header entry is not a JSON object", name);
    return SS_EINVAL;
  }
  jd = json_object_get(v, "dtype");
  js = json_object_get(v, "shape");
  jo = json_object_get(v, "data_offsets");
  if (!json_is_string(jd)) {
    snprintf(err, errlen, "tensor '%s': missing or non-string \"dtype\"", name);
    return SS_EINVAL;
  }
  dts = json_string_value(jd);
  if (parse_dtype(dts, &t->dtype) != 0) {
    snprintf(err, errlen, "tensor '%s' has dtype %.32s; only F32, F16 and BF16 are supported", name,
             dts);
    return SS_EUNSUPPORTED;
  }
  if (!json_is_array(js)) {
    snprintf(err, errlen, "tensor '%s': missing or non-array \"shape\"", name);
    return SS_EINVAL;
  }
  ndim = json_array_size(js);
  if (ndim > SS_MAX_DIMS) {
    snprintf(err, errlen, "tensor '%s': shape has %zu dimensions; at most %d supported", name, ndim,
             SS_MAX_DIMS);
    return SS_EUNSUPPORTED;
  }
  t->ndim = (int)ndim;
  for (i = 0; i < ndim; i++) {
    json_t *d = json_array_get(js, i);
    json_int_t dv;
    if (!json_is_integer(d)) {
      snprintf(err, errlen, "tensor '%s': shape[%zu] is not an integer", name, i);
      return SS_EINVAL;
    }
    dv = json_integer_value(d);
    if (dv < 0) {
      snprintf(err, errlen, "tensor '%s': shape[%zu] is negative (%lld)", name, i, (long long)dv);
      return SS_EINVAL;
    }
    t->shape[i] = (int64_t)dv;
    if (__builtin_mul_overflow(numel, (uint64_t)dv, &numel)) {
      snprintf(err, errlen, "tensor '%s': element count of its shape overflows", name);
      return SS_ERANGE;
    }
  }
  if (__builtin_mul_overflow(numel, (uint64_t)ss_dtype_size(t->dtype), &nbytes)) {
    snprintf(err, errlen, "tensor '%s': byte size of its shape overflows", name);
    return SS_ERANGE;
  }
  if (!json_is_array(jo) || json_array_size(jo) != 2 ||
      !json_is_integer(jb = json_array_get(jo, 0)) ||
      !json_is_integer(je = json_array_get(jo, 1))) {
    snprintf(err, errlen, "tensor '%s': \"data_offsets\" must be [begin, end] integers", name);
    return SS_EINVAL;
  }
  if (json_integer_value(jb) < 0 || json_integer_value(je) < 0) {
    snprintf(err, errlen, "tensor '%s': data_offsets [%lld, %lld] are negative", name,
             (long long)json_integer_value(jb), (long long)json_integer_value(je));
    return SS_EINVAL;
  }
  begin = (uint64_t)json_integer_value(jb);
  end = (uint64_t)json_integer_value(je);
  if (begin > end || end > bufsize) {
    snprintf(err, errlen,
             "tensor '%s': data_offsets [%llu, %llu] are outside the data buffer of %llu bytes",
             name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)bufsize);
    return SS_EINVAL;
  }
  if (end - begin != nbytes) {
    char sbuf[160];
    snprintf(err, errlen,
             "tensor '%s': data_offsets [%llu, %llu] span %llu bytes but shape %s x %s needs %llu",
             name, (unsigned long long)begin, (unsigned long long)end,
             (unsigned long long)(end - begin), ss_shape_str(t->shape, t->ndim, sbuf, sizeof sbuf),
             dts, (unsigned long long)nbytes);
    return SS_EINVAL;
  }
  t->numel = (size_t)numel;
  t->nbytes = (size_t)nbytes;
  t->data = base + begin;
  r->begin = begin;
  r->end = end;
  return 0;
}

int ss_st_parse(const void *buf, size_t len, ss_st_file **out, char *err, size_t errlen) {
  const uint8_t *p = buf;
  uint64_t hlen = 0;
  json_t *root;
  json_error_t jerr;
  const char *key;
  json_t *val;
  ss_st_file *f;
  st_range *ranges = NULL;
  size_t cap, nr = 0;
  int rc = 0;

  *out = NULL;
  if (len < 8) {
    snprintf(err, errlen, "file is %zu bytes, too short for the 8-byte header length", len);
    return SS_EINVAL;
  }
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
  if (hlen > (uint64_t)(len - 8)) {
    snprintf(err, errlen,
             "header length %llu runs past the end of the file (%zu bytes; at most %zu available)",
             (unsigned long long)hlen, len, len - 8);
    return SS_EINVAL;
  }
  if (hlen < 2) {
    snprintf(err, errlen, "header length %llu is too small for a JSON object",
             (unsigned long long)hlen);
    return SS_EINVAL;
  }
  root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) {
    snprintf(err, errlen, "header is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
             jerr.column);
    return SS_EINVAL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    snprintf(err, errlen, "header is not a JSON object");
    return SS_EINVAL;
  }
  f = calloc(1, sizeof *f);
  cap = json_object_size(root);
  if (f == NULL || (cap && ((f->t = calloc(cap, sizeof *f->t)) == NULL ||
                            (ranges = calloc(cap, sizeof *ranges)) == NULL))) {
    rc = SS_ENOMEM;
    snprintf(err, errlen, "out of memory reading the header");
    goto done;
  }
  json_object_foreach(root, key, val) {
    ss_st_tensor *t;
    if (strcmp(key, "__metadata__") == 0) continue;
    t = &f->t[f->n];
    rc = parse_entry(key, val, p + 8 + hlen, (uint64_t)(len - 8) - hlen, t, &ranges[nr], err,
                     errlen);
    if (rc != 0) goto done;
    if ((t->name = strdup(key)) == NULL) {
      rc = SS_ENOMEM;
      snprintf(err, errlen, "out of memory");
      goto done;
    }
    ranges[nr++].name = t->name;
    f->n++;
  }
  /* No two non-empty tensors may share bytes. */
  if (nr > 1) qsort(ranges, nr, sizeof *ranges, range_cmp);
  for (size_t i = 1; i < nr; i++) {
    for (size_t j = i; j-- > 0;) { /* nearest previous non-empty range */
      if (ranges[j].end == ranges[j].begin) continue;
      if (ranges[i].end > ranges[i].begin && ranges[i].begin < ranges[j].end) {
        snprintf(err, errlen, "tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap",
                 ranges[j].name, (unsigned long long)ranges[j].begin,
                 (unsigned long long)ranges[j].end, ranges[i].name,
                 (unsigned long long)ranges[i].begin, (unsigned long long)ranges[i].end);
        rc = SS_EINVAL;
        goto done;
      }
      break;
    }
  }
done:
  free(ranges);
  json_decref(root);
  if (rc != 0) {
    st_free(f);
    return rc;
  }
  *out = f;
  return 0;
}

int ss_st_open(const char *path, ss_st_file **out, char *err, size_t errlen) {
  struct stat st;
  void *map;
  char msg[400];
  int fd, rc;

  *out = NULL;
  fd = ss_file_open(path, 0, UINT64_MAX, &st, err, errlen); /* a FIFO must not block start-up */
  if (fd < 0) return fd;
  if (st.st_size < 8) {
    snprintf(err, errlen, "%s: file is %lld bytes, too short for the 8-byte header length", path,
             (long long)st.st_size);
    close(fd);
    return SS_EINVAL;
  }
  map = map_acquire(fd, &st);
  close(fd);
  if (map == NULL) {
    snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
    return SS_EIO;
  }
  rc = ss_st_parse(map, (size_t)st.st_size, out, msg, sizeof msg);
  if (rc != 0) {
    map_release(map);
    snprintf(err, errlen, "%s: %s", path, msg);
    return rc;
  }
  (*out)->map = map;
  (*out)->map_len = (size_t)st.st_size;
  (*out)->path = strdup(path);
  (*out)->dev = st.st_dev;
  (*out)->ino = st.st_ino;
  (*out)->size = st.st_size;
  (*out)->mtime = st.st_mtim;
  return 0;
}

size_t ss_st_count(const ss_st_file *f) { return f ? f->n : 0; }

const ss_st_tensor *ss_st_at(const ss_st_file *f, size_t i) {
  return f && i < f->n ? &f->t[i] : NULL;
}

const ss_st_tensor *ss_st_find(const ss_st_file *f, const char *name) {
  if (f == NULL || name == NULL) return NULL;
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
  return NULL;
}

void ss_st_mapping(const ss_st_file *f, const void **base, size_t *len) {
  *base = f ? f->map : NULL;
  *len = f && f->map ? f->map_len : 0;
}

void ss_st_close(ss_st_file *f) { st_free(f); }

/* What st_fill writes: the length, the padded header, the tensors' bytes. */
typedef struct {
  const uint8_t *lenbuf;
  const char *hdr;
  size_t hlen, padded, n;
  const size_t *nbytes;
  const float *const *data;
} st_out;

static int st_fill(FILE *fp, void *arg, char *err, size_t errlen) {
  const st_out *o = arg;
  int rc = 0;
  if (fwrite(o->lenbuf, 1, 8, fp) != 8 || fwrite(o->hdr, 1, o->hlen, fp) != o->hlen) rc = SS_EIO;
  for (size_t i = o->hlen; rc == 0 && i < o->padded; i++)
    if (fputc(' ', fp) == EOF) rc = SS_EIO;
  for (size_t i = 0; rc == 0 && i < o->n; i++)
    if (o->nbytes[i] && fwrite(o->data[i], 1, o->nbytes[i], fp) != o->nbytes[i]) rc = SS_EIO;
  if (rc != 0) snprintf(err, errlen, "write failed: %s", strerror(errno));
  return rc;
}

/* Write the file at path, always through a fresh temporary renamed over it (core/file.h);
 * sync: fsync it and its directory (the checkpoint variant). */
static int st_write(const char *path, size_t n, const char *const *names,
                    const int64_t *const *shapes, const int *ndims, const float *const *data,
                    int sync, char *err, size_t errlen) {
  json_t *root = json_object();
  char *hdr = NULL;
  size_t *nbytes = NULL, hlen, padded;
  uint64_t off = 0;
  uint8_t lenbuf[8];
  int rc = 0;

  if (root == NULL || (n && (nbytes = calloc(n, sizeof *nbytes)) == NULL)) {
    rc = SS_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_object(), *shape = json_array();
    size_t numel = 1;
    if (e == NULL || shape == NULL) {
      json_decref(e);
      json_decref(shape);
      rc = SS_ENOMEM;
      snprintf(err, errlen, "out of memory");
      goto done;
    }
    if (ndims[i] < 0 || ndims[i] > SS_MAX_DIMS) {
      json_decref(e);
      json_decref(shape);
      rc = SS_EINVAL;
      snprintf(err, errlen, "tensor '%s': ndim %d out of range", names[i], ndims[i]);
      goto done;
    }
    for (int d = 0; d < ndims[i]; d++) {
      if (shapes[i][d] < 0 || __builtin_mul_overflow(numel, (size_t)shapes[i][d], &numel)) {
        json_decref(e);
        json_decref(shape);
        rc = SS_EINVAL;
        snprintf(err, errlen, "tensor '%s': invalid shape", names[i]);
        goto done;
      }
      json_array_append_new(shape, json_integer((json_int_t)shapes[i][d]));
    }
    nbytes[i] = numel * sizeof(float);
    json_object_set_new(e, "dtype", json_string("F32"));
    json_object_set_new(e, "shape", shape);
    json_object_set_new(e, "data_offsets",
                        json_pack("[I,I]", (json_int_t)off, (json_int_t)(off + nbytes[i])));
    off += nbytes[i];
    if (json_object_set_new(root, names[i], e) != 0) {
      rc = SS_EINVAL;
      snprintf(err, errlen, "tensor '%s': bad or duplicate name", names[i]);
      goto done;
    }
  }
  hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (hdr == NULL) {
    rc = SS_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  hlen = strlen(hdr);
  padded = (hlen + 7) & ~(size_t)7; /* data buffer starts 8-byte aligned */
  for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  {
    st_out o = {lenbuf, hdr, hlen, padded, n, nbytes, data};
    rc = ss_file_write_atomic(path, sync ? 0 : SS_FILE_NOSYNC, st_fill, &o, err, errlen);
  }
done:
  free(hdr);
  free(nbytes);
  json_decref(root);
  return rc;
}

int ss_st_write_f32(const char *path, size_t n, const char *const *names,
                    const int64_t *const *shapes, const int *ndims, const float *const *data,
                    char *err, size_t errlen) {
  return st_write(path, n, names, shapes, ndims, data, 0, err, errlen);
}

int ss_st_write_f32_atomic(const char *path, size_t n, const char *const *names,
                           const int64_t *const *shapes, const int *ndims, const float *const *data,
                           char *err, size_t errlen) {
  return st_write(path, n, names, shapes, ndims, data, 1, err, errlen);
}

int ss_st_f32(const ss_st_tensor *t, const float **view, float **own, void *(*alloc)(size_t)) {
  size_t bytes = t->numel ? t->numel * sizeof(float) : 1;
  *own = NULL;
  if (t->dtype == SS_DTYPE_F32 && ((uintptr_t)t->data & 3u) == 0) {
    *view = t->data;
    return 0;
  }
  *own = alloc != NULL ? alloc(bytes) : malloc(bytes);
  if (*own == NULL) return SS_ENOMEM;
  if ((uintptr_t)t->data % ss_dtype_size(t->dtype) == 0) {
    ss_to_f32(t->dtype, t->data, *own, t->numel);
  } else {
    /* data_offsets need not be aligned: a tensor at an odd offset is converted through an
     * aligned piece on the stack (reading it as uint16_t / float in place is undefined). */
    uint64_t piece[512];
    size_t es = ss_dtype_size(t->dtype), per = sizeof piece / es;
    for (size_t i = 0; i < t->numel; i += per) {
      size_t k = t->numel - i < per ? t->numel - i : per;
      memcpy(piece, (const unsigned char *)t->data + i * es, k * es);
      ss_to_f32(t->dtype, piece, *own + i, k);
    }
  }
  *view = *own;
  return 0;
}
