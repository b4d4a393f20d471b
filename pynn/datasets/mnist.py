"""MNIST and Fashion-MNIST from files the user already has (never downloaded).

The idx format (LeCun et al.): a big-endian header -- two zero bytes, a type
code (0x08 = unsigned byte), the number of dimensions -- then one uint32 per
dimension, then the data. Images are idx3 (count, rows, columns), labels idx1
(count). Every size is checked against the header before anything is
allocated, so a corrupt or hostile file fails with a message naming it."""
import gzip
import os
import zipfile
import zlib

import numpy as np

_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UNSIGNED_BYTE = 0x08
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CHUNK_BYTES = 1 << 24
_NPZ_ERRORS = (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error)


def load_mnist(path):
    """Read MNIST or Fashion-MNIST from ``path``.

    ``path`` is either a folder holding the four standard idx files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; each may be
    gzipped with a ``.gz`` suffix, and the ``train-images.idx3-ubyte``
    spelling is accepted too), or an ``.npz`` file (or a folder holding
    exactly one) with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``
    as Keras ships them (uint8 images ``[N, 28, 28]``).

    Returns ``(x_train, y_train), (x_test, y_test)`` as Keras does, but with
    images laid out NCHW for pynn's layers: ``x`` float32 ``[N, 1, rows,
    columns]`` (``[N, 1, 28, 28]`` for MNIST) scaled from 0..255 to [0, 1]
    (apply ``Flatten`` or ``reshape(N, -1)`` for a dense network); ``y`` int64
    ``[N]`` class indices.

    Raises FileNotFoundError when the files are missing and ValueError, naming
    the file, when one is malformed (bad magic number, truncated, trailing
    bytes, image and label counts that differ)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return _load_npz(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_mnist: {path!r} is neither a folder nor an .npz file")
    npz_files = sorted(name for name in os.listdir(path) if name.endswith(".npz"))
    if not any(_find_idx(path, name) for pair in _SPLITS.values() for name in pair):
        if len(npz_files) == 1:
            return _load_npz(os.path.join(path, npz_files[0]))
    return tuple(_load_split(path, *_SPLITS[split]) for split in ("train", "test"))


def _find_idx(folder, name):
    dotted = name.replace("-idx", ".idx", 1)
    for candidate in (name, dotted):
        for suffix in ("", ".gz"):
            full = os.path.join(folder, candidate + suffix)
            if os.path.isfile(full):
                return full
    return None


def _load_split(folder, images_name, labels_name):
    found = {}
    for name in (images_name, labels_name):
        found[name] = _find_idx(folder, name)
        if found[name] is None:
            raise FileNotFoundError(
                f"load_mnist: {name} (or {name}.gz) not found in {folder!r}; "
                "pynn never downloads data, fetch the MNIST files yourself")
    images = _read_idx(found[images_name], ndim=3)
    labels = _read_idx(found[labels_name], ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"load_mnist: {found[images_name]} holds {images.shape[0]} images but "
            f"{found[labels_name]} holds {labels.shape[0]} labels")
    return _scale_images(images)[:, None], labels.astype(np.int64)


def _read_idx(filename, ndim):
    opener = gzip.open if filename.endswith(".gz") else open
    try:
        with opener(filename, "rb") as file:
            header = file.read(4 + 4 * ndim)
            if len(header) < 4:
                raise ValueError(f"load_mnist: {filename} is truncated: {len(header)} bytes, no idx header")
            zero, type_code, file_ndim = int.from_bytes(header[:2], "big"), header[2], header[3]
            if zero != 0 or type_code != _UNSIGNED_BYTE or file_ndim != ndim:
                expected = (_UNSIGNED_BYTE << 8) | ndim
                raise ValueError(
                    f"load_mnist: {filename} has magic number 0x{header[:4].hex()}, expected "
                    f"0x{expected:08x} (idx{ndim}, unsigned bytes)")
            if len(header) < 4 + 4 * ndim:
                raise ValueError(f"load_mnist: {filename} is truncated inside its header")
            shape = tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
            size = int(np.prod(shape, dtype=np.int64))
            data = _read_at_most(file, size + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"load_mnist: cannot read {filename}: {error}") from None
    if len(data) != size:
        problem = "trailing bytes after" if len(data) > size else f"only {len(data)} bytes of"
        raise ValueError(
            f"load_mnist: {filename} is malformed: {problem} the {size} data bytes its "
            f"header promises for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _read_at_most(file, limit):
    """Up to ``limit`` bytes, in chunks: memory follows what the file really
    holds, never what its header claims. Asking for one byte past the promised
    size tells truncation (short) from trailing garbage (long)."""
    chunks, remaining = [], limit
    while remaining:
        chunk = file.read(min(remaining, _CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _load_npz(filename):
    try:
        archive = np.load(filename, allow_pickle=False)
    except _NPZ_ERRORS as error:
        raise ValueError(f"load_mnist: cannot read {filename} as an npz archive: {error}") from None
    with archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"load_mnist: {filename} lacks the arrays {missing}; it holds {archive.files}")
        try:
            arrays = {key: archive[key] for key in _NPZ_KEYS}
        except _NPZ_ERRORS as error:
            raise ValueError(f"load_mnist: cannot read the arrays of {filename}: {error}") from None
    splits = []
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        x, y = arrays[x_key], arrays[y_key]
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 1):
            raise ValueError(
                f"load_mnist: {filename}: {x_key} must be uint8 [N, rows, columns] or "
                f"[N, 1, rows, columns], got {x.dtype} {x.shape}")
        if y.dtype.kind not in "iu" or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"load_mnist: {filename}: {y_key} must be integer [{x.shape[0]}] to match "
                f"{x_key}, got {y.dtype} {y.shape}")
        images = _scale_images(x)
        splits.append((images if x.ndim == 4 else images[:, None], y.astype(np.int64)))
    return tuple(splits)


def _scale_images(pixels):
    images = pixels.astype(np.float32)
    images /= 255.0
    return images
