# Fused losses over float32 buffers (csrc/loss.c).
from libc.math cimport isnan
from libc.stdint cimport int64_t


cdef extern from "loss.h" nogil:
    ctypedef struct pynn_class_loss_options:
        const float *weight
        int64_t ignore_index
        double label_smoothing
        int mean
    int pynn_cross_entropy(const pynn_context *ctx, Py_ssize_t n, Py_ssize_t classes,
                           const float *logits, const int64_t *target,
                           const pynn_class_loss_options *options, float *grad, double *loss)
    double pynn_nll_loss(const pynn_context *ctx, Py_ssize_t n, Py_ssize_t classes,
                         const float *log_probs, const int64_t *target,
                         const pynn_class_loss_options *options, float *grad)
    double pynn_mse(const pynn_context *ctx, Py_ssize_t count, const float *pred,
                    const float *target, float *grad, int mean)
    double pynn_l1_loss(const pynn_context *ctx, Py_ssize_t count, const float *pred,
                        const float *target, float *grad, int mean)
    double pynn_huber_loss(const pynn_context *ctx, Py_ssize_t count, const float *pred,
                           const float *target, float *grad, int mean, double delta)
    double pynn_bce_with_logits(const pynn_context *ctx, Py_ssize_t count, const float *logits,
                                const float *target, const float *pos_weight, Py_ssize_t period,
                                float *grad, int mean)


cdef float *optional_output(object grad, Py_ssize_t size) except? NULL:
    return NULL if grad is None else float_output(grad, size, "grad")


cdef const float *optional_float_input(object array, Py_ssize_t size, str role) except? NULL:
    if array is None:
        return NULL
    return float_input(array, size, role)


cdef pynn_class_loss_options class_loss_options(
        Py_ssize_t n, Py_ssize_t classes, const int64_t *t, weight, int64_t ignore_index,
        double label_smoothing, bint mean, tuple shape, str where) except *:
    """The options of a class-index loss, once every target is a class or ignore_index."""
    cdef Py_ssize_t i, bad = -1
    with nogil:
        for i in range(n):
            if (t[i] < 0 or t[i] >= classes) and t[i] != ignore_index:
                bad = i
                break
    if bad >= 0:
        raise IndexError(f"{where}: target holds class {t[bad]} at position {bad}, "
                         f"outside [0, {classes}) for input of shape {shape}")
    cdef pynn_class_loss_options options
    options.weight = optional_float_input(weight, classes, "weight")
    options.ignore_index = ignore_index
    options.label_smoothing = label_smoothing
    options.mean = mean
    return options


def cross_entropy(logits, target, grad, weight=None, int64_t ignore_index=-100,
                  double label_smoothing=0.0, bint mean=True, str where="cross_entropy"):
    """Cross-entropy of logits [n, classes] against int64 class indices [n]
    (loss.h); writes dloss/dlogits into grad unless it is None."""
    cdef Py_ssize_t n = logits.shape[0], classes = logits.shape[1]
    cdef const float *x = float_input(logits, n * classes, "logits")
    cdef const int64_t *t = index_input(target, n, "target")
    cdef float *g = optional_output(grad, n * classes)
    cdef pynn_class_loss_options options = class_loss_options(
        n, classes, t, weight, ignore_index, label_smoothing, mean, tuple(logits.shape), where)
    cdef pynn_context ctx = current_context()
    cdef double loss
    cdef int status
    with nogil:
        status = pynn_cross_entropy(&ctx, n, classes, x, t, &options, g, &loss)
    if status != 0:
        raise MemoryError(f"{where}: no memory for {n} per-row losses")
    return loss


def nll_loss(log_probs, target, grad, weight=None, int64_t ignore_index=-100, bint mean=True,
             str where="nll_loss"):
    """Negative log-likelihood of log-probabilities [n, classes] against int64
    class indices [n]; writes its gradient into grad unless it is None."""
    cdef Py_ssize_t n = log_probs.shape[0], classes = log_probs.shape[1]
    cdef const float *x = float_input(log_probs, n * classes, "log_probs")
    cdef const int64_t *t = index_input(target, n, "target")
    cdef float *g = optional_output(grad, n * classes)
    cdef pynn_class_loss_options options = class_loss_options(
        n, classes, t, weight, ignore_index, 0.0, mean, tuple(log_probs.shape), where)
    cdef pynn_context ctx = current_context()
    cdef double loss
    with nogil:
        loss = pynn_nll_loss(&ctx, n, classes, x, t, &options, g)
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


cdef enum ElementwiseLoss:
    MSE, L1, HUBER


cdef double elementwise_loss(ElementwiseLoss kind, pred, target, grad, bint mean, double delta,
                             str where) except? -1:
    cdef Py_ssize_t count = cnp.PyArray_SIZE(pred)
    cdef const float *p = float_input(pred, count, "pred")
    cdef const float *t = float_input(target, count, "target")
    cdef float *g = optional_output(grad, count)
    check_finite_target(t, count, where)
    cdef pynn_context ctx = current_context()
    cdef double loss
    with nogil:
        if kind == MSE:
            loss = pynn_mse(&ctx, count, p, t, g, mean)
        elif kind == L1:
            loss = pynn_l1_loss(&ctx, count, p, t, g, mean)
        else:
            loss = pynn_huber_loss(&ctx, count, p, t, g, mean, delta)
    return loss


def mse(pred, target, grad, bint mean=True, str where="mse"):
    """Squared error; writes its gradient into grad unless None. NaN targets are refused."""
    return elementwise_loss(MSE, pred, target, grad, mean, 0.0, where)


def l1_loss(pred, target, grad, bint mean=True, str where="l1_loss"):
    """Absolute error; writes its gradient into grad unless None. NaN targets are refused."""
    return elementwise_loss(L1, pred, target, grad, mean, 0.0, where)


def huber_loss(pred, target, grad, double delta=1.0, bint mean=True, str where="huber_loss"):
    """Huber loss with threshold delta > 0; NaN targets are refused."""
    return elementwise_loss(HUBER, pred, target, grad, mean, delta, where)


def bce_with_logits(logits, target, grad, pos_weight=None, bint mean=True,
                    str where="binary_cross_entropy_with_logits"):
    """Binary cross-entropy of logits against targets in [0, 1], pos_weight
    (float32 [period], period the last axis's length) weighing the positive
    term; NaN targets are refused."""
    cdef Py_ssize_t count = cnp.PyArray_SIZE(logits)
    cdef Py_ssize_t period = 1 if pos_weight is None else cnp.PyArray_SIZE(pos_weight)
    if count and (period == 0 or count % period != 0):
        raise ValueError(f"{where}: pos_weight of {period} values does not tile {count} logits")
    cdef const float *x = float_input(logits, count, "logits")
    cdef const float *t = float_input(target, count, "target")
    cdef const float *w = optional_float_input(pos_weight, period, "pos_weight")
    cdef float *g = optional_output(grad, count)
    check_finite_target(t, count, where)
    cdef pynn_context ctx = current_context()
    cdef double loss
    with nogil:
        loss = pynn_bce_with_logits(&ctx, count, x, t, w, period, g, mean)
    return loss
