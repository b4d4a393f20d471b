"""Embedding: padding_idx as PyTorch's, row-sparse gradients with dense
semantics (checked against float64 references and torch), and the optimizers'
row-sparse updates: PyTorch's dense result for plain SGD, torch.optim.SparseAdam's
touched-rows semantics for Adam, and the documented lazy rule elsewhere."""
import math

import numpy as np
import pytest

import pynn
from pynn import optim
from pynn._kernels import core as kernels
from pynn.layers import Embedding, Flatten, Linear


def batches(steps, num_embeddings, dim, seed=0, padding_idx=None):
    """(indices, dy) pairs whose index sets and shapes change from step to step."""
    rng = np.random.default_rng(seed)
    result = []
    for step in range(steps):
        shape = [(7,), (3, 5), (2, 2, 3), (1,), (11,), (4, 4)][step % 6]
        indices = rng.integers(0, num_embeddings, shape)
        if padding_idx is not None:
            indices.reshape(-1)[::3] = padding_idx
        result.append((indices, rng.standard_normal(shape + (dim,)).astype(np.float32)))
    return result


def dense_gradient(indices, dy, num_embeddings, padding_idx=None):
    grad = np.zeros((num_embeddings, dy.shape[-1]))
    np.add.at(grad, indices.reshape(-1), dy.reshape(-1, dy.shape[-1]).astype(np.float64))
    if padding_idx is not None:
        grad[padding_idx] = 0.0
    return grad


def distinct_rows(indices, padding_idx=None):
    return sorted(set(indices.reshape(-1).tolist()) - {padding_idx})


# -- padding_idx ------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx,row", [(0, 0), (9, 9), (-1, 9), (-10, 0), (None, None)])
def test_padding_idx_counts_from_the_end_and_round_trips(padding_idx, row):
    layer = Embedding(10, 3, padding_idx=padding_idx)
    assert layer.padding_idx == row
    config = layer.config()
    assert Embedding(**config).config() == config
    assert ("padding_idx" in config) == (row is not None)
    if row is not None:
        np.testing.assert_array_equal(layer.params["weight"][row], np.zeros(3, np.float32))
        assert np.all(np.delete(layer.params["weight"], row, axis=0) != 0.0)


@pytest.mark.parametrize("padding_idx", [10, -11, 2**40, -2**40])
def test_out_of_range_padding_idx_is_refused(padding_idx):
    with pytest.raises(ValueError, match="Embedding: padding_idx"):
        Embedding(10, 3, padding_idx=padding_idx)


@pytest.mark.parametrize("padding_idx", [1.0, "1", True, [1]])
def test_padding_idx_must_be_an_integer(padding_idx):
    with pytest.raises(TypeError, match="Embedding: padding_idx must be an integer"):
        Embedding(10, 3, padding_idx=padding_idx)


@pytest.mark.parametrize("padding_idx", [2, -1])
def test_padding_idx_forward_backward_match_torch(padding_idx):
    torch = pytest.importorskip("torch")
    layer = Embedding(8, 5, padding_idx=padding_idx)
    reference = torch.nn.Embedding(8, 5, padding_idx=padding_idx)
    row = layer.padding_idx
    assert reference.padding_idx == row
    np.testing.assert_array_equal(reference.weight.detach().numpy()[row], layer.params["weight"][row])
    layer.params["weight"][row] = 3.0  # a user-set padding row is read as it is, never trained
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.params["weight"]))
    for indices, dy in batches(4, 8, 5, seed=1, padding_idx=row):
        reference.weight.grad = None
        out = reference(torch.from_numpy(indices))
        out.backward(torch.from_numpy(dy))
        np.testing.assert_array_equal(layer.forward(indices, training=True), out.detach().numpy())
        assert layer.backward(dy) is None
        np.testing.assert_allclose(layer.grads["weight"], reference.weight.grad.numpy(),
                                   rtol=1e-6, atol=1e-6)
        assert not layer.grads["weight"][row].any()


def test_model_with_padding_idx_saves_and_loads(tmp_path):
    model = pynn.Sequential(Embedding(100_000, 4, padding_idx=-1), Flatten(), Linear(8, 2))
    model.save(tmp_path / "m.safetensors")
    loaded = pynn.load(tmp_path / "m.safetensors")
    assert loaded[0].padding_idx == 99_999
    x = np.array([[1, 99_999], [5, 7]])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


