"""pynn.ops.conv2d / conv2d_backward against a float64 reference written here,
finite differences, and torch.nn.functional where torch imports."""
import numpy as np
import pytest

from pynn import ops
from pynn._kernels import core as kernels
from tests.helpers import EPS32, check_gradient


def windows(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def reference_conv(x, w, b, stride, padding, dilation, groups):
    """y, and the per-tap input slices, in float64: y = Σ_taps w[:, :, kh, kw] · x_pad[window]."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    oc, cg, kh_count, kw_count = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = windows(h, kh_count, sh, ph, dh), windows(wd, kw_count, sw, pw, dw)
    padded = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    padded[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, groups, oc // groups, oh, ow))
    wg = w.reshape(groups, oc // groups, cg, kh_count, kw_count)
    for kh in range(kh_count):
        for kw in range(kw_count):
            tap = padded[:, :, kh * dh:kh * dh + sh * (oh - 1) + 1:sh,
                         kw * dw:kw * dw + sw * (ow - 1) + 1:sw]
            tap = tap.reshape(n, groups, cg, oh, ow)
            y += np.einsum("goq,ngqij->ngoij", wg[..., kh, kw], tap)
    y = y.reshape(n, oc, oh, ow)
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def reference_conv_backward(dy, x, w, stride, padding, dilation, groups):
    dy, x, w = dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    oc, cg, kh_count, kw_count = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = dy.shape[2:]
    padded = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    padded[:, :, ph:ph + h, pw:pw + wd] = x
    dpadded = np.zeros_like(padded)
    dyg = dy.reshape(n, groups, oc // groups, oh, ow)
    wg = w.reshape(groups, oc // groups, cg, kh_count, kw_count)
    dw_out = np.zeros_like(wg)
    for kh in range(kh_count):
        for kw in range(kw_count):
            window = (slice(None), slice(None), slice(kh * dh, kh * dh + sh * (oh - 1) + 1, sh),
                      slice(kw * dw, kw * dw + sw * (ow - 1) + 1, sw))
            tap = padded[window].reshape(n, groups, cg, oh, ow)
            dw_out[..., kh, kw] = np.einsum("ngoij,ngqij->goq", dyg, tap)
            dpadded[window] += np.einsum("ngoij,goq->ngqij", dyg, wg[..., kh, kw]).reshape(
                n, c, oh, ow)
    dx = dpadded[:, :, ph:ph + h, pw:pw + wd]
    return dx, dw_out.reshape(w.shape), dy.sum(axis=(0, 2, 3))


# (N, C, H, W, OC, kernel, stride, padding, dilation, groups)
CASES = [
    (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 3, 9, 7, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 4, 13, 11, 6, (1, 1), (1, 1), (0, 0), (1, 1), 2),
    (2, 5, 17, 19, 7, (7, 7), (2, 2), (3, 3), (1, 1), 1),
    (2, 4, 12, 10, 4, (3, 3), (1, 1), (2, 2), (2, 2), 4),   # depthwise, dilation 2
    (1, 6, 8, 9, 12, (3, 2), (2, 1), (1, 0), (1, 2), 3),
    (5, 2, 6, 6, 3, (5, 5), (3, 2), (2, 1), (1, 1), 1),
    (70, 1, 28, 28, 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # LeNet conv1: many images per GEMM
    (3, 8, 5, 5, 16, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (2, 2, 6, 70, 3, (3, 5), (1, 1), (1, 2), (2, 1), 1),    # wide rows: copied row by row
    (1, 3, 5, 80, 2, (3, 3), (2, 2), (1, 1), (1, 1), 1),    # direct (test_conv_direct.py)
    # one image per GEMM, unfolded in bands of output rows (3 bands, the last short);
    # grouped, which the direct path leaves to the unfold
    (2, 8, 50, 47, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    (1, 16, 100, 90, 8, (3, 3), (2, 2), (2, 1), (2, 2), 2),  # 5 bands, strided, grouped
    (1, 20, 600, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2),   # 9 bands through the gather table
    # one input channel at stride 1: computed directly, six output channels at a time
    (3, 1, 13, 21, 7, (3, 5), (1, 1), (2, 1), (1, 1), 1),
    (2, 1, 9, 8, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (1, 1, 6, 10, 2, (2, 2), (1, 1), (3, 3), (1, 1), 1),
    (1, 1, 12, 13, 7, (2, 6), (1, 1), (0, 0), (1, 1), 1),    # exactly 8 outputs a row
    (2, 1, 11, 8, 5, (3, 3), (1, 1), (1, 0), (1, 1), 1),     # 6 a row: unfolded instead
    # a tap row wider than the AVX2 fold's 16, at stride 1: folded row by row
    (2, 3, 7, 30, 4, (2, 17), (1, 1), (1, 3), (1, 1), 1),
]


def make(case, seed=0):
    n, c, h, w, oc, kernel, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((oc, c // groups) + kernel).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def assert_close_sum(actual, expected, magnitude, terms):
    """|error| <= 4·terms·eps·(Σ|products|), the float32 bound of a sum of that many terms."""
    bound = 4.0 * max(terms, 1) * EPS32 * magnitude + 1e-6
    error = np.abs(actual.astype(np.float64) - expected)
    assert np.all(error <= bound), f"worst excess {np.max(error / bound):.3g}"


def assert_conv_close(actual, x, weight, bias, geometry, relu=False, terms=None):
    """``actual`` against the float64 convolution (then ReLU with ``relu``)
    within the float32 bound of its sums (``terms``: a kernel's taps plus the bias)."""
    expected = reference_conv(x, weight, bias, **geometry)
    if relu:
        expected = np.maximum(expected, 0.0)
    magnitude = reference_conv(np.abs(x), np.abs(weight), np.abs(bias), **geometry)
    assert actual.shape == expected.shape
    assert_close_sum(actual, expected, magnitude, weight[0].size + 1 if terms is None else terms)


def fused_relu_forward(x, weight, bias, geometry):
    """The kernel's forward with the ReLU epilogue, into a NaN-filled output."""
    geometry = {"dilation": (1, 1), "groups": 1, **geometry}
    out = np.full(ops.conv2d(x, weight, bias, **geometry).shape, np.nan, np.float32)
    kernels.conv2d_forward(x, weight, bias, out, geometry["stride"], geometry["padding"],
                           geometry["dilation"], geometry["groups"], True)
    return out


def assert_advertised_workspace_gives_same_bits(x, weight, bias, geometry):
    """Forward and backward in a NaN-filled workspace of the advertised size
    give the bits of the ops, which size their own."""
    geometry = {"dilation": (1, 1), "groups": 1, **geometry}
    arguments = (geometry["stride"], geometry["padding"], geometry["dilation"], geometry["groups"])
    size = kernels.conv2d_workspace_size(x.shape, weight.shape, *arguments)
    y = ops.conv2d(x, weight, bias, **geometry)
    out = np.empty_like(y)
    kernels.conv2d_forward(x, weight, bias, out, *arguments, False,
                           np.full(size, np.nan, np.float32))
    np.testing.assert_array_equal(out, y)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    dx, dweight = np.empty_like(x), np.empty_like(weight)
    kernels.conv2d_backward(dy, x, weight, dx, dweight, None, *arguments,
                            np.full(size, np.nan, np.float32))
    expected_dx, expected_dweight, _ = ops.conv2d_backward(dy, x, weight, **geometry)
    np.testing.assert_array_equal(dx, expected_dx)
    np.testing.assert_array_equal(dweight, expected_dweight)


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64_reference(isa, case):
    x, weight, bias, geometry = make(case)
    actual = ops.conv2d(x, weight, bias, **geometry)
    assert actual.dtype == np.float32
    assert_conv_close(actual, x, weight, bias, geometry)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_float64_reference(isa, case):
    x, weight, _, geometry = make(case)
    y = ops.conv2d(x, weight, None, **geometry)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    rx, rw, rb = reference_conv_backward(dy, x, weight, **geometry)
    mx, mw, mb = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dx, rx, mx, weight.shape[0] * weight.shape[2] * weight.shape[3])
    assert_close_sum(dweight, rw, mw, y.shape[0] * y.shape[2] * y.shape[3])
    assert_close_sum(dbias, rb, mb, y.shape[0] * y.shape[2] * y.shape[3])


def test_zero_size_batch():
    x, weight, bias, geometry = make((0, 3, 5, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1))
    assert ops.conv2d(x, weight, bias, **geometry).shape == (0, 4, 5, 5)
    dx, dweight, dbias = ops.conv2d_backward(np.zeros((0, 4, 5, 5), np.float32), x, weight,
                                             **geometry)
    assert dx.shape == x.shape and not dweight.any() and not dbias.any()


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[5]])
def test_gradients_match_finite_differences(case):
    x, weight, bias, geometry = make(case, seed=3)
    y = ops.conv2d(x, weight, bias, **geometry)
    probe = np.random.default_rng(4).standard_normal(y.shape)

    def loss_x(value):
        return float(np.sum(ops.conv2d(value, weight, bias, **geometry) * probe))

    def loss_w(value):
        return float(np.sum(ops.conv2d(x, value, bias, **geometry) * probe))

    def loss_b(value):
        return float(np.sum(ops.conv2d(x, weight, value, **geometry) * probe))

    dx, dweight, dbias = ops.conv2d_backward(probe.astype(np.float32), x, weight, **geometry)
    check_gradient(loss_x, x, dx)
    check_gradient(loss_w, weight, dweight)
    check_gradient(loss_b, bias, dbias)


