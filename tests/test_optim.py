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
