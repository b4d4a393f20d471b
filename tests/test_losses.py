"""pynn.losses objects and their PyTorch options: values and gradients against
float64 references and finite differences, PyTorch parity, errors."""
import numpy as np
import pytest

from pynn import ops
from pynn.losses import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss
from tests.helpers import check_gradient, class_loss64, elementwise_loss64


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


def _cases():
    logits = _random((6, 4), 0)
    return [
        (CrossEntropyLoss, logits, np.array([0, 3, 1, 1, 2, 3])),
        (MSELoss, logits, _random((6, 4), 1)),
        (BCEWithLogitsLoss, logits, np.random.default_rng(2).random((6, 4)).astype(np.float32)),
    ]


@pytest.mark.parametrize("cls,pred,target", _cases())
def test_value_and_backward(cls, pred, target):
    loss = cls()
    value = loss(pred, target)
    assert isinstance(value, float)
    grad = loss.backward()
    assert grad.shape == pred.shape and grad.dtype == np.float32
    check_gradient(lambda v: cls()(v, target), pred, grad.copy())
    loss(pred, target)
    assert loss.backward() is grad  # the buffer is reused while the shape is unchanged


@pytest.mark.parametrize("cls,pred,target", _cases())
def test_torch_parity(cls, pred, target):
    torch = pytest.importorskip("torch")
    reference = {CrossEntropyLoss: torch.nn.CrossEntropyLoss, MSELoss: torch.nn.MSELoss,
                 BCEWithLogitsLoss: torch.nn.BCEWithLogitsLoss}[cls]()
    t = torch.tensor(pred, requires_grad=True)
    expected = reference(t, torch.from_numpy(target))
    expected.backward()
    loss = cls()
    assert loss(pred, target) == pytest.approx(expected.item(), rel=1e-6)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_errors():
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward"):
        CrossEntropyLoss().backward()
    with pytest.raises(IndexError, match="class 4"):
        CrossEntropyLoss()(_random((2, 4), 0), np.array([0, 4]))
    with pytest.raises(ValueError, match="NaN"):
        MSELoss()(_random((2,), 0), np.array([0.0, np.nan], np.float32))
    with pytest.raises(TypeError, match="binary_cross_entropy_with_logits"):
        BCEWithLogitsLoss()(_random((2,), 0), np.array([0, 1]))
    loss = MSELoss()
    loss(_random((2,), 0), _random((2,), 1))
    with pytest.raises(ValueError):
        loss(_random((2,), 0), _random((3,), 1))
    with pytest.raises(RuntimeError):
        loss.backward()  # a failed call leaves no stale gradient behind


# -- PyTorch's options, against float64 references -------------------------------

CLASSES = 5
WEIGHT = np.array([0.5, 2.0, 1.0, 0.25, 3.0], np.float32)


def _targets(rows, ignore_index=-100, seed=3):
    """Classes, with ignore_index at row 1 and class 2 at row 4."""
    target = np.random.default_rng(seed).integers(0, CLASSES, rows)
    target[1] = ignore_index
    target[4] = 2
    return target


def _assert_loss(value, expected, rel=1e-6):
    assert isinstance(value, float)
    if np.isnan(expected):
        assert np.isnan(value)
    else:
        assert abs(value - expected) <= rel * max(1.0, abs(expected))


CLASS_OPTIONS = [dict(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing,
                      reduction=reduction)
                 for weight in (None, WEIGHT) for ignore_index in (-100, 2)
                 for smoothing in (0.0, 0.3, 1.0) for reduction in ("mean", "sum")]


def _show(options):
    return ",".join(f"{key}={'w' if isinstance(value, np.ndarray) else value}"
                    for key, value in options.items())


