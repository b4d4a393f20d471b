# The kernels' shared runtime state. Every kernel module cimports
# current_context() and hands the context to its C code.

cdef extern from "cpu.h" nogil:
    ctypedef enum pynn_isa:
        PYNN_ISA_GENERIC
        PYNN_ISA_AVX2
        PYNN_ISA_AVX512
    int PYNN_ISA_COUNT
    ctypedef int atomic_int
    ctypedef struct pynn_context:
        pynn_isa isa
        int num_threads
        atomic_int *team_busy
    int pynn_isa_compiled(pynn_isa isa)
    int pynn_isa_supported(pynn_isa isa)
    pynn_isa pynn_isa_best()
    const char *pynn_isa_name(pynn_isa isa)
    const char *pynn_compiler_version()
    int pynn_openmp_enabled()

cdef pynn_context current_context() noexcept nogil
