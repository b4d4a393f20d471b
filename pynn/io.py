"""The model file: safetensors tensors plus JSON metadata, written atomically,
read as untrusted input.

Reading never executes anything from the file: the header is JSON, checked
field by field (sizes, offsets, dtypes, shapes) before the safetensors package
splits the data into tensors, and an architecture names layer types that are looked up
in ``LAYER_TYPES``, never imported. Every defect raises ``ModelFormatError``."""
import contextlib
import math
import os
import stat
from io import BytesIO

import numpy as np

from pynn import _hooks, optim
from pynn._checks import as_count
from pynn._version import __version__
from pynn.architecture import (MODEL_FORMAT, SEQUENTIAL_FORMAT, ModelFormatError, architecture_of,
                               build_model as build_architecture)
from pynn.sequential import LoadResult

# safetensors' own ceiling; a longer header is refused before it is read.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Each dtype's storage; BF16 (the top half of a float32) is stored as uint16.
_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64,
    "F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64,
}
_TENSOR_FIELDS = {"dtype", "shape", "data_offsets"}


# -- writing ------------------------------------------------------------------
def write_atomic(path, data):
    """Replace ``path`` by ``data`` so that a crash at any moment leaves either
    the old file or the new one there, never a mix: write a temporary file in
    the same folder, flush and fsync it, rename it over ``path`` (atomic on
    POSIX and Windows), then fsync the folder so the rename itself is durable.
    A crash may leave a stray ``.<name>.*.tmp`` beside ``path``, never a
    damaged ``path``."""
    import secrets

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # 0o666 through the umask, as a plain open() would create it
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileNotFoundError):  # a replaced file keeps its permissions
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if hasattr(os, "O_DIRECTORY"):
        folder_descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder_descriptor)
        finally:
            os.close(folder_descriptor)


def save_tensors(path, tensors, metadata):
    """Write ``tensors`` (name -> array) and ``metadata`` (str -> str) atomically."""
    write_atomic(path, tensors_to_bytes(tensors, metadata))


def tensors_to_bytes(tensors, metadata):
    import safetensors.numpy

    arrays = {name: np.asarray(array, order="C") for name, array in tensors.items()}
    return safetensors.numpy.save(arrays, metadata=metadata)


