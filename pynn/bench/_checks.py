"""Float64 references that every benchmark case checks pynn's result against
before it is timed, so that a wrong kernel fails the run instead of being
timed (``Case.check``).

One product or convolution is bounded by what float32 arithmetic allows (a
sum of k products within a few k·eps of the sum of their magnitudes); a
whole network's outputs and gradients by NETWORK_RTOL. Both lie far below
what a wrong kernel produces."""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def within(actual, expected, bound, what):
    """Raise AssertionError unless |actual - expected| <= bound everywhere."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape}, expected {expected.shape}")
    error = np.abs(actual - expected)
    bad = ~(error <= bound)  # NaN in either counts as wrong
    if np.any(bad):
        worst = np.unravel_index(np.argmax(np.where(bad, error / np.maximum(bound, 1e-300), 0)),
                                 error.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {error.size} values off the float64 "
                             f"reference, e.g. at {tuple(map(int, worst))}: {actual[worst]!r} "
                             f"against {expected[worst]!r} (bound {np.broadcast_to(bound, error.shape)[worst]:.3g})")


def sums_bound(magnitude, terms, scale=4.0):
    """The float32 bound of sums of ``terms`` products whose magnitudes sum to ``magnitude``."""
    return scale * max(terms, 1) * EPS32 * magnitude + 1e-30


def product(a, b, what, trans_a=False, trans_b=False, result=None):
    """Check result = op(a) @ op(b) (float32) against the float64 product."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64, b64 = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
    within(result, a64 @ b64, sums_bound(np.abs(a64) @ np.abs(b64), a64.shape[1]), what)


# -- the layers of the benchmark networks, in float64 -----------------------------
def _windows(x, kernel, padding):
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    return np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))  # n c oh ow kh kw


def conv2d(x, weight, bias, padding):
    """Stride 1, no groups: y[n, o] = Σ weight[o] · window + bias[o]."""
    windows = _windows(x, weight.shape[2:], padding)
    y = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    return y + bias[None, :, None, None] if bias is not None else y


def conv2d_backward(dy, x, weight, padding):
    """(dx, dweight, dbias) of conv2d at stride 1."""
    windows = _windows(x, weight.shape[2:], padding)
    dweight = np.tensordot(dy, windows, axes=([0, 2, 3], [0, 2, 3]))
    kh_count, kw_count = weight.shape[2:]
    out_h, out_w = dy.shape[2:]
    dpadded = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * padding, x.shape[3] + 2 * padding))
    for kh in range(kh_count):
        for kw in range(kw_count):
            dpadded[:, :, kh:kh + out_h, kw:kw + out_w] += np.einsum(
                "noij,oc->ncij", dy, weight[:, :, kh, kw])
    dx = dpadded[:, :, padding:padding + x.shape[2], padding:padding + x.shape[3]]
    return dx, dweight, dy.sum(axis=(0, 2, 3))


def depthwise_conv2d(x, weight, bias, stride, padding):
    """groups == channels: y[n, c] = Σ weight[c, 0] · window (every stride-th) + bias[c]."""
    windows = _windows(x, weight.shape[2:], padding)[:, :, ::stride, ::stride]
    return np.einsum("ncijhw,chw->ncij", windows, weight[:, 0]) + bias[None, :, None, None]


def depthwise_conv2d_backward(dy, x, weight, stride, padding):
    """(dx, dweight, dbias) of depthwise_conv2d."""
    windows = _windows(x, weight.shape[2:], padding)[:, :, ::stride, ::stride]
    dweight = np.einsum("ncij,ncijhw->chw", dy, windows)[:, None]
    out_h, out_w = dy.shape[2:]
    dpadded = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * padding, x.shape[3] + 2 * padding))
    for kh in range(weight.shape[2]):
        for kw in range(weight.shape[3]):
            dpadded[:, :, kh:kh + stride * (out_h - 1) + 1:stride,
                    kw:kw + stride * (out_w - 1) + 1:stride] += dy * weight[None, :, 0, kh, kw, None, None]
    dx = dpadded[:, :, padding:padding + x.shape[2], padding:padding + x.shape[3]]
    return dx, dweight, dy.sum(axis=(0, 2, 3))


