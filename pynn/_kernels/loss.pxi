# Fused losses over float32 buffers (csrc/loss.c).
from libc.math cimport isnan
from libc.stdint cimport int64_t


cdef extern from "loss.h" nogil:
    int pynn_cross_entropy(const pynn_context *ctx, Py_ssize_t n, Py_ssize_t classes,
                           const float *logits, const int64_t *target, float *grad, double *loss)
    double pynn_mse(const pynn_context *ctx, Py_ssize_t count, const float *pred,
                    const float *target, float *grad)
    double pynn_bce_with_logits(const pynn_context *ctx, Py_ssize_t count, const float *logits,
                                const float *target, float *grad)


cdef float *optional_output(object grad, Py_ssize_t size) except? NULL:
    return NULL if grad is None else float_output(grad, size, "grad")


def cross_entropy(logits, target, grad, str where="cross_entropy"):
    """Mean cross-entropy of logits [n, classes] against int64 class indices
    [n]; writes dloss/dlogits into grad unless it is None."""
    cdef Py_ssize_t n = logits.shape[0], classes = logits.shape[1]
    cdef const float *x = float_input(logits, n * classes, "logits")
    cdef const int64_t *t = index_input(target, n, "target")
    cdef float *g = optional_output(grad, n * classes)
    cdef Py_ssize_t i, bad = -1
    with nogil:
        for i in range(n):
            if t[i] < 0 or t[i] >= classes:
                bad = i
                break
    if bad >= 0:
        raise IndexError(f"{where}: target holds class {t[bad]} at position {bad}, "
                         f"outside [0, {classes}) for logits of shape {tuple(logits.shape)}")
    cdef pynn_context ctx = current_context()
    cdef double loss
    cdef int status
    with nogil:
        status = pynn_cross_entropy(&ctx, n, classes, x, t, g, &loss)
    if status != 0:
        raise MemoryError(f"{where}: no memory for {n} per-row losses")
    return loss


cdef int check_finite_target(const float *t, Py_ssize_t count, str where) except -1:
    cdef Py_ssize_t i, bad = -1
    with nogil:
        for i in range(count):
            if isnan(t[i]):
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"{where}: target holds NaN at flat position {bad}")
    return 0


ctypedef double (*elementwise_loss)(const pynn_context *ctx, Py_ssize_t count, const float *pred,
                                    const float *target, float *grad) noexcept nogil


cdef double mean_elementwise_loss(elementwise_loss kernel, pred, target, grad, str where) except? -1:
    cdef Py_ssize_t count = cnp.PyArray_SIZE(pred)
    cdef const float *p = float_input(pred, count, "pred")
    cdef const float *t = float_input(target, count, "target")
    cdef float *g = optional_output(grad, count)
    check_finite_target(t, count, where)
    cdef pynn_context ctx = current_context()
    cdef double loss
    with nogil:
        loss = kernel(&ctx, count, p, t, g)
    return loss


def mse(pred, target, grad, str where="mse"):
    """Mean squared error; writes its gradient into grad unless None. NaN targets are refused."""
    return mean_elementwise_loss(pynn_mse, pred, target, grad, where)


def bce_with_logits(logits, target, grad, str where="binary_cross_entropy_with_logits"):
    """Mean binary cross-entropy of logits against targets in [0, 1]; NaN targets are refused."""
    return mean_elementwise_loss(pynn_bce_with_logits, logits, target, grad, where)
