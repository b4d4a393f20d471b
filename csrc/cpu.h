/* Runtime CPU feature detection and the context every kernel receives.
 *
 * Kernels never read global state: the Cython runtime module owns one
 * pynn_context (chosen ISA, thread count) and passes it down, so a kernel's
 * behaviour is fixed by its arguments alone. */
#ifndef PYNN_CPU_H
#define PYNN_CPU_H

#include <stdatomic.h>

typedef enum {
    PYNN_ISA_GENERIC = 0,  /* portable C, any CPU */
    PYNN_ISA_AVX2 = 1,     /* x86-64 AVX2 + FMA */
    PYNN_ISA_AVX512 = 2    /* x86-64 AVX-512F */
} pynn_isa;

#define PYNN_ISA_COUNT 3

typedef struct {
    pynn_isa isa;
    int num_threads;
    /* Nonzero while a kernel's parallel team runs: one flag for the whole
     * process, owned by the runtime module (NULL: no such guard). */
    atomic_int *team_busy;
} pynn_context;

/* The threads a parallel region may start for `wanted`: all of them when no
 * other call's team is running, the region then holding the cores until
 * pynn_team_end; else 1. A concurrent call (another Python thread
 * predicting or training) so runs alone on its own thread instead of starting
 * a second team on the same cores, whose barriers would spin against the
 * first's. Every kernel's parallel region takes this path, and each gives
 * the same bits on any thread count (a convolution refused the team runs its
 * chunk slots in turn), so a call's result never depends on what runs beside
 * it. */
static inline int pynn_team_begin(const pynn_context *ctx, int wanted)
{
    if (wanted <= 1 || !ctx->team_busy) return wanted;
    return atomic_exchange_explicit(ctx->team_busy, 1, memory_order_acquire) ? 1 : wanted;
}

static inline void pynn_team_end(const pynn_context *ctx, int team)
{
    if (team > 1 && ctx->team_busy) atomic_store_explicit(ctx->team_busy, 0, memory_order_release);
}

/* Parallel regions that cost nothing when they would run on one thread: a
 * region that an if clause keeps on one thread still costs 0.4-0.5 us on
 * Zen 3, as long as a small call's whole work. Each body is a
 * { compound statement }.
 * PYNN_PARALLEL_FOR: for (ptrdiff_t index = 0; index < count; index++) body,
 * the iterations shared statically among `team` threads (a
 * pynn_team_begin's), or a plain loop when the team is one thread.
 * PYNN_PARALLEL: body run by each of `team` threads, or once by this one. */
#ifdef _OPENMP
#define PYNN_PRAGMA(text) _Pragma(#text)
#define PYNN_PARALLEL_FOR(team, index, count, ...)                                  \
    do {                                                                             \
        if ((team) > 1) {                                                            \
            PYNN_PRAGMA(omp parallel for num_threads(team) schedule(static))         \
            for (ptrdiff_t index = 0; index < (count); index++) __VA_ARGS__          \
        } else {                                                                     \
            for (ptrdiff_t index = 0; index < (count); index++) __VA_ARGS__          \
        }                                                                            \
    } while (0)
#define PYNN_PARALLEL(team, ...)                                                     \
    do {                                                                             \
        if ((team) > 1) {                                                            \
            PYNN_PRAGMA(omp parallel num_threads(team))                              \
            __VA_ARGS__                                                              \
        } else {                                                                     \
            __VA_ARGS__                                                              \
        }                                                                            \
    } while (0)
#else
#define PYNN_PARALLEL_FOR(team, index, count, ...) \
    do { (void)(team); for (ptrdiff_t index = 0; index < (count); index++) __VA_ARGS__ } while (0)
#define PYNN_PARALLEL(team, ...) do { (void)(team); __VA_ARGS__ } while (0)
#endif

/* Is the path compiled into this build (x86-64 builds carry all three). */
int pynn_isa_compiled(pynn_isa isa);
/* Does this CPU and its OS support the path (CPUID and XGETBV both agree). */
int pynn_isa_supported(pynn_isa isa);
/* The best path that is both compiled in and supported. */
pynn_isa pynn_isa_best(void);
const char *pynn_isa_name(pynn_isa isa);
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

#endif
