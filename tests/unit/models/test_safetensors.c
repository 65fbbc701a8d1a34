/*
 * test_safetensors.c — unit tests for src/models/safetensors.c: a write/read round trip, every
 * truncation of a valid file, and hand-made headers that lie (length past EOF, offsets outside
 * the buffer, sizes that disagree with the shape, unknown dtypes, bad JSON, overlaps).
 * Single-threaded; writes into a fresh mkdtemp directory under /tmp.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "models/safetensors.h"

static char dir[64];

/* A file image: u64 header length, header padded with spaces to pad (0: none), then data. */
static uint8_t *image(const char *hdr, size_t pad, const void *data, size_t dlen, size_t *len) {
  size_t h = strlen(hdr), hp = pad ? (h + pad - 1) / pad * pad : h;
  uint8_t *b = malloc(8 + hp + dlen + 1);
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hp >> (8 * i));
  memcpy(b + 8, hdr, h);
  memset(b + 8 + h, ' ', hp - h);
  if (dlen) memcpy(b + 8 + hp, data, dlen);
  *len = 8 + hp + dlen;
  return b;
}

/* Parse an exact-size heap copy (so ASan sees any over-read). Returns rc; err filled. */
static int parse_copy(const uint8_t *img, size_t len, char *err, size_t errlen) {
  uint8_t *b = malloc(len ? len : 1);
  ss_st_file *f = NULL;
  int rc;
  if (len) memcpy(b, img, len);
  rc = ss_st_parse(b, len, &f, err, errlen);
  if (rc == 0)
    CHECK(f != NULL);
  else
    CHECK(f == NULL);
  ss_st_close(f);
  free(b);
  return rc;
}

static int parse_hdr(const char *hdr, size_t dlen, char *err, size_t errlen) {
  uint8_t data[256] = {0};
  size_t len;
  uint8_t *img = image(hdr, 8, data, dlen, &len);
  int rc = parse_copy(img, len, err, errlen);
  free(img);
  return rc;
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  uint8_t *b;
  long n;
  if (fp == NULL) return NULL;
  fseek(fp, 0, SEEK_END);
  n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  b = malloc((size_t)n + 1);
  *len = fread(b, 1, (size_t)n, fp);
  fclose(fp);
  return b;
}

static void write_all(const char *path, const uint8_t *b, size_t len) {
  FILE *fp = fopen(path, "wb");
  if (len) fwrite(b, 1, len, fp);
  fclose(fp);
}

static void test_round_trip(void) {
  char path[128], err[300];
  float a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {-1.5f, 0.25f, 1e-20f, 3e30f}, c[1] = {42};
  int64_t sa[] = {2, 3}, sb[] = {4}, sc[1] = {0};
  const char *names[] = {"layer.a", "b \"quoted\"", "scalar"};
  const int64_t *shapes[] = {sa, sb, sc};
  int ndims[] = {2, 1, 0};
  const float *data[] = {a, b, c};
  ss_st_file *f = NULL;
  const ss_st_tensor *t;
  uint8_t *img;
  size_t len, hlen = 0;
  int rc;

  snprintf(path, sizeof path, "%s/rt.safetensors", dir);
  rc = ss_st_write_f32(path, 3, names, shapes, ndims, data, err, sizeof err);
  CHECK_EQ_INT(rc, 0);
  rc = ss_st_open(path, &f, err, sizeof err);
  CHECK_EQ_INT(rc, 0);
  if (rc != 0) {
    fprintf(stderr, "%s\n", err);
    return;
  }
  CHECK_EQ_INT(ss_st_count(f), 3);
  t = ss_st_find(f, "layer.a");
  CHECK(t != NULL);
  if (t) {
    CHECK_EQ_INT(t->dtype, SS_DTYPE_F32);
    CHECK_EQ_INT(t->ndim, 2);
    CHECK_EQ_INT(t->shape[0], 2);
    CHECK_EQ_INT(t->shape[1], 3);
    CHECK_EQ_INT(t->numel, 6);
    CHECK_EQ_INT(t->nbytes, 24);
    CHECK(memcmp(t->data, a, sizeof a) == 0);
    CHECK(((uintptr_t)t->data & 7u) == 0);
  }
  t = ss_st_find(f, "b \"quoted\"");
  CHECK(t != NULL && t->numel == 4 && memcmp(t->data, b, sizeof b) == 0);
  t = ss_st_find(f, "scalar");
  CHECK(t != NULL && t->ndim == 0 && t->numel == 1 && memcmp(t->data, c, 4) == 0);
  CHECK(ss_st_find(f, "missing") == NULL);
  CHECK(ss_st_at(f, 3) == NULL);
  ss_st_close(f);

  /* header layout: length a multiple of 8, padded with spaces, valid for every prefix cut */
  img = read_all(path, &len);
  CHECK(img != NULL);
  if (img == NULL) return;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | img[i];
  CHECK_EQ_INT(hlen % 8, 0);
  CHECK_EQ_INT(len, 8 + hlen + 4 * (6 + 4 + 1));
  CHECK(img[8] == '{');
  {
    size_t k = 8 + hlen;
    while (k > 8 && img[k - 1] == ' ') k--;
    CHECK(img[k - 1] == '}');
  }
  /* every truncation fails cleanly, in memory and through ss_st_open */
  {
    int ok_count = 0;
    for (size_t cut = 0; cut < len; cut++) {
      if (parse_copy(img, cut, err, sizeof err) == 0) ok_count++;
    }
    CHECK_EQ_INT(ok_count, 0);
  }
  {
    size_t cuts[] = {0, 4, 7, 8, 8 + hlen / 2, 8 + hlen, len - 1};
    char tpath[128];
    snprintf(tpath, sizeof tpath, "%s/trunc.safetensors", dir);
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
      write_all(tpath, img, cuts[i]);
      f = NULL;
      rc = ss_st_open(tpath, &f, err, sizeof err);
      CHECK(rc < 0);
      CHECK(f == NULL);
      CHECK_CONTAINS(err, tpath);
    }
    write_all(tpath, img, 4);
    ss_st_open(tpath, &f, err, sizeof err);
    CHECK_CONTAINS(err, "too short");
    write_all(tpath, img, len - 1);
    ss_st_open(tpath, &f, err, sizeof err);
    CHECK_CONTAINS(err, "outside the data buffer");
    write_all(tpath, img, 8 + hlen / 2);
    ss_st_open(tpath, &f, err, sizeof err);
    CHECK_CONTAINS(err, "runs past the end");
  }
  free(img);
  CHECK_EQ_INT(ss_st_open("/nonexistent/x.safetensors", &f, err, sizeof err), SS_ENOTFOUND);
  CHECK_CONTAINS(err, "/nonexistent/x.safetensors");
}