# -- reading --------------------------------------------------------------------
def read_tensors(path):
    """``(tensors, metadata)`` from a safetensors file, validated before use."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        return _read_validated(file, os.fstat(file.fileno()).st_size, path)


def tensors_from_bytes(data, where="<bytes>"):
    """``read_tensors`` for the content of a file held in memory."""
    return _read_validated(BytesIO(data), len(data), where)


def _read_validated(file, size, where):
    """The header length is checked against the size before the header is
    read, and every tensor's byte range against the data section before any
    tensor is decoded, so nothing larger than the file is ever allocated."""
    if size < 8:
        raise ModelFormatError(f"{where}: truncated: {size} bytes, shorter than the 8-byte header length")
    header_length = int.from_bytes(file.read(8), "little")
    if header_length > min(MAX_HEADER_BYTES, size - 8):
        raise ModelFormatError(
            f"{where}: bad header length {header_length}: the file holds {size - 8} bytes after it "
            f"(and headers are limited to {MAX_HEADER_BYTES})")
    header = _parse_header(file.read(header_length), where)
    metadata = _check_layout(header, size - 8 - header_length, where)
    import safetensors

    file.seek(0)
    content = file.read(size + 1)
    if len(content) != size:
        raise ModelFormatError(f"{where}: the file changed size while it was read")
    try:
        views = safetensors.deserialize(content)
    except Exception as error:  # the package's errors, whatever their class
        raise ModelFormatError(f"{where}: safetensors rejected the file: {error}") from None
    tensors = {}
    for name, view in views:
        entry = header.get(name)
        if (entry is None or view["dtype"] != entry["dtype"] or list(view["shape"]) != entry["shape"]
                or len(view["data"]) != math.prod(entry["shape"]) * np.dtype(_DTYPES[entry["dtype"]]).itemsize):
            raise ModelFormatError(f"{where}: tensor {name!r} decoded differently from its header entry")
        tensors[name] = _as_array(view["data"], entry["dtype"], entry["shape"])
    if len(tensors) != len(header) - ("__metadata__" in header):
        raise ModelFormatError(f"{where}: safetensors decoded {len(tensors)} tensors, the header lists more")
    return tensors, metadata


def _as_array(data, dtype, shape):
    """A tensor's little-endian bytes as an array of its dtype; BF16, which
    numpy lacks, becomes float32 (it is the top 16 bits of one, so a shift
    restores it exactly). Loading into a model converts F16 to float32 too."""
    array = np.frombuffer(data, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _refuse_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _to_json(value):
    # json, like safetensors and secrets, is imported where it is used: none is
    # needed to import pynn, and each adds to every program's start-up.
    import json

    return json.dumps(value)


def parse_json(text, path, what):
    """JSON from an untrusted file: duplicate keys and deep nesting are defects."""
    import json

    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError) as error:
        raise ModelFormatError(f"{path}: {what} is not valid JSON: {error}") from None


def _parse_header(raw, path):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelFormatError(f"{path}: header is not UTF-8: {error}") from None
    header = parse_json(text, path, "header")
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    return header


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(header, data_length, path):
    """Check every entry and that the tensors tile the data section exactly;
    return the metadata dict."""
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()):
        raise ModelFormatError(f"{path}: __metadata__ must map strings to strings")
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != _TENSOR_FIELDS:
            raise ModelFormatError(f"{path}: tensor {name!r} must have exactly the fields "
                                   f"{sorted(_TENSOR_FIELDS)}, got {entry!r:.200}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ModelFormatError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r:.40}; "
                                   f"expected one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_count(extent) for extent in shape):
            raise ModelFormatError(f"{path}: tensor {name!r} has shape {shape!r:.200}, "
                                   "expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
                and offsets[0] <= offsets[1] <= data_length):
            raise ModelFormatError(f"{path}: tensor {name!r} has data_offsets {offsets!r:.200} outside "
                                   f"the {data_length}-byte data section")
        expected = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if offsets[1] - offsets[0] != expected:
            raise ModelFormatError(
                f"{path}: tensor {name!r} is {dtype} {shape}, {expected} bytes, but its "
                f"data_offsets span {offsets[1] - offsets[0]} bytes")
        ranges.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else f"leaves a gap at byte {position}"
            raise ModelFormatError(f"{path}: tensor {name!r} {problem}")
        position = end
    if position != data_length:
        raise ModelFormatError(f"{path}: the tensors cover {position} bytes of a {data_length}-byte "
                               "data section")
    return metadata


# -- models -------------------------------------------------------------------
def architecture_json(model):
    """The architecture as the model file stores it (also how ranks compare models)."""
    return _to_json(architecture_of(model)[1])


def model_metadata(model):
    """The model file's metadata. ``input_shape`` is one sample's shape (a JSON
    list, or null when the model does not know it); files written before it
    was recorded lack it, and load as models whose ``input_shape`` is what
    their first layer implies (``(in_features,)`` after a Linear) or None."""
    shape = model.input_shape
    kind, architecture = architecture_of(model)
    return {"format": kind, "pynn_version": __version__, "architecture": _to_json(architecture),
            "input_shape": _to_json(None if shape is None else list(shape))}


def model_to_bytes(model):
    """The bytes ``model.save`` writes: the state dict as tensors, the
    architecture as JSON (what a model can pickle to, with no code inside)."""
    return tensors_to_bytes(model.state_dict(), model_metadata(model))


def save_model(model, path):
    write_atomic(path, model_to_bytes(model))


def load(path):
    """Rebuild the ``Sequential`` or ``Model`` saved at ``path`` by ``model.save``."""
    return _rebuild(*read_tensors(path), os.fspath(path))


def model_from_bytes(data):
    """Rebuild a model from ``model_to_bytes`` output, as untrusted input."""
    where = "<model bytes>"
    return _rebuild(*tensors_from_bytes(data, where), where)


def _rebuild(tensors, metadata, where):
    model = build_model(metadata, tensors, where)
    _load_state(model, tensors, where, strict=True)
    if "input_shape" in metadata:
        shape = parse_json(metadata["input_shape"], where, "the input_shape")
        if shape is not None and not isinstance(shape, list):
            raise ModelFormatError(f"{where}: input_shape must be a JSON list of sizes or null, "
                                   f"got {shape!r:.60}")
        try:
            model.input_shape = shape
        except (TypeError, ValueError) as error:
            raise ModelFormatError(f"{where}: input_shape {shape!r:.60} does not fit the "
                                   f"architecture: {error}") from None
    return model


def build_model(metadata, tensors, path):
    """A fresh model from the architecture in ``metadata`` (pynn/architecture.py)."""
    kind = metadata.get("format")
    if kind not in (SEQUENTIAL_FORMAT, MODEL_FORMAT) or "architecture" not in metadata:
        raise ModelFormatError(f"{path}: not a pynn model file (metadata format "
                               f"{kind!r:.60}); load its weights with model.load_weights instead")
    architecture = parse_json(metadata["architecture"], path, "the architecture")
    if not isinstance(architecture, list if kind == SEQUENTIAL_FORMAT else dict):
        raise ModelFormatError(f"{path}: the architecture must be a JSON "
                               f"{'list of layers' if kind == SEQUENTIAL_FORMAT else 'object'}")
    return build_architecture(kind, architecture, sum(array.size for array in tensors.values()), path)


def _load_state(model, tensors, path, strict):
    state = _matching_state(model, tensors, path, strict)
    model.load_state_dict(state, strict=False)
    live = model.state_dict()
    return LoadResult([key for key in live if key not in tensors],
                      sorted(key for key in tensors if key not in live))


def _matching_state(model, tensors, path, strict):
    """The tensors to copy into ``model``, after checking names, shapes and
    kinds of every one: all disagreements are reported at once."""
    live = model.state_dict()
    missing = [key for key in live if key not in tensors]
    unexpected = sorted(key for key in tensors if key not in live)
    misfits = []
    for key, target in live.items():
        value = tensors.get(key)
        if value is None:
            continue
        if value.shape != target.shape:
            misfits.append(f"{key} (expected shape {target.shape}, got {value.shape})")
        elif (target.dtype.kind == "f") != (value.dtype.kind == "f") or value.dtype == np.bool_:
            misfits.append(f"{key} (expected {target.dtype} values, got {value.dtype})")
    problems = [f"{label}: {', '.join(keys)}" for label, keys in (
        ("missing keys", missing if strict else []),
        ("unexpected keys", unexpected if strict else []),
        ("mismatched tensors", misfits)) if keys]
    if problems:
        raise ModelFormatError(f"{path}: the file does not match the model; " + "; ".join(problems))
    return {key: tensors[key] for key in live if key in tensors}


def load_weights(model, path, strict=True):
    """``model.load_weights(path)``: tensors by state-dict key from any
    safetensors file (one written by ``safetensors.torch.save_file(
    torch_sequential.state_dict(), path)`` included). With ``strict``, missing
    and unexpected keys are errors; wrong shapes always are. Every problem is
    listed in one ``ModelFormatError`` and the model is left untouched.
    Returns ``(missing_keys, unexpected_keys)``, as PyTorch's load_state_dict."""
    tensors, _ = read_tensors(path)
    return _load_state(model, tensors, path, strict)


