"""Training suite: samples/s of a 784-256-128-10 ReLU MLP with softmax
cross-entropy and SGD momentum, one shuffled epoch per call, beside PyTorch
eager and a hand-written numpy implementation of the same step. pynn and
PyTorch both run the loop their users write (pynn's: forward, the loss,
``model.backward(loss.backward(), input_grad=False)``, ``optimizer.step()``
on the rows a numpy index picks; PyTorch computes no gradient for an input
that does not require one, and ``input_grad=False`` says the same to pynn,
whose backward otherwise returns dL/dx); the same step through ``fit`` is a
case of its own. At batch
128 with Adam, plain and with a per-batch OneCycleLR and gradient clipping
(whose cost over the plain step the pair shows), pynn trains through fit,
beside PyTorch.

All peers start from the same weights and train on the same data; each keeps
training its own copy across calls (the work per call is identical)."""
import numpy as np

from pynn.bench import Case, _checks, fit_epochs, optional_import, torch_epochs

SIZES = (784, 256, 128, 10)
BATCHES = (32, 128, 512)
LR, MOMENTUM = 0.01, 0.9
ADAM_BATCH, MAX_LR, MAX_NORM = 128, 1e-3, 0.05  # the gradient norm stays above MAX_NORM: every step clips


def build_mlp(seed=0):
    """The benchmark network in pynn, with PyTorch's default initialisation."""
    from pynn import Sequential
    from pynn.layers import Linear, ReLU

    layers = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        layers += [Linear(fan_in, fan_out), ReLU()]
    model = Sequential(*layers[:-1])
    rng = np.random.default_rng(seed)
    for layer in model.layers[::2]:  # U(±1/√fan_in), seeded here so every run starts alike
        bound = 1.0 / np.sqrt(layer.params["weight"].shape[1])
        for param in layer.params.values():
            param[...] = rng.uniform(-bound, bound, param.shape)
    return model


def build_torch_mlp(model, torch):
    layers = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    twin = torch.nn.Sequential(*layers[:-1])
    twin.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in model.state_dict().items()})
    return twin


