"""Graph-model suite: ``pynn.Model`` networks beside PyTorch eager.

- ResNet-8 on 3x32x32 images (a stem and three one-block stages of 16, 32
  and 64 channels, the last two downsampling with a 1x1 convolution on the
  shortcut): training samples/s at batch 64, predict latency at batch 1 and
  throughput at batch 256. The pynn layers are named after the PyTorch
  module's attribute paths, so the two exchange state dicts unchanged.
- Collaborative filtering (user and item embeddings, their dot product plus
  a bias per user and per item, MSE): training samples/s beside PyTorch with
  dense and with sparse embedding gradients.
- The MLP of the train and infer suites as a ``Model`` of the same layers,
  timed against the ``Sequential`` ("sequential" peer), so the ratio is the
  price of the graph."""
import numpy as np

from pynn.bench import Case, _checks, fit_epochs, optional_import, torch_epochs, train

LR, MOMENTUM = 0.01, 0.9
STAGES = ((1, 16, 1), (2, 32, 2), (3, 64, 2))  # (stage, channels, stride)
BN_EPS = 1e-5
CHECK_BATCH = 16  # samples of the training check: batch norm statistics over 16 x H x W values


# -- ResNet-8 -------------------------------------------------------------------
def build_resnet(seed=0):
    """ResNet-8 as a pynn Model, PyTorch's initialisation, and seeded batch
    norm statistics and affine parameters so that inference exercises them."""
    import pynn
    from pynn import init
    from pynn.layers import Add, BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, ReLU

    init.manual_seed(seed)
    x = pynn.Input((3, 32, 32), name="image")
    h = ReLU()(BatchNorm2d(16, name="bn1")(Conv2d(3, 16, 3, padding=1, bias=False, name="conv1")(x)))
    channels = 16
    for stage, width, stride in STAGES:
        block = f"layer{stage}"
        y = Conv2d(channels, width, 3, stride=stride, padding=1, bias=False, name=f"{block}.conv1")(h)
        y = ReLU()(BatchNorm2d(width, name=f"{block}.bn1")(y))
        y = Conv2d(width, width, 3, padding=1, bias=False, name=f"{block}.conv2")(y)
        y = BatchNorm2d(width, name=f"{block}.bn2")(y)
        shortcut = h
        if stride != 1 or channels != width:
            shortcut = Conv2d(channels, width, 1, stride=stride, bias=False,
                              name=f"{block}.shortcut.0")(h)
            shortcut = BatchNorm2d(width, name=f"{block}.shortcut.1")(shortcut)
        h = ReLU()(Add()([y, shortcut]))
        channels = width
    logits = Linear(channels, 10, name="fc")(GlobalAvgPool2d()(h))
    model = pynn.Model(x, logits, name="resnet8")
    rng = np.random.default_rng(seed)
    for _, layer in model.named_layers():
        if isinstance(layer, BatchNorm2d):
            for array, low, high in ((layer.params["weight"], 0.5, 1.5), (layer.params["bias"], -0.2, 0.2),
                                     (layer.buffers["running_mean"], -0.2, 0.2),
                                     (layer.buffers["running_var"], 0.5, 1.5)):
                array[...] = rng.uniform(low, high, array.shape)
    return model