# -- optimizers -----------------------------------------------------------------
# An optimizer's state is stored the same way alone (pickling, ``optimizer_to_bytes``)
# and inside a checkpoint: one tensor ``<prefix><parameter>/<slot>`` per
# per-parameter array, and the type and ``param_groups`` as JSON metadata.
OPTIMIZER_FORMAT = "pynn.optimizer"
_OPTIMIZER_TYPES = {cls.__name__: cls for cls in (optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop,
                                                    optim.Adagrad)}


def _optimizer_tensors(state, prefix):
    """``optimizer.state_dict()``'s per-parameter arrays as flat tensors."""
    return {f"{prefix}{name}/{slot}": np.asarray(array)
            for name, entry in state["state"].items() for slot, array in entry.items()}


def _optimizer_state(tensors, prefix):
    """The inverse of ``_optimizer_tensors``: ``{parameter: {slot: array}}``
    from the tensors whose names start with ``prefix``."""
    state = {}
    for key, array in tensors.items():
        if key.startswith(prefix):
            name, _, slot = key[len(prefix):].rpartition("/")
            state.setdefault(name, {})[slot] = array
    return state


def _optimizer_like(kind, model, param_groups, where):
    """A fresh ``kind`` optimizer for ``model`` built from saved ``param_groups``:
    its constructor checks every hyperparameter, so a hostile value is refused."""
    if not (isinstance(param_groups, list) and len(param_groups) == 1 and isinstance(param_groups[0], dict)):
        raise ModelFormatError(f"{where}: the optimizer state must hold one parameter group")
    try:
        return kind(model, **param_groups[0])
    except Exception as error:
        raise ModelFormatError(f"{where}: the saved {kind.__name__} hyperparameters "
                               f"{param_groups[0]!r:.200} are invalid: {error}") from None


