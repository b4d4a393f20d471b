"""Inference suite: ``predict`` latency at batch 1 and 8 and throughput at 256
for the 784-256-128-10 ReLU MLP, beside numpy, PyTorch eager under
``inference_mode`` and ONNX Runtime (a graph of Gemm/Relu nodes holding the
same weights, on as many intra-op threads as pynn)."""
import numpy as np

from pynn.bench import Case, _checks, optional_import
from pynn.bench.train import SIZES, build_mlp, build_torch_mlp

BATCHES = (1, 8, 256)


def _numpy_forward(weights, biases, batch):
    outputs = [np.empty((batch, w.shape[0]), np.float32) for w in weights]

    def forward(x):
        for i, (w, b, out) in enumerate(zip(weights, biases, outputs)):
            np.matmul(x, w.T, out=out)
            out += b
            if i < len(weights) - 1:
                np.maximum(out, 0.0, out=out)
            x = out
        return x
    return forward


def _onnx_session(onnx, onnxruntime, weights, biases, threads):
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, current = [], [], "x"
    for i, (w, b) in enumerate(zip(weights, biases)):
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
        current = f"h{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SIZES[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", SIZES[-1]])],
        initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def cases(quick, threads):
    torch = optional_import("torch")
    onnx, onnxruntime = optional_import("onnx"), optional_import("onnxruntime")
    model = build_mlp()
    state = model.state_dict()
    weights = [state[f"{2 * i}.weight"] for i in range(len(SIZES) - 1)]
    biases = [state[f"{2 * i}.bias"] for i in range(len(SIZES) - 1)]
    twin = build_torch_mlp(model, torch).eval() if torch is not None else None
    session = (_onnx_session(onnx, onnxruntime, weights, biases, threads)
               if onnx is not None and onnxruntime is not None else None)
    rng = np.random.default_rng(0)
    found = []
    for batch in (1, 256) if quick else BATCHES:
        x = rng.random((batch, SIZES[0]), dtype=np.float32)
        runners = {"pynn": lambda x=x: model.predict(x),
                   "numpy": lambda x=x, forward=_numpy_forward(weights, biases, batch): forward(x)}
        if twin is not None:
            def torch_predict(x=torch.from_numpy(x)):
                with torch.inference_mode():
                    return twin(x)
            runners["torch"] = torch_predict
        if session is not None:
            runners["onnxruntime"] = lambda x=x: session.run(None, {"x": x})
        kind = "throughput" if batch >= 256 else "latency"
        name = f"784-256-128-10 batch {batch} ({kind})"
        found.append(Case("infer", name, runners, work=batch, unit="samples/s",
                          check=lambda x=x, name=name: _checks.predict(model, x, name)))
    return found
