/* The per-ISA kernel tables: each ISA path's code and its per-CPU thresholds,
 * one table per family, gathered in one pynn_kernels per path. A context
 * (cpu.h) carries the chosen path's table and every kernel reaches its code
 * through it, so nothing is chosen from global state.
 *
 * Each family file defines its table type and, with PYNN_EACH_ISA, one copy
 * of its ISA-specific functions and one table per path: pynn_<family>_generic,
 * pynn_<family>_avx2 and pynn_<family>_avx512. The AVX-512 table may point at
 * 256-bit functions where they measured as fast. */
#ifndef PYNN_KERNELS_H
#define PYNN_KERNELS_H

#include "cpu.h"

struct pynn_kernels {
    pynn_isa isa;
    const struct pynn_gemm_kernels *gemm;           /* gemm_kernels.h */
    const struct pynn_activation_kernels *activations;  /* activations.c */
    const struct pynn_loss_kernels *loss;           /* loss.c */
    const struct pynn_dense_kernels *dense;         /* dense.c */
    const struct pynn_conv_kernels *conv;           /* conv.c */
    const struct pynn_pool_kernels *pool;           /* pool.c */
    const struct pynn_optim_kernels *optim;         /* optim.c */
    const struct pynn_tensor_kernels *tensor;       /* tensor.c */
    const struct pynn_layernorm_kernels *layernorm; /* layernorm.c */
    const struct pynn_batchnorm_kernels *batchnorm; /* batchnorm.c */
    const struct pynn_attention_kernels *attention; /* attention.c */
    const struct pynn_depthwise_kernels *depthwise; /* conv_depthwise.c */
};

/* The table of a path this build compiled (pynn_isa_compiled). */
const pynn_kernels *pynn_kernels_for(pynn_isa isa);

/* VARIANT(suffix, attribute) once per path: the portable one, and on x86-64
 * AVX2 + FMA and AVX-512, each with its function attribute (cpu.h). */
#if defined(PYNN_X86_64)
#define PYNN_EACH_ISA(VARIANT) \
    VARIANT(generic, ) VARIANT(avx2, PYNN_TARGET_AVX2) VARIANT(avx512, PYNN_TARGET_AVX512)
#else
#define PYNN_EACH_ISA(VARIANT) VARIANT(generic, )
#endif

#define PYNN_DECLARE_TABLES(family)                                                   \
    extern const struct pynn_##family##_kernels pynn_##family##_generic;              \
    extern const struct pynn_##family##_kernels pynn_##family##_avx2;                 \
    extern const struct pynn_##family##_kernels pynn_##family##_avx512;

PYNN_DECLARE_TABLES(gemm)
PYNN_DECLARE_TABLES(activation)
PYNN_DECLARE_TABLES(loss)
PYNN_DECLARE_TABLES(dense)
PYNN_DECLARE_TABLES(conv)
PYNN_DECLARE_TABLES(pool)
PYNN_DECLARE_TABLES(optim)
PYNN_DECLARE_TABLES(tensor)
PYNN_DECLARE_TABLES(layernorm)
PYNN_DECLARE_TABLES(batchnorm)
PYNN_DECLARE_TABLES(attention)
PYNN_DECLARE_TABLES(depthwise)

#endif