static void test_bad_headers(void) {
  char err[300];
  int rc;

  {
    /* header length past EOF */
    uint8_t b[50] = {0};
    b[0] = 0xE8, b[1] = 0x03; /* 1000 */
    rc = parse_copy(b, sizeof b, err, sizeof err);
    CHECK_EQ_INT(rc, SS_EINVAL);
    CHECK_CONTAINS(err, "header length 1000 runs past the end of the file (50 bytes");
    b[7] = 0xFF; /* huge: no overflow in the check */
    CHECK_EQ_INT(parse_copy(b, sizeof b, err, sizeof err), SS_EINVAL);
    CHECK_CONTAINS(err, "runs past the end");
  }
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "tensor 'a': data_offsets [0, 16] are outside the data buffer of 8 bytes");
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "tensor 'a': data_offsets [0, 8] span 8 bytes but shape [3] x F32 needs 12");
  rc = parse_hdr("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "needs 8");
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  rc = parse_hdr("{\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EUNSUPPORTED);
  CHECK_CONTAINS(err, "tensor 'w' has dtype I64");
  CHECK_CONTAINS(err, "F32, F16 and BF16");
  rc = parse_hdr("{\"w\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EUNSUPPORTED);
  CHECK_CONTAINS(err, "Q4");
  rc = parse_hdr("this is not json", 0, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "not valid JSON");
  rc = parse_hdr("[1,2,3]", 0, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "not a JSON object");
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "negative");
  rc = parse_hdr(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],"
      "\"data_offsets\":[0,0]}}",
      0, err, sizeof err);
  CHECK_EQ_INT(rc, SS_ERANGE);
  rc = parse_hdr(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
      "\"data_offsets\":[0,4]}}",
      4, err, sizeof err);
  CHECK(rc < 0);
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, err,
                 sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  rc = parse_hdr("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "dtype");
  rc = parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "data_offsets");
  rc = parse_hdr("{\"a\":[1]}", 8, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  rc = parse_hdr(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
      12, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL);
  CHECK_CONTAINS(err, "overlap");
  rc = parse_hdr(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
      8, err, sizeof err);
  CHECK_EQ_INT(rc, SS_EINVAL); /* duplicate names */
  /* accepted: __metadata__ ignored, empty tensors anywhere, F16/BF16, empty header object */
  rc = parse_hdr(
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[2,2]},"
      "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}",
      8, err, sizeof err);
  CHECK_EQ_INT(rc, 0);
  if (rc) fprintf(stderr, "%s\n", err);
  {
    uint8_t data[8] = {0x80, 0x3F, 0, 0x40, 0, 0x3C, 0, 0xC0};
    size_t len;
    ss_st_file *f = NULL;
    uint8_t *img = image(
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}",
        8, data, 8, &len);
    rc = ss_st_parse(img, len, &f, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    if (rc == 0) {
      CHECK_EQ_INT(ss_st_count(f), 2);
      CHECK(ss_st_find(f, "__metadata__") == NULL);
      CHECK(ss_st_find(f, "a")->dtype == SS_DTYPE_BF16);
      CHECK(ss_st_find(f, "b")->dtype == SS_DTYPE_F16);
      CHECK(ss_st_find(f, "b")->data == img + len - 4);
    }
    ss_st_close(f);
    free(img);
  }
  CHECK_EQ_INT(parse_hdr("{}", 0, err, sizeof err), 0);
}

int main(void) {
  char cmd[96];
  strcpy(dir, "/tmp/ss_test_st_XXXXXX");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trip();
  test_bad_headers();
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  TEST_MAIN_END();
}
