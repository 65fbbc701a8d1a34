/*
 * rope.h — rotary position embedding (Llama family), Hugging Face "rotate_half" convention (the
 * two halves of a head are the pairs, not interleaved lanes), as a forward/backward pair, in
 * place. For a head vector x of size HS at absolute position p, i < HS/2:
 *   c = cos(p theta_i), s = sin(p theta_i), theta_i = base^(-2i / HS)
 *   x'[i] = x[i] c - x[i + HS/2] s,   x'[i + HS/2] = x[i + HS/2] c + x[i] s
 * The backward is the inverse rotation (the transpose): angle -p theta_i.
 *
 * Thread: any (worker threads); reentrant, no allocation, no global mutable state.
 */
#ifndef SS_MODELS_NN_ROPE_H
#define SS_MODELS_NN_ROPE_H

/* x [B, T, NH, HS] (row stride ld per token; heads side by side), rotated in place; token t is at
 * position pos0 + t. HS even. */
void ss_rope_forward(float *x, int ld, int B, int T, int NH, int HS, int pos0, float base);
/* d holds dL/dx' on entry, dL/dx on return; same arguments as the forward. */
void ss_rope_backward(float *d, int ld, int B, int T, int NH, int HS, int pos0, float base);

/* The same with explicit frequencies: theta_i = inv_freq[i] (HS/2 values, borrowed), for scaled
 * variants (Llama 3's rope_scaling "llama3", "linear"; see ss_rope_inv_freq). */
void ss_rope_forward_freq(float *x, int ld, int B, int T, int NH, int HS, int pos0,
                          const double *inv_freq);
void ss_rope_backward_freq(float *d, int ld, int B, int T, int NH, int HS, int pos0,
                           const double *inv_freq);

/* Explicit positions per token and per frequency (Qwen2-VL / Qwen3-VL multimodal rope, M-RoPE):
 * token (b, t) at pair i turns by pos[(stream[i] * B + b) * T + t] * inv_freq[i]; pos [S, B, T]
 * (S streams: temporal, height, width), stream [HS/2] values < S (NULL: all 0). Forward only,
 * in place; x as in ss_rope_forward. */
void ss_rope_forward_pos(float *x, int ld, int B, int T, int NH, int HS, const int *pos,
                         const unsigned char *stream, const double *inv_freq);

/* The gradient of a bias added to the keys before the rotation, from dk = dL/d(rotated keys)
 * [B, T, NKV*HS] of one call at positions 0..T-1 (a training forward): db [NKV*HS] +=
 * sum_t R_t^T dk_t. Returns 0 or SS_ENOMEM (double accumulators). */
int ss_rope_bias_backward(float *db, const float *dk, int B, int T, int NKV, int HS,
                          const double *inv_freq);
/* inv_freq [HS/2] = base^(-2i/HS) (the unscaled theta_i), written. */
void ss_rope_inv_freq(double *inv_freq, int HS, double base);

#endif
