"""GEMM suite: square products and the products of an MLP's training step.

Each case multiplies the same float32 operands into a preallocated output
with pynn.ops.matmul, numpy and (when installed) PyTorch."""
import numpy as np

from pynn import ops
from pynn.bench import Case, _checks, optional_import

SQUARES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
QUICK_SQUARES = (16, 128, 512)
BATCHES = (1, 32, 128, 512)
LAYERS = ((784, 256), (256, 128), (128, 10))


def _product_case(name, a, b, trans_a, trans_b, torch):
    """out = op(a) @ op(b) for every peer, each writing into its own buffer."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    left = a.T if trans_a else a
    right = b.T if trans_b else b
    out_pynn = np.empty((m, n), np.float32)
    out_numpy = np.empty((m, n), np.float32)
    runners = {
        "pynn": lambda: ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out_pynn),
        "numpy": lambda: np.matmul(left, right, out=out_numpy),
    }
    if torch is not None:
        t_left, t_right = torch.from_numpy(a), torch.from_numpy(b)
        t_left = t_left.T if trans_a else t_left
        t_right = t_right.T if trans_b else t_right
        t_out = torch.empty((m, n), dtype=torch.float32)
        runners["torch"] = lambda: torch.matmul(t_left, t_right, out=t_out)
    check = lambda: _checks.product(a, b, name, trans_a, trans_b, runners["pynn"]())  # noqa: E731
    return Case("gemm", name, runners, work=2.0 * m * n * k, unit="GFLOP/s", check=check)


def cases(quick, threads):
    rng = np.random.default_rng(0)
    torch = optional_import("torch")

    def matrix(rows, cols):
        return rng.standard_normal((rows, cols), dtype=np.float32)

    found = []
    for n in QUICK_SQUARES if quick else SQUARES:
        found.append(_product_case(f"square {n}", matrix(n, n), matrix(n, n), False, False, torch))
    for batch in (32,) if quick else BATCHES:
        for fan_in, fan_out in LAYERS:
            x, w, dy = matrix(batch, fan_in), matrix(fan_out, fan_in), matrix(batch, fan_out)
            shape = f"{batch}x{fan_in}->{fan_out}"
            # forward y = x Wᵀ, backward dx = dy W and dW = dyᵀ x
            found.append(_product_case(f"{shape} y=xWᵀ", x, w, False, True, torch))
            found.append(_product_case(f"{shape} dx=dyW", dy, w, False, False, torch))
            found.append(_product_case(f"{shape} dW=dyᵀx", dy, x, True, False, torch))
    return found
