# Raw pointers into arrays the Python layer has already validated. These
# checks are the last line of defence against a crash if a caller skips that
# validation: a wrong array raises instead of being read out of bounds.
from libc.stdint cimport int64_t


cdef inline cnp.ndarray checked(object array, int type_num, Py_ssize_t size, str role):
    if not cnp.PyArray_Check(array):
        raise TypeError(f"{role} must be a numpy array, got {type(array).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>array
    if cnp.PyArray_TYPE(a) != type_num or not cnp.PyArray_IS_C_CONTIGUOUS(a) \
            or not cnp.PyArray_ISALIGNED(a):
        raise TypeError(f"{role} must be an aligned, C-contiguous "
                        f"{cnp.PyArray_DescrFromType(type_num)} array, got {a.dtype}")
    if size >= 0 and cnp.PyArray_SIZE(a) != size:
        raise ValueError(f"{role} must have {size} elements, got {cnp.PyArray_SIZE(a)}")
    return a


cdef inline const float *float_input(object array, Py_ssize_t size, str role) except NULL:
    return <const float *>cnp.PyArray_DATA(checked(array, cnp.NPY_FLOAT32, size, role))


cdef inline float *float_output(object array, Py_ssize_t size, str role) except NULL:
    cdef cnp.ndarray a = checked(array, cnp.NPY_FLOAT32, size, role)
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{role} must be writable")
    return <float *>cnp.PyArray_DATA(a)


cdef inline const int64_t *index_input(object array, Py_ssize_t size, str role) except NULL:
    return <const int64_t *>cnp.PyArray_DATA(checked(array, cnp.NPY_INT64, size, role))
