"""Models and optimizers pickle as the model file's bytes (no code), and
unpickling goes through pynn's checked loader."""
import pickle
import pickletools

import numpy as np
import pytest

import pynn
from pynn import io, optim
from pynn.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU


def mlp(seed=0):
    rng = np.random.default_rng(seed)
    model = pynn.Sequential(Linear(13, 7), ReLU(), Linear(7, 3))
    for _, param in model.named_parameters():
        param[...] = rng.standard_normal(param.shape)
    return model


def cnn():
    return pynn.Sequential(Conv2d(1, 4, 3), BatchNorm2d(4), ReLU(), Flatten(), Linear(4 * 6 * 6, 5))


def train(model, optimizer, steps=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((17,) + model_input(model)).astype(np.float32)
    y = rng.integers(0, 3, 17)
    model.fit(x, y, loss=pynn.losses.CrossEntropyLoss(), optimizer=optimizer, epochs=steps,
              batch_size=8, seed=0, verbose=False)


def model_input(model):
    return (1, 8, 8) if isinstance(model.layers[0], Conv2d) else (13,)


@pytest.mark.parametrize("build", [mlp, cnn])
def test_model_round_trip_is_bit_identical(build):
    model = build()
    if isinstance(model.layers[0], Conv2d):
        model.fit(np.ones((4, 1, 8, 8), np.float32), np.arange(4) % 5, loss=pynn.losses.CrossEntropyLoss(),
                  optimizer=optim.SGD(model, lr=0.1), verbose=False)  # running statistics move
    copy = pickle.loads(pickle.dumps(model))
    assert type(copy) is pynn.Sequential and copy is not model
    assert repr(copy) == repr(model)
    state, copied = model.state_dict(), copy.state_dict()
    assert list(state) == list(copied)
    for key in state:
        assert state[key].dtype == copied[key].dtype and state[key].tobytes() == copied[key].tobytes(), key
    x = np.random.default_rng(2).standard_normal((3,) + model_input(model)).astype(np.float32)
    assert model.predict(x).tobytes() == copy.predict(x).tobytes()


def embedded_bytes(data):
    """(offset, payload) of the one bytes object in a pickle."""
    found = [(position, arg) for _, arg, position in pickletools.genops(data) if isinstance(arg, bytes)]
    assert len(found) == 1
    position, payload = found[0]
    return data.index(payload, position), payload


def test_pickle_carries_the_model_file_bytes_and_no_code():
    model = mlp()
    data = pickle.dumps(model)
    _, payload = embedded_bytes(data)
    # safetensors orders the metadata keys freely, so compare what the bytes hold
    assert len(payload) == len(io.model_to_bytes(model))
    tensors, metadata = io.tensors_from_bytes(payload)
    assert metadata == io.model_metadata(model)
    assert {key: array.tobytes() for key, array in tensors.items()} == \
        {key: array.tobytes() for key, array in model.state_dict().items()}
    strings = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    assert strings == ["pynn.io", "model_from_bytes"]  # the one callable named: pynn's loader


def test_pickled_size_is_the_weights_plus_a_few_kib():
    model = pynn.Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10))
    weights = sum(param.nbytes for _, param in model.named_parameters())
    assert weights < len(pickle.dumps(model)) <= weights + 4096


def test_corrupted_model_bytes_inside_a_pickle_raise_model_format_error():
    data = pickle.dumps(mlp())
    start, payload = embedded_bytes(data)
    broken_header = bytearray(data)
    broken_header[start + 8:start + 12] = b"\xff\xfe{["  # the JSON header begins 8 bytes in
    with pytest.raises(io.ModelFormatError, match="<model bytes>"):
        pickle.loads(bytes(broken_header))
    bad_length = bytearray(data)
    bad_length[start:start + 8] = (len(payload)).to_bytes(8, "little")  # header longer than the file
    with pytest.raises(io.ModelFormatError, match="bad header length"):
        pickle.loads(bytes(bad_length))
    hostile = data.replace(b'\\"Linear\\"', b'\\"Popen!\\"')
    assert hostile != data
    with pytest.raises(io.ModelFormatError, match="unknown layer type"):
        pickle.loads(hostile)