def optimizer_to_bytes(optimizer):
    """Safetensors bytes of the per-parameter state, hyperparameters as JSON."""
    state = optimizer.state_dict()
    metadata = {"format": OPTIMIZER_FORMAT, "type": type(optimizer).__name__,
                "param_groups": _to_json(state["param_groups"])}
    return tensors_to_bytes(_optimizer_tensors(state, ""), metadata)


def optimizer_from_bytes(model, data):
    """An optimizer for ``model`` rebuilt from ``optimizer_to_bytes`` output,
    read as untrusted input: defects raise ``ModelFormatError``."""
    where = "<optimizer bytes>"
    tensors, metadata = tensors_from_bytes(data, where)
    if metadata.get("format") != OPTIMIZER_FORMAT:
        raise ModelFormatError(f"{where}: not pynn optimizer state (metadata format "
                               f"{metadata.get('format')!r:.60})")
    kind = _OPTIMIZER_TYPES.get(metadata.get("type"))
    if kind is None:
        raise ModelFormatError(f"{where}: unknown optimizer type {metadata.get('type')!r:.60}, "
                               f"expected one of {sorted(_OPTIMIZER_TYPES)}")
    groups = parse_json(metadata.get("param_groups", ""), where, "the optimizer's param_groups")
    optimizer = _optimizer_like(kind, model, groups, where)
    try:
        optimizer.load_state_dict({"state": _optimizer_state(tensors, ""), "param_groups": groups})
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{where}: the {kind.__name__} state does not fit the model: "
                               f"{error}") from None
    return optimizer


# -- checkpoints ----------------------------------------------------------------
CHECKPOINT_FORMAT = "pynn.checkpoint"


def _layer_generators(model):
    """``(layer name, attribute, Generator)`` for every random generator a
    layer keeps (Dropout's masks): part of the state a resumed run must restore."""
    for index, layer in model.named_layers():
        for attribute, value in sorted(vars(layer).items()):
            if isinstance(value, np.random.Generator):
                yield index, attribute, value


def save_checkpoint(path, model, optimizer, epoch=0, scheduler=None, rng=None):
    """Write everything a resumed run needs, atomically, as one safetensors
    file: the model's state dict (``model/<key>``), the optimizer's
    per-parameter state (``optimizer/<param>/<name>``), and as JSON metadata
    its hyperparameters, ``epoch``, the scheduler's state and the state of
    every random generator: the layers' own (Dropout) and ``rng`` if given
    (a ``numpy.random.Generator`` driving the caller's loop).

    ``fit(seed=s)`` restarts its shuffling (and reseeds Dropout) from ``s`` at
    every call, so a resumable loop calls ``fit(epochs=1, seed=s + epoch)``
    once per epoch, or shuffles with its own ``rng`` and calls ``fit(
    shuffle=False)``; either way the resumed run is bit-identical."""
    epoch = as_count(epoch, "save_checkpoint", "epoch", minimum=0)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"save_checkpoint: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    tensors = {f"model/{key}": array for key, array in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    tensors.update(_optimizer_tensors(optimizer_state, "optimizer/"))
    generators = {f"{index}.{attribute}": generator.bit_generator.state
                  for index, attribute, generator in _layer_generators(model)}
    metadata = model_metadata(model)
    metadata.update({
        "format": CHECKPOINT_FORMAT,
        "epoch": _to_json(epoch),
        "optimizer": _to_json({"type": type(optimizer).__name__,
                                 "param_groups": optimizer_state["param_groups"]}),
        "scheduler": _to_json(None if scheduler is None else scheduler.state_dict()),
        "generators": _to_json(generators),
        "rng": _to_json(None if rng is None else rng.bit_generator.state),
    })
    save_tensors(path, tensors, metadata)


def _checked_generator_state(generator, state, path, name):
    probe = type(generator.bit_generator)()
    try:
        probe.state = state
    except Exception as error:  # numpy's checks of a hostile dict, whatever they raise
        raise ModelFormatError(f"{path}: the saved state of generator {name} is invalid: {error}") from None
    return state




