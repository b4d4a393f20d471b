# The one compiled extension: every kernel's entry point from Python, each
# family in its own include file beside the C family it wraps (csrc/).
cimport numpy as cnp

cnp.import_array()

include "buffers.pxi"
include "runtime.pxi"
include "gemm.pxi"
include "activations.pxi"
include "dense.pxi"
include "loss.pxi"
include "conv.pxi"
include "pool.pxi"
include "batchnorm.pxi"
include "layernorm.pxi"
include "attention.pxi"
include "optim.pxi"
include "tensor.pxi"
include "plan.pxi"
