"""Ops suite: each activation forward and backward and dropout at 1e6 elements, softmax
cross-entropy, linear (+ReLU) forward and backward at MLP shapes, and
scaled dot-product attention forward and forward+backward, beside the numpy
expression a user would write (and PyTorch where installed).

pynn and PyTorch write into preallocated outputs (both APIs offer ``out``);
numpy runs its natural expression, temporaries included. Work is elements
(unit "elements/s") or FLOP for linear."""
import math

import numpy as np

from pynn import ops
from pynn._kernels import core as kernels
from pynn.bench import Case, _checks, optional_import

ELEMENTS = 1_000_000
DROPOUT = 0.1
BATCHES = (32, 128, 512)
LAYERS = ((784, 256), (256, 128), (128, 10))
# (N, heads, T, head_dim): a BERT-small batch, and one short sequence
ATTENTION_SHAPES = ((8, 12, 128, 32), (1, 12, 12, 32))


def _activation_cases(rng, torch, scipy_special):
    x = rng.standard_normal(ELEMENTS, dtype=np.float32) * 3
    dy = rng.standard_normal(ELEMENTS, dtype=np.float32)
    out = np.empty_like(x)
    draws = rng.random(ELEMENTS, dtype=np.float32)
    sigmoid_y, tanh_y = ops.sigmoid(x), ops.tanh(x)
    erf = scipy_special.erf if scipy_special else None  # numpy has no erf
    # name -> (pynn, numpy expression, torch expression on tensors x, dy, y, out)
    table = {
        "relu": (lambda: ops.relu(x, out=out), lambda: np.maximum(x, 0),
                 lambda t: torch.clamp_min(t["x"], 0, out=t["out"])),
        "relu_backward": (lambda: ops.relu_backward(dy, x, out=out), lambda: dy * (x > 0),
                          lambda t: torch.ops.aten.threshold_backward(t["dy"], t["x"], 0)),
        "leaky_relu": (lambda: ops.leaky_relu(x, out=out), lambda: np.where(x > 0, x, 0.01 * x),
                       lambda t: torch.nn.functional.leaky_relu(t["x"], 0.01)),
        "leaky_relu_backward": (lambda: ops.leaky_relu_backward(dy, x, out=out),
                                lambda: np.where(x > 0, dy, 0.01 * dy),
                                lambda t: torch.ops.aten.leaky_relu_backward(t["dy"], t["x"], 0.01, False)),
        "sigmoid": (lambda: ops.sigmoid(x, out=out), lambda: 1 / (1 + np.exp(-x)),
                    lambda t: torch.sigmoid(t["x"], out=t["out"])),
        "sigmoid_backward": (lambda: ops.sigmoid_backward(dy, sigmoid_y, out=out),
                             lambda: dy * sigmoid_y * (1 - sigmoid_y),
                             lambda t: torch.ops.aten.sigmoid_backward(t["dy"], t["sigmoid_y"])),
        "tanh": (lambda: ops.tanh(x, out=out), lambda: np.tanh(x),
                 lambda t: torch.tanh(t["x"], out=t["out"])),
        "tanh_backward": (lambda: ops.tanh_backward(dy, tanh_y, out=out), lambda: dy * (1 - tanh_y * tanh_y),
                          lambda t: torch.ops.aten.tanh_backward(t["dy"], t["tanh_y"])),
        "gelu(tanh)": (lambda: ops.gelu(x, approximate="tanh", out=out),
                       lambda: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3))),
                       lambda t: torch.nn.functional.gelu(t["x"], approximate="tanh")),
        "gelu(tanh)_backward": (lambda: ops.gelu_backward(dy, x, approximate="tanh", out=out), None,
                                lambda t: torch.ops.aten.gelu_backward(t["dy"], t["x"], approximate="tanh")),
        "gelu": (lambda: ops.gelu(x, out=out),
                 (lambda: 0.5 * x * (1 + erf(x * np.float32(0.70710678)))) if erf else None,
                 lambda t: torch.nn.functional.gelu(t["x"])),
        "gelu_backward": (lambda: ops.gelu_backward(dy, x, out=out), None,
                          lambda t: torch.ops.aten.gelu_backward(t["dy"], t["x"])),
        "silu": (lambda: ops.silu(x, out=out), lambda: x / (1 + np.exp(-x)),
                 lambda t: torch.nn.functional.silu(t["x"])),
        "silu_backward": (lambda: ops.silu_backward(dy, x, out=out), None,
                          lambda t: torch.ops.aten.silu_backward(t["dy"], t["x"])),
        "hardswish": (lambda: ops.hardswish(x, out=out), lambda: x * np.clip(x + 3, 0, 6) / 6,
                      lambda t: torch.nn.functional.hardswish(t["x"])),
        "hardswish_backward": (lambda: ops.hardswish_backward(dy, x, out=out), None,
                               lambda t: torch.ops.aten.hardswish_backward(t["dy"], t["x"])),
        "hardsigmoid": (lambda: ops.hardsigmoid(x, out=out), lambda: np.clip(x / 6 + 0.5, 0, 1),
                        lambda t: torch.nn.functional.hardsigmoid(t["x"])),
        "hardsigmoid_backward": (lambda: ops.hardsigmoid_backward(dy, x, out=out), None,
                                 lambda t: torch.ops.aten.hardsigmoid_backward(t["dy"], t["x"])),
        "relu6": (lambda: ops.relu6(x, out=out), lambda: np.clip(x, 0, 6),
                  lambda t: torch.nn.functional.relu6(t["x"])),
        "relu6_backward": (lambda: ops.relu6_backward(dy, x, out=out), None,
                           lambda t: torch.ops.aten.hardtanh_backward(t["dy"], t["x"], 0.0, 6.0)),
        # the Dropout layer's kernel over given draws (PyTorch's dropout draws its own)
        "dropout": (lambda: kernels.elementwise("dropout", x, draws, out, DROPOUT),
                    lambda: np.where(draws >= DROPOUT, x * np.float32(1 / (1 - DROPOUT)), 0), None),
    }
    references = _activation_references(x, dy, sigmoid_y, tanh_y, scipy_special, draws)
    tensors = None
    if torch is not None:
        tensors = {name: torch.from_numpy(array) for name, array in
                   (("x", x), ("dy", dy), ("sigmoid_y", sigmoid_y), ("tanh_y", tanh_y))}
        tensors["out"] = torch.empty(ELEMENTS)
    found = []
    for name, (mine, numpy_expression, torch_expression) in table.items():
        runners = {"pynn": mine}
        if numpy_expression is not None:
            runners["scipy" if name == "gelu" else "numpy"] = numpy_expression
        if torch is not None and torch_expression is not None:
            runners["torch"] = lambda f=torch_expression: f(tensors)
        backward = name.endswith("_backward")

        def check(mine=mine, name=name, backward=backward):
            expected = references[name]()
            # float32 roundings relative to the terms' scale: |x| forward (the
            # tanh GELU's 1 + tanh(u) cancels in its tail), |dy|·(1 + |x|) backward
            scale = np.abs(dy) * (1 + np.abs(x)) if backward else np.abs(x)
            bound = 64 * _checks.EPS32 * (np.abs(expected) + scale) + 1e-30
            _checks.within(mine(), expected, bound, name)
        found.append(Case("ops", f"{name} 1e6", runners, work=ELEMENTS, unit="elements/s",
                          check=check))
    return found


