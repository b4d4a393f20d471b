/* The tables of every compiled path (contract in kernels.h). */
#include "kernels.h"

#define PATH(isa, suffix)                                                             \
    [isa] = {isa, &pynn_gemm_##suffix, &pynn_activation_##suffix, &pynn_loss_##suffix,       \
             &pynn_dense_##suffix, &pynn_conv_##suffix, &pynn_pool_##suffix,          \
             &pynn_optim_##suffix, &pynn_tensor_##suffix, &pynn_layernorm_##suffix,   \
             &pynn_batchnorm_##suffix, &pynn_attention_##suffix, &pynn_depthwise_##suffix}

static const pynn_kernels paths[PYNN_ISA_COUNT] = {
    PATH(PYNN_ISA_GENERIC, generic),
#if defined(PYNN_X86_64)
    PATH(PYNN_ISA_AVX2, avx2),
    PATH(PYNN_ISA_AVX512, avx512),
#endif
};

const pynn_kernels *pynn_kernels_for(pynn_isa isa)
{
    return pynn_isa_compiled(isa) ? &paths[isa] : &paths[PYNN_ISA_GENERIC];
}
