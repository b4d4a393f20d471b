"""Convolution suite: a LeNet-5-like network (training samples/s at batch 64,
inference latency at batch 1 and throughput at batch 256), a single
ResNet-like 3x3 convolution (64→64 channels, 56x56, batch 8) and MobileNetV2's
depthwise 3x3 convolutions (144 channels 56x56 at stride 1, 96 channels
112x112 at stride 2, batch 8), forward and backward, beside PyTorch eager on
the same weights and inputs."""
import numpy as np

from pynn.bench import Case, _checks, fit_epochs, optional_import, torch_epochs

LR, MOMENTUM = 0.01, 0.9


def build_lenet(seed=0):
    """conv 6@5x5 pad 2, ReLU, maxpool 2; conv 16@5x5, ReLU, maxpool 2; Linear 120, 84, 10."""
    from pynn import Sequential, init
    from pynn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU

    init.manual_seed(seed)
    return Sequential(Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2),
                      Conv2d(6, 16, 5), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(16 * 5 * 5, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, 10))


def build_torch_lenet(model, torch):
    nn = torch.nn
    twin = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return twin


def _training_cases(torch, quick):
    from pynn import losses, optim

    samples, batch = (256 if quick else 2048), 64
    rng = np.random.default_rng(0)
    x = rng.random((samples, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, samples)
    model = build_lenet()
    optimizer = optim.SGD(model, lr=LR, momentum=MOMENTUM)
    runners = {"pynn": fit_epochs(model, x, y, losses.CrossEntropyLoss(), optimizer, batch)}
    if torch is not None:
        twin = build_torch_lenet(model, torch)
        runners["torch"] = torch_epochs(torch, twin, x, y, batch, torch.nn.functional.cross_entropy,
                                        torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM))
    name = f"LeNet-5 training batch {batch}"
    return [Case("conv", name, runners, work=samples, unit="samples/s",
                 check=lambda: _checks.first_sgd_step(build_lenet, x[:batch], y[:batch], LR,
                                                      MOMENTUM, name))]


def _inference_cases(torch, quick):
    model = build_lenet()
    twin = build_torch_lenet(model, torch).eval() if torch is not None else None
    rng = np.random.default_rng(1)
    found = []
    for batch in (1, 256):
        x = rng.random((batch, 1, 28, 28), dtype=np.float32)
        runners = {"pynn": lambda x=x: model.predict(x)}
        if twin is not None:
            def torch_predict(x=torch.from_numpy(x)):
                with torch.inference_mode():
                    return twin(x)
            runners["torch"] = torch_predict
        kind = "latency" if batch == 1 else "throughput"
        name = f"LeNet-5 inference batch {batch} ({kind})"
        found.append(Case("conv", name, runners, work=batch, unit="samples/s",
                          check=lambda x=x, name=name: _checks.predict(model, x, name)))
    return found


def _layer_cases(torch, quick):
    from pynn import ops

    batch, channels, size = (2 if quick else 8), 64, 56
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    weight = (rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) / 24)
    bias = rng.standard_normal(channels, dtype=np.float32)
    y = np.empty_like(x)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    flop = 2.0 * batch * channels * channels * 9 * size * size
    name = f"conv 3x3 {channels}->{channels} {size}x{size} batch {batch}"
    forward = {"pynn": lambda: ops.conv2d(x, weight, bias, padding=1, out=y)}
    def pynn_step():
        ops.conv2d(x, weight, bias, padding=1, out=y)
        return ops.conv2d_backward(dy, x, weight, padding=1)
    step = {"pynn": pynn_step}
    if torch is not None:
        x_t, w_t, b_t, dy_t = (torch.from_numpy(a) for a in (x, weight, bias, dy))

        def torch_forward():
            with torch.inference_mode():
                return torch.nn.functional.conv2d(x_t, w_t, b_t, padding=1)

        x_g, w_g, b_g = (t.clone().requires_grad_() for t in (x_t, w_t, b_t))

        def torch_step():
            out = torch.nn.functional.conv2d(x_g, w_g, b_g, padding=1)
            return torch.autograd.grad(out, (x_g, w_g, b_g), dy_t)
        forward["torch"] = torch_forward
        step["torch"] = torch_step
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, weight, bias, dy))
    terms = channels * 9

    def check_forward():
        magnitude = _checks.conv2d(np.abs(x64), np.abs(w64), np.abs(b64), 1)
        _checks.within(forward["pynn"](), _checks.conv2d(x64, w64, b64, 1),
                       _checks.sums_bound(magnitude, terms + 1), f"{name} forward")

    def check_step():
        dx, dweight, dbias = pynn_step()
        expected = _checks.conv2d_backward(dy64, x64, w64, 1)
        magnitudes = _checks.conv2d_backward(np.abs(dy64), np.abs(x64), np.abs(w64), 1)
        for what, actual, reference, magnitude, count in zip(
                ("dx", "dweight", "dbias"), (dx, dweight, dbias), expected, magnitudes,
                (terms, batch * size * size, batch * size * size)):
            _checks.within(actual, reference, _checks.sums_bound(magnitude, count), f"{name} {what}")
    return [Case("conv", f"{name} forward", forward, work=flop, unit="GFLOP/s", check=check_forward),
            Case("conv", f"{name} forward+backward", step, work=3 * flop, unit="GFLOP/s",
                 check=check_step)]