def _activation_references(x, dy, sigmoid_y, tanh_y, scipy_special, draws):
    """name -> a function computing the float64 result of that op on the suite's inputs."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    s64, t64 = sigmoid_y.astype(np.float64), tanh_y.astype(np.float64)
    erf = scipy_special.erf if scipy_special else np.vectorize(math.erf, otypes=[np.float64])
    c = math.sqrt(2 / math.pi)

    def gelu_tanh_parts():
        u = c * (x64 + 0.044715 * x64 ** 3)
        # 1 + tanh(u) = 2 / (1 + exp(-2u)): no cancellation for large negative u
        return 2 / (1 + np.exp(-2 * u)), 1 - np.tanh(u) ** 2, c * (1 + 3 * 0.044715 * x64 ** 2)

    def phi():
        return 0.5 * (1 + erf(x64 / math.sqrt(2)))

    def logistic():
        return 1 / (1 + np.exp(-x64))

    def gelu_tanh_backward():
        one_plus_tanh, sech2, du = gelu_tanh_parts()
        return dy64 * (0.5 * one_plus_tanh + 0.5 * x64 * sech2 * du)

    return {
        "relu": lambda: np.maximum(x64, 0),
        "relu_backward": lambda: dy64 * (x64 > 0),
        "leaky_relu": lambda: np.where(x64 > 0, x64, 0.01 * x64),
        "leaky_relu_backward": lambda: np.where(x64 > 0, dy64, 0.01 * dy64),
        "sigmoid": lambda: 1 / (1 + np.exp(-x64)),
        "sigmoid_backward": lambda: dy64 * s64 * (1 - s64),
        "tanh": lambda: np.tanh(x64),
        "tanh_backward": lambda: dy64 * (1 - t64 * t64),
        "gelu(tanh)": lambda: 0.5 * x64 * gelu_tanh_parts()[0],
        "gelu(tanh)_backward": gelu_tanh_backward,
        "gelu": lambda: x64 * phi(),
        "gelu_backward": lambda: dy64 * (phi() + x64 * np.exp(-x64 * x64 / 2) / math.sqrt(2 * math.pi)),
        "silu": lambda: x64 * logistic(),
        "silu_backward": lambda: dy64 * logistic() * (1 + x64 * (1 - logistic())),
        # PyTorch's sides at the kinks: hardswish's slope is 0 at -3 and 1 at 3
        "hardswish": lambda: x64 * np.clip(x64 + 3, 0, 6) / 6,
        "hardswish_backward": lambda: dy64 * np.where(x64 <= -3, 0, np.where(x64 >= 3, 1, (2 * x64 + 3) / 6)),
        "hardsigmoid": lambda: np.clip(x64 / 6 + 0.5, 0, 1),
        "hardsigmoid_backward": lambda: np.where((x64 > -3) & (x64 < 3), dy64 / 6, 0),
        "relu6": lambda: np.clip(x64, 0, 6),
        "relu6_backward": lambda: np.where((x64 > 0) & (x64 < 6), dy64, 0),
        "dropout": lambda: np.where(draws >= DROPOUT, x64 / (1 - DROPOUT), 0),
    }


def _cross_entropy_numpy(logits, target):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(target))
    loss = -log_p[rows, target].mean()
    grad = np.exp(log_p)
    grad[rows, target] -= 1
    grad /= len(target)
    return loss, grad


def _check_cross_entropy(logits, target, grad):
    loss, _ = ops.cross_entropy(logits, target, out=grad)
    expected_loss, expected_grad = _cross_entropy_numpy(logits.astype(np.float64), target)
    _checks.within(loss, expected_loss, 1e-6 * max(1.0, abs(expected_loss)), "loss")
    _checks.within(grad, expected_grad, 4 * _checks.EPS32 * np.abs(expected_grad) + 1e-9, "gradient")


def _cross_entropy_cases(rng, torch, batches):
    found = []
    for batch, classes in [(b, 10) for b in batches] + [(128, 1000)]:
        logits = rng.standard_normal((batch, classes), dtype=np.float32) * 3
        target = rng.integers(0, classes, batch)
        grad = np.empty_like(logits)
        runners = {"pynn": lambda l=logits, t=target, g=grad: ops.cross_entropy(l, t, out=g),
                   "numpy": lambda l=logits, t=target: _cross_entropy_numpy(l, t)}
        if torch is not None:
            t_logits = torch.from_numpy(logits).requires_grad_()
            t_target = torch.from_numpy(target)

            def torch_step(l=t_logits, t=t_target):
                l.grad = None
                torch.nn.functional.cross_entropy(l, t).backward()
            runners["torch"] = torch_step
        found.append(Case("ops", f"softmax_cross_entropy {batch}x{classes}", runners,
                          work=batch, unit="samples/s",
                          check=lambda l=logits, t=target, g=grad: _check_cross_entropy(l, t, g)))
    return found


def _check_linear(y, x, w, b):
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    magnitude = np.abs(x64) @ np.abs(w64).T + np.abs(b64)
    # ReLU moves no value further from the reference than it was
    _checks.within(y, np.maximum(x64 @ w64.T + b64, 0), _checks.sums_bound(magnitude, x.shape[1] + 1), "y")


def _check_linear_backward(grads, dy, x, w):
    dx, dw, db = grads
    _checks.product(dy, w, "dx", result=dx)
    _checks.product(dy, x, "dweight", trans_a=True, result=dw)
    dy64 = dy.astype(np.float64)
    _checks.within(db, dy64.sum(axis=0), _checks.sums_bound(np.abs(dy64).sum(axis=0), len(dy)), "dbias")


def _linear_cases(rng, torch, batches):
    found = []
    for batch in batches:
        for fan_in, fan_out in LAYERS:
            x = rng.standard_normal((batch, fan_in), dtype=np.float32)
            w = rng.standard_normal((fan_out, fan_in), dtype=np.float32) / np.float32(np.sqrt(fan_in))
            b = rng.standard_normal(fan_out, dtype=np.float32)
            dy = rng.standard_normal((batch, fan_out), dtype=np.float32)
            y = np.empty((batch, fan_out), np.float32)
            grads = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
            shape = f"{batch}x{fan_in}->{fan_out}"
            forward = {"pynn": lambda x=x, w=w, b=b, y=y: ops.linear(x, w, b, out=y, activation="relu"),
                       "numpy": lambda x=x, w=w, b=b: np.maximum(x @ w.T + b, 0)}
            backward = {"pynn": lambda dy=dy, x=x, w=w, g=grads: ops.linear_backward(dy, x, w, out=g),
                        "numpy": lambda dy=dy, x=x, w=w: (dy @ w, dy.T @ x, dy.sum(axis=0))}
            if torch is not None:
                tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
                forward["torch"] = lambda tx=tx, tw=tw, tb=tb: torch.relu(torch.nn.functional.linear(tx, tw, tb))
                backward["torch"] = lambda tx=tx, tw=tw, tdy=tdy: (tdy @ tw, tdy.T @ tx, tdy.sum(0))
            flops = 2.0 * batch * fan_in * fan_out
            found.append(Case("ops", f"linear+relu {shape}", forward, work=flops, unit="GFLOP/s",
                              check=lambda run=forward["pynn"], x=x, w=w, b=b: _check_linear(run(), x, w, b)))
            found.append(Case("ops", f"linear_backward {shape}", backward, work=2 * flops, unit="GFLOP/s",
                              check=lambda run=backward["pynn"], dy=dy, x=x, w=w: _check_linear_backward(run(), dy, x, w)))
    return found


def _layer_norm_reference(x, weight, bias, dy, eps):
    """float64 forward output and (dx, dweight, dbias) over the last axis."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    centred = x64 - x64.mean(axis=1, keepdims=True)
    invstd = 1 / np.sqrt((centred ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = centred * invstd
    g = dy64 * weight
    dx = invstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return xhat * weight + bias, (dx, (dy64 * xhat).sum(axis=0), dy64.sum(axis=0)), invstd


def _layer_norm_cases(rng, torch, rows):
    """LayerNorm over 768 features (a BERT-base row), forward and backward."""
    features, eps = 768, 1e-5
    x = rng.standard_normal((rows, features), dtype=np.float32) * 2 + 1
    weight = rng.uniform(0.5, 1.5, features).astype(np.float32)
    bias = rng.standard_normal(features, dtype=np.float32)
    dy = rng.standard_normal((rows, features), dtype=np.float32)
    y = np.empty_like(x)
    forward = {"pynn": lambda: ops.layer_norm(x, features, weight, bias, eps, out=y),
               "numpy": lambda: ((x - x.mean(axis=1, keepdims=True))
                                 / np.sqrt(x.var(axis=1, keepdims=True) + eps) * weight + bias)}
    backward = {"pynn": lambda: ops.layer_norm_backward(dy, x, features, weight, eps, bias=bias)}
    if torch is not None:
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, weight, bias, dy))
        forward["torch"] = lambda: torch.nn.functional.layer_norm(tx, (features,), tw, tb, eps)
        _, mean, rstd = torch.native_layer_norm(tx, (features,), tw, tb, eps)
        backward["torch"] = lambda: torch.ops.aten.native_layer_norm_backward(
            tdy, tx, (features,), mean, rstd, tw, tb, (True, True, True))
    expected, expected_grads, invstd = _layer_norm_reference(x, weight, bias, dy, eps)

    def check_forward():
        bound = 64 * _checks.EPS32 * (np.abs(expected) + np.abs(bias) + weight) + 1e-30
        _checks.within(forward["pynn"](), expected, bound, "layer_norm")

    def check_backward():
        dx, dweight, dbias = backward["pynn"]()
        scale = np.abs(dy).astype(np.float64) * weight * invstd
        _checks.within(dx, expected_grads[0], 256 * _checks.EPS32 * (np.abs(expected_grads[0]) + scale.max()),
                       "dx")
        for name, mine, want in (("dweight", dweight, expected_grads[1]), ("dbias", dbias, expected_grads[2])):
            _checks.within(mine, want, _checks.sums_bound(np.abs(dy).astype(np.float64).sum(axis=0) * 4, rows),
                           name)
    name = f"layer_norm {rows}x{features}"
    return [Case("ops", name, forward, work=x.size, unit="elements/s", check=check_forward),
            Case("ops", f"{name} backward", backward, work=x.size, unit="elements/s", check=check_backward)]


