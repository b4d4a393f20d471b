/* Runtime CPU feature detection and the context every kernel receives.
 *
 * Kernels never read global state: the Cython layer (runtime.pxi) owns one
 * pynn_context (the chosen path's kernel tables, the thread count, the team
 * flag) and passes it down, so a kernel's behaviour is fixed by its
 * arguments alone. */
#ifndef PYNN_CPU_H
#define PYNN_CPU_H

#include <stdatomic.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef enum {
    PYNN_ISA_GENERIC = 0,  /* portable C, any CPU */
    PYNN_ISA_AVX2 = 1,     /* x86-64 AVX2 + FMA */
    PYNN_ISA_AVX512 = 2    /* x86-64 AVX-512F */
} pynn_isa;

#define PYNN_ISA_COUNT 3

/* Each ISA's kernels and its per-CPU thresholds, one table per path
 * (kernels.h); a kernel chooses its code only through the one it is given. */
typedef struct pynn_kernels pynn_kernels;

typedef struct {
    const pynn_kernels *kernels;
    int num_threads;
    /* Nonzero while a parallel team runs: one flag for the whole process,
     * owned by whoever made the context (the Python runtime keeps one). */
    atomic_int *team_busy;
} pynn_context;

/* The threads a parallel team may use for `wanted`: all of them when no
 * other call's team is running, the team then holding the cores until
 * pynn_team_end; else 1. A concurrent call (another Python thread
 * predicting or training) so runs alone on its own thread instead of starting
 * a second team on the same cores, whose barriers would spin against the
 * first's. Every team (an OpenMP region or the plan's helper threads) takes
 * this path, and each gives the same bits on any thread count, so a call's
 * result never depends on what runs beside it. */
static inline int pynn_team_begin(const pynn_context *ctx, int wanted)
{
    if (wanted <= 1) return 1;
    return atomic_exchange_explicit(ctx->team_busy, 1, memory_order_acquire) ? 1 : wanted;
}

static inline void pynn_team_end(const pynn_context *ctx, int team)
{
    if (team > 1) atomic_store_explicit(ctx->team_busy, 0, memory_order_release);
}

/* The calling thread's number within a team of `team` threads (0 for a team
 * of one): its slot in per-thread scratch. */
static inline int pynn_team_slot(int team)
{
#ifdef _OPENMP
    return team > 1 ? omp_get_thread_num() : 0;
#else
    (void)team;
    return 0;
#endif
}

/* Parallel loops that cost nothing when they would run on one thread: an
 * OpenMP region that an if clause keeps on one thread still pays the
 * region's entry and exit, as much as a small call's whole work. Each body
 * is a { compound statement }.
 * PYNN_PARALLEL_FOR: for (ptrdiff_t index = 0; index < count; index++) body,
 * the iterations shared statically among `threads` threads of a team the
 * caller holds, or a plain loop when that is one thread.
 * PYNN_TEAM_FOR: the same loop as one whole team call: the team (up to
 * `wanted` threads, pynn_team_begin's answer, its variable `team` visible to
 * the body) is taken before the loop and given back after it.
 * PYNN_TEAM: body run by each thread of such a team, or once by this one. */
#ifdef _OPENMP
#define PYNN_PRAGMA(text) _Pragma(#text)
#define PYNN_PARALLEL_FOR(threads, index, count, ...)                               \
    do {                                                                             \
        if ((threads) > 1) {                                                         \
            PYNN_PRAGMA(omp parallel for num_threads(threads) schedule(static))      \
            for (ptrdiff_t index = 0; index < (count); index++) __VA_ARGS__          \
        } else {                                                                     \
            for (ptrdiff_t index = 0; index < (count); index++) __VA_ARGS__          \
        }                                                                            \
    } while (0)
#define PYNN_TEAM(ctx, wanted, ...)                                                  \
    do {                                                                             \
        const int team = pynn_team_begin((ctx), (wanted));                           \
        if (team > 1) {                                                              \
            PYNN_PRAGMA(omp parallel num_threads(team))                              \
            __VA_ARGS__                                                              \
        } else {                                                                     \
            __VA_ARGS__                                                              \
        }                                                                            \
        pynn_team_end((ctx), team);                                                  \
    } while (0)
#else
#define PYNN_PARALLEL_FOR(threads, index, count, ...) \
    do { (void)(threads); for (ptrdiff_t index = 0; index < (count); index++) __VA_ARGS__ } while (0)
#define PYNN_TEAM(ctx, wanted, ...) \
    do { (void)(ctx); (void)(wanted); const int team = 1; (void)team; __VA_ARGS__ } while (0)
#endif
#define PYNN_TEAM_FOR(ctx, wanted, index, count, ...)                                 \
    do {                                                                             \
        const int team = pynn_team_begin((ctx), (wanted));                           \
        PYNN_PARALLEL_FOR(team, index, count, __VA_ARGS__);                          \
        pynn_team_end((ctx), team);                                                  \
    } while (0)

/* Is the path compiled into this build (x86-64 builds carry all three). */
int pynn_isa_compiled(pynn_isa isa);
/* Does this CPU and its OS support the path (CPUID and XGETBV both agree). */
int pynn_isa_supported(pynn_isa isa);
/* The best path that is both compiled in and supported. */
pynn_isa pynn_isa_best(void);
const char *pynn_isa_name(pynn_isa isa);
/* This CPU's data caches, read once at load (CPUID, else sysconf, else a
 * fallback): sizes in bytes, and how many logical processors share each. */
typedef struct { long l1d, l2, l3; int l2_sharing, l3_sharing; } pynn_caches;
const pynn_caches *pynn_cache_info(void);
/* Compiler name and version this file was built with. */
const char *pynn_compiler_version(void);
/* 1 when the kernels were built with OpenMP. */
int pynn_openmp_enabled(void);

#if defined(__x86_64__) || defined(_M_X64)
#define PYNN_X86_64 1
#endif

/* The target attribute of each ISA's functions (never -march: one build
 * serves every x86-64 CPU). A PYNN_EMULATE_AVX512 build (setup.py) compiles
 * the AVX-512 functions for AVX2 instead, their intrinsics coming from
 * tools/avx512_emulation.h, so the AVX-512 paths run, and are tested, on a
 * CPU without AVX-512. */
#define PYNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#if defined(PYNN_EMULATE_AVX512)
#define PYNN_TARGET_AVX512 PYNN_TARGET_AVX2
#else
#define PYNN_TARGET_AVX512 __attribute__((target("avx512f")))
#endif

/* Rows of a table met in a random order (embedding lookups, their gradients
 * and updates): the loop over them asks for the cache lines of the row
 * PYNN_ROW_PREFETCH_AHEAD places on, so the misses overlap. `write` is 0 or
 * 1, a constant. */
#define PYNN_ROW_PREFETCH_AHEAD 8
#define PYNN_PREFETCH_ROW(row, floats, write)                                         \
    do {                                                                             \
        for (ptrdiff_t line_ = 0; line_ < (floats); line_ += 16)                     \
            __builtin_prefetch((row) + line_, (write), 3);                           \
    } while (0)

#endif
