/* Placeholder reference GEMM: correct, unblocked. Replaced by the packed
 * Goto/BLIS implementation (issue 3). */
#include "gemm.h"

void pynn_sgemm(const pynn_context *ctx, int trans_a, int trans_b,
                ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                float alpha, const float *a, ptrdiff_t lda,
                const float *b, ptrdiff_t ldb,
                float beta, float *c, ptrdiff_t ldc,
                const pynn_epilogue *epilogue)
{
    (void)ctx;
    for (ptrdiff_t i = 0; i < m; i++) {
        for (ptrdiff_t j = 0; j < n; j++) {
            float sum = 0.0f;
            for (ptrdiff_t p = 0; p < k; p++) {
                float av = trans_a ? a[p * lda + i] : a[i * lda + p];
                float bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
                sum += av * bv;
            }
            float v = alpha * sum + (beta == 0.0f ? 0.0f : beta * c[i * ldc + j]);
            if (epilogue) {
                if (epilogue->col_bias) v += epilogue->col_bias[j];
                if (epilogue->row_bias) v += epilogue->row_bias[i];
                if (epilogue->activation == PYNN_ACTIVATION_RELU && !(v > 0.0f)) v = v != v ? v : 0.0f;
            }
            c[i * ldc + j] = v;
        }
    }
}