def torch_resnet(torch):
    """The same network as a PyTorch module (default initialisation)."""
    nn, functional = torch.nn, torch.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, channels, width, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.shortcut = nn.Sequential()
            if stride != 1 or channels != width:
                self.shortcut = nn.Sequential(nn.Conv2d(channels, width, 1, stride, bias=False),
                                              nn.BatchNorm2d(width))

        def forward(self, x):
            y = self.bn2(self.conv2(functional.relu(self.bn1(self.conv1(x)))))
            return functional.relu(y + self.shortcut(x))

    class ResNet8(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            channels = 16
            for stage, width, stride in STAGES:
                setattr(self, f"layer{stage}", BasicBlock(channels, width, stride))
                channels = width
            self.fc = nn.Linear(channels, 10)

        def forward(self, x):
            h = functional.relu(self.bn1(self.conv1(x)))
            h = self.layer3(self.layer2(self.layer1(h)))
            return self.fc(h.mean(dim=(2, 3)))

    return ResNet8()


def torch_twin(model, torch, build=torch_resnet):
    """A PyTorch module holding ``model``'s state (keys equal by construction)."""
    twin = build(torch)
    twin.load_state_dict({key: torch.from_numpy(np.array(value))
                          for key, value in model.state_dict().items()})
    return twin


def resnet_reference(state, x, training):
    """Float64 forward of ResNet-8 from a state dict; batch norm by the
    batch's statistics in training, by the running ones otherwise."""
    state = {key: np.asarray(value, np.float64) for key, value in state.items()}

    def conv(h, key, stride, padding):
        return _checks.conv2d(h, state[f"{key}.weight"], None, padding)[:, :, ::stride, ::stride]

    def norm(h, key):
        if training:
            mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
        else:
            mean, var = state[f"{key}.running_mean"], state[f"{key}.running_var"]
        scale = state[f"{key}.weight"] / np.sqrt(var + BN_EPS)
        return ((h - mean[:, None, None]) * scale[:, None, None]
                + state[f"{key}.bias"][:, None, None])

    h = np.maximum(norm(conv(x.astype(np.float64), "conv1", 1, 1), "bn1"), 0.0)
    for stage, _, stride in STAGES:
        block = f"layer{stage}"
        y = np.maximum(norm(conv(h, f"{block}.conv1", stride, 1), f"{block}.bn1"), 0.0)
        y = norm(conv(y, f"{block}.conv2", 1, 1), f"{block}.bn2")
        if f"{block}.shortcut.0.weight" in state:
            h = norm(conv(h, f"{block}.shortcut.0", stride, 0), f"{block}.shortcut.1")
        h = np.maximum(y + h, 0.0)
    return h.mean(axis=(2, 3)) @ state["fc.weight"].T + state["fc.bias"]


def check_resnet_training(x, target, what):
    """A training forward of a fresh ResNet-8 against the float64 network
    (batch statistics), and with PyTorch its backward against PyTorch's in
    float64."""
    from pynn import losses

    model = build_resnet()
    state = {key: np.array(value) for key, value in model.state_dict().items()}
    logits = model.forward(x, training=True)
    expected = resnet_reference(state, x, training=True)
    _checks.within(logits, expected, _checks.network_bound(expected), f"{what}: training forward")
    torch = optional_import("torch")
    if torch is None:
        return
    loss = losses.CrossEntropyLoss()
    loss(logits, target)
    model.backward(loss.backward(), input_grad=False)
    twin = torch_resnet(torch).double()
    twin.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    twin.train()
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(x).double()),
                                      torch.from_numpy(target)).backward()
    grads = {f"{name}.{key}": grad for name, layer in model.named_layers()
             for key, grad in layer.grads.items()}
    for key, param in twin.named_parameters():
        reference = param.grad.numpy()
        _checks.within(grads[key], reference, _checks.network_bound(reference),
                       f"{what}: gradient of {key}")


def check_resnet_predict(model, x, what, rows=16):
    """``model.predict(x)``, its first ``rows`` rows against the float64
    network (rows are independent at inference)."""
    expected = resnet_reference(model.state_dict(), x[:rows], training=False)
    _checks.within(model.predict(x)[:rows], expected, _checks.network_bound(expected),
                   f"{what}: predict")