def _attention_reference(q, k, v, dy):
    """float64 softmax(q kᵀ / √D) v and its (dq, dk, dv) for dy."""
    q, k, v, dy = (a.astype(np.float64) for a in (q, k, v, dy))
    scale = 1 / math.sqrt(q.shape[-1])
    scores = q @ np.swapaxes(k, -1, -2) * scale
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dp = dy @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
    return p @ v, (ds @ k, np.swapaxes(ds, -1, -2) @ q, np.swapaxes(p, -1, -2) @ dy)


def _attention_cases(rng, torch, shapes):
    """Scaled dot-product attention [N, heads, T, head_dim] forward, and
    forward + backward as a training step runs it (the forward keeping the
    probabilities for the backward), through the kernels a layer calls.
    Work is the products' FLOP, the backward counted as twice the forward."""
    found = []
    for n, heads, tokens, head_dim in shapes:
        shape = (n, heads, tokens, head_dim)
        q, k, v, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
        y, kept = np.empty(shape, np.float32), np.empty(shape[:3] + (tokens,), np.float32)
        grads = [np.empty(shape, np.float32) for _ in range(3)]

        def train_step(q=q, k=k, v=v, dy=dy, y=y, kept=kept, grads=grads):
            kernels.attention_forward(q, k, v, y, probabilities=kept)
            kernels.attention_backward(dy, q, k, v, y, None, *grads, probabilities=kept)
            return y, grads

        forward = {"pynn": lambda q=q, k=k, v=v, y=y: ops.scaled_dot_product_attention(q, k, v,
                                                                                       out=y)}
        training = {"pynn": train_step}
        if torch is not None:
            attend = torch.nn.functional.scaled_dot_product_attention
            tq, tk, tv, tdy = (torch.from_numpy(a) for a in (q, k, v, dy))
            leaves = [t.clone().requires_grad_() for t in (tq, tk, tv)]

            def torch_forward(tq=tq, tk=tk, tv=tv):
                with torch.no_grad():
                    return attend(tq, tk, tv)

            def torch_train_step(leaves=leaves, tdy=tdy):
                for leaf in leaves:
                    leaf.grad = None
                attend(*leaves).backward(tdy)
            forward["torch"] = torch_forward
            training["torch"] = torch_train_step
        expected, expected_grads = _attention_reference(q, k, v, dy)
        # float32 scores round by about head_dim eps |q||k|, which the softmax
        # turns into relative error of the probabilities
        bound = 16 * (head_dim + 1) * _checks.EPS32 * (1 + np.abs(q).max() * np.abs(k).max()
                                                       * math.sqrt(head_dim))

        def check_forward(run=forward["pynn"], expected=expected, bound=bound, v=v):
            _checks.within(run(), expected, bound * np.abs(v).max(), "attention")

        def check_training(run=train_step, expected=expected, expected_grads=expected_grads,
                           bound=bound):
            out, grads = run()
            _checks.within(out, expected, bound * np.abs(expected).max(), "attention")
            for what, mine, want in zip(("dq", "dk", "dv"), grads, expected_grads):
                _checks.within(mine, want, 4 * bound * np.abs(want).max(), what)
        name = f"attention N{n} H{heads} T{tokens} D{head_dim}"
        flop = 2.0 * n * heads * tokens * tokens * 2 * head_dim
        found += [Case("ops", name, forward, work=flop, unit="GFLOP/s", check=check_forward),
                  Case("ops", f"{name} forward+backward", training, work=3 * flop,
                       unit="GFLOP/s", check=check_training)]
    return found