# -- row-sparse gradients, dense semantics ----------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 3])
def test_grads_equal_the_dense_gradient_as_indices_change(padding_idx):
    layer = Embedding(40, 6, padding_idx=padding_idx)
    grad = layer.grads["weight"]
    assert layer.touched_rows("weight").size == 0 and not grad.any()
    for indices, dy in batches(12, 40, 6, seed=2, padding_idx=padding_idx):
        layer.forward(indices, training=True)
        layer.backward(dy)
        assert layer.grads["weight"] is grad  # overwritten in place, never reallocated
        # rows of earlier batches are zero again: the whole array is compared
        np.testing.assert_allclose(grad, dense_gradient(indices, dy, 40, padding_idx),
                                   rtol=1e-6, atol=1e-6)
        rows = layer.touched_rows("weight")
        assert rows.dtype == np.int64 and len(set(rows.tolist())) == len(rows)
        assert sorted(rows.tolist()) == distinct_rows(indices, padding_idx)


def test_gradient_check_through_a_loss():
    from tests.helpers import check_gradient
    layer = Embedding(9, 3)
    indices = np.array([[0, 4, 4], [8, 0, 2]])
    target = np.random.default_rng(3).standard_normal((2, 3, 3))

    def loss(weight):
        return 0.5 * np.sum((weight.astype(np.float64)[indices] - target) ** 2)

    y = layer.forward(indices, training=True)
    layer.backward((y - target).astype(np.float32))
    check_gradient(loss, layer.params["weight"].copy(), layer.grads["weight"])


def test_bit_identical_on_one_and_two_threads(set_threads):
    """Large enough for the threaded paths of the scatter and of the row-sparse step."""
    rng = np.random.default_rng(4)
    steps = [(rng.integers(0, 6000, (12000,)), rng.standard_normal((12000, 64)).astype(np.float32))
             for _ in range(3)]
    results = []
    for threads in (1, 2):
        set_threads(threads)
        pynn.init.manual_seed(5)
        layer = Embedding(6000, 64)
        optimizer = optim.SGD(layer, lr=0.1, momentum=0.9)
        for indices, dy in steps:
            layer.forward(indices, training=True)
            layer.backward(dy)
            optimizer.step()
        results.append((layer.grads["weight"].copy(), layer.params["weight"].copy(),
                        layer.touched_rows("weight").copy()))
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)


def test_gradient_and_optimizer_state_start_on_cache_lines():
    """As the table does: a row of 64 floats then spans 4 cache lines, not 5."""
    layer = Embedding(1000, 64)
    optimizer = optim.Adam(layer)
    layer.forward(np.array([3, 7]), training=True)
    layer.backward(np.ones((2, 64), np.float32))
    optimizer.step()
    state = optimizer.state_dict()["state"]["weight"]
    for array in (layer.params["weight"], layer.grads["weight"], state["exp_avg"], state["exp_avg_sq"]):
        assert array.ctypes.data % 64 == 0
    twin, _ = layer._twin()
    assert twin.grads["weight"].ctypes.data % 64 == 0 and not twin.grads["weight"].any()


def test_frozen_embedding_leaves_grads_untouched():
    layer = Embedding(20, 4)
    layer.forward(np.array([1, 2]), training=True)
    layer.backward(np.ones((2, 4), np.float32))
    layer.trainable = False
    grad = layer.grads["weight"]
    grad[...] = 7.0  # whatever grads hold, a frozen backward neither reads nor writes them
    rows = layer.touched_rows("weight").copy()
    layer.forward(np.array([5, 6, 5]), training=True)
    assert layer.backward(np.ones((3, 4), np.float32)) is None
    assert layer.grads["weight"] is grad and np.all(grad == 7.0)
    np.testing.assert_array_equal(layer.touched_rows("weight"), rows)


def test_replaced_or_externally_written_grads_are_rewritten_whole():
    layer = Embedding(30, 2)
    indices, dy = np.array([4, 9, 4]), np.ones((3, 2), np.float32)
    layer.forward(indices, training=True)
    layer.grads["weight"] = np.full((30, 2), 5.0, np.float32)
    assert layer.touched_rows("weight") is None
    layer.backward(dy)
    np.testing.assert_array_equal(layer.grads["weight"], dense_gradient(indices, dy, 30))
    layer.grads["weight"][0] = 1.0  # a sum over ranks writes elsewhere, then says so
    layer.forget_touched_rows()
    assert layer.touched_rows("weight") is None
    layer.backward(dy)
    np.testing.assert_array_equal(layer.grads["weight"], dense_gradient(indices, dy, 30))
    assert sorted(layer.touched_rows("weight").tolist()) == [4, 9]