def max_pool2x2(x):
    """(y, routing): 2 x 2 windows at stride 2, the first maximum in scan order wins."""
    n, c, h, w = x.shape
    taps = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    taps = taps.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    return taps.max(axis=-1), taps.argmax(axis=-1)


def max_pool2x2_backward(dy, routing, shape):
    n, c, out_h, out_w = dy.shape
    dx = np.zeros(shape)
    spread = np.zeros((n, c, out_h, out_w, 4))
    np.put_along_axis(spread, routing[..., None], dy[..., None], axis=-1)
    dx[:, :, :out_h * 2, :out_w * 2] = spread.reshape(n, c, out_h, out_w, 2, 2).transpose(
        0, 1, 2, 4, 3, 5).reshape(n, c, out_h * 2, out_w * 2)
    return dx


def network(model):
    """The float64 layer list of a pynn Sequential made of Linear, ReLU,
    Conv2d (stride 1, one group), MaxPool2d(2) and Flatten layers."""
    spec = []
    for layer in model.layers:
        kind = type(layer).__name__
        params = {name: value.astype(np.float64) for name, value in layer.params.items()}
        if kind == "Conv2d":
            if layer.stride != (1, 1) or layer.groups != 1 or layer.padding[0] != layer.padding[1]:
                raise ValueError(f"checks.network: Conv2d must have stride 1, one group and "
                                 f"square padding, got {layer.stride}, {layer.groups}, {layer.padding}")
            spec.append((kind, params["weight"], params.get("bias"), layer.padding[0]))
        elif kind == "Linear":
            spec.append((kind, params["weight"], params.get("bias")))
        elif kind in ("ReLU", "MaxPool2d", "Flatten"):
            spec.append((kind,))
        else:
            raise ValueError(f"checks.network: no float64 reference for layer {kind}")
    return spec


def forward(spec, x):
    """(output, saved inputs per layer) of the float64 network."""
    saved = []
    x = x.astype(np.float64)
    for entry in spec:
        kind = entry[0]
        saved.append(x)
        if kind == "Conv2d":
            x = conv2d(x, entry[1], entry[2], entry[3])
        elif kind == "Linear":
            x = x @ entry[1].T + (entry[2] if entry[2] is not None else 0.0)
        elif kind == "ReLU":
            x = np.maximum(x, 0.0)
        elif kind == "MaxPool2d":
            x, routing = max_pool2x2(x)
            saved[-1] = (saved[-1], routing)
        else:
            x = x.reshape(len(x), -1)
    return x, saved


def cross_entropy_gradient(logits, target):
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(target)), target] -= 1.0
    return p / len(target)


def gradients(spec, x, target):
    """Float64 gradients of the mean softmax cross-entropy, per parametrised
    layer index: {index: (dweight, dbias)}."""
    logits, saved = forward(spec, x)
    dy = cross_entropy_gradient(logits, target)
    grads = {}
    for index in range(len(spec) - 1, -1, -1):
        entry, inputs = spec[index], saved[index]
        kind = entry[0]
        if kind == "Linear":
            grads[index] = (dy.T @ inputs, dy.sum(axis=0))
            dy = dy @ entry[1]
        elif kind == "Conv2d":
            dy, dweight, dbias = conv2d_backward(dy, inputs, entry[1], entry[3])
            grads[index] = (dweight, dbias)
        elif kind == "ReLU":
            dy = dy * (inputs > 0)
        elif kind == "MaxPool2d":
            inputs, routing = inputs
            dy = max_pool2x2_backward(dy, routing, inputs.shape)
        else:
            dy = dy.reshape(inputs.shape)
    return grads


def predict(model, x, what, **keywords):
    """Check model.predict(x) against the float64 network."""
    predictions(model, x, model.predict(x, **keywords), what)


