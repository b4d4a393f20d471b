/* The runner of every element-wise kernel (vmath.h). */
#include "vmath.h"

/* Chunks are large enough to amortise scheduling, small enough that two
 * threads share 8192 elements, and a multiple of 64 floats so every chunk
 * but the last runs whole vectors. */
#define CHUNK 4096

int pynn_map_place(ptrdiff_t n, int threads, const float *a, const float *b, const float *y)
{
    const pynn_caches *caches = pynn_cache_info();
    double l2 = (double)caches->l2 / caches->l2_sharing;
    double share = l2 + (double)caches->l3 / caches->l3_sharing;
    int arrays = 1 + (a != y) + (b != NULL && b != y && b != a);
    double bytes = (double)n * sizeof(float) * arrays / threads;
    return bytes <= l2 ? PYNN_PLACE_L2 : bytes <= share ? PYNN_PLACE_L3 : PYNN_PLACE_MEMORY;
}

void pynn_map_run(const pynn_context *ctx, pynn_map_fn fn, ptrdiff_t n, ptrdiff_t min_parallel,
                  int may_stream, const float *a, const float *b, float *y, float p)
{
    if (n <= 0) return;
    int threads = 1;
#ifdef _OPENMP
    if (ctx->num_threads > 1 && n >= min_parallel) threads = pynn_team_begin(ctx, ctx->num_threads);
#endif
    int place = may_stream ? pynn_map_place(n, threads, a, b, y) : PYNN_PLACE_L2;
    if (place == PYNN_PLACE_MEMORY && (uintptr_t)y % sizeof(float) != 0) place = PYNN_PLACE_L3;
    const int stream = place == PYNN_PLACE_MEMORY;
#ifdef _OPENMP
    if (threads > 1) {
        ptrdiff_t chunks = (n + CHUNK - 1) / CHUNK;
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static) nowait
            for (ptrdiff_t c = 0; c < chunks; c++) {
                ptrdiff_t start = c * CHUNK;
                ptrdiff_t len = n - start < CHUNK ? n - start : CHUNK;
                fn(len, a + start, b ? b + start : NULL, y + start, p, place);
            }
            if (stream) pynn_stream_fence();
        }
        pynn_team_end(ctx, threads);
        return;
    }
#endif
    fn(n, a, b, y, p, place);
    if (stream) pynn_stream_fence();
}
