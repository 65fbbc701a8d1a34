/*
 * config.h — the server's YAML configuration file (`splitserve --config server.yaml`):
 * every setting of the settings table (core/settings.h: the YAML keys are its rows' keys) and a
 * list of models, parsed into an ss_server_config over the defaults with a flag per row telling
 * whether the file set it (so command-line flags and built-in defaults can fill in the rest).
 *
 * Thread: any thread; pure parsing (no global state, nothing started, no model loaded).
 * The whole file is read and walked as a libyaml document tree; every error is reported as
 * "PATH:LINE:COL: message" naming the key and what was expected vs what the file holds.
 *
 * Models: each entry of `models:` is a mapping with the required keys `id` and `kind`, the
 * optional admission limits `max_inflight` / `max_queue`, and any other scalar keys
 * (weights, config, layers, activation, ...), which are joined into the model spec string
 * "ID=KIND[,key=value...]" in file order, ready for ss_model_create() (which validates the
 * keys each kind accepts). Values containing ',' or '=' are refused here, since they would
 * break that spec string.
 */
#ifndef SS_CORE_CONFIG_H
#define SS_CORE_CONFIG_H

#include <stddef.h>

#include "core/settings.h"

typedef struct ss_model_conf {
  char *id; /* required, [A-Za-z0-9_.-]+, unique */
  char *
      kind; /* required: identity|scale|sleep|spin|mlp|gpt2 (not validated here beyond non-empty) */
  char *spec;       /* "ID=KIND[,key=value...]" built from the other keys (weights, config, layers,
                       activation, any other scalar key except id/kind/max_inflight/max_queue), ready for
                       ss_model_create() */
  int max_inflight; /* -1 = not set (server default) */
  int max_queue;    /* -1 = not set */
} ss_model_conf;

typedef struct ss_file_config {
  ss_server_config set;               /* the file's settings, over the defaults (core/settings.h) */
  unsigned char has[SS_SETTINGS_MAX]; /* has[i]: the file sets row i of ss_settings */
  char **strs;                        /* strings `set` points into (owned) */
  size_t nstrs;
  ss_model_conf *models;
  size_t n_models; /* key models: a sequence of mappings */
} ss_file_config;
/* Whether the file sets the YAML key (a row of the settings table). */
int ss_file_has(const ss_file_config *c, const char *key);

/* Bounds on a config file (refused beyond them, before the YAML tree is built): its size, and
 * how deeply mappings and sequences nest (a real config nests 4 deep; libyaml's document
 * loader takes time quadratic in the depth). */
#define SS_CONFIG_MAX_BYTES (1u << 20)
#define SS_CONFIG_MAX_DEPTH 32

/* Parse a YAML file. On error returns <0 (SS_EINVAL, SS_EIO) and writes "PATH:LINE:COL: message"
 * naming the key and what was expected vs got. *out is zeroed first; free with ss_config_free (also
 * after an error). */
int ss_config_load(const char *path, ss_file_config *out, char *err, size_t errlen);

/* Same from a string (name used in messages). */
int ss_config_parse(const char *name, const char *text, size_t len, ss_file_config *out, char *err,
                    size_t errlen);

void ss_config_free(ss_file_config *c);

#endif
