"""Hostile model files: thousands of mutated and truncated files, each of which
must either load or raise ModelFormatError -- never another exception, never a
crash, never a huge allocation."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pynn
from pynn.io import ModelFormatError, read_tensors

EXAMPLES = 2500


def valid_file(tmp_path_factory, kind="sequential"):
    from pynn import Input, Model, Sequential
    from pynn.layers import Add, BatchNorm1d, Concatenate, Dropout, Linear, ReLU

    if kind == "sequential":
        model = Sequential(Linear(3, 4), BatchNorm1d(4), ReLU(), Dropout(0.1, seed=2),
                           Linear(4, 2, bias=False))
    else:  # a graph: fan-out, a residual sum, a shared layer, a nested Sequential
        x = Input((3,), name="x")
        a = Linear(3, 4, name="a")(x)
        shared = Linear(4, 4, name="shared")
        h = Add()([a, shared(ReLU()(shared(a)))])
        joined = Concatenate()([BatchNorm1d(4)(h), x])
        model = Model(x, Sequential(Dropout(0.1, seed=2), Linear(7, 2, bias=False), name="head")(joined))
    path = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
    model.save(path)
    return path.read_bytes()


@pytest.fixture(scope="module", params=["sequential", "graph"])
def original(tmp_path_factory, request):
    return valid_file(tmp_path_factory, request.param)


def split(content):
    length = int.from_bytes(content[:8], "little")
    return json.loads(content[8:8 + length]), content[8 + length:]


def join(header, data, length_delta=0):
    raw = json.dumps(header).encode()
    return (len(raw) + length_delta).to_bytes(8, "little", signed=False) + raw + data


# Values a hostile header might put anywhere.
odd_values = st.one_of(
    st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]),
    st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=8),
    st.lists(st.integers(-5, 2**40), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["F32", "F64", "I64", "BF16", "F8_E4M3", "U8", "c64", "O", "<f4"]))


@st.composite
def mutated(draw, original):
    kind = draw(st.sampled_from(["truncate", "flip", "length", "splice"] + ["field", "metadata"] * 3))
    content = bytearray(original)
    if kind == "truncate":
        return bytes(content[:draw(st.integers(0, len(content) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(content) - 1))
            content[position] = draw(st.integers(0, 255))
        return bytes(content)
    if kind == "length":
        length = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, len(content) + 8)))
        return length.to_bytes(8, "little") + bytes(content[8:])
    header, data = split(original)
    if kind == "field":
        name = draw(st.sampled_from(sorted(key for key in header if key != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "whole"]))
        if field == "whole":
            header[name] = draw(odd_values)
        elif field == "extra":
            header[name]["extra"] = draw(odd_values)
        elif draw(st.booleans()):
            header[name][field] = draw(odd_values)
        elif field == "dtype":
            header[name][field] = draw(st.sampled_from(["F16", "F32", "F64", "I8", "I64", "BOOL", "U64"]))
        else:  # plausible-looking integers, off by a little or by a lot
            values = header[name][field]
            index = draw(st.integers(0, max(len(values) - 1, 0)))
            if values:
                values[index] = draw(st.integers(-3, 3)) + draw(st.sampled_from([values[index], 2**62, 0]))
            else:
                values.append(draw(st.integers(0, 2**40)))
    elif kind == "metadata":
        target = draw(st.sampled_from(["value", "architecture", "layer", "config", "whole", "graph"]))
        metadata = header["__metadata__"]
        whole = json.loads(metadata["architecture"])
        architecture = whole["layers"] if isinstance(whole, dict) else whole
        if target == "whole":
            header["__metadata__"] = draw(odd_values)
        elif target == "value":
            metadata[draw(st.sampled_from(["format", "architecture", "pynn_version", "x"]))] = draw(odd_values)
        elif target == "architecture":
            metadata["architecture"] = draw(st.text(max_size=40))
        elif target == "graph" and isinstance(whole, dict):
            field = draw(st.sampled_from(sorted(whole)))
            entries = whole[field]
            if isinstance(entries, list) and entries and draw(st.booleans()):
                index = draw(st.integers(0, len(entries) - 1))
                entry = entries[index]
                if isinstance(entry, dict) and draw(st.booleans()):
                    entry[draw(st.sampled_from(sorted(entry) + ["extra"]))] = draw(
                        st.one_of(odd_values, st.integers(-2, 12), st.just(["call", 0, 0]),
                                  st.just([["input", 0]]), st.just([3, 0])))
                elif draw(st.booleans()):
                    entries.insert(index, draw(st.sampled_from(entries)))
                else:
                    del entries[index]
            else:
                whole[field] = draw(odd_values)
            metadata["architecture"] = json.dumps(whole)
        else:
            index = draw(st.integers(0, len(architecture) - 1))
            if target == "layer":
                architecture[index][draw(st.sampled_from(["type", "config", "extra"]))] = draw(odd_values)
                if draw(st.booleans()):
                    architecture.insert(index, draw(st.sampled_from(architecture)))
            elif "config" in architecture[index]:
                config = architecture[index]["config"]
                key = draw(st.sampled_from(sorted(config) + ["unknown"]))
                config[key] = draw(odd_values)
            metadata["architecture"] = json.dumps(whole)
    else:  # splice: drop or duplicate a slice of the data section
        begin = draw(st.integers(0, len(data)))
        end = draw(st.integers(begin, len(data)))
        data = data[:begin] + (data[begin:end] if draw(st.booleans()) else b"") + data[end:]
    return join(header, data, length_delta=draw(st.sampled_from([0] * 8 + [-1, 1])))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_files_load_or_raise_model_format_error(original, tmp_path, data):
    content = data.draw(mutated(original))
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(content)
    try:
        model = pynn.load(path)
    except ModelFormatError:
        return
    # when it loads, it is a working model whose tensors are the file's
    tensors, _ = read_tensors(path)
    assert set(model.state_dict()) == set(tensors)
    x = np.zeros((2, 3), np.float32)
    out = model.predict([x] if model.takes_list else x)  # a graph may take and give lists of one
    assert (out[0] if isinstance(out, list) else out).shape == (2, 2)


def test_every_truncation_is_refused(original, tmp_path):
    path = tmp_path / "cut.safetensors"
    for length in range(len(original)):
        path.write_bytes(original[:length])
        with pytest.raises(ModelFormatError):
            pynn.load(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pynn import Sequential
    from pynn.layers import Dropout, Linear
    from pynn.optim import Adam
    from pynn.optim.lr_scheduler import StepLR

    model = Sequential(Linear(3, 2), Dropout(0.5, seed=1))
    optimizer = Adam(model)
    model.forward(np.ones((4, 3), np.float32), training=True)
    model.backward(np.ones((4, 2), np.float32))
    optimizer.step()
    path = tmp_path_factory.mktemp("checkpoint") / "checkpoint.safetensors"
    pynn.save_checkpoint(path, model, optimizer, epoch=3, scheduler=StepLR(optimizer, 2),
                         rng=np.random.default_rng(0))
    header, data = split(path.read_bytes())
    return header, data


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_checkpoint_metadata_loads_or_raises(checkpoint, tmp_path, data):
    from pynn import Sequential
    from pynn.layers import Dropout, Linear
    from pynn.optim import Adam
    from pynn.optim.lr_scheduler import StepLR

    header, tensor_bytes = json.loads(json.dumps(checkpoint[0])), checkpoint[1]
    metadata = header["__metadata__"]
    key = data.draw(st.sampled_from(["epoch", "optimizer", "scheduler", "generators", "rng", "format"]))
    value = json.loads(metadata[key]) if key != "format" else metadata[key]
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        inner = data.draw(st.sampled_from(sorted(value)))
        value[inner] = data.draw(odd_values)
    else:
        value = data.draw(odd_values)
    metadata[key] = json.dumps(value) if key != "format" or not isinstance(value, str) else value
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(join(header, tensor_bytes))
    model = Sequential(Linear(3, 2), Dropout(0.5, seed=1))
    optimizer = Adam(model)
    before = model.state_dict()["0.weight"].copy()
    try:
        pynn.load_checkpoint(path, model, optimizer, scheduler=StepLR(optimizer, 2), rng=np.random.default_rng(5))
    except ModelFormatError:
        assert model.state_dict()["0.weight"].tobytes() == before.tobytes()
