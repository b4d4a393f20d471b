/* The runner of every element-wise kernel (vmath.h). */
#include "vmath.h"

/* Chunks are large enough to amortise scheduling, small enough that two
 * threads share 8192 elements, and a multiple of 64 floats so every chunk
 * but the last runs whole vectors. */
#define CHUNK 4096

void pynn_map_run(const pynn_context *ctx, pynn_map_fn fn, ptrdiff_t n, ptrdiff_t min_parallel,
                  int may_stream, const float *a, const float *b, float *y, float p)
{
    if (n <= 0) return;
    int threads = 1;
#ifdef _OPENMP
    if (ctx->num_threads > 1 && n >= min_parallel) threads = pynn_team_begin(ctx, ctx->num_threads);
#endif
    int stream = may_stream && (uintptr_t)y % sizeof(float) == 0 &&
                 n / threads * (ptrdiff_t)sizeof(float) >= PYNN_STREAM_BYTES_PER_THREAD;
#ifdef _OPENMP
    if (threads > 1) {
        ptrdiff_t chunks = (n + CHUNK - 1) / CHUNK;
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static) nowait
            for (ptrdiff_t c = 0; c < chunks; c++) {
                ptrdiff_t start = c * CHUNK;
                ptrdiff_t len = n - start < CHUNK ? n - start : CHUNK;
                fn(len, a + start, b ? b + start : NULL, y + start, p, stream);
            }
            if (stream) pynn_stream_fence();
        }
        pynn_team_end(ctx, threads);
        return;
    }
#endif
    fn(n, a, b, y, p, stream);
    if (stream) pynn_stream_fence();
}
