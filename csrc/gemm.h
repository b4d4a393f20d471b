/* Single-precision GEMM: the contract every caller relies on.
 *
 * Row-major C[m x n] = alpha * op(A) op(B) + beta * C, then the epilogue:
 *   op(A) is A [m x k] (lda >= k) or, with trans_a, A stored as [k x m] (lda >= m);
 *   op(B) is B [k x n] (ldb >= n) or, with trans_b, B stored as [n x k] (ldb >= k);
 *   C has leading dimension ldc >= n.
 * beta == 0 means C is write-only: whatever it holds (NaN included) is ignored.
 * The epilogue runs once per output element after the sum is complete:
 *   c += col_bias[j] (if given), c += row_bias[i] (if given), then the activation.
 * Empty dimensions are allowed (m, n or k == 0); k == 0 gives beta * C + epilogue. */
#ifndef PYNN_GEMM_H
#define PYNN_GEMM_H

#include <stddef.h>
#include "cpu.h"

typedef enum {
    PYNN_ACTIVATION_NONE = 0,
    PYNN_ACTIVATION_RELU = 1
} pynn_activation;

typedef struct {
    const float *col_bias;   /* [n], broadcast down the rows (Linear's bias), or NULL */
    const float *row_bias;   /* [m], broadcast along each row (conv's bias), or NULL */
    pynn_activation activation;
} pynn_epilogue;

void pynn_sgemm(const pynn_context *ctx, int trans_a, int trans_b,
                ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                float alpha, const float *a, ptrdiff_t lda,
                const float *b, ptrdiff_t ldb,
                float beta, float *c, ptrdiff_t ldc,
                const pynn_epilogue *epilogue);


#endif
