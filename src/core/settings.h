/*
 * settings.h — the one table of server settings (redis config.c style). Each row is one setting:
 * its command-line flag, its YAML key (also its GetServiceInfo key), its type and range, its
 * default, and its help text. The rows drive everything that once spelled a setting out by hand:
 *
 *   ss_server_config_init     the defaults
 *   ss_server_config_args     the daemon's argv (tools/splitserve.c), with --config under it
 *   core/config.c             the YAML keys of a --config file
 *   ss_settings_usage         `splitserve --help`
 *   ss_settings_markdown      the README's flag table (tests/check_settings.py compares them)
 *   service/info.c            GetServiceInfo's custom_info, one entry per YAML key
 *
 * Adding a setting: a field in ss_server_config (include/splitserve.h) and one row in
 * settings.c; then `splitserve --help-markdown` gives the README table's new row.
 *
 * Thread: any; the table is immutable.
 */
#ifndef SS_CORE_SETTINGS_H
#define SS_CORE_SETTINGS_H

#include <stddef.h>

#include "splitserve.h"

typedef enum {
  SS_ST_INT,      /* int field, integer in [lo, hi] */
  SS_ST_SIZE,     /* size_t field, integer in [lo, hi] */
  SS_ST_MB,       /* size_t field in bytes, given in MiB in [lo, hi] */
  SS_ST_SECONDS,  /* double field, seconds in [lo, hi] */
  SS_ST_BOOL,     /* int field 0/1; a flag without a value on the command line */
  SS_ST_STR,      /* const char * field (a path) */
  SS_ST_HOSTPORT, /* const char * host (off) + int port (off2): HOST:PORT or [V6]:PORT */
  SS_ST_LOGLEVEL, /* int field: error|warn|info|debug */
  SS_ST_DTYPE,    /* int field: float32|float16|bfloat16 (-1: float32, unset) */
  SS_ST_CODEC,    /* int field: none|zlib (-1: none, unset) */
  SS_ST_MODEL,    /* --model / models: handled by the caller (repeatable; YAML: a list) */
  SS_ST_CONFIG,   /* --config: handled by the caller */
} ss_setting_type;

typedef struct ss_setting {
  const char *flag; /* "--workers" */
  const char *arg;  /* "N", "S", "FILE", ...; NULL for a switch (SS_ST_BOOL) */
  const char *key;  /* YAML and GetServiceInfo key; NULL: command line only */
  ss_setting_type type;
  size_t off, off2;  /* field offsets in ss_server_config (off2: HOSTPORT's port) */
  double lo, hi;     /* range (INT, SIZE, MB, SECONDS) */
  double def;        /* default (numeric types; HOSTPORT: the port) */
  const char *sdef;  /* default (STR; HOSTPORT: the host) or NULL */
  const char *unset; /* how an unset value (-1, NULL) reads, e.g. "online cores", "off" */
  const char *help;  /* one paragraph, markdown (README and --help) */
} ss_setting;

#define SS_SETTINGS_MAX 64 /* rows at most (ss_file_config keeps a flag per row) */

extern const ss_setting ss_settings[];
extern const size_t ss_nsettings;

/* The row of a flag ("--workers") or YAML key ("workers"); -1 if none. */
int ss_setting_by_flag(const char *flag);
int ss_setting_by_key(const char *key);

/* Parse value (NULL for a switch given on the command line) into setting i of cfg. STR and
 * HOSTPORT: *owned receives a malloc'd copy that cfg now points into (the caller keeps it alive
 * and frees it), else NULL. 0, or SS_EINVAL / SS_ENOMEM with "expected ..., got '...'" in err. */
int ss_setting_set(ss_server_config *cfg, int i, const char *value, char **owned, char *err,
                   size_t errlen);

/* dst's setting i = src's (the pointers of STR/HOSTPORT are copied, not the strings). */
void ss_setting_copy(ss_server_config *dst, const ss_server_config *src, int i);

/* Setting i of cfg as text in the units of its YAML key ("64", "2.5", "127.0.0.1:50051",
 * "online cores"). */
void ss_setting_format(const ss_server_config *cfg, int i, char *buf, size_t len);

#endif