def _tensor_cases(rng, torch, images):
    """A squeeze-excite gate (Multiply broadcasting [N, C, 1, 1] over [N, C, H, W])
    and an NCHW to NHWC Permute, through the layers a graph model calls."""
    from pynn.layers import Multiply, Permute

    x = rng.standard_normal((images, 64, 28, 28), dtype=np.float32)
    gate = rng.random((images, 64, 1, 1), dtype=np.float32)
    multiply, permute = Multiply(), Permute((0, 2, 3, 1))
    gated = {"pynn": lambda: multiply.forward([gate, x]), "numpy": lambda: gate * x}
    moved = {"pynn": lambda: permute.forward(x), "numpy": lambda: np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    if torch is not None:
        x_t, gate_t = torch.from_numpy(x), torch.from_numpy(gate)
        gated["torch"] = lambda: gate_t * x_t
        moved["torch"] = lambda: x_t.permute(0, 2, 3, 1).contiguous()
    shape = "x".join(map(str, x.shape))
    return [Case("ops", f"multiply [N,C,1,1] x {shape}", gated, work=x.size, unit="elements/s",
                 check=lambda: _checks.within(gated["pynn"](), gate.astype(np.float64) * x,
                                              _checks.EPS32 * np.abs(gate.astype(np.float64) * x), "multiply")),
            Case("ops", f"permute NCHW->NHWC {shape}", moved, work=x.size, unit="elements/s",
                 check=lambda: _checks.within(moved["pynn"](), x.transpose(0, 2, 3, 1), 0.0, "permute"))]


def cases(quick, threads):
    rng = np.random.default_rng(0)
    torch = optional_import("torch")
    scipy_special = optional_import("scipy.special")
    batches = (128,) if quick else BATCHES
    return (_activation_cases(rng, torch, scipy_special) + _cross_entropy_cases(rng, torch, batches)
            + _linear_cases(rng, torch, batches) + _layer_norm_cases(rng, torch, 256 if quick else 2048)
            + _tensor_cases(rng, torch, 8 if quick else 32)
            + _attention_cases(rng, torch, ATTENTION_SHAPES[:1] if quick else ATTENTION_SHAPES))
