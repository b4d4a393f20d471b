"""Optimizers against float64 references of torch.optim's formulas, and against
torch.optim itself when PyTorch is importable."""
import math

import numpy as np
import pytest

from pynn import optim
from pynn._kernels import core as kernels

SHAPES = [(1,), (7, 3), (257,), (40001,)]  # the last one takes the threaded path


class Owner:
    """What an optimizer updates: one tensor ``w`` with its gradient."""

    def __init__(self, param):
        self.params = {"w": param}
        self.grads = {"w": np.zeros_like(param)}
        self.trainable = True


class Holder:
    """The optimizer protocol without layers: owners named p0., p1., ..."""

    def __init__(self, seed=0, shapes=SHAPES):
        rng = np.random.default_rng(seed)
        self.owners = {f"p{i}.w": Owner(rng.standard_normal(shape).astype(np.float32))
                       for i, shape in enumerate(shapes)}
        self.params = {name: owner.params["w"] for name, owner in self.owners.items()}
        self.grads = {name: owner.grads["w"] for name, owner in self.owners.items()}

    def parameter_owners(self):
        return [(name[:-1], owner) for name, owner in self.owners.items()]


def gradient_sequence(holder, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(p.shape).astype(np.float32) for name, p in holder.params.items()}
            for _ in range(steps)]


def sgd_reference(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    p = p.astype(np.float64)
    buffer = None
    for g in grads:
        d = g.astype(np.float64) + weight_decay * p
        if momentum:
            buffer = d.copy() if buffer is None else momentum * buffer + d
            d = d + momentum * buffer if nesterov else buffer
        p = p - lr * d
    return p


def adam_reference(p, grads, lr, betas, eps, weight_decay, decoupled):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        p = p - lr * m_hat / (np.sqrt(v) / math.sqrt(1 - betas[1] ** t) + eps)
    return p


def run(holder, optimizer, grads):
    for step_grads in grads:
        for name, g in step_grads.items():
            holder.grads[name][...] = g
        optimizer.step()


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
             dict(lr=0.1, weight_decay=0.01), dict(lr=0.02, momentum=0.5, nesterov=True, weight_decay=0.1)]
ADAM_CASES = [dict(), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)]


@pytest.fixture(params=[(isa, threads) for isa in kernels.supported_isas() for threads in (1, 2)],
                ids=lambda p: f"{p[0]}-t{p[1]}")
def kernel_path(request, set_threads):
    """Every ISA path this CPU runs, on one and two threads."""
    isa, threads = request.param
    isa_before = kernels.chosen_isa()
    kernels.choose_isa(isa)
    set_threads(threads)
    yield
    kernels.choose_isa(isa_before)


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_matches_float64_reference(kwargs, kernel_path):
    holder = Holder()
    initial = {name: p.copy() for name, p in holder.params.items()}
    grads = gradient_sequence(holder, 5)
    run(holder, optim.SGD(holder, **kwargs), grads)
    for name, p in holder.params.items():
        expected = sgd_reference(initial[name], [g[name] for g in grads], **kwargs)
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_matches_float64_reference(cls, kwargs, kernel_path):
    holder = Holder()
    initial = {name: p.copy() for name, p in holder.params.items()}
    grads = gradient_sequence(holder, 5)
    optimizer = cls(holder, **kwargs)
    run(holder, optimizer, grads)
    for name, p in holder.params.items():
        expected = adam_reference(initial[name], [g[name] for g in grads], optimizer.lr,
                                  optimizer.betas, optimizer.eps, optimizer.weight_decay,
                                  decoupled=cls is optim.AdamW)
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


def torch_parity(pynn_cls, torch_cls, kwargs, steps=5):
    torch = pytest.importorskip("torch")
    holder = Holder()
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in holder.params.values()]
    grads = gradient_sequence(holder, steps)
    optimizer = pynn_cls(holder, **kwargs)
    reference = torch_cls(tensors, foreach=False, **kwargs)
    for step_grads in grads:
        for tensor, (name, g) in zip(tensors, step_grads.items()):
            tensor.grad = torch.from_numpy(g.copy())
            holder.grads[name][...] = g
        optimizer.step()
        reference.step()
    for tensor, p in zip(tensors, holder.params.values()):
        np.testing.assert_allclose(p, tensor.detach().numpy(), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    torch_parity(optim.SGD, torch.optim.SGD, kwargs)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    torch_parity(getattr(optim, name), getattr(torch.optim, name), kwargs)


def test_frozen_parameters_are_not_updated():
    holder = Holder()
    holder.owners["p1.w"].trainable = False
    frozen = holder.params["p1.w"].copy()
    optimizer = optim.Adam(holder, lr=0.1)
    run(holder, optimizer, gradient_sequence(holder, 2))
    np.testing.assert_array_equal(holder.params["p1.w"], frozen)
    assert not np.array_equal(holder.params["p0.w"], Holder().params["p0.w"])
    holder.owners["p1.w"].trainable = True  # unfrozen: it starts its own step count
    run(holder, optimizer, gradient_sequence(holder, 1))
    assert int(optimizer.state["p1.w"]["step"]) == 1 and int(optimizer.state["p0.w"]["step"]) == 3
    assert not np.array_equal(holder.params["p1.w"], frozen)


def test_lr_is_settable_and_used():
    holder = Holder(shapes=[(4,)])
    optimizer = optim.SGD(holder, lr=1.0)
    optimizer.lr = 0.5
    before = holder.params["p0.w"].copy()
    holder.grads["p0.w"][...] = 2.0
    optimizer.step()
    np.testing.assert_allclose(holder.params["p0.w"], before - 1.0, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda h: optim.SGD(h, lr=0.1, momentum=0.9),
                                  lambda h: optim.AdamW(h, lr=0.01)])
