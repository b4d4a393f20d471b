/* Scaled dot-product attention, forward and backward, per (batch, head):
 *
 *   O = softmax(scale Q Kᵀ + mask) V,   Q [T, D], K [S, D], V [S, Dv], O [T, Dv].
 *
 * Every tensor is a strided view [N, heads, tokens, features] whose feature
 * axis is contiguous: element (n, h, t, d) of a view is at
 * data[n * batch_stride + h * head_stride + t * token_stride + d]. So the
 * query, key and value of a packed projection [N, T, 3E] are three views
 * (offsets 0, E, 2E; token stride 3E, head stride D) and the output may be
 * written straight into [N, T, E] (token stride E, head stride Dv). Outputs
 * must not overlap inputs or each other.
 *
 * Each block of query rows computes its scores into a per-thread buffer,
 * masks them, takes their numerically stable softmax and multiplies by V
 * there. For backward, forward keeps one of two things: the log-sum-exp of
 * each query row's masked scores (one float per row; backward recomputes the
 * probabilities from it block by block), or the probabilities P themselves
 * [N, heads, T, S] (backward skips that recomputation, a GEMM and an
 * exponential per score, at the cost of writing and reading T x S floats per
 * head: the faster of the two where that fits the memory). A query row whose
 * every key is masked gets output 0, log-sum-exp -inf, probabilities 0 and
 * gradient 0 (as PyTorch on CPU). */
#ifndef PYNN_ATTENTION_H
#define PYNN_ATTENTION_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

typedef struct {
    const float *data;  /* element (0, 0, 0, 0) */
    ptrdiff_t batch_stride, head_stride, token_stride;
} pynn_attention_input;

typedef struct {
    float *data;
    ptrdiff_t batch_stride, head_stride, token_stride;
} pynn_attention_output;

typedef struct {
    ptrdiff_t batch, heads, queries, keys, head_dim, value_dim;
    float scale;  /* multiplies Q Kᵀ, usually 1 / √head_dim */
} pynn_attention_shape;

/* Which scores count, each part optional (all NULL / 0: none masked):
 * allowed (nonzero: attend) or bias (added to the score), read at
 * [n * batch_stride + h * head_stride + t * query_stride + s * key_stride]
 * (a zero stride broadcasts); key_counts[n] masks keys from key_counts[n]
 * on (a key-padding mask as lengths, and the keys past it cost nothing);
 * causal masks key s > query t. */
typedef struct {
    const unsigned char *allowed;
    const float *bias;
    ptrdiff_t batch_stride, head_stride, query_stride, key_stride;
    const int64_t *key_counts;
    int causal;
} pynn_attention_mask;

/* A key-padding mask [rows, keys], C-contiguous, as key counts: returns 1
 * and counts[n] = the keys row n attends when every row masks exactly its
 * keys from some column on (bool `padding`: nonzero where the key is
 * padding; else float `bias`: 0 before that column, -inf from it), so the
 * kernels take it as key_counts; returns 0 (counts unspecified) otherwise. */
int pynn_attention_key_counts(ptrdiff_t rows, ptrdiff_t keys, const unsigned char *padding,
                              const float *bias, int64_t *counts);

/* out = attention(q, k, v); log_sum_exp [N, heads, T] contiguous (or NULL:
 * not kept) receives, per query row, log Σ_s exp(score + mask), -inf where
 * every key is masked; probabilities [N, heads, T, S] contiguous (or NULL:
 * not kept) receives softmax(score + mask), 0 at masked keys. Threads split
 * (batch, head, block of query rows). Returns 0, or -1 when the scores'
 * buffer finds no memory. */
int pynn_attention_forward(const pynn_context *ctx, const pynn_attention_shape *shape,
                           pynn_attention_input q, pynn_attention_input k,
                           pynn_attention_input v, const pynn_attention_mask *mask,
                           pynn_attention_output out, float *log_sum_exp, float *probabilities);

/* The gradients of the forward above, from its out and its probabilities
 * when kept (then log_sum_exp may be NULL), else its log_sum_exp: with
 * P = exp(scale Q Kᵀ + mask - log_sum_exp) and δ_t = Σ_d dO[t, d] O[t, d],
 *   dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ - δ),  dQ = scale dS K,  dK = scale dSᵀ Q.
 * Threads split (batch, head); a head's query blocks run in order, adding
 * into its dK and dV, so the result is the same on any thread count.
 * Returns 0, or -1 when the buffers find no memory. */
int pynn_attention_backward(const pynn_context *ctx, const pynn_attention_shape *shape,
                            pynn_attention_input dout, pynn_attention_input q,
                            pynn_attention_input k, pynn_attention_input v,
                            pynn_attention_input out, const float *log_sum_exp,
                            const float *probabilities, const pynn_attention_mask *mask,
                            pynn_attention_output dq, pynn_attention_output dk,
                            pynn_attention_output dv);

#endif
