/*
 * fuzz_util.c — see fuzz_util.h.
 */
#include "fuzz_util.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "models/model.h"
#include "models/safetensors.h"

enum { E = 16, NI = 64, NL = FUZZ_GPT2_LAYERS, NT = 12 };

static fuzz_gpt2 g;
static int made;

static void cleanup(void) {
  unlink(g.weights);
  unlink(g.config);
  rmdir(g.dir);
}

const fuzz_gpt2 *fuzz_tmp_gpt2(void) {
  if (made) return &g;
  snprintf(g.dir, sizeof g.dir, "%s/ss_fuzz_XXXXXX",
           access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  if (!mkdtemp(g.dir)) {
    perror("mkdtemp");
    abort();
  }
  snprintf(g.weights, sizeof g.weights, "%s/model.safetensors", g.dir);
  snprintf(g.config, sizeof g.config, "%s/config.json", g.dir);
  atexit(cleanup);
  static const char *const suffix[NT] = {
      "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
      "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
      "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
  static const int64_t tshape[NT][2] = {{E, 0}, {E, 0}, {E, 3 * E}, {3 * E, 0}, {E, E},  {E, 0},
                                        {E, 0}, {E, 0}, {E, NI},    {NI, 0},    {NI, E}, {E, 0}};
  static const int tndim[NT] = {1, 1, 2, 1, 2, 1, 1, 1, 2, 1, 2, 1};
  static float w[E * NI];
  for (size_t i = 0; i < E * NI; i++) w[i] = (float)((int)((i * 7) % 13) - 6) * 0.02f;
  static char names[NL * NT][48];
  const char *np[NL * NT];
  const int64_t *shapes[NL * NT];
  int ndims[NL * NT];
  const float *data[NL * NT];
  size_t n = 0;
  for (int l = 0; l < NL; l++)
    for (int k = 0; k < NT; k++, n++) {
      snprintf(names[n], sizeof names[n], "h.%d.%s", l, suffix[k]);
      np[n] = names[n], shapes[n] = tshape[k], ndims[n] = tndim[k], data[n] = w;
    }
  char err[256];
  if (ss_st_write_f32(g.weights, n, np, shapes, ndims, data, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz: %s\n", err);
    abort();
  }
  FILE *f = fopen(g.config, "w");
  if (!f) abort();
  fprintf(f,
          "{\"model_type\": \"gpt2\", \"n_embd\": %d, \"n_head\": 4, \"n_layer\": %d, "
          "\"n_positions\": 32, \"n_inner\": null, \"layer_norm_epsilon\": 1e-05}\n",
          E, NL);
  fclose(f);
  made = 1;
  return &g;
}

void fuzz_service_config(ss_server_config *cfg) {
  static char gspec[300];
  static const char *specs[3];
  const fuzz_gpt2 *t = fuzz_tmp_gpt2();
  snprintf(gspec, sizeof gspec, "g=gpt2,weights=%s,optimizer=adamw", t->weights);
  specs[0] = "mlp=mlp";
  specs[1] = gspec;
  specs[2] = "spin=identity";
  ss_compute_thread_init(1); /* this thread computes (0 workers): one BLAS thread */
  ss_server_config_init(cfg);
  cfg->workers = 0;
  cfg->models = specs;
  cfg->n_models = 3;
  cfg->session_max_bytes = 4u << 20;
  cfg->activation_max_bytes = 16u << 20;
  cfg->max_inflight = 1;
  cfg->max_queue = 2;
  cfg->log_level = 0;
}