@pytest.mark.parametrize("make", [
    lambda m: optim.SGD(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda m: optim.Adam(m, lr=1e-2, betas=(0.8, 0.99), eps=1e-7),
    lambda m: optim.AdamW(m, lr=1e-2, weight_decay=0.1),
    lambda m: optim.RMSprop(m, lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-3),
    lambda m: optim.Adagrad(m, lr=1e-2, lr_decay=1e-3, eps=1e-8),
])
def test_optimizer_pickles_with_its_state_and_continues_identically(make):
    model = mlp()
    optimizer = make(model)
    train(model, optimizer)
    model_copy, optimizer_copy = pickle.loads(pickle.dumps((model, optimizer)))
    assert optimizer_copy.model is model_copy and type(optimizer_copy) is type(optimizer)
    assert optimizer_copy.lr == optimizer.lr
    original_state, copied_state = optimizer.state_dict(), optimizer_copy.state_dict()
    assert original_state["param_groups"][0].keys() == copied_state["param_groups"][0].keys()
    for name, entry in original_state["state"].items():
        for slot, array in entry.items():
            assert np.asarray(array).tobytes() == np.asarray(copied_state["state"][name][slot]).tobytes()
    train(model, optimizer, seed=5)
    train(model_copy, optimizer_copy, seed=5)
    for (key, a), (_, b) in zip(model.named_parameters(), model_copy.named_parameters()):
        assert a.tobytes() == b.tobytes(), key


def test_corrupted_optimizer_state_raises_model_format_error():
    model = mlp()
    optimizer = optim.Adam(model)
    train(model, optimizer)
    data = io.optimizer_to_bytes(optimizer)
    with pytest.raises(io.ModelFormatError):
        io.optimizer_from_bytes(model, data[:-5])
    with pytest.raises(io.ModelFormatError, match="unknown optimizer type"):
        io.optimizer_from_bytes(model, data.replace(b'"Adam"', b'"Evil"'))
    with pytest.raises(io.ModelFormatError, match="does not fit"):
        io.optimizer_from_bytes(mlp().__getitem__(slice(0, 1)), data)
    with pytest.raises(io.ModelFormatError, match="not pynn optimizer state"):
        io.optimizer_from_bytes(model, io.model_to_bytes(model))
    hostile = data.replace(b"1e-08", b"-1.00")  # eps, the same length so the layout holds
    assert hostile != data
    with pytest.raises(io.ModelFormatError, match="hyperparameters .* are invalid"):
        io.optimizer_from_bytes(model, hostile)


def test_optimizers_pickle_through_pynn_io_and_older_pickles_still_load():
    model = mlp()
    optimizer = optim.SGD(model, lr=0.1, momentum=0.9)
    train(model, optimizer)
    data = pickle.dumps(optimizer)
    assert b"pynn.io" in data and b"optimizer_from_bytes" in data and b"distributed" not in data
    # pickles written when optimizer serialisation lived in pynn.distributed name it there
    unpickler = pickle.Unpickler(__import__("io").BytesIO(data))
    assert unpickler.find_class("pynn.distributed", "optimizer_from_bytes") is io.optimizer_from_bytes


def test_a_checkpoint_stores_optimizer_state_as_optimizer_bytes_do(tmp_path):
    model = mlp()
    optimizer = optim.Adam(model)
    train(model, optimizer)
    alone, _ = io.tensors_from_bytes(io.optimizer_to_bytes(optimizer))
    io.save_checkpoint(tmp_path / "c.safetensors", model, optimizer)
    tensors, _ = io.read_tensors(tmp_path / "c.safetensors")
    inside = {key[len("optimizer/"):]: array for key, array in tensors.items()
              if key.startswith("optimizer/")}
    assert sorted(inside) == sorted(alone)
    for key, array in alone.items():
        assert inside[key].tobytes() == array.tobytes(), key