def _depthwise_cases(torch, quick):
    """MobileNetV2's depthwise 3x3 convolutions (groups == channels, padding 1)."""
    from pynn import ops

    batch = 2 if quick else 8
    rng = np.random.default_rng(5)
    found = []
    for channels, size, stride in ((144, 56, 1), (96, 112, 2)):
        x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
        weight = rng.standard_normal((channels, 1, 3, 3), dtype=np.float32) / 3
        bias = rng.standard_normal(channels, dtype=np.float32)
        out = size // stride
        y = np.empty((batch, channels, out, out), np.float32)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        geometry = dict(stride=stride, padding=1, groups=channels)
        forward = {"pynn": lambda x=x, weight=weight, bias=bias, y=y, geometry=geometry:
                   ops.conv2d(x, weight, bias, out=y, **geometry)}

        def pynn_step(x=x, weight=weight, bias=bias, y=y, dy=dy, geometry=geometry):
            ops.conv2d(x, weight, bias, out=y, **geometry)
            return ops.conv2d_backward(dy, x, weight, **geometry)
        step = {"pynn": pynn_step}
        if torch is not None:
            x_t, w_t, b_t, dy_t = (torch.from_numpy(a) for a in (x, weight, bias, dy))

            def torch_forward(x_t=x_t, w_t=w_t, b_t=b_t, geometry=geometry):
                with torch.inference_mode():
                    return torch.nn.functional.conv2d(x_t, w_t, b_t, **geometry)
            x_g, w_g, b_g = (t.clone().requires_grad_() for t in (x_t, w_t, b_t))

            def torch_step(x_g=x_g, w_g=w_g, b_g=b_g, dy_t=dy_t, geometry=geometry):
                result = torch.nn.functional.conv2d(x_g, w_g, b_g, **geometry)
                return torch.autograd.grad(result, (x_g, w_g, b_g), dy_t)
            forward["torch"] = torch_forward
            step["torch"] = torch_step
        name = f"depthwise conv 3x3 {channels} channels {size}x{size} stride {stride} batch {batch}"
        found += _depthwise_checked(name, forward, pynn_step, step, x, weight, bias, dy, stride)
    return found


def _depthwise_checked(name, forward, pynn_step, step, x, weight, bias, dy, stride):
    """The forward and forward+backward cases of one depthwise layer, each
    checked against float64 before it is timed."""
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, weight, bias, dy))
    positions = dy.shape[0] * dy.shape[2] * dy.shape[3]

    def check_forward():
        magnitude = _checks.depthwise_conv2d(np.abs(x64), np.abs(w64), np.abs(b64), stride, 1)
        _checks.within(forward["pynn"](), _checks.depthwise_conv2d(x64, w64, b64, stride, 1),
                       _checks.sums_bound(magnitude, 10), f"{name} forward")

    def check_step():
        expected = _checks.depthwise_conv2d_backward(dy64, x64, w64, stride, 1)
        magnitudes = _checks.depthwise_conv2d_backward(np.abs(dy64), np.abs(x64), np.abs(w64), stride, 1)
        for what, actual, reference, magnitude, count in zip(
                ("dx", "dweight", "dbias"), pynn_step(), expected, magnitudes, (9, positions, positions)):
            _checks.within(actual, reference, _checks.sums_bound(magnitude, count), f"{name} {what}")
    flop = 2.0 * dy.size * 9
    return [Case("conv", f"{name} forward", forward, work=flop, unit="GFLOP/s", check=check_forward),
            Case("conv", f"{name} forward+backward", step, work=3 * flop, unit="GFLOP/s",
                 check=check_step)]