def dataset(samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((samples, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], samples)
    return x, y


class NumpyMLP:
    """The same training step written carefully in numpy: products into
    preallocated buffers, in-place element-wise work, no per-step allocation
    beyond numpy's own temporaries."""

    def __init__(self, model, batch_size):
        state = model.state_dict()
        self.weights = [state[f"{2 * i}.weight"].copy() for i in range(len(SIZES) - 1)]
        self.biases = [state[f"{2 * i}.bias"].copy() for i in range(len(SIZES) - 1)]
        self.velocity = [np.zeros_like(p) for p in self.weights + self.biases]
        self.grads = [np.empty_like(p) for p in self.weights + self.biases]
        self.batch_size = batch_size
        self._buffers = {}

    def _activations(self, rows):
        if rows not in self._buffers:
            self._buffers[rows] = ([np.empty((rows, n), np.float32) for n in SIZES[1:]],
                                   [np.empty((rows, n), np.float32) for n in SIZES[1:]],
                                   np.empty((rows, SIZES[0]), np.float32),
                                   np.empty(rows, np.int64), np.arange(rows))
        return self._buffers[rows]

    def step(self, x, y, activations, deltas, rows):
        layers = len(self.weights)
        inputs = [x] + activations[:-1]
        for i in range(layers):  # a_i = relu(a_{i-1} W_iᵀ + b_i), no ReLU on the logits
            np.matmul(inputs[i], self.weights[i].T, out=activations[i])
            activations[i] += self.biases[i]
            if i < layers - 1:
                np.maximum(activations[i], 0.0, out=activations[i])
        logits, delta = activations[-1], deltas[-1]
        np.subtract(logits, logits.max(axis=1, keepdims=True), out=delta)
        np.exp(delta, out=delta)
        delta /= delta.sum(axis=1, keepdims=True)
        delta[rows, y] -= 1.0  # d(mean CE)/d logits = (softmax - onehot) / n
        delta *= 1.0 / len(y)
        for i in range(layers - 1, -1, -1):
            np.matmul(deltas[i].T, inputs[i], out=self.grads[i])          # dW = dYᵀ X
            deltas[i].sum(axis=0, out=self.grads[layers + i])              # db = Σ dY
            if i:
                np.matmul(deltas[i], self.weights[i], out=deltas[i - 1])  # dX = dY W
                deltas[i - 1] *= activations[i - 1] > 0
        for param, grad, velocity in zip(self.weights + self.biases, self.grads, self.velocity):
            velocity *= MOMENTUM
            velocity += grad
            param -= LR * velocity

    def epoch(self, x, y, rng):
        order = rng.permutation(len(x))
        for start in range(0, len(x), self.batch_size):
            indices = order[start:start + self.batch_size]
            activations, deltas, x_batch, y_batch, rows = self._activations(len(indices))
            np.take(x, indices, axis=0, out=x_batch)
            np.take(y, indices, out=y_batch)
            self.step(x_batch, y_batch, activations, deltas, rows)


def hand_written_step(model, x, target, loss, optimizer):
    """The training step a PyTorch user writes, in pynn (no dL/dx, as
    PyTorch computes none for an input that does not require it)."""
    out = model.forward(x, training=True)
    loss(out, target)
    model.backward(loss.backward(), input_grad=False)
    optimizer.step()


def hand_written_epochs(model, x, y, loss, optimizer, batch):
    """A runner: one shuffled epoch of ``hand_written_step`` per call, each
    batch the rows of x and y a numpy index picks (new arrays, as a user's)."""
    rng = np.random.default_rng(0)

    def epoch():
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            indices = order[start:start + batch]
            hand_written_step(model, x[indices], y[indices], loss, optimizer)
    return epoch


def cases(quick, threads):
    from pynn import losses, optim

    torch = optional_import("torch")
    samples = 512 if quick else 4096
    x, y = dataset(samples)
    found = []
    for batch in (32, 512) if quick else BATCHES:
        for through_fit in (False, True):
            model = build_mlp()
            optimizer = optim.SGD(model, lr=LR, momentum=MOMENTUM)
            train = fit_epochs if through_fit else hand_written_epochs
            runners = {"pynn": train(model, x, y, losses.CrossEntropyLoss(), optimizer, batch)}
            if not through_fit:
                twin = NumpyMLP(model, batch)
                numpy_rng = np.random.default_rng(0)
                runners["numpy"] = lambda twin=twin, rng=numpy_rng: twin.epoch(x, y, rng)
            if torch is not None:
                runners["torch"] = _torch_runner(torch, model, x, y, batch)
            name = f"784-256-128-10 batch {batch}" + (" through fit" if through_fit else "")
            step = _checks.fit_step if through_fit else hand_written_step
            found.append(Case("train", name, runners, work=samples, unit="samples/s",
                              check=lambda batch=batch, name=name, step=step: _checks.first_sgd_step(
                                  build_mlp, x[:batch], y[:batch], LR, MOMENTUM, name, step)))
    for extras in (False, True):
        found.append(_adam_case(torch, x, y, extras))
    return found


def _adam_case(torch, x, y, extras):
    """Adam at batch 128; with ``extras``, a OneCycleLR stepped per batch and
    clip_grad_norm too. The schedule spans far more batches than the run
    takes, so it never runs out."""
    from pynn import losses, optim

    model = build_mlp()
    optimizer = optim.Adam(model, lr=MAX_LR)
    runners = {}
    if extras:
        schedule = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=1 << 30)
        seeds = iter(range(1 << 30))
        runners["pynn"] = lambda: model.fit(
            x, y, loss=losses.CrossEntropyLoss(), optimizer=optimizer, batch_size=ADAM_BATCH,
            seed=next(seeds), scheduler=schedule, scheduler_interval="batch",
            clip_grad_norm=MAX_NORM, verbose=False)
    else:
        runners["pynn"] = fit_epochs(model, x, y, losses.CrossEntropyLoss(), optimizer, ADAM_BATCH)
    if torch is not None:
        twin = build_torch_mlp(model, torch)
        torch_optimizer = torch.optim.Adam(twin.parameters(), lr=MAX_LR)
        runners["torch"] = _torch_adam_runner(torch, twin, torch_optimizer, x, y, extras)
    name = f"784-256-128-10 batch {ADAM_BATCH} Adam" + (" + OneCycleLR per batch + clip_grad_norm" if extras else "")
    return Case("train", name, runners, work=len(x), unit="samples/s",
                check=lambda: _checks.first_adam_step(build_mlp, x[:ADAM_BATCH], y[:ADAM_BATCH], MAX_LR,
                                                      MAX_NORM if extras else None, name))


def _torch_adam_runner(torch, twin, optimizer, x, y, extras):
    if not extras:
        return torch_epochs(torch, twin, x, y, ADAM_BATCH, torch.nn.functional.cross_entropy, optimizer)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=1 << 30)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(len(y_t), generator=generator)
        for start in range(0, len(y_t), ADAM_BATCH):
            indices = order[start:start + ADAM_BATCH]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(twin(x_t[indices]), y_t[indices]).backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), MAX_NORM)
            optimizer.step()
            schedule.step()
    return epoch


def _torch_runner(torch, model, x, y, batch):
    twin = build_torch_mlp(model, torch)
    optimizer = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM)
    return torch_epochs(torch, twin, x, y, batch, torch.nn.functional.cross_entropy, optimizer)