def test_state_dict_round_trip_resumes_identically(make):
    grads = gradient_sequence(Holder(), 6)
    straight = Holder()
    run(straight, make(straight), grads)

    first = Holder()
    optimizer = make(first)
    run(first, optimizer, grads[:3])
    saved = {k: {n: v.copy() for n, v in e.items()} for k, e in optimizer.state_dict()["state"].items()}
    groups = optimizer.state_dict()["param_groups"]
    resumed = Holder()
    for name, p in first.params.items():
        resumed.params[name][...] = p
    fresh = make(resumed)
    fresh.load_state_dict({"state": saved, "param_groups": groups})
    run(resumed, fresh, grads[3:])
    for name in straight.params:
        np.testing.assert_array_equal(resumed.params[name], straight.params[name])


def test_load_state_dict_refuses_mismatches():
    holder = Holder()
    optimizer = optim.Adam(holder)
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        optimizer.load_state_dict({"state": {"nope": {}}, "param_groups": [{"lr": 0.1}]})
    with pytest.raises(ValueError, match=r"p1.w.exp_avg has shape \(2,\)"):
        optimizer.load_state_dict({"state": {"p1.w": {"exp_avg": np.zeros(2)}},
                                   "param_groups": [{"lr": 0.1}]})
    with pytest.raises(ValueError, match="param_groups"):
        optimizer.load_state_dict({"state": {}})


def test_bad_arguments_name_themselves():
    holder = Holder()
    with pytest.raises(ValueError, match="SGD: lr must be >= 0"):
        optim.SGD(holder, lr=-1)
    with pytest.raises(TypeError, match="SGD: lr must be a real number"):
        optim.SGD(holder, lr="fast")
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(holder, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam: betas\[1\] must be in \[0, 1\)"):
        optim.Adam(holder, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="AdamW: model must be a pynn Sequential or layer"):
        optim.AdamW(object())


def test_wrong_gradient_dtype_is_refused():
    holder = Holder(shapes=[(3,)])
    holder.owners["p0.w"].grads["w"] = np.zeros(3, dtype=np.float64)
    with pytest.raises(TypeError, match="gradient must be a writable C-contiguous float32"):
        optim.SGD(holder, lr=0.1).step()


def rmsprop_reference(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                      centered=False):
    p = p.astype(np.float64)
    square_avg, grad_avg, buffer = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g.astype(np.float64) + weight_decay * p
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        if centered:
            grad_avg = alpha * grad_avg + (1 - alpha) * g
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = np.sqrt(square_avg) + eps
        if momentum:
            buffer = momentum * buffer + g / avg
            p = p - lr * buffer
        else:
            p = p - lr * g / avg
    return p


def adagrad_reference(p, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    p = p.astype(np.float64)
    total = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64) + weight_decay * p
        total = total + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(total) + eps)
    return p


RMSPROP_CASES = [dict(lr=0.01, alpha=alpha, momentum=momentum, centered=centered, weight_decay=decay)
                 for alpha in (0.99, 0.9) for momentum in (0.0, 0.9) for centered in (False, True)
                 for decay in (0.0, 0.1)] + [dict(), dict(lr=0.003, eps=1e-3)]
ADAGRAD_CASES = [dict(lr=0.1, lr_decay=decay, weight_decay=weight_decay)
                 for decay in (0.0, 0.01) for weight_decay in (0.0, 0.1)] + [dict(), dict(eps=1e-3)]


@pytest.mark.parametrize("kwargs", RMSPROP_CASES[::3] + RMSPROP_CASES[-2:])
def test_rmsprop_matches_float64_reference(kwargs, kernel_path):
    holder = Holder()
    initial = {name: p.copy() for name, p in holder.params.items()}
    grads = gradient_sequence(holder, 5)
    run(holder, optim.RMSprop(holder, **kwargs), grads)
    for name, p in holder.params.items():
        expected = rmsprop_reference(initial[name], [g[name] for g in grads], **kwargs)
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", ADAGRAD_CASES)
def test_adagrad_matches_float64_reference(kwargs, kernel_path):
    holder = Holder()
    initial = {name: p.copy() for name, p in holder.params.items()}
    grads = gradient_sequence(holder, 5)
    run(holder, optim.Adagrad(holder, **kwargs), grads)
    for name, p in holder.params.items():
        expected = adagrad_reference(initial[name], [g[name] for g in grads], **kwargs)
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