@pytest.mark.parametrize("options", CLASS_OPTIONS, ids=_show)
@pytest.mark.parametrize("rows", [7, 300])
def test_cross_entropy_options_against_float64(isa, options, rows):
    logits = _random((rows, CLASSES), rows)
    target = _targets(rows, options["ignore_index"])
    loss = CrossEntropyLoss(options["weight"], ignore_index=options["ignore_index"],
                            label_smoothing=options["label_smoothing"], reduction=options["reduction"])
    expected, expected_grad = class_loss64(logits, target, log_probs=False, **options)
    _assert_loss(loss(logits, target), expected)
    np.testing.assert_allclose(loss.backward(), expected_grad, rtol=1e-5, atol=1e-7)
    assert not loss.backward()[target == options["ignore_index"]].any()


@pytest.mark.parametrize("options", [o for o in CLASS_OPTIONS if o["label_smoothing"] == 0.0], ids=_show)
def test_nll_loss_options_against_float64(options):
    log_probs = ops.log_softmax(_random((9, CLASSES), 1))
    target = _targets(9, options["ignore_index"])
    options = {key: value for key, value in options.items() if key != "label_smoothing"}
    loss = NLLLoss(options["weight"], ignore_index=options["ignore_index"], reduction=options["reduction"])
    expected, expected_grad = class_loss64(log_probs, target, label_smoothing=0.0, log_probs=True,
                                            **options)
    _assert_loss(loss(log_probs, target), expected)
    np.testing.assert_allclose(loss.backward(), expected_grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls", [CrossEntropyLoss, NLLLoss])
@pytest.mark.parametrize("weight", [None, WEIGHT])
def test_every_row_ignored_gives_nan_mean_zero_sum_and_zero_gradient(cls, weight):
    scores, target = _random((4, CLASSES), 0), np.full(4, -100)
    mean, total = cls(weight), cls(weight, reduction="sum")
    assert np.isnan(mean(scores, target)) and total(scores, target) == 0.0
    assert not mean.backward().any() and not total.backward().any()
    assert np.isnan(cls()(np.zeros((0, CLASSES), np.float32), np.zeros(0, np.int64)))
    assert cls(reduction="sum")(np.zeros((0, CLASSES), np.float32), np.zeros(0, np.int64)) == 0.0


ELEMENTWISE = [("mse", lambda **o: MSELoss(**o), {}), ("l1", lambda **o: L1Loss(**o), {}),
               ("huber", lambda **o: HuberLoss(**o), {}),
               ("huber", lambda **o: HuberLoss(delta=0.4, **o), {"delta": 0.4}),
               ("bce", lambda **o: BCEWithLogitsLoss(**o), {}),
               ("bce", lambda **o: BCEWithLogitsLoss(pos_weight=WEIGHT, **o), {"pos_weight": WEIGHT}),
               ("bce", lambda **o: BCEWithLogitsLoss(pos_weight=WEIGHT[:1], **o),
                {"pos_weight": WEIGHT[:1]})]


def _elementwise_case(name, shape=(6, CLASSES)):
    pred = _random(shape, 4)
    if name == "bce":
        return pred, np.random.default_rng(5).random(shape).astype(np.float32)
    target = _random(shape, 6)
    target[0, :2] = pred[0, :2]  # equal entries: L1's gradient is 0 there
    return pred, target


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,make,extra", ELEMENTWISE, ids=lambda v: v if isinstance(v, str) else "")
def test_elementwise_options_against_float64(name, make, extra, reduction):
    pred, target = _elementwise_case(name)
    loss = make(reduction=reduction)
    expected, expected_grad = elementwise_loss64(name, pred, target, reduction, **extra)
    _assert_loss(loss(pred, target), expected, rel=1e-9)
    np.testing.assert_allclose(loss.backward(), expected_grad, rtol=1e-6, atol=1e-9)
    empty = np.zeros((0, CLASSES), np.float32)
    value = make(reduction=reduction)(empty, empty)
    assert np.isnan(value) if reduction == "mean" else value == 0.0


def test_bce_with_pos_weight_is_stable_at_huge_logits():
    logits = np.array([[1e4, -1e4], [-1e4, 1e4]], np.float32)
    target = np.array([[1, 0], [1, 0]], np.float32)
    loss = BCEWithLogitsLoss(pos_weight=np.array([3.0, 0.5], np.float32), reduction="sum")
    assert loss(logits, target) == pytest.approx(3 * 1e4 + 1e4)
    np.testing.assert_allclose(loss.backward(), [[0, 0], [-3, 1]])


GRADIENT_CASES = [
    (lambda: CrossEntropyLoss(WEIGHT, label_smoothing=0.2), "class"),
    (lambda: CrossEntropyLoss(ignore_index=2, label_smoothing=0.5, reduction="sum"), "class"),
    (lambda: NLLLoss(WEIGHT, ignore_index=2), "class"),
    (lambda: L1Loss(reduction="sum"), "real"),
    (lambda: HuberLoss(delta=0.5), "real"),
    (lambda: MSELoss(reduction="sum"), "real"),
    (lambda: BCEWithLogitsLoss(pos_weight=WEIGHT), "probability"),
]


@pytest.mark.parametrize("make,kind", GRADIENT_CASES)
def test_option_gradients_match_finite_differences(make, kind):
    pred = _random((6, CLASSES), 8)
    if kind == "class":
        target = _targets(6, ignore_index=2)
    elif kind == "real":  # far from the kinks of L1 and Huber, which finite differences straddle
        target = (pred + np.where(np.arange(pred.size).reshape(pred.shape) % 2, 0.3, -1.7)).astype(np.float32)
    else:
        target = np.random.default_rng(9).random(pred.shape).astype(np.float32)
    loss = make()
    loss(pred, target)
    check_gradient(lambda v: make()(v, target), pred, loss.backward().copy(), eps=1e-2)


@pytest.mark.parametrize("options", CLASS_OPTIONS, ids=_show)
def test_cross_entropy_and_nll_options_match_torch(options):
    torch = pytest.importorskip("torch")
    logits, target = _random((11, CLASSES), 10), _targets(11, options["ignore_index"])
    weight = None if options["weight"] is None else torch.from_numpy(options["weight"])
    t = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=options["ignore_index"],
                                         label_smoothing=options["label_smoothing"],
                                         reduction=options["reduction"])(t, torch.from_numpy(target))
    expected.backward()
    loss = CrossEntropyLoss(options["weight"], ignore_index=options["ignore_index"],
                            label_smoothing=options["label_smoothing"], reduction=options["reduction"])
    assert loss(logits, target) == pytest.approx(expected.item(), rel=1e-6)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
    if options["label_smoothing"] == 0.0:
        log_probs = torch.log_softmax(torch.from_numpy(logits), 1).numpy()
        t = torch.tensor(log_probs, requires_grad=True)
        expected = torch.nn.NLLLoss(weight=weight, ignore_index=options["ignore_index"],
                                    reduction=options["reduction"])(t, torch.from_numpy(target))
        expected.backward()
        loss = NLLLoss(options["weight"], ignore_index=options["ignore_index"],
                       reduction=options["reduction"])
        assert loss(log_probs, target) == pytest.approx(expected.item(), rel=1e-6)
        np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-6, atol=1e-8)


