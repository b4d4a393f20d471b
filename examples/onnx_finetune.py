"""Fine-tune a model that arrives as an ONNX file, and hand the result on as one.

    python examples/onnx_finetune.py [--epochs 30] [--out DIR] [--seed 0]

A small CNN is trained on digits 0-4 of the bundled digits and exported with
``torch.onnx.export`` (where PyTorch is installed; otherwise the file shipped
beside this script, examples/digits_cnn.onnx, made by this script's
``--save-pretrained`` option, stands in). pynn loads it, freezes everything
but the classifier head, fine-tunes the head on digits 5-9, exports the
result to ONNX and, where ONNX Runtime is installed, checks that it computes
what pynn's predict computes. Needs the ``onnx`` extra.
"""
import argparse
import os

import numpy as np

import pynn
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_cnn.onnx")


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def split(seed):
    """Digits as 1x8x8 images: (train, test) pairs of the classes 0-4 and of 5-9 (labels 0-4)."""
    x, y = pynn.datasets.load_digits()
    x = x.reshape(-1, 1, 8, 8)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    parts = {}
    for name, low in (("first", 0), ("second", 5)):
        chosen = (y >= low) & (y < low + 5)
        xs, ys = x[chosen], (y[chosen] - low).astype(np.int64)
        cut = int(0.7 * len(ys))
        parts[name] = ((xs[:cut], ys[:cut]), (xs[cut:], ys[cut:]))
    return parts


def pretrain_and_export(train, path, seed):
    """A PyTorch CNN trained on digits 0-4 and written to ``path`` as ONNX."""
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 5))
    optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-2)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    cnn.train()
    for _ in range(60):
        for start in range(0, len(y), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(cnn(x[start:start + 64]), y[start:start + 64]).backward()
            optimizer.step()
    cnn.eval()
    torch.onnx.export(cnn, (x[:2],), path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def accuracy(model, data):
    x, y = data
    return float(np.mean(np.argmax(model.predict(x), axis=1) == y))


def main():
    parser = argparse.ArgumentParser(prog="onnx_finetune.py", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=30, help="fine-tuning epochs")
    parser.add_argument("--out", default="onnx-finetune", help="folder for the ONNX files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-pretrained", metavar="PATH",
                        help="only pretrain with PyTorch and write the ONNX file to PATH")
    args = parser.parse_args()
    parts = split(args.seed)
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    if args.save_pretrained:
        if torch is None:
            parser.error("--save-pretrained needs PyTorch")
        pretrain_and_export(parts["first"][0], args.save_pretrained, args.seed)
        return
    os.makedirs(args.out, exist_ok=True)
    pretrained = os.path.join(args.out, "pretrained.onnx")
    if torch is not None:
        pretrain_and_export(parts["first"][0], pretrained, args.seed)
        print(f"pretrained a CNN on digits 0-4 with PyTorch, exported to {pretrained}")
    else:
        pretrained = SHIPPED
        print(f"PyTorch is not installed: using the shipped {pretrained}")

    model = pynn.onnx.load(pretrained)
    print(f"loaded into pynn: {len(model.layers)} layers, "
          f"test accuracy on digits 0-4 {accuracy(model, parts['first'][1]):.3f}")
    head = [name for name, layer in model.named_layers() if isinstance(layer, pynn.layers.Linear)][-1]
    model.freeze(*[name for name, layer in model.named_layers() if name != head])
    train, test = parts["second"]
    print(f"before fine-tuning the head ({head}) on digits 5-9: test accuracy {accuracy(model, test):.3f}")
    model.fit(train[0], train[1], loss=CrossEntropyLoss(), optimizer=Adam(model, lr=1e-2),
              epochs=args.epochs, batch_size=32, seed=args.seed, verbose=False)
    print(f"after fine-tuning: test accuracy on digits 5-9 {accuracy(model, test):.3f}")

    finetuned = os.path.join(args.out, "finetuned.onnx")
    pynn.onnx.export(model, finetuned)
    print(f"exported the fine-tuned model to {finetuned}")
    try:
        import onnxruntime
    except ImportError:
        print("ONNX Runtime is not installed: the exported file is not checked")
        return
    session = onnxruntime.InferenceSession(finetuned, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    difference = np.abs(session.run(None, {name: test[0]})[0] - model.predict(test[0])).max()
    print(f"ONNX Runtime on the exported file: largest difference from pynn's predict {difference:.2e}")


if __name__ == "__main__":
    main()
