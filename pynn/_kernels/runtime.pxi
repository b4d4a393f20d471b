# Holds the context every kernel receives: the chosen ISA path's kernel
# tables, the thread count and the team flag.
#
# Validation of user-facing values happens in pynn.config; this file only
# stores what it is given and reports what the build and the CPU offer.

cdef extern from "cpu.h" nogil:
    ctypedef enum pynn_isa:
        PYNN_ISA_GENERIC
        PYNN_ISA_AVX2
        PYNN_ISA_AVX512
    int PYNN_ISA_COUNT
    ctypedef int atomic_int
    ctypedef struct pynn_kernels:
        pynn_isa isa
    ctypedef struct pynn_context:
        const pynn_kernels *kernels
        int num_threads
        atomic_int *team_busy
    int pynn_isa_compiled(pynn_isa isa)
    int pynn_isa_supported(pynn_isa isa)
    pynn_isa pynn_isa_best()
    const char *pynn_isa_name(pynn_isa isa)
    const char *pynn_compiler_version()
    int pynn_openmp_enabled()

cdef extern from *:
    """
    #ifndef PYNN_BUILD_FLAGS
    #define PYNN_BUILD_FLAGS "unknown"
    #endif
    """
    const char *PYNN_BUILD_FLAGS

cdef extern from *:
    """
    /* The process's one "a kernel team is running" flag (cpu.h). */
    static atomic_int pynn_team_busy;
    """
    atomic_int pynn_team_busy

cdef extern from "kernels.h" nogil:
    const pynn_kernels *pynn_kernels_for(pynn_isa isa)

cdef pynn_context _context
_context.kernels = pynn_kernels_for(pynn_isa_best())
_context.num_threads = 1
_context.team_busy = &pynn_team_busy

ISA_NAMES = tuple(pynn_isa_name(<pynn_isa>i).decode() for i in range(PYNN_ISA_COUNT))


cdef pynn_context current_context() noexcept nogil:
    return _context


def compiled_isas():
    return tuple(name for i, name in enumerate(ISA_NAMES) if pynn_isa_compiled(<pynn_isa>i))


def supported_isas():
    return tuple(name for i, name in enumerate(ISA_NAMES) if pynn_isa_supported(<pynn_isa>i))


def best_isa():
    return pynn_isa_name(pynn_isa_best()).decode()


def chosen_isa():
    return pynn_isa_name(_context.kernels.isa).decode()


def choose_isa(str name):
    """Select a path by name; the caller has checked it is supported."""
    cdef int index = ISA_NAMES.index(name)
    _context.kernels = pynn_kernels_for(<pynn_isa>index)


def set_threads(int count):
    _context.num_threads = count


def get_threads():
    return _context.num_threads


def team_running():
    """Whether a kernel's parallel team holds the cores (cpu.h); between calls
    it never should."""
    return pynn_team_busy != 0


def hold_team(bint held):
    """Mark the team running (or free again) as another call's would, so a
    test can see what a call refused the cores computes."""
    global pynn_team_busy
    pynn_team_busy = held


def build_info():
    return {
        "compiler": pynn_compiler_version().decode(),
        "flags": PYNN_BUILD_FLAGS.decode(),
        "openmp": bool(pynn_openmp_enabled()),
    }