def test_every_row_ignored_matches_torch():
    torch = pytest.importorskip("torch")
    logits, target = _random((3, CLASSES), 0), np.full(3, 4)
    for weight, smoothing in [(None, 0.0), (WEIGHT, 0.3)]:
        t = torch.tensor(logits, requires_grad=True)
        expected = torch.nn.CrossEntropyLoss(
            weight=None if weight is None else torch.from_numpy(weight), ignore_index=4,
            label_smoothing=smoothing)(t, torch.from_numpy(target))
        expected.backward()
        loss = CrossEntropyLoss(weight, ignore_index=4, label_smoothing=smoothing)
        assert np.isnan(loss(logits, target)) and np.isnan(expected.item())
        np.testing.assert_array_equal(loss.backward(), t.grad.numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,make,extra", ELEMENTWISE, ids=lambda v: v if isinstance(v, str) else "")
def test_elementwise_options_match_torch(name, make, extra, reduction):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    reference = {"mse": lambda: nn.MSELoss(reduction=reduction), "l1": lambda: nn.L1Loss(reduction=reduction),
                 "huber": lambda: nn.HuberLoss(reduction=reduction, delta=extra.get("delta", 1.0)),
                 "bce": lambda: nn.BCEWithLogitsLoss(
                     reduction=reduction,
                     pos_weight=None if "pos_weight" not in extra else torch.from_numpy(extra["pos_weight"]))}
    pred, target = _elementwise_case(name)
    t = torch.tensor(pred, requires_grad=True)
    expected = reference[name]()(t, torch.from_numpy(target))
    expected.backward()
    loss = make(reduction=reduction)
    assert loss(pred, target) == pytest.approx(expected.item(), rel=1e-6)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_option_errors_name_the_argument():
    with pytest.raises(ValueError, match="CrossEntropyLoss: reduction must be 'mean' or 'sum'.*'none'"):
        CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="MSELoss: reduction"):
        MSELoss(reduction="average")
    with pytest.raises(TypeError):
        MSELoss("sum")  # options are keywords: PyTorch's positional order differs
    with pytest.raises(TypeError):
        BCEWithLogitsLoss(WEIGHT)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=float("nan"))
    with pytest.raises(TypeError, match="label_smoothing must be a real number"):
        CrossEntropyLoss(label_smoothing="0.1")
    with pytest.raises(TypeError, match="NLLLoss: ignore_index must be an integer, got float"):
        NLLLoss(ignore_index=1.5)
    with pytest.raises(TypeError, match="ignore_index must be an integer, got bool"):
        CrossEntropyLoss(ignore_index=True)
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        CrossEntropyLoss(ignore_index=2 ** 70)
    with pytest.raises(ValueError, match="HuberLoss: delta must be > 0, got 0.0"):
        HuberLoss(delta=0)
    with pytest.raises(TypeError, match="delta must be a real number"):
        HuberLoss(delta=None)
    with pytest.raises(ValueError, match="CrossEntropyLoss: weight must be 1-D"):
        CrossEntropyLoss(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="weight must be a floating-point array"):
        CrossEntropyLoss(np.ones(5, np.int64))
    with pytest.raises(ValueError, match=r"cross_entropy: weight must hold one value per class \(5\), got shape \(4,\)"):
        CrossEntropyLoss(np.ones(4, np.float32))(_random((2, 5), 0), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"nll_loss: weight must hold one value per class"):
        NLLLoss(np.ones(6, np.float32))(_random((2, 5), 0), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"pos_weight must hold 1 value or one per position of the last axis \(5\)"):
        BCEWithLogitsLoss(pos_weight=np.ones(3, np.float32))(_random((2, 5), 0), np.zeros((2, 5), np.float32))
    with pytest.raises(IndexError, match="class -1"):
        CrossEntropyLoss()(_random((2, 5), 0), np.array([-1, -100]))
    with pytest.raises(IndexError, match="class -100"):
        NLLLoss(ignore_index=0)(_random((2, 5), 0), np.array([0, -100]))
    with pytest.raises(ValueError, match="huber_loss: target must have the shape"):
        HuberLoss()(_random((2, 5), 0), _random((5, 2), 0))
    with pytest.raises(ValueError, match="l1_loss: target holds NaN"):
        L1Loss()(_random((2,), 0), np.array([0.0, np.nan], np.float32))


def test_weights_are_copied_and_shown():
    weight = WEIGHT.copy()
    loss = CrossEntropyLoss(weight, label_smoothing=0.1, reduction="sum")
    weight[:] = 0  # the loss keeps its own copy
    assert loss.weight.sum() == WEIGHT.sum()
    assert repr(loss).startswith("CrossEntropyLoss(weight=array(") and "label_smoothing=0.1" in repr(loss)
    assert repr(HuberLoss(delta=2.0)) == "HuberLoss(delta=2.0)" and repr(L1Loss()) == "L1Loss()"
