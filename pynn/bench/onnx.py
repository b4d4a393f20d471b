"""ONNX suite: models exported from PyTorch with ``torch.onnx.export``,
loaded by ``pynn.onnx.load`` and run by ``predict`` beside ONNX Runtime on
the same file. Runs where PyTorch (to export) and the ``onnx`` package are
installed; otherwise the suite has no cases.

Models: the 784-256-128-10 MLP, ResNet-8 on 3x32x32 images (the graph
suite's), a MobileNet-style network (depthwise convolutions, Hardswish,
squeeze-excite) and a 1-D convolutional sequence classifier. Per model:
latency at batch 1 and throughput at batch 64. Each case first checks
pynn's output against the PyTorch module run in float64."""
import os
import tempfile
import warnings

import numpy as np

from pynn.bench import Case, _checks, graph, optional_import


def _mobilenet(torch):
    nn = torch.nn

    class SqueezeExcite(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.reduce = nn.Conv2d(channels, channels // 4, 1)
            self.expand = nn.Conv2d(channels // 4, channels, 1)

        def forward(self, x):
            gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
            return x * gate

    def block(channels_in, channels, stride):
        return nn.Sequential(nn.Conv2d(channels_in, channels_in, 3, stride, 1, groups=channels_in, bias=False),
                             nn.BatchNorm2d(channels_in), nn.Hardswish(), SqueezeExcite(channels_in),
                             nn.Conv2d(channels_in, channels, 1, bias=False), nn.BatchNorm2d(channels))

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            self.blocks = nn.Sequential(block(16, 24, 2), block(24, 32, 2), block(32, 64, 1))
            self.head = nn.Sequential(nn.Linear(64, 128), nn.Hardswish(), nn.Linear(128, 10))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    return MobileNet()


def _sequence(torch):
    nn = torch.nn

    class SequenceClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
                                          nn.MaxPool1d(2), nn.Conv1d(32, 64, 3, padding=1), nn.ReLU(),
                                          nn.AvgPool1d(2))
            self.head = nn.Linear(64 * 32, 5)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))

    return SequenceClassifier()


def _mlp(torch):
    nn = torch.nn
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


MODELS = {  # name -> (builder, one sample's shape)
    "MLP 784-256-128-10": (_mlp, (784,)),
    "ResNet-8 3x32x32": (graph.torch_resnet, (3, 32, 32)),
    "MobileNet-style 3x64x64": (_mobilenet, (3, 64, 64)),
    "Conv1d classifier 16x128": (_sequence, (16, 128)),
}


def _exported(torch, name, folder):
    """``(module in eval mode, path)``: the model with trained-looking batch
    norm statistics, exported with a dynamic batch axis."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    module = build(torch)
    module.train()
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(16, *shape))
    module.eval()
    path = os.path.join(folder, f"{len(os.listdir(folder))}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, *shape),), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    return module, path


def _check(model, module, torch, x, what):
    def check():
        with torch.no_grad():
            expected = module.double()(torch.from_numpy(x.astype(np.float64))).numpy()
        module.float()
        _checks.within(model.predict(x), expected, _checks.network_bound(expected), what)
    return check


def cases(quick, threads):
    torch = optional_import("torch")
    if torch is None or optional_import("onnx") is None:
        return []
    import pynn.onnx

    ort = optional_import("onnxruntime")
    folder = tempfile.mkdtemp(prefix="pynn-bench-onnx-")
    rng = np.random.default_rng(0)
    found = []
    for name in MODELS:
        module, path = _exported(torch, name, folder)
        model = pynn.onnx.load(path)
        session = None
        if ort is not None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for batch, kind in ((1, "latency"), (16 if quick else 64, "throughput")):
            x = rng.standard_normal((batch,) + MODELS[name][1]).astype(np.float32)
            runners = {"pynn": lambda x=x, model=model: model.predict(x)}
            if session is not None:
                runners["onnxruntime"] = lambda x=x, session=session: session.run(None, {"x": x})
            case = f"{name} batch {batch} ({kind})"
            found.append(Case("onnx", case, runners, work=batch, unit="samples/s",
                              check=_check(model, module, torch, x, case)))
    return found
