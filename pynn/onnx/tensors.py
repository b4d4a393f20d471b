"""ONNX TensorProto -> numpy array, for an untrusted file: the element type
must be one pynn reads, the data must hold exactly the elements the declared
dims call for, and external data must stay inside the model's folder."""
import math
import os

import numpy as np

from pynn.architecture import ModelFormatError

# TensorProto.DataType -> (numpy dtype, the typed field holding the values)
ELEMENT_TYPES = {
    1: (np.float32, "float_data"), 2: (np.uint8, "int32_data"), 3: (np.int8, "int32_data"),
    4: (np.uint16, "int32_data"), 5: (np.int16, "int32_data"), 6: (np.int32, "int32_data"),
    7: (np.int64, "int64_data"), 9: (np.bool_, "int32_data"), 10: (np.float16, "int32_data"),
    11: (np.float64, "double_data"), 12: (np.uint32, "uint64_data"),
    13: (np.uint64, "uint64_data"),
}
MAX_ELEMENTS = 1 << 31       # per tensor; larger ones are refused before any allocation
MAX_RANK = 8
_EXTERNAL = 1                # TensorProto.DataLocation.EXTERNAL


def numpy_dtype(element_type, where):
    """The numpy dtype of a TensorProto element type pynn reads."""
    try:
        return np.dtype(ELEMENT_TYPES[element_type][0])
    except (KeyError, TypeError):
        raise ModelFormatError(f"{where}: element type {element_type!r:.20} is not one pynn "
                               f"reads (float, double, float16, bool and integers)") from None


def checked_dims(dims, where):
    dims = tuple(int(extent) for extent in dims)
    if len(dims) > MAX_RANK or any(extent < 0 for extent in dims):
        raise ModelFormatError(f"{where}: dims {dims!r:.80} must be at most {MAX_RANK} sizes >= 0")
    if math.prod(dims) > MAX_ELEMENTS:
        raise ModelFormatError(f"{where}: dims {dims} hold more than {MAX_ELEMENTS} elements")
    return dims


def to_array(tensor, folder, where):
    """The values of ``tensor`` as a new native-endian array of its dims.
    ``folder`` is the model file's folder (external data), or None to refuse it."""
    where = f"{where} (tensor {tensor.name!r:.60})" if tensor.name else where
    dtype = numpy_dtype(tensor.data_type, where)
    dims = checked_dims(tensor.dims, where)
    count = math.prod(dims)
    if tensor.HasField("segment"):
        raise ModelFormatError(f"{where}: segmented tensors are not supported")
    if tensor.data_location == _EXTERNAL:
        raw = _external_bytes(tensor, folder, count * dtype.itemsize, where)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        return _typed_values(tensor, dtype, dims, count, where)
    if len(raw) != count * dtype.itemsize:
        raise ModelFormatError(f"{where}: {len(raw)} bytes of data for dims {dims} of "
                               f"{dtype.name} ({count * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)


def _typed_values(tensor, dtype, dims, count, where):
    field = ELEMENT_TYPES[tensor.data_type][1]
    values = getattr(tensor, field)
    if len(values) != count:
        raise ModelFormatError(f"{where}: {len(values)} values in {field} for dims {dims} "
                               f"({count} elements)")
    if dtype == np.float16:  # stored as the 16-bit patterns
        bits = np.array(values, dtype=np.int64)
        if bits.size and (bits.min() < 0 or bits.max() > 0xFFFF):
            raise ModelFormatError(f"{where}: float16 bit patterns must lie in 0..65535")
        return bits.astype(np.uint16).view(np.float16).reshape(dims)
    source = np.array(values)
    if source.size and dtype.kind in "iub" and source.dtype.kind in "iu":
        info = np.iinfo(np.uint8) if dtype.kind == "b" else np.iinfo(dtype)
        if source.min() < info.min or source.max() > info.max:
            raise ModelFormatError(f"{where}: values in {field} lie outside {dtype.name}'s range")
    return source.astype(dtype).reshape(dims)


def _external_bytes(tensor, folder, expected, where):
    """The bytes an external-data reference names, read only from a regular
    file inside ``folder`` (no absolute path, no '..', no symlink out)."""
    if folder is None:
        raise ModelFormatError(f"{where}: external data is only read for a model loaded from a file")
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    parts = location.replace("\\", "/").split("/")
    if (not location or "\x00" in location or os.path.isabs(location) or location.startswith(("/", "\\"))
            or (len(location) > 1 and location[1] == ":") or ".." in parts):
        raise ModelFormatError(f"{where}: external data location {location!r:.80} must be a "
                               f"relative path inside the model's folder")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, *[part for part in parts if part]))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        raise ModelFormatError(f"{where}: external data {location!r:.80} is not a file inside "
                               f"the model's folder")
    offset = _count_entry(entries, "offset", 0, where)
    length = _count_entry(entries, "length", expected, where)
    if length != expected:
        raise ModelFormatError(f"{where}: external data length {length} does not match the "
                               f"{expected} bytes its dims call for")
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if offset + length > size:
            raise ModelFormatError(f"{where}: external data [{offset}, {offset + length}) lies "
                                   f"beyond the end of {location!r:.80} ({size} bytes)")
        stream.seek(offset)
        data = stream.read(length)
    if len(data) != length:
        raise ModelFormatError(f"{where}: external data {location!r:.80} ended early")
    return data


def _count_entry(entries, key, default, where):
    text = entries.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ModelFormatError(f"{where}: external data {key} must be a non-negative integer, "
                               f"got {text!r:.40}")
    return int(text)