def _resnet_cases(torch, quick):
    from pynn import losses, optim

    samples, batch = (128 if quick else 512), 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, samples)
    model = build_resnet()
    optimizer = optim.SGD(model, lr=LR, momentum=MOMENTUM)
    runners = {"pynn": fit_epochs(model, x, y, losses.CrossEntropyLoss(), optimizer, batch)}
    if torch is not None:
        twin = torch_twin(model, torch).train()
        runners["torch"] = torch_epochs(torch, twin, x, y, batch, torch.nn.functional.cross_entropy,
                                        torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM))
    name = f"ResNet-8 3x32x32 training batch {batch}"
    found = [Case("graph", name, runners, work=samples, unit="samples/s",
                  check=lambda: check_resnet_training(x[:CHECK_BATCH], y[:CHECK_BATCH], name))]
    predictor = build_resnet()
    twin = torch_twin(predictor, torch).eval() if torch is not None else None
    for batch in (1, 256):
        images = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
        runners = {"pynn": lambda images=images: predictor.predict(images)}
        if twin is not None:
            def torch_predict(images=torch.from_numpy(images)):
                with torch.no_grad():
                    return twin(images)
            runners["torch"] = torch_predict
        kind = "latency" if batch == 1 else "throughput"
        name = f"ResNet-8 3x32x32 inference batch {batch} ({kind})"
        found.append(Case("graph", name, runners, work=batch, unit="samples/s",
                          check=lambda images=images, name=name: check_resnet_predict(
                              predictor, images, name)))
    return found


# -- collaborative filtering ------------------------------------------------------
CF_USERS, CF_ITEMS, CF_DIM, CF_LR, CF_BATCH = 100_000, 10_000, 64, 0.05, 1024


def build_recommender(users, items, dim, seed=0):
    """rating = user · item + user bias + item bias, inputs [user ids, item ids]."""
    import pynn
    from pynn import init
    from pynn.layers import Add, Dot, Embedding

    init.manual_seed(seed)
    user, item = pynn.Input((), "int64", name="user"), pynn.Input((), "int64", name="item")
    score = Dot()([Embedding(users, dim, name="user_embedding")(user),
                   Embedding(items, dim, name="item_embedding")(item)])
    rating = Add()([score, Embedding(users, 1, name="user_bias")(user),
                    Embedding(items, 1, name="item_bias")(item)])
    return pynn.Model([user, item], rating, name="recommender")