# A whole network's outputs and gradients: worst-case rounding bounds through
# |weights| come out near a tenth of the outputs themselves, too loose to
# catch a wrong kernel, while the float32 error measures near 1e-7 of the
# largest value; NETWORK_RTOL leaves a thousandfold margin over that.
NETWORK_RTOL = 1e-4


def network_bound(expected):
    """NETWORK_RTOL of each value and of the largest one."""
    return NETWORK_RTOL * (np.abs(expected) + np.abs(expected).max(initial=0.0)) + 1e-30


def predictions(model, x, actual, what):
    """Check ``actual``, the model's float32 output for x, against the float64 network."""
    expected = forward(network(model), x)[0]
    within(actual, expected, network_bound(expected), what)


def fit_step(model, x, target, loss, optimizer):
    """One step of ``fit`` on the batch (x, target)."""
    model.fit(x, target, loss=loss, batch_size=len(x), shuffle=False, optimizer=optimizer,
              verbose=False)


def first_sgd_step(build, x, target, lr, momentum, what, step=fit_step):
    """Check one SGD step (``step(model, x, target, loss, optimizer)``, fit's by
    default) of a fresh model from ``build()`` on one batch of all of x: the
    first step moves each parameter by lr times its gradient, which must
    match the float64 gradient."""
    from pynn import losses, optim

    model = build()
    spec = network(model)
    before = [{name: value.copy() for name, value in layer.params.items()} for layer in model.layers]
    step(model, x, target, losses.CrossEntropyLoss(), optim.SGD(model, lr=lr, momentum=momentum))
    expected = gradients(spec, x, target)
    for index, (dweight, dbias) in expected.items():
        layer = model.layers[index]
        for name, reference in (("weight", dweight), ("bias", dbias)):
            start, end = before[index][name].astype(np.float64), layer.params[name]
            step = (start - end) / lr
            # the gradient within NETWORK_RTOL, plus the rounding of storing
            # p - lr·g in float32, which dividing by lr magnifies
            rounding = 2 * EPS32 * (np.abs(start) + np.abs(end)) / lr
            bound = network_bound(reference) + rounding
            within(step, reference, bound,
                   f"{what}: layer {index} ({type(layer).__name__}) {name} gradient")


def first_adam_step(build, x, target, max_lr, max_norm, what):
    """Check one step of ``fit`` with Adam (a fresh model from ``build()``,
    one batch of all of x), and with a per-batch OneCycleLR and
    ``clip_grad_norm`` unless ``max_norm`` is None: the step is ``lr * g /
    (|g| + eps)`` at ``max_lr`` (OneCycleLR's first rate), with g the float64
    gradient (scaled to the norm ``max_norm``). The check's Adam has a large
    eps, so the step follows g smoothly (at most 1/eps times the gradient's
    error)."""
    from pynn import losses, optim

    eps = 1e-2
    model = build()
    spec = network(model)
    before = [{name: value.copy() for name, value in layer.params.items()} for layer in model.layers]
    optimizer = optim.Adam(model, lr=max_lr, eps=eps)
    schedule = None
    if max_norm is not None:
        schedule = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=10)
    lr = optimizer.lr
    model.fit(x, target, loss=losses.CrossEntropyLoss(), batch_size=len(x), shuffle=False,
              optimizer=optimizer, scheduler=schedule, scheduler_interval="batch",
              clip_grad_norm=max_norm, verbose=False)
    expected = gradients(spec, x, target)
    norm = np.sqrt(sum(np.sum(d ** 2) for pair in expected.values() for d in pair))
    factor = 1.0 if max_norm is None else min(1.0, max_norm / (norm + 1e-6))
    for index, pair in expected.items():
        layer = model.layers[index]
        for name, reference in zip(("weight", "bias"), pair):
            g = reference * factor
            start, end = before[index][name].astype(np.float64), layer.params[name]
            rounding = 2 * EPS32 * (np.abs(start) + np.abs(end)) / lr
            bound = network_bound(g) / eps + 8 * EPS32 + rounding
            within((start - end) / lr, g / (np.abs(g) + eps), bound,
                   f"{what}: layer {index} ({type(layer).__name__}) {name} step")
