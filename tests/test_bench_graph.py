"""The graph-model bench suite: every case passes its check, the checks
catch wrong results, and the networks match their PyTorch twins."""
import numpy as np
import pytest

from pynn import bench
from pynn.bench import _checks, graph, train


def test_graph_is_a_suite_after_conv():
    suites = bench.available_suites()
    assert suites.index("graph") == suites.index("conv") + 1


def test_every_case_checks_pynn_against_float64():
    with bench.pinned_threads(1):
        cases = graph.cases(quick=True, threads=1)
        names = [case.name for case in cases]
        assert any("ResNet-8" in name and "training" in name for name in names)
        assert any("recommender" in name for name in names)
        assert sum("MLP as Model" in name for name in names) == 3
        for case in cases:
            assert case.suite == "graph" and case.work > 0
            bench.verify(case)


def test_without_torch_every_case_still_runs_and_checks(monkeypatch):
    monkeypatch.setattr(graph, "optional_import", lambda name: None)
    with bench.pinned_threads(1):
        for case in graph.cases(quick=True, threads=1):
            assert set(case.runners) <= {"pynn", "sequential"}
            bench.verify(case)


def test_resnet_check_catches_a_wrong_output():
    model = graph.build_resnet()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    graph.check_resnet_predict(model, x, "resnet")
    wrong = model.predict(x)
    wrong[2, 3] += 1e-3 * np.abs(wrong).max()
    expected = graph.resnet_reference(model.state_dict(), x, training=False)
    with pytest.raises(AssertionError, match=r"resnet: 1 of 40 values off .* at \(2, 3\)"):
        _checks.within(wrong, expected, _checks.network_bound(expected), "resnet")


def test_resnet_reference_notices_each_stride_and_shortcut():
    model = graph.build_resnet()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    state = {key: np.array(value) for key, value in model.state_dict().items()}
    baseline = graph.resnet_reference(state, x, training=False)
    for key in ("layer2.shortcut.0.weight", "layer3.conv1.weight", "fc.bias"):
        changed = dict(state, **{key: state[key] * 1.01})
        assert not np.allclose(graph.resnet_reference(changed, x, training=False), baseline,
                               rtol=1e-5, atol=0)


def test_recommender_check_catches_a_step_one_percent_long(monkeypatch):
    from pynn import optim

    graph.check_recommender_step("cf")

    class LongStep(optim.SGD):
        def __init__(self, model, lr, **keywords):
            super().__init__(model, lr=lr * 1.01, **keywords)
    monkeypatch.setattr(optim, "SGD", LongStep)
    with pytest.raises(AssertionError, match="cf: gradient step of user_embedding.weight"):
        graph.check_recommender_step("cf")


def test_mlp_as_model_matches_the_sequential():
    x = train.dataset(8)[0]
    np.testing.assert_array_equal(graph.mlp_as_model().predict(x), train.build_mlp().predict(x))


def test_resnet_loads_the_torch_modules_state_dict_unchanged():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = graph.torch_resnet(torch).eval()
    model = graph.build_resnet(seed=1)
    result = model.load_state_dict({key: value.numpy() for key, value in module.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys  # the names mirror
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-5)


def test_resnet_training_gradients_match_torch_and_a_wrong_one_fails(monkeypatch):
    pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((8, 3, 32, 32), dtype=np.float32)
    y = np.arange(8) % 10
    graph.check_resnet_training(x, y, "resnet")
    from pynn.layers import BatchNorm2d

    backward = BatchNorm2d.backward

    def scaled(self, dy, input_grad=True):
        dx = backward(self, dy, input_grad)
        if self.name == "layer2.bn2":
            self.grads["weight"] *= 1.001
        return dx
    monkeypatch.setattr(BatchNorm2d, "backward", scaled)
    with pytest.raises(AssertionError, match="resnet: gradient of layer2.bn2.weight"):
        graph.check_resnet_training(x, y, "resnet")


def test_recommender_matches_its_torch_twin():
    torch = pytest.importorskip("torch")
    model = graph.build_recommender(50, 20, 6)
    twin = graph.torch_twin(model, torch, lambda torch: graph.torch_recommender(
        torch, 50, 20, 6, sparse=True))
    rng = np.random.default_rng(4)
    users, items = rng.integers(0, 50, 30), rng.integers(0, 20, 30)
    with torch.no_grad():
        expected = twin(torch.from_numpy(users), torch.from_numpy(items)).numpy()
    np.testing.assert_allclose(model.predict([users, items]), expected, rtol=1e-5, atol=1e-6)