def test_out_argument_and_conversion():
    x, weight, bias, geometry = make(CASES[1])
    out = np.full((2, 5, 9, 7), np.nan, np.float32)
    assert ops.conv2d(x, weight, bias, out=out, **geometry) is out
    converted = ops.conv2d(x.astype(np.float64)[:, :, :, ::-1][:, :, :, ::-1], weight, bias,
                           **geometry)
    np.testing.assert_array_equal(converted, out)


def test_thread_count_does_not_change_results(set_threads):
    x, weight, bias, geometry = make((6, 8, 30, 30, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1))
    results = []
    for threads in (1, 2):
        set_threads(threads)
        y = ops.conv2d(x, weight, bias, **geometry)
        results.append((y,) + ops.conv2d_backward(y, x, weight, **geometry))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4], CASES[5]])
def test_torch_parity(case):
    torch = pytest.importorskip("torch")
    x, weight, bias, geometry = make(case)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, **geometry)
    dy = np.random.default_rng(2).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    y = ops.conv2d(x, weight, bias, **geometry)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    for ours, theirs in ((y, yt), (dx, xt.grad), (dweight, wt.grad), (dbias, bt.grad)):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize("arguments, error, words", [
    (dict(x=np.zeros((3, 5, 5), np.float32)), ValueError, ["4-D", "(3, 5, 5)"]),
    (dict(x=np.zeros((1, 2, 5, 5), np.float32)), ValueError, ["in_channels=3", "(1, 2, 5, 5)"]),
    (dict(x=np.zeros((1, 3, 2, 2), np.float32)), ValueError, ["spans 3", "padded input's 2"]),
    (dict(stride=0), ValueError, ["stride", ">= 1", "0"]),
    (dict(dilation=(1, -1)), ValueError, ["dilation", "-1"]),
    (dict(padding=-1), ValueError, ["padding", "-1"]),
    (dict(groups=2), ValueError, ["groups=2", "out_channels=5"]),
    (dict(x=np.zeros((1, 3, 5, 5), np.int32)), TypeError, ["x", "int32"]),
    (dict(bias=np.zeros(4, np.float32)), ValueError, ["bias", "(5,)", "(4,)"]),
    (dict(stride=1.5), TypeError, ["stride", "1.5"]),
    (dict(x=np.zeros((1, 3, 0, 5), np.float32), padding=2), ValueError, ["non-empty", "(1, 3, 0, 5)"]),
])
def test_bad_input_is_refused_with_a_clear_message(arguments, error, words):
    call = dict(x=np.zeros((1, 3, 5, 5), np.float32), weight=np.zeros((5, 3, 3, 3), np.float32),
                bias=None)
    call.update(arguments)
    with pytest.raises(error) as raised:
        ops.conv2d(**call)
    for word in words + ["conv2d"]:
        assert word in str(raised.value)


def test_backward_refuses_a_wrong_dy_shape():
    x, weight, _, geometry = make(CASES[1])
    with pytest.raises(ValueError, match=r"conv2d_backward: dy must have the output's shape"):
        ops.conv2d_backward(np.zeros((2, 5, 9, 6), np.float32), x, weight, **geometry)