def torch_parity_100_steps(torch, pynn_cls, torch_cls, kwargs):
    """100 steps side by side: float32 rounding differs only in the order of
    a few operations, so the weights stay within a few ulps of PyTorch's."""
    holder = Holder(shapes=[(7, 3), (257,), (40001,)])
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in holder.params.values()]
    optimizer, reference = pynn_cls(holder, **kwargs), torch_cls(tensors, foreach=False, **kwargs)
    for step_grads in gradient_sequence(holder, 100):
        for tensor, (name, g) in zip(tensors, step_grads.items()):
            tensor.grad = torch.from_numpy(g.copy())
            holder.grads[name][...] = g
        optimizer.step()
        reference.step()
    for tensor, p in zip(tensors, holder.params.values()):
        np.testing.assert_allclose(p, tensor.detach().numpy(), rtol=1e-5, atol=1e-5)
    for name, state in zip(holder.params, reference.state.values()):
        assert int(optimizer.state[name]["step"]) == int(state["step"]) == 100


@pytest.mark.parametrize("kwargs", RMSPROP_CASES)
def test_rmsprop_matches_torch_over_100_steps(kwargs):
    torch = pytest.importorskip("torch")
    torch_parity_100_steps(torch, optim.RMSprop, torch.optim.RMSprop, kwargs)


@pytest.mark.parametrize("kwargs", ADAGRAD_CASES)
def test_adagrad_matches_torch_over_100_steps(kwargs):
    torch = pytest.importorskip("torch")
    torch_parity_100_steps(torch, optim.Adagrad, torch.optim.Adagrad, kwargs)


@pytest.mark.parametrize("make", [lambda h: optim.RMSprop(h, momentum=0.9, centered=True, weight_decay=0.01),
                                  lambda h: optim.Adagrad(h, lr=0.1, lr_decay=0.01)])
def test_new_optimizers_resume_identically_from_their_state_dict(make):
    test_state_dict_round_trip_resumes_identically(make)


def test_rmsprop_and_adagrad_state_is_torchs():
    holder = Holder(shapes=[(3,)])
    for optimizer, slots in ((optim.RMSprop(holder, momentum=0.5, centered=True),
                              {"step", "square_avg", "momentum_buffer", "grad_avg"}),
                             (optim.RMSprop(holder), {"step", "square_avg"}),
                             (optim.Adagrad(holder), {"step", "sum"})):
        optimizer.step()
        assert set(optimizer.state_dict()["state"]["p0.w"]) == slots


def test_momentum_turned_on_later_gets_its_buffers():
    """As a OneCycleLR may do: momentum 0 when the first step ran, then not."""
    for make in (lambda h: optim.SGD(h, lr=0.1), lambda h: optim.RMSprop(h)):
        holder, reference = Holder(), Holder()
        grads = gradient_sequence(holder, 4)
        optimizer, other = make(holder), make(reference)
        run(holder, optimizer, grads[:2])
        run(reference, other, grads[:2])
        optimizer.momentum = 0.9
        run(holder, optimizer, grads[2:])
        run(reference, other, grads[2:])
        assert "momentum_buffer" in optimizer.state["p0.w"]
        assert not np.array_equal(holder.params["p0.w"], reference.params["p0.w"])


@pytest.mark.parametrize("make", [lambda layer: optim.RMSprop(layer, lr=0.1, momentum=0.5, centered=True),
                                  lambda layer: optim.Adagrad(layer, lr=0.1)])
def test_embedding_rows_the_batch_missed_stay_put(make):
    from pynn.layers import Embedding

    layer = Embedding(50, 4)
    optimizer = make(layer)
    rng = np.random.default_rng(0)
    for _ in range(3):
        indices = rng.integers(0, 50, (6,))
        before = layer.params["weight"].copy()
        layer.forward(indices, training=True)
        layer.backward(rng.standard_normal((6, 4)).astype(np.float32))
        optimizer.step()
        changed = np.flatnonzero(np.any(layer.params["weight"] != before, axis=1))
        assert set(changed.tolist()) == set(indices.tolist())


def test_bad_arguments_of_rmsprop_and_adagrad_name_themselves():
    holder = Holder()
    for kwargs, pattern in ((dict(alpha=-0.1), "RMSprop: alpha must be >= 0"),
                            (dict(momentum=-1), "RMSprop: momentum must be >= 0"),
                            (dict(eps=float("nan")), "RMSprop: eps must be >= 0"),
                            (dict(lr=-1), "RMSprop: lr must be >= 0")):
        with pytest.raises(ValueError, match=pattern):
            optim.RMSprop(holder, **kwargs)
    with pytest.raises(TypeError, match="RMSprop: centered must be True or False"):
        optim.RMSprop(holder, centered="yes")
    with pytest.raises(TypeError, match="Adagrad: lr_decay must be a real number"):
        optim.Adagrad(holder, lr_decay="slow")
    with pytest.raises(ValueError, match="Adagrad: weight_decay must be >= 0"):
        optim.Adagrad(holder, weight_decay=-0.5)