def test_scatter_kernel_refuses_bad_rows_without_crashing():
    dweight = np.zeros((5, 2), np.float32)
    marks = np.zeros(5, np.uint8)
    dy = np.ones((2, 2), np.float32)
    index = np.array([0, 1])
    with pytest.raises(IndexError, match="rows: index 9"):
        kernels.embedding_scatter_add(dy, index, dweight, np.array([9, 0]), 1, marks)
    with pytest.raises(ValueError, match="rows must hold"):
        kernels.embedding_scatter_add(dy, index, dweight, np.zeros(1, np.int64), 0, marks)
    with pytest.raises(ValueError, match="padding_idx"):
        kernels.embedding_scatter_add(dy, index, dweight, np.zeros(2, np.int64), 0, marks, 5)
    with pytest.raises(IndexError, match="index 5"):
        kernels.embedding_scatter_add(dy, np.array([0, 5]), dweight, np.zeros(2, np.int64), 0, marks)
    assert not dweight.any() and not marks.any()


# -- optimizers ---------------------------------------------------------------------

def train(layer, optimizer, steps):
    for indices, dy in steps:
        layer.forward(indices, training=True)
        layer.backward(dy)
        optimizer.step()


def test_plain_sgd_matches_torch_with_a_dense_embedding():
    torch = pytest.importorskip("torch")
    layer = Embedding(50, 8, padding_idx=7)
    reference = torch.nn.Embedding(50, 8, padding_idx=7)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.params["weight"]))
    optimizer = optim.SGD(layer, lr=0.3)
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.3, foreach=False)
    steps = batches(8, 50, 8, seed=6, padding_idx=7)
    for indices, dy in steps:
        torch_optimizer.zero_grad()
        reference(torch.from_numpy(indices)).backward(torch.from_numpy(dy))
        torch_optimizer.step()
    train(layer, optimizer, steps)
    np.testing.assert_allclose(layer.params["weight"], reference.weight.detach().numpy(),
                               rtol=2e-6, atol=2e-7)


