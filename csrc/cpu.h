/* Runtime CPU feature detection and the context every kernel receives.
 *
 * Kernels never read global state: the Cython runtime module owns one
 * pynn_context (chosen ISA, thread count) and passes it down, so a kernel's
 * behaviour is fixed by its arguments alone. */
#ifndef PYNN_CPU_H
#define PYNN_CPU_H

typedef enum {
    PYNN_ISA_GENERIC = 0,  /* portable C, any CPU */
    PYNN_ISA_AVX2 = 1,     /* x86-64 AVX2 + FMA */
    PYNN_ISA_AVX512 = 2    /* x86-64 AVX-512F */
} pynn_isa;

#define PYNN_ISA_COUNT 3

typedef struct {
    pynn_isa isa;
    int num_threads;
} pynn_context;

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

#endif
