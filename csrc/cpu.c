#include "cpu.h"

#include <unistd.h>

#if defined(PYNN_X86_64)
#include <cpuid.h>
#include <stdint.h>

/* Extended control register 0: which register files the OS saves on a
 * context switch. A CPU can report AVX-512 while the OS does not preserve
 * the zmm registers; using them then corrupts state, so both must agree. */
static uint64_t read_xcr0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

#define XCR0_SSE_AVX 0x06u          /* xmm and ymm upper halves */
#define XCR0_AVX512 0xE0u           /* opmask, zmm upper halves, zmm16-31 */

static int cpu_has_avx2_fma(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    int osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1, fma = (ecx >> 12) & 1;
    if (!(osxsave && avx && fma)) return 0;
    if ((read_xcr0() & XCR0_SSE_AVX) != XCR0_SSE_AVX) return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return (ebx >> 5) & 1;
}

static int cpu_has_avx512f(void)
{
#if defined(PYNN_EMULATE_AVX512)
    return cpu_has_avx2_fma();  /* the emulation runs on AVX2 (cpu.h) */
#else
    unsigned int eax, ebx, ecx, edx;
    if (!cpu_has_avx2_fma()) return 0;
    if ((read_xcr0() & (XCR0_SSE_AVX | XCR0_AVX512)) != (XCR0_SSE_AVX | XCR0_AVX512)) return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return (ebx >> 16) & 1;
#endif
}
#endif

int pynn_isa_compiled(pynn_isa isa)
{
#if defined(PYNN_X86_64)
    return isa >= PYNN_ISA_GENERIC && isa <= PYNN_ISA_AVX512;
#else
    return isa == PYNN_ISA_GENERIC;
#endif
}

int pynn_isa_supported(pynn_isa isa)
{
    if (!pynn_isa_compiled(isa)) return 0;
    switch (isa) {
    case PYNN_ISA_GENERIC: return 1;
#if defined(PYNN_X86_64)
    case PYNN_ISA_AVX2: return cpu_has_avx2_fma();
    case PYNN_ISA_AVX512: return cpu_has_avx512f();
#endif
    default: return 0;
    }
}

pynn_isa pynn_isa_best(void)
{
    for (int isa = PYNN_ISA_COUNT - 1; isa > PYNN_ISA_GENERIC; isa--)
        if (pynn_isa_supported((pynn_isa)isa)) return (pynn_isa)isa;
    return PYNN_ISA_GENERIC;
}

const char *pynn_isa_name(pynn_isa isa)
{
    switch (isa) {
    case PYNN_ISA_GENERIC: return "generic";
    case PYNN_ISA_AVX2: return "avx2";
    case PYNN_ISA_AVX512: return "avx512";
    default: return "unknown";
    }
}

const char *pynn_compiler_version(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown compiler";
#endif
}

int pynn_openmp_enabled(void)
{
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* Used where neither CPUID nor the OS reports the caches. */
#define FALLBACK_L1D (32L << 10)
#define FALLBACK_L2 (1L << 20)

static pynn_caches caches = {FALLBACK_L1D, FALLBACK_L2, 0, 1, 1};

#if defined(PYNN_X86_64)
/* The deterministic cache parameters (Intel's leaf 4, AMD's 0x8000001D, the
 * same layout): 1 when the leaf described at least the L2. */
static int read_cache_leaf(unsigned int leaf)
{
    unsigned int eax, ebx, ecx, edx, highest = __get_cpuid_max(leaf & 0x80000000u, NULL);
    if (highest < leaf) return 0;
    int found = 0;
    for (unsigned int index = 0; index < 16; index++) {
        __cpuid_count(leaf, index, eax, ebx, ecx, edx);
        unsigned int type = eax & 31, level = (eax >> 5) & 7;
        if (type == 0) break;
        if (type == 2) continue; /* instruction cache */
        long size = (long)((ebx >> 22) + 1) * (((ebx >> 12) & 0x3FF) + 1) * ((ebx & 0xFFF) + 1) *
                    ((long)ecx + 1);
        int sharing = (int)((eax >> 14) & 0xFFF) + 1;
        if (level == 1) caches.l1d = size;
        if (level == 2) { caches.l2 = size; caches.l2_sharing = sharing; found = 1; }
        if (level == 3) { caches.l3 = size; caches.l3_sharing = sharing; }
    }
    return found;
}
#endif

static void read_caches_from_os(void)
{
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL1_DCACHE_SIZE)
    long l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l1d > 0) caches.l1d = l1d;
    if (l2 > 0) caches.l2 = l2;
    if (l3 > 0) caches.l3 = l3;
#endif
}

__attribute__((constructor)) static void read_caches(void)
{
#if defined(PYNN_X86_64)
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    __get_cpuid(0, &eax, &ebx, &ecx, &edx);
    int amd = ebx == 0x68747541u; /* "Auth"enticAMD */
    if (read_cache_leaf(amd ? 0x8000001Du : 4u)) return;
    caches = (pynn_caches){FALLBACK_L1D, FALLBACK_L2, 0, 1, 1};
#endif
    read_caches_from_os();
}

const pynn_caches *pynn_cache_info(void)
{
    return &caches;
}
