import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.io import MAX_HEADER_BYTES, ModelFormatError, read_tensors, save_tensors, write_atomic


def sample_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {"0.weight": rng.normal(size=(5, 3)).astype(np.float32),
            "0.bias": rng.normal(size=5).astype(np.float32),
            "1.num_batches_tracked": np.array(7, np.int64),
            "2.half": rng.normal(size=(2, 2)).astype(np.float16)}


# -- the tensor file ------------------------------------------------------------
def test_tensors_round_trip_bit_for_bit(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = sample_tensors()
    save_tensors(path, tensors, {"note": "x"})
    loaded, metadata = read_tensors(path)
    assert metadata == {"note": "x"}
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert loaded[name].tobytes() == array.tobytes()
    assert os.listdir(tmp_path) == ["t.safetensors"]  # no temporary left behind


def test_write_atomic_replaces_and_cleans_up_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "file"
    write_atomic(path, b"old")
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"

    def failing_fsync(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"never")
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["file"]


def write_raw(path, header, data=b"", length=None):
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    length = len(raw) if length is None else length
    path.write_bytes(length.to_bytes(8, "little") + raw + data)
    return path


F32_PAIR = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("header,data,length,message", [
    (b"", b"", None, None),  # the bare length field: an empty header is not JSON
    (b"{}", b"", 10**6, "bad header length 1000000"),
    (b"{}", b"", MAX_HEADER_BYTES + 1, "bad header length"),
    (b"{}", b"", 2**64 - 1, "bad header length"),
    (b"\xff\xfe{}", b"", None, "not UTF-8"),
    (b"{\"a\": ", b"", None, "header is not valid JSON"),
    (b"[1, 2]", b"", None, "must be a JSON object"),
    (b"{\"a\": 1, \"a\": 2}", b"", None, "duplicate keys"),
    (b"[" * 100000 + b"]" * 100000, b"", None, "not valid JSON"),
    (F32_PAIR, b"\0" * 4, None, "outside the 4-byte data section"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     r"F32 \[3\], 12 bytes, but its data_offsets span 8"),
    ({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "16 bytes"),
    ({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "unsupported dtype 'F8_E4M3'"),
    ({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     r"BF16 \[3\], 6 bytes, but its data_offsets span 8"),
    ({"a": {"dtype": "F16", "shape": [2**62], "data_offsets": [0, 8]}}, b"\0" * 8, None, "span 8"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative"),
    ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, None, "span 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8, None, "exactly the fields"),
    (F32_PAIR, b"\0" * 12, None, "cover 8 bytes of a 12-byte"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "gap at byte 0"),
    ({"__metadata__": {"k": 1}}, b"", None, "__metadata__ must map strings to strings"),
])
def test_malformed_files_raise_model_format_error(tmp_path, header, data, length, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(ModelFormatError, match=message) as caught:
        read_tensors(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_short_and_missing_files(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x05\0\0")
    with pytest.raises(ModelFormatError, match="truncated: 3 bytes"):
        read_tensors(path)
    with pytest.raises(FileNotFoundError):
        read_tensors(tmp_path / "absent")


# -- a crash while saving never leaves a damaged file -----------------------------------
# One helper process imports pynn once, then forks a saver per round that
# writes two versions of different sizes in a loop (a torn write could pass
# for neither); the test SIGKILLs each saver at a random moment.
SAVER = textwrap.dedent("""
    import os, sys
    import pynn
    from pynn.layers import Linear

    path = sys.argv[1]
    versions = [pynn.Sequential(Linear(256, n)) for n in (512, 300)]
    for value, model in enumerate(versions, start=1):
        for array in model.state_dict().values():
            array[...] = value
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            count = 0
            while True:
                versions[count % 2].save(path)
                count += 1
                if count == 1:
                    os.write(1, b"saving\\n")
        os.write(1, b"%d\\n" % pid)  # one write a line: the two never interleave
        os.waitpid(pid, 0)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_while_saving_never_leaves_an_unreadable_file(tmp_path):
    from pynn.layers import Linear

    path = tmp_path / "model.safetensors"
    pynn.Sequential(Linear(256, 3)).save(path)
    rng = np.random.default_rng(0)
    seen = set()
    # its own session, so the finally below ends the saver it forked as well
    helper = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(50):
            helper.stdin.write("go\n")
            helper.stdin.flush()
            lines = sorted([helper.stdout.readline(), helper.stdout.readline()])  # pid, then "saving"
            assert lines[1] == "saving\n"
            saver = int(lines[0])
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(saver, signal.SIGKILL)
            weight = pynn.load(path)[0].params["weight"]  # raises if the file were damaged
            if weight.shape != (3, 256):
                value = {(512, 256): 1.0, (300, 256): 2.0}[weight.shape]
                assert np.all(weight == value)
                seen.add(value)
    finally:
        os.killpg(helper.pid, signal.SIGKILL)
        helper.wait()
    assert seen == {1.0, 2.0}  # both versions were caught as the last complete save
    # kills landed inside writes: their temporary files are the only debris
    debris = [name for name in os.listdir(tmp_path) if name != "model.safetensors"]
    assert debris and all(name.startswith(".model.safetensors.") and name.endswith(".tmp") for name in debris)
    assert len(debris) <= 50  # at most one per kill


def test_public_names():
    assert pynn.ModelFormatError is ModelFormatError and issubclass(ModelFormatError, ValueError)
    assert callable(pynn.load) and callable(pynn.save_checkpoint) and callable(pynn.load_checkpoint)


# -- models -------------------------------------------------------------------------
def small_model(seed=0):
    from pynn import Sequential
    from pynn.layers import Dropout, Linear, ReLU, Tanh

    model = Sequential(Linear(64, 32), Tanh(), Dropout(0.25, seed=3), Linear(32, 16, bias=False),
                       ReLU(), Linear(16, 10))
    rng = np.random.default_rng(seed)
    for array in model.state_dict().values():
        array[...] = rng.uniform(-1.0, 1.0, array.shape)
    return model


def test_model_round_trip_is_bit_identical(tmp_path):
    model = small_model()
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = pynn.load(path)
    assert [type(layer) for layer in loaded] == [type(layer) for layer in model]
    assert [layer.config() for layer in loaded] == [layer.config() for layer in model]
    assert list(loaded.state_dict()) == list(model.state_dict())
    for key, array in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == array.dtype
        assert loaded.state_dict()[key].tobytes() == array.tobytes(), key
    x = pynn.datasets.load_digits()[0][:50]
    assert loaded.predict(x).tobytes() == model.predict(x).tobytes()
    _, metadata = read_tensors(path)
    assert metadata["pynn_version"] == pynn.__version__ and metadata["format"] == "pynn.Sequential"
    assert json.loads(metadata["architecture"])[2] == {"type": "Dropout", "config": {"p": 0.25, "seed": 3}}
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_buffers_round_trip_with_their_dtype(tmp_path):
    layers = pytest.importorskip("pynn.layers")
    if not hasattr(layers, "BatchNorm1d"):
        pytest.skip("pynn.layers.BatchNorm1d is not built yet")
    model = pynn.Sequential(layers.Linear(8, 4), layers.BatchNorm1d(4))
    model.forward(np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32), training=True)
    path = tmp_path / "bn.safetensors"
    model.save(path)
    loaded = pynn.load(path)
    for key, array in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == array.dtype, key
        assert loaded.state_dict()[key].tobytes() == array.tobytes(), key
    assert loaded.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_save_overwrites_atomically_and_loads_latest(tmp_path):
    path = tmp_path / "model.safetensors"
    small_model(seed=1).save(path)
    second = small_model(seed=2)
    second.save(path)
    assert pynn.load(path).state_dict()["0.weight"].tobytes() == second.state_dict()["0.weight"].tobytes()
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_load_weights_reports_every_mismatch_and_changes_nothing(tmp_path):
    from pynn import Sequential
    from pynn.layers import Linear, ReLU

    path = tmp_path / "model.safetensors"
    small_model().save(path)
    other = Sequential(Linear(64, 16), ReLU(), Linear(16, 10, bias=False))
    before = {key: array.copy() for key, array in other.state_dict().items()}
    with pytest.raises(ModelFormatError) as caught:
        other.load_weights(path)
    message = str(caught.value)
    for fragment in ("missing keys: 2.weight;", "unexpected keys: 3.weight, 5.bias, 5.weight;",
                     "0.weight (expected shape (16, 64), got (32, 64))",
                     "0.bias (expected shape (16,), got (32,))", str(path)):
        assert fragment in message, (fragment, message)
    for key, array in other.state_dict().items():
        assert array.tobytes() == before[key].tobytes()


def test_load_weights_non_strict_loads_the_matching_keys(tmp_path):
    from pynn import Sequential
    from pynn.layers import Linear

    path = tmp_path / "w.safetensors"
    save_tensors(path, {"0.weight": np.ones((3, 2), np.float64), "9.extra": np.zeros(1, np.float32)}, {})
    model = Sequential(Linear(2, 3))
    result = model.load_weights(path, strict=False)
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["9.extra"]
    assert model[0].params["weight"].dtype == np.float32 and np.all(model[0].params["weight"] == 1.0)
    with pytest.raises(ModelFormatError, match="missing keys: 0.bias; unexpected keys: 9.extra"):
        model.load_weights(path)
    save_tensors(path, {"0.weight": np.ones((3, 2), np.int32), "0.bias": np.ones(3, np.float32)}, {})
    with pytest.raises(ModelFormatError, match=r"0.weight \(expected float32 values, got int32\)"):
        model.load_weights(path)


def tampered(tmp_path, change):
    """A saved model file whose architecture JSON went through ``change``."""
    path = tmp_path / "model.safetensors"
    small_model().save(path)
    tensors, metadata = read_tensors(path)
    metadata["architecture"] = change(json.loads(metadata["architecture"]))
    save_tensors(path, tensors, metadata)
    return path


def replace_layer(index, entry):
    def change(architecture):
        architecture[index] = entry
        return json.dumps(architecture)
    return change


@pytest.mark.parametrize("change,message", [
    (replace_layer(1, {"type": "os.system", "config": {}}), "layer 1 has unknown layer type 'os.system'"),
    (replace_layer(1, {"type": "Layer", "config": {}}), "unknown layer type 'Layer'"),
    (replace_layer(1, {"type": "_Activation", "config": {}}), "unknown layer type '_Activation'"),
    (replace_layer(1, ["Tanh"]), "layer 1 must be"),
    (replace_layer(0, {"type": "Linear", "config": {"in_features": 64, "out_features": 32, "x": 1}}),
     r"layer 0 \(Linear\) cannot be built"),
    (replace_layer(0, {"type": "Linear", "config": {"in_features": -64, "out_features": 32}}),
     r"layer 0 \(Linear\) cannot be built"),
    (replace_layer(0, {"type": "Linear", "config": {"in_features": 2**40, "out_features": 2**40}}),
     "claims tensors of about"),
    (replace_layer(0, {"type": "Linear", "config": {"in_features": 64, "out_features": 33}}),
     r"0.weight \(expected shape \(33, 64\), got \(32, 64\)\)"),
    (replace_layer(3, {"type": "Linear", "config": {"in_features": 32, "out_features": 16}}),
     "missing keys: 3.bias"),
    (lambda architecture: json.dumps(architecture[:-1]), "unexpected keys: 5.bias, 5.weight"),
    (lambda architecture: "[{", "the architecture is not valid JSON"),
    (lambda architecture: json.dumps({"layers": architecture}), "must be a JSON list"),
])
def test_load_refuses_bad_architectures(tmp_path, change, message):
    path = tampered(tmp_path, change)
    with pytest.raises(ModelFormatError, match=message):
        pynn.load(path)


def test_load_refuses_files_that_are_not_pynn_models(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_tensors(path, {"0.weight": np.zeros((2, 2), np.float32)}, {"format": "pt"})
    with pytest.raises(ModelFormatError, match="not a pynn model file.*load_weights"):
        pynn.load(path)


def torch_pair():
    torch = pytest.importorskip("torch")
    from pynn import Sequential
    from pynn.layers import Linear, ReLU, Tanh

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16),
                                    torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval()
    model = Sequential(Linear(64, 32), Tanh(), Linear(32, 16), ReLU(), Linear(16, 10))
    return torch, reference, model


def test_load_weights_from_a_pytorch_safetensors_file(tmp_path):
    torch, reference, model = torch_pair()
    from safetensors.torch import load_file, save_file

    path = tmp_path / "torch.safetensors"
    save_file(reference.state_dict(), str(path))
    model.load_weights(path)
    for key, tensor in reference.state_dict().items():
        assert model.state_dict()[key].tobytes() == tensor.numpy().tobytes(), key
    x = pynn.datasets.load_digits()[0][:200]
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    actual = model.predict(x)
    np.testing.assert_array_equal(np.argmax(actual, axis=1), np.argmax(expected, axis=1))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # and back: PyTorch reads pynn's file by the same keys
    model.save(tmp_path / "pynn.safetensors")
    reference.load_state_dict(load_file(str(tmp_path / "pynn.safetensors")))


def test_pytorch_file_with_another_architecture_is_refused_whole(tmp_path):
    torch, reference, _ = torch_pair()
    from safetensors.torch import save_file
    from pynn import Sequential
    from pynn.layers import Linear, ReLU

    path = tmp_path / "torch.safetensors"
    save_file(reference.state_dict(), str(path))
    model = Sequential(Linear(64, 32), ReLU(), Linear(32, 10))
    before = model[0].params["weight"].copy()
    with pytest.raises(ModelFormatError, match=r"unexpected keys: 4.bias, 4.weight; mismatched tensors: "
                                               r"2.weight \(expected shape \(10, 32\), got \(16, 32\)\)"):
        model.load_weights(path)
    assert model[0].params["weight"].tobytes() == before.tobytes()


def test_model_bytes_round_trip_and_hostile_bytes():
    from pynn.io import model_from_bytes, model_to_bytes

    model = small_model()
    data = model_to_bytes(model)
    rebuilt = model_from_bytes(data)
    for key, array in model.state_dict().items():
        assert rebuilt.state_dict()[key].tobytes() == array.tobytes()
    with pytest.raises(ModelFormatError, match="<model bytes>: bad header length"):
        model_from_bytes(data[:100])
    with pytest.raises(ModelFormatError, match="<model bytes>: truncated"):
        model_from_bytes(b"")


def cnn_pair():
    torch = pytest.importorskip("torch")
    from pynn import Sequential
    from pynn.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU

    torch.manual_seed(1)
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 8, (3, 2), stride=(1, 2), groups=2),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 2 * 2, 10))
    reference.train()
    with torch.no_grad():  # a few batches give BatchNorm real running statistics
        for _ in range(3):
            reference(torch.rand(16, 1, 8, 8))
    reference.eval()
    model = Sequential(Conv2d(1, 6, 3, padding=1), BatchNorm2d(6), ReLU(), MaxPool2d(2),
                       Conv2d(6, 8, (3, 2), stride=(1, 2), groups=2), ReLU(), Flatten(), Linear(32, 10))
    return torch, reference, model


def test_pytorch_cnn_with_batch_norm_buffers(tmp_path):
    torch, reference, model = cnn_pair()
    from safetensors.torch import save_file

    path = tmp_path / "cnn.safetensors"
    save_file(reference.state_dict(), str(path))
    model.load_weights(path)
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64
    assert int(model.state_dict()["1.num_batches_tracked"]) == 3
    x = pynn.datasets.load_digits()[0][:100].reshape(-1, 1, 8, 8)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    actual = model.predict(x)
    np.testing.assert_array_equal(np.argmax(actual, axis=1), np.argmax(expected, axis=1))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    # the whole CNN survives pynn's own file bit for bit
    model.save(tmp_path / "pynn.safetensors")
    loaded = pynn.load(tmp_path / "pynn.safetensors")
    assert loaded.predict(x).tobytes() == actual.tobytes()


def test_write_atomic_permissions(tmp_path):
    path = tmp_path / "file"
    umask = os.umask(0o022)
    try:
        write_atomic(path, b"x")
        assert os.stat(path).st_mode & 0o777 == 0o644  # as open() would create it
        os.chmod(path, 0o600)
        write_atomic(path, b"y")
        assert os.stat(path).st_mode & 0o777 == 0o600  # a replaced file keeps its mode
    finally:
        os.umask(umask)


def cnn():
    return pynn.Sequential(layers.Conv2d(1, 2, 3, padding=1), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Flatten(), layers.Linear(2 * 4 * 4, 3))


def test_a_saved_model_records_one_samples_input_shape(tmp_path):
    model = cnn()
    assert model.input_shape is None
    model.fit(np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 2, 0]),
              loss=pynn.losses.CrossEntropyLoss(), optimizer=pynn.optim.SGD(model, lr=0.1),
              verbose=False)
    assert model.input_shape == (1, 8, 8)
    path = tmp_path / "cnn.safetensors"
    model.save(path)
    assert json.loads(read_tensors(path)[1]["input_shape"]) == [1, 8, 8]
    assert pynn.load(path).input_shape == (1, 8, 8)
    assert pickle.loads(pickle.dumps(model)).input_shape == (1, 8, 8)
    unknown = cnn()
    unknown.save(path)
    assert json.loads(read_tensors(path)[1]["input_shape"]) is None
    assert pynn.load(path).input_shape is None
    mlp = pynn.Sequential(layers.Linear(5, 2))
    assert mlp.input_shape == (5,)  # what a first Linear implies, without any fit
    mlp.save(path)
    assert pynn.load(path).input_shape == (5,)


def test_input_shape_is_checked_when_assigned():
    model = cnn()
    model.input_shape = [1, 8, 8]
    assert model.input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="Linear: input must end in in_features=32"):
        model.input_shape = (1, 6, 6)
    with pytest.raises(TypeError, match="Sequential.input_shape must be a tuple of sizes"):
        model.input_shape = 8
    with pytest.raises(TypeError, match="extent 1 must be an integer"):
        model.input_shape = (1, 8.0, 8)
    assert model.input_shape == (1, 8, 8)
    model.input_shape = None
    assert model.input_shape is None


def test_older_files_without_an_input_shape_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    for model, implied in ((cnn(), None), (pynn.Sequential(layers.Linear(6, 2)), (6,))):
        model.input_shape = (1, 8, 8) if implied is None else (6,)
        model.save(path)
        tensors, metadata = read_tensors(path)
        del metadata["input_shape"]
        save_tensors(path, tensors, metadata)
        assert pynn.load(path).input_shape == implied


@pytest.mark.parametrize("value, message", [
    ("[1, 6, 6]", "does not fit the architecture"),
    ("7", "must be a JSON list of sizes or null"),
    ("[1, -8, 8]", "must be >= 0"),
    ("[1, true, 8]", "must be an integer"),
    ("[1, 8", "not valid JSON"),
])
def test_a_hostile_input_shape_raises_model_format_error(tmp_path, value, message):
    path = tmp_path / "bad.safetensors"
    cnn().save(path)
    tensors, metadata = read_tensors(path)
    metadata["input_shape"] = value
    save_tensors(path, tensors, metadata)
    with pytest.raises(ModelFormatError, match=message):
        pynn.load(path)


# -- half-precision tensors -------------------------------------------------------
def _bf16_bits(values):
    """float32 values truncated to BF16: the top 16 bits of each."""
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _half_model():
    from pynn import Sequential
    from pynn.layers import Linear, ReLU

    return Sequential(Linear(6, 5), ReLU(), Linear(5, 3))


def test_load_weights_reads_f16_written_by_safetensors(tmp_path):
    import safetensors.numpy

    model = _half_model()
    halves = {key: np.random.default_rng(1).normal(size=value.shape).astype(np.float16)
              for key, value in model.state_dict().items()}
    path = tmp_path / "half.safetensors"
    safetensors.numpy.save_file(halves, str(path))
    model.load_weights(path)
    for key, value in halves.items():
        assert model.state_dict()[key].dtype == np.float32
        np.testing.assert_array_equal(model.state_dict()[key], value.astype(np.float32))


def test_load_weights_and_load_read_bf16_exactly(tmp_path):
    model = _half_model()
    model.save(tmp_path / "model.safetensors")
    tensors, metadata = read_tensors(tmp_path / "model.safetensors")
    # the same file with every tensor BF16: header and data written as the format says
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for key, value in tensors.items():
        chunk = _bf16_bits(value).tobytes()
        header[key] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(chunk)]}
        chunks.append(chunk)
        offset += len(chunk)
    path = write_raw(tmp_path / "bf16.safetensors", header, b"".join(chunks))
    loaded, _ = read_tensors(path)
    for key, value in tensors.items():
        expected = (_bf16_bits(value).astype(np.uint32) << 16).view(np.float32)
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], expected)
        assert np.max(np.abs(loaded[key] - value)) <= np.max(np.abs(value)) * 2.0 ** -7
    rebuilt = pynn.load(path)
    fresh = _half_model()
    fresh.load_weights(path)
    for key in tensors:
        np.testing.assert_array_equal(rebuilt.state_dict()[key], loaded[key])
        np.testing.assert_array_equal(fresh.state_dict()[key], loaded[key])
    # the special values keep their meaning
    special = np.array([np.inf, -np.inf, np.nan, -0.0, 1e-40], np.float32)
    path = write_raw(tmp_path / "special.safetensors",
                     {"s": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}},
                     _bf16_bits(special).tobytes())
    values = read_tensors(path)[0]["s"]
    assert values[0] == np.inf and values[1] == -np.inf and np.isnan(values[2])
    assert values[3] == 0 and np.signbit(values[3]) and 0 < values[4] < 1e-39


def test_load_weights_reads_a_bf16_state_dict_saved_by_torch(tmp_path):
    torch, reference, model = torch_pair()
    from safetensors.torch import save_file

    half = {key: tensor.to(torch.bfloat16) for key, tensor in reference.state_dict().items()}
    path = tmp_path / "torch_bf16.safetensors"
    save_file(half, str(path))
    model.load_weights(path)
    for key, tensor in half.items():
        np.testing.assert_array_equal(model.state_dict()[key], tensor.float().numpy())
    x = pynn.datasets.load_digits()[0][:50]
    with torch.no_grad():
        reference.load_state_dict({key: tensor.float() for key, tensor in half.items()})
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)