def torch_recommender(torch, users, items, dim, sparse):
    nn = torch.nn

    class Recommender(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding = nn.Embedding(users, dim, sparse=sparse)
            self.item_embedding = nn.Embedding(items, dim, sparse=sparse)
            self.user_bias = nn.Embedding(users, 1, sparse=sparse)
            self.item_bias = nn.Embedding(items, 1, sparse=sparse)

        def forward(self, user, item):
            score = (self.user_embedding(user) * self.item_embedding(item)).sum(dim=1, keepdim=True)
            return score + self.user_bias(user) + self.item_bias(item)

    return Recommender()


def recommender_step_reference(state, users, items, ratings, lr):
    """The float64 parameters after one SGD step of the mean squared error
    over the whole batch, and the gradients."""
    u, v = state["user_embedding.weight"], state["item_embedding.weight"]
    bu, bi = state["user_bias.weight"], state["item_bias.weight"]
    prediction = (u[users] * v[items]).sum(axis=1, keepdims=True) + bu[users] + bi[items]
    dprediction = 2.0 * (prediction - ratings) / prediction.size
    grads = {key: np.zeros_like(value) for key, value in state.items()}
    np.add.at(grads["user_embedding.weight"], users, dprediction * v[items])
    np.add.at(grads["item_embedding.weight"], items, dprediction * u[users])
    np.add.at(grads["user_bias.weight"], users, dprediction)
    np.add.at(grads["item_bias.weight"], items, dprediction)
    return grads


def check_recommender_step(what, users=60, items=25, dim=8, batch=200, lr=CF_LR):
    """One ``fit`` step of a small recommender moves each parameter by lr
    times the float64 gradient."""
    from pynn import losses, optim

    rng = np.random.default_rng(5)
    user_ids = rng.integers(0, users, batch)
    item_ids = rng.integers(0, items, batch)
    ratings = rng.uniform(1, 5, (batch, 1)).astype(np.float32)
    model = build_recommender(users, items, dim, seed=3)
    before = {key: np.array(value, np.float64) for key, value in model.state_dict().items()}
    model.fit([user_ids, item_ids], ratings, loss=losses.MSELoss(), batch_size=batch,
              shuffle=False, optimizer=optim.SGD(model, lr=lr), verbose=False)
    grads = recommender_step_reference(before, user_ids, item_ids, ratings.astype(np.float64), lr)
    for key, after in model.state_dict().items():
        step = (before[key] - after) / lr
        rounding = 2 * _checks.EPS32 * (np.abs(before[key]) + np.abs(after)) / lr
        _checks.within(step, grads[key], _checks.network_bound(grads[key]) + rounding,
                       f"{what}: gradient step of {key}")


def _recommender_cases(torch, quick):
    from pynn import losses, optim

    samples = 4 * CF_BATCH if quick else 32 * CF_BATCH
    rng = np.random.default_rng(4)
    users = rng.integers(0, CF_USERS, samples)
    items = rng.integers(0, CF_ITEMS, samples)
    ratings = rng.uniform(1, 5, (samples, 1)).astype(np.float32)
    model = build_recommender(CF_USERS, CF_ITEMS, CF_DIM)
    optimizer = optim.SGD(model, lr=CF_LR)
    runners = {"pynn": fit_epochs(model, [users, items], ratings, losses.MSELoss(), optimizer, CF_BATCH)}
    if torch is not None:
        users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
        for peer, sparse in (("torch", False), ("torch sparse", True)):
            twin = torch_twin(model, torch, lambda torch, sparse=sparse: torch_recommender(
                torch, CF_USERS, CF_ITEMS, CF_DIM, sparse))
            runners[peer] = torch_epochs(
                torch, twin, users, ratings, CF_BATCH, torch.nn.functional.mse_loss,
                torch.optim.SGD(twin.parameters(), lr=CF_LR),
                inputs=lambda indices: (users_t[indices], items_t[indices]))
    name = (f"recommender {CF_USERS // 1000}k users x {CF_ITEMS // 1000}k items dim {CF_DIM} "
            f"training batch {CF_BATCH}")
    return [Case("graph", name, runners, work=samples, unit="samples/s",
                 check=lambda: check_recommender_step(name))]


# -- Sequential against Model -------------------------------------------------------
def mlp_as_model(seed=0):
    """The train suite's MLP (same weights as ``train.build_mlp(seed)``) as a Model."""
    import pynn

    x = pynn.Input((train.SIZES[0],), name="x")
    h = x
    for layer in train.build_mlp(seed).layers:
        h = layer(h)
    return pynn.Model(x, h)


def _sequential_cases(quick):
    from pynn import losses, optim

    samples, batch = (512 if quick else 4096), 128
    x, y = train.dataset(samples)
    runners = {}
    for peer, model in (("pynn", mlp_as_model()), ("sequential", train.build_mlp())):
        optimizer = optim.SGD(model, lr=train.LR, momentum=train.MOMENTUM)
        runners[peer] = fit_epochs(model, x, y, losses.CrossEntropyLoss(), optimizer, batch)
    name = f"MLP as Model, training batch {batch}"
    found = [Case("graph", name, runners, work=samples, unit="samples/s",
                  check=lambda: _checks.first_sgd_step(mlp_as_model, x[:batch], y[:batch],
                                                       train.LR, train.MOMENTUM, name))]
    graph, sequential = mlp_as_model(), train.build_mlp()
    rng = np.random.default_rng(0)
    for batch in (1, 256):
        inputs = rng.random((batch, train.SIZES[0]), dtype=np.float32)
        kind = "latency" if batch == 1 else "throughput"
        name = f"MLP as Model, inference batch {batch} ({kind})"
        found.append(Case("graph", name, {"pynn": lambda inputs=inputs: graph.predict(inputs),
                                          "sequential": lambda inputs=inputs: sequential.predict(inputs)},
                          work=batch, unit="samples/s",
                          check=lambda inputs=inputs, name=name: _checks.predict(graph, inputs, name)))
    return found


def cases(quick, threads):
    torch = optional_import("torch")
    return _resnet_cases(torch, quick) + _recommender_cases(torch, quick) + _sequential_cases(quick)