def _pool_cases(torch, quick):
    """LeNet's first pool: MaxPool2d(2) forward (keeping the arg-max) and backward."""
    from pynn.layers import MaxPool2d

    shape = (16 if quick else 64, 6, 28, 28)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal((shape[0], shape[1], 14, 14), dtype=np.float32)
    layer = MaxPool2d(2)

    def pynn_step():
        layer.forward(x, training=True)
        return layer.backward(dy)
    runners = {"pynn": pynn_step}
    if torch is not None:
        x_g, dy_t = torch.from_numpy(x).clone().requires_grad_(), torch.from_numpy(dy)

        def torch_step():
            out = torch.nn.functional.max_pool2d(x_g, 2)
            return torch.autograd.grad(out, x_g, dy_t)
        runners["torch"] = torch_step
    def check():
        y = layer.forward(x, training=True).copy()
        expected, routing = _checks.max_pool2x2(x.astype(np.float64))
        _checks.within(y, expected, 0.0, "max_pool2d forward")
        _checks.within(layer.backward(dy), _checks.max_pool2x2_backward(dy.astype(np.float64), routing, x.shape),
                       0.0, "max_pool2d backward")
    return [Case("conv", f"max_pool2d 2x2 {'x'.join(map(str, shape))} forward+backward", runners,
                 work=x.size, unit="elements/s", check=check)]


def _signal_cases(torch, quick):
    """Conv1d over [N, 64, 1000] signals (k 5, padding 2) and AdaptiveAvgPool2d 14x14 -> 7x7."""
    from pynn import ops

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2 if quick else 8, 64, 1000), dtype=np.float32)
    weight = rng.standard_normal((64, 64, 5), dtype=np.float32) / np.float32(np.sqrt(64 * 5))
    y = np.empty_like(x)
    conv = {"pynn": lambda: ops.conv1d(x, weight, padding=2, out=y)}
    images = rng.standard_normal((16 if quick else 64, 256, 14, 14), dtype=np.float32)
    pooled = np.empty(images.shape[:2] + (7, 7), np.float32)
    pool = {"pynn": lambda: ops.adaptive_avg_pool2d(images, 7, out=pooled),
            "numpy": lambda: images.reshape(images.shape[:2] + (7, 2, 7, 2)).mean(axis=(3, 5))}
    if torch is not None:
        x_t, w_t, images_t = torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(images)
        conv["torch"] = lambda: torch.nn.functional.conv1d(x_t, w_t, padding=2)
        pool["torch"] = lambda: torch.nn.functional.adaptive_avg_pool2d(images_t, 7)

    def check_conv():
        padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (2, 2)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, 5, axis=2)  # [N, C, L, 5]
        expected = np.einsum("ncls,ocs->nol", windows, weight.astype(np.float64))
        magnitude = np.einsum("ncls,ocs->nol", np.abs(windows), np.abs(weight.astype(np.float64)))
        _checks.within(conv["pynn"](), expected, _checks.sums_bound(magnitude, 64 * 5), "conv1d")

    def check_pool():
        expected = images.astype(np.float64).reshape(images.shape[:2] + (7, 2, 7, 2)).mean(axis=(3, 5))
        _checks.within(pool["pynn"](), expected, 4 * _checks.EPS32 * (np.abs(expected) + 1), "adaptive_avg_pool2d")
    flop = 2.0 * x.shape[0] * 64 * 64 * 5 * 1000
    return [Case("conv", f"conv1d 64->64 k5 {x.shape[0]}x64x1000 forward", conv, work=flop, unit="GFLOP/s",
                 check=check_conv),
            Case("conv", f"adaptive_avg_pool2d 14->7 {'x'.join(map(str, images.shape))}", pool,
                 work=images.size, unit="elements/s", check=check_pool)]


def cases(quick, threads):
    torch = optional_import("torch")
    return (_training_cases(torch, quick) + _inference_cases(torch, quick)
            + _layer_cases(torch, quick) + _depthwise_cases(torch, quick)
            + _pool_cases(torch, quick) + _signal_cases(torch, quick))