def _fits(saved, current):
    """Does saved JSON have the shape of ``current`` (a scheduler's state):
    the same keys, list lengths and kinds, a number where it holds a number,
    and the same strings (modes and names are fixed when it is built)."""
    if isinstance(current, bool) or current is None or isinstance(current, str):
        return saved == current if isinstance(current, str) else type(saved) is type(current)
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(current, dict):
        return (isinstance(saved, dict) and set(saved) == set(current)
                and all(_fits(saved[key], value) for key, value in current.items()))
    if isinstance(current, (list, tuple)):
        return (isinstance(saved, list) and len(saved) == len(current)
                and all(_fits(item, value) for item, value in zip(saved, current)))
    return False


def _checked_scheduler_state(scheduler, state, path):
    if not _fits(state, scheduler.state_dict()):
        raise ModelFormatError(f"{path}: the saved scheduler state {state!r:.200} does not fit "
                               f"{type(scheduler).__name__} (fields {sorted(scheduler.state_dict())})")


def _metadata_field(metadata, key, path):
    if key not in metadata:
        raise ModelFormatError(f"{path}: checkpoint metadata lacks {key!r}")
    return parse_json(metadata[key], path, f"the checkpoint's {key}")


def load_checkpoint(path, model, optimizer, scheduler=None, rng=None):
    """Restore what ``save_checkpoint`` wrote into ``model``, ``optimizer``,
    ``scheduler`` and ``rng`` (built as for the original run) and return the
    saved epoch. Everything is checked before anything is changed."""
    tensors, metadata = read_tensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ModelFormatError(f"{path}: not a pynn checkpoint (metadata format "
                               f"{metadata.get('format')!r:.60})")
    epoch = _metadata_field(metadata, "epoch", path)
    optimizer_meta = _metadata_field(metadata, "optimizer", path)
    scheduler_state = _metadata_field(metadata, "scheduler", path)
    generator_states = _metadata_field(metadata, "generators", path)
    rng_state = _metadata_field(metadata, "rng", path)
    if not _is_count(epoch):
        raise ModelFormatError(f"{path}: the epoch must be a non-negative integer, got {epoch!r:.60}")
    if not (isinstance(optimizer_meta, dict) and set(optimizer_meta) == {"type", "param_groups"}):
        raise ModelFormatError(f"{path}: the optimizer metadata must hold its type and param_groups")
    if optimizer_meta["type"] != type(optimizer).__name__:
        raise ModelFormatError(f"{path}: the checkpoint holds {optimizer_meta['type']!s:.60} state, "
                               f"the optimizer is {type(optimizer).__name__}")
    if (scheduler_state is None) != (scheduler is None) or (rng_state is None) != (rng is None):
        raise ModelFormatError(f"{path}: pass a scheduler and an rng exactly when the checkpoint "
                               f"was saved with them (saved: scheduler "
                               f"{'yes' if scheduler_state is not None else 'no'}, rng "
                               f"{'yes' if rng_state is not None else 'no'})")
    _optimizer_like(type(optimizer), model, optimizer_meta["param_groups"], path)
    if scheduler is not None:
        _checked_scheduler_state(scheduler, scheduler_state, path)
    model_tensors = {key[len("model/"):]: array for key, array in tensors.items()
                     if key.startswith("model/")}
    state = _matching_state(model, model_tensors, path, strict=True)
    optimizer_state = _optimizer_state(tensors, "optimizer/")
    generators = {f"{index}.{attribute}": generator
                  for index, attribute, generator in _layer_generators(model)}
    if not isinstance(generator_states, dict) or set(generator_states) != set(generators):
        raise ModelFormatError(f"{path}: the checkpoint's random generators "
                               f"{generator_states!r:.200} do not match the model's {sorted(generators)}")
    for name, generator in generators.items():
        _checked_generator_state(generator, generator_states[name], path, name)
    if rng is not None:
        _checked_generator_state(rng, rng_state, path, "rng")
    try:
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]})
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{path}: the optimizer state does not fit: {error}") from None
    if scheduler is not None:
        scheduler.load_state_dict(scheduler_state)
    model.load_state_dict(state, strict=False)
    for name, generator in generators.items():
        generator.bit_generator.state = generator_states[name]
    if rng is not None:
        rng.bit_generator.state = rng_state
    return epoch


def _reduce_model(model):
    return model_from_bytes, (model_to_bytes(model),)


def _reduce_optimizer(optimizer):
    return optimizer_from_bytes, (optimizer.model, optimizer_to_bytes(optimizer))


_hooks.install("save_model", save_model)
_hooks.install("load_weights", load_weights)
_hooks.install("reduce_model", _reduce_model)
_hooks.install("reduce_optimizer", _reduce_optimizer)
