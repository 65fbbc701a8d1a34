/*
 * gpt2_block_ref.h — a naive double-precision GPT-2 block (Hugging Face GPT2Block, eval mode,
 * one sequence, no past) for the C unit tests (test_gpt2.c, test_train.c) to check the model
 * against. Weights in checkpoint order: ln_1.{weight,bias}, attn.c_attn.{weight,bias},
 * attn.c_proj.{weight,bias}, ln_2.{weight,bias}, mlp.c_fc.{weight,bias}, mlp.c_proj.{weight,bias},
 * Conv1D layout ([in, out]).
 */
#ifndef SS_TEST_GPT2_BLOCK_REF_H
#define SS_TEST_GPT2_BLOCK_REF_H

#include <math.h>
#include <stdlib.h>

static void ref_gpt2_ln(const double *x, double *y, int ne, const double *g, const double *b) {
  double mean = 0, var = 0;
  for (int j = 0; j < ne; j++) mean += x[j];
  mean /= ne;
  for (int j = 0; j < ne; j++) var += (x[j] - mean) * (x[j] - mean);
  var /= ne;
  for (int j = 0; j < ne; j++) y[j] = (x[j] - mean) / sqrt(var + 1e-5) * g[j] + b[j];
}

/* x [S][ne] in place through one block with weights w[12]; ne embedding, nh heads, ni inner. */
static void ref_gpt2_block(double *x, int S, int ne, int nh, int ni, const double *const w[12]) {
  int hd = ne / nh;
  double *ln = malloc(sizeof(double) * (size_t)S * (size_t)ne);
  double *qkv = malloc(sizeof(double) * (size_t)S * 3 * (size_t)ne);
  double *att = malloc(sizeof(double) * (size_t)S * (size_t)ne);
  double *fc = malloc(sizeof(double) * (size_t)ni), *sc = malloc(sizeof(double) * (size_t)S);
  for (int i = 0; i < S; i++) ref_gpt2_ln(x + i * ne, ln + i * ne, ne, w[0], w[1]);
  for (int i = 0; i < S; i++)
    for (int o = 0; o < 3 * ne; o++) {
      double s = w[3][o];
      for (int j = 0; j < ne; j++) s += ln[i * ne + j] * w[2][j * 3 * ne + o];
      qkv[i * 3 * ne + o] = s;
    }
  for (int h = 0; h < nh; h++)
    for (int i = 0; i < S; i++) {
      double mx = -1e300, sum = 0;
      for (int j = 0; j <= i; j++) {
        double s = 0;
        for (int d = 0; d < hd; d++)
          s += qkv[i * 3 * ne + h * hd + d] * qkv[j * 3 * ne + ne + h * hd + d];
        sc[j] = s / sqrt((double)hd);
        if (sc[j] > mx) mx = sc[j];
      }
      for (int j = 0; j <= i; j++) sum += (sc[j] = exp(sc[j] - mx));
      for (int d = 0; d < hd; d++) {
        double s = 0;
        for (int j = 0; j <= i; j++) s += sc[j] / sum * qkv[j * 3 * ne + 2 * ne + h * hd + d];
        att[i * ne + h * hd + d] = s;
      }
    }
  for (int i = 0; i < S; i++)
    for (int o = 0; o < ne; o++) {
      double s = w[5][o];
      for (int j = 0; j < ne; j++) s += att[i * ne + j] * w[4][j * ne + o];
      x[i * ne + o] += s;
    }
  for (int i = 0; i < S; i++) {
    ref_gpt2_ln(x + i * ne, ln, ne, w[6], w[7]);
    for (int o = 0; o < ni; o++) {
      double s = w[9][o];
      for (int j = 0; j < ne; j++) s += ln[j] * w[8][j * ni + o];
      fc[o] = 0.5 * s * (1 + tanh(sqrt(2 / M_PI) * (s + 0.044715 * s * s * s)));
    }
    for (int o = 0; o < ne; o++) {
      double s = w[11][o];
      for (int j = 0; j < ni; j++) s += fc[j] * w[10][j * ne + o];
      x[i * ne + o] += s;
    }
  }
  free(ln);
  free(qkv);
  free(att);
  free(fc);
  free(sc);
}

#endif
