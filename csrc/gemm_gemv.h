/* The GEMV kernels of a SIMD path (gemm_kernels.h's pynn_gemv_dot and
 * pynn_gemv_axpy), written once over the including file's vector shim:
 *   TARGET                  the path's function attribute
 *   VEC, LANES              its float vector type and width
 *   MASK, FIRST_LANES(n)    a lane mask and the mask of the first n lanes
 *   ZERO(), SPLAT(x)        a zero vector, x in every lane
 *   LOAD(p), STORE(p, v)    unaligned whole-vector load and store
 *   LOAD_FIRST(m, p)        load of the lanes in m, zeros elsewhere (the rest unread)
 *   STORE_FIRST(m, p, v)    store of the lanes in m only
 *   FMA(a, b, c), ADD(a, b), SUM(v)   a * b + c, a + b, the sum of v's lanes
 * and its names for the two kernels, GEMV_DOT and GEMV_AXPY. Included once
 * per path file, after the shim, which it undefines at its end. */

/* Four rows at a time share each load of v; the k tail is a masked load. */
static TARGET void GEMV_DOT(ptrdiff_t rows, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                            const float *v, float *sums)
{
    const MASK tail = FIRST_LANES(k % LANES);
    const ptrdiff_t k_full = k - k % LANES;
    const int has_tail = k % LANES != 0;
    ptrdiff_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *x0 = x + r * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
        VEC s0 = ZERO(), s1 = s0, s2 = s0, s3 = s0;
        for (ptrdiff_t p = 0; p < k_full; p += LANES) {
            const VEC vp = LOAD(v + p);
            s0 = FMA(LOAD(x0 + p), vp, s0);
            s1 = FMA(LOAD(x1 + p), vp, s1);
            s2 = FMA(LOAD(x2 + p), vp, s2);
            s3 = FMA(LOAD(x3 + p), vp, s3);
        }
        if (has_tail) {
            const VEC vp = LOAD_FIRST(tail, v + k_full);
            s0 = FMA(LOAD_FIRST(tail, x0 + k_full), vp, s0);
            s1 = FMA(LOAD_FIRST(tail, x1 + k_full), vp, s1);
            s2 = FMA(LOAD_FIRST(tail, x2 + k_full), vp, s2);
            s3 = FMA(LOAD_FIRST(tail, x3 + k_full), vp, s3);
        }
        sums[r] = SUM(s0);
        sums[r + 1] = SUM(s1);
        sums[r + 2] = SUM(s2);
        sums[r + 3] = SUM(s3);
    }
    for (; r < rows; r++) {
        const float *xr = x + r * ldx;
        VEC s0 = ZERO(), s1 = s0;
        ptrdiff_t p = 0;
        for (; p + 2 * LANES <= k_full; p += 2 * LANES) {
            s0 = FMA(LOAD(xr + p), LOAD(v + p), s0);
            s1 = FMA(LOAD(xr + p + LANES), LOAD(v + p + LANES), s1);
        }
        for (; p < k_full; p += LANES)
            s0 = FMA(LOAD(xr + p), LOAD(v + p), s0);
        if (has_tail)
            s1 = FMA(LOAD_FIRST(tail, xr + k_full), LOAD_FIRST(tail, v + k_full), s1);
        sums[r] = SUM(ADD(s0, s1));
    }
}

/* Rows of x stream through whole, four at a time, into sums kept in L1 (at
 * most GEMV_CHUNK floats): contiguous reads the prefetcher follows, where a
 * register-blocked column strip would hop between rows. Each sum still adds
 * its k terms in order. Whole vectors are plain moves, only the last is
 * masked: AMD cores microcode masked stores. */
static TARGET void GEMV_AXPY(ptrdiff_t cols, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                             const float *v, ptrdiff_t v_step, float *sums)
{
    const VEC zero = ZERO();
    for (ptrdiff_t p = 0; p < k; p += 4) {
        const int terms = k - p < 4 ? (int)(k - p) : 4;
        const float *x0 = x + p * ldx;
        VEC vp[4];
        for (int t = 0; t < 4; t++)
            vp[t] = t < terms ? SPLAT(v[(p + t) * v_step]) : zero;
        ptrdiff_t j = 0;
        for (; j + LANES <= cols; j += LANES) {
            VEC s = p == 0 ? zero : LOAD(sums + j);
            s = FMA(vp[0], LOAD(x0 + j), s);
            if (terms == 4) {
                s = FMA(vp[1], LOAD(x0 + ldx + j), s);
                s = FMA(vp[2], LOAD(x0 + 2 * ldx + j), s);
                s = FMA(vp[3], LOAD(x0 + 3 * ldx + j), s);
            } else {  /* the last one to three rows: never read past row k - 1 */
                for (int t = 1; t < terms; t++)
                    s = FMA(vp[t], LOAD(x0 + t * ldx + j), s);
            }
            STORE(sums + j, s);
        }
        if (j < cols) {
            const MASK mask = FIRST_LANES(cols - j);
            VEC s = p == 0 ? zero : LOAD_FIRST(mask, sums + j);
            for (int t = 0; t < terms; t++)
                s = FMA(vp[t], LOAD_FIRST(mask, x0 + t * ldx + j), s);
            STORE_FIRST(mask, sums + j, s);
        }
    }
}

#undef VEC
#undef LANES
#undef MASK
#undef FIRST_LANES
#undef ZERO
#undef SPLAT
#undef LOAD
#undef STORE
#undef LOAD_FIRST
#undef STORE_FIRST
#undef FMA
#undef ADD
#undef SUM
#undef GEMV_DOT
#undef GEMV_AXPY