def test_plain_sgd_row_sparse_step_is_bitwise_the_dense_step(isa):
    """Rows of a whole number of vectors: every element takes the same
    instructions in the row-sparse and the dense update."""
    steps = batches(6, 60, 32, seed=7)
    results = []
    for sparse in (True, False):
        pynn.init.manual_seed(8)
        layer = Embedding(60, 32)
        optimizer = optim.SGD(layer, lr=0.2)
        for indices, dy in steps:
            layer.forward(indices, training=True)
            layer.backward(dy)
            if not sparse:
                layer.forget_touched_rows()  # the optimizer then updates every row
                assert layer.touched_rows("weight") is None
            optimizer.step()
        results.append(layer.params["weight"].copy())
    np.testing.assert_array_equal(*results)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_adam_matches_sparse_adam_on_the_touched_rows(padding_idx):
    """torch.optim.SparseAdam adds eps to sqrt(v) before the bias correction,
    torch.optim.Adam (and pynn) after it: a tiny eps leaves only rounding."""
    torch = pytest.importorskip("torch")
    layer = Embedding(30, 4, padding_idx=padding_idx)
    reference = torch.nn.Embedding(30, 4, padding_idx=padding_idx, sparse=True)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.params["weight"]))
    optimizer = optim.Adam(layer, lr=0.01, eps=1e-12)
    torch_optimizer = torch.optim.SparseAdam(reference.parameters(), lr=0.01, eps=1e-12)
    steps = batches(10, 30, 4, seed=9, padding_idx=padding_idx)
    for indices, dy in steps:
        torch_optimizer.zero_grad()
        reference(torch.from_numpy(indices)).backward(torch.from_numpy(dy))
        torch_optimizer.step()
    train(layer, optimizer, steps)
    np.testing.assert_allclose(layer.params["weight"], reference.weight.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert int(optimizer.state["weight"]["step"]) == torch_optimizer.state[reference.weight]["step"]


def lazy_reference(weight, steps, kind, lr, padding_idx=None, momentum=0.0, nesterov=False,
                   weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
    """float64: the dense formulas applied to the touched rows only, state included."""
    p = weight.astype(np.float64)
    first, second = np.zeros_like(p), np.zeros_like(p)
    for t, (indices, dy) in enumerate(steps, start=1):
        rows = distinct_rows(indices, padding_idx)
        g = dense_gradient(indices, dy, len(p), padding_idx)[rows]
        w = p[rows]
        if kind == "sgd":
            d = g + weight_decay * w
            if momentum:
                first[rows] = d if t == 1 else momentum * first[rows] + d
                d = d + momentum * first[rows] if nesterov else first[rows]
            p[rows] = w - lr * d
            continue
        if kind == "adamw":
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        first[rows] = betas[0] * first[rows] + (1 - betas[0]) * g
        second[rows] = betas[1] * second[rows] + (1 - betas[1]) * g * g
        denominator = np.sqrt(second[rows]) / math.sqrt(1 - betas[1] ** t) + eps
        p[rows] = w - lr / (1 - betas[0] ** t) * first[rows] / denominator
    return p


LAZY_CASES = [
    ("sgd", optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("sgd", optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("sgd", optim.SGD, dict(lr=0.1, weight_decay=0.2)),
    ("adam", optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    ("adamw", optim.AdamW, dict(lr=0.01, weight_decay=0.3)),
]


@pytest.mark.parametrize("kind,cls,kwargs", LAZY_CASES)
def test_untouched_rows_and_their_state_are_left_as_they_are(kind, cls, kwargs):
    layer = Embedding(25, 3, padding_idx=1)
    start = layer.params["weight"].copy()
    optimizer = cls(layer, **kwargs)
    steps = batches(9, 25, 3, seed=10, padding_idx=1)
    # the first batches never touch rows 20..24; the last one touches only row 2
    steps = [(indices % 20, dy) for indices, dy in steps]
    steps.append((np.array([2, 2]), np.ones((2, 3), np.float32)))
    expected = lazy_reference(start, steps[:-1], kind, padding_idx=1, **kwargs)
    train(layer, optimizer, steps[:-1])
    np.testing.assert_allclose(layer.params["weight"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer.params["weight"][20:], start[20:])
    np.testing.assert_array_equal(layer.params["weight"][1], 0.0)
    before = layer.params["weight"].copy()
    state = {key: np.array(value) for key, value in optimizer.state.get("weight", {}).items()}
    train(layer, optimizer, steps[-1:])
    changed = np.flatnonzero(np.any(layer.params["weight"] != before, axis=1))
    assert changed.tolist() == [2]
    for key, value in optimizer.state.get("weight", {}).items():
        if key != "step":
            np.testing.assert_array_equal(np.delete(value, 2, axis=0), np.delete(state[key], 2, axis=0))
    if kind != "sgd":
        assert int(optimizer.state["weight"]["step"]) == len(steps)


@pytest.mark.parametrize("cls,kwargs", [(optim.SGD, dict(lr=0.1, momentum=0.9)),
                                        (optim.Adam, dict(lr=0.01))])
def test_optimizer_state_dict_round_trip_resumes_exactly(cls, kwargs):
    steps = batches(8, 40, 4, seed=11)
    pynn.init.manual_seed(12)
    layer = Embedding(40, 4)
    optimizer = cls(layer, **kwargs)
    train(layer, optimizer, steps[:4])
    other = Embedding(40, 4)
    other.params["weight"][...] = layer.params["weight"]
    resumed = cls(other, **kwargs)
    resumed.load_state_dict({"state": {name: {key: np.array(value) for key, value in entry.items()}
                                       for name, entry in optimizer.state_dict()["state"].items()},
                             "param_groups": optimizer.state_dict()["param_groups"]})
    train(layer, optimizer, steps[4:])
    train(other, resumed, steps[4:])
    np.testing.assert_array_equal(other.params["weight"], layer.params["weight"])


def test_checkpoint_resumes_an_embedding_model_bit_identically(tmp_path):
    rng = np.random.default_rng(13)
    data = [(rng.integers(0, 50, (6, 3)), rng.standard_normal((6, 2)).astype(np.float32))
            for _ in range(6)]

    def build():
        pynn.init.manual_seed(14)
        model = pynn.Sequential(Embedding(50, 4, padding_idx=0), Flatten(), Linear(12, 2))
        return model, optim.Adam(model, lr=0.01, weight_decay=0.01)

    def run(model, optimizer, part):
        for x, dy in part:
            model.forward(x, training=True)
            model.backward(dy, input_grad=False)
            optimizer.step()

    model, optimizer = build()
    run(model, optimizer, data[:3])
    pynn.save_checkpoint(tmp_path / "c.safetensors", model, optimizer, epoch=1)
    run(model, optimizer, data[3:])
    resumed, resumed_optimizer = build()
    assert pynn.load_checkpoint(tmp_path / "c.safetensors", resumed, resumed_optimizer) == 1
    run(resumed, resumed_optimizer, data[3:])
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value)


def test_optimizer_table_refuses_bad_rows():
    layer = Embedding(6, 2)
    optimizer = optim.SGD(layer, lr=0.1)
    table = optimizer._kernel_table()
    with pytest.raises(IndexError, match="index 6"):
        table.sgd(0.1, 0.0, 0.0, False, [np.array([0, 6])])
    with pytest.raises(ValueError, match="1-D"):
        table.sgd(0.1, 0.0, 0.0, False, [np.zeros((1, 1), np.int64)])
    with pytest.raises(ValueError, match="entries"):
        table.sgd(0.1, 0.0, 0.0, False, [None, None])
