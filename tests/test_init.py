"""pynn.init: the distributions PyTorch's torch.nn.init draws from, seeded."""
import math

import numpy as np
import pytest

from pynn import init


def _filled(function, shape=(300, 400), **kwargs):
    return function(np.empty(shape, np.float32), generator=np.random.default_rng(0), **kwargs)


def test_kaiming_uniform_bound():
    w = _filled(init.kaiming_uniform_, a=math.sqrt(5))
    bound = math.sqrt(3) * math.sqrt(2 / (1 + 5)) / math.sqrt(400)  # = 1/√fan_in
    assert abs(bound - 1 / 20) < 1e-12
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    relu = _filled(init.kaiming_uniform_, nonlinearity="relu", mode="fan_out")
    assert np.abs(relu).max() <= math.sqrt(6 / 300)


def test_normal_initialisers_match_their_std():
    assert abs(_filled(init.kaiming_normal_, nonlinearity="relu").std() - math.sqrt(2 / 400)) < 2e-3
    assert abs(_filled(init.xavier_normal_).std() - math.sqrt(2 / 700)) < 2e-3
    w = _filled(init.xavier_uniform_, gain=2.0)
    assert np.abs(w).max() <= 2 * math.sqrt(6 / 700)
    assert not init.zeros_(np.ones((3, 3), np.float32)).any()


def test_fans_of_convolution_weights():
    w = _filled(init.kaiming_uniform_, shape=(8, 3, 5, 5))
    assert np.abs(w).max() <= math.sqrt(3) * math.sqrt(2 / (1 + 0.01 ** 2)) / math.sqrt(75)


def test_seeding_is_reproducible():
    a = _filled(init.xavier_uniform_)
    np.testing.assert_array_equal(a, _filled(init.xavier_uniform_))
    init.manual_seed(5)
    first = init.kaiming_uniform_(np.empty((4, 4), np.float32))
    init.manual_seed(5)
    np.testing.assert_array_equal(first, init.kaiming_uniform_(np.empty((4, 4), np.float32)))


def test_bad_arguments():
    with pytest.raises(TypeError, match="float32"):
        init.zeros_(np.ones(3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.kaiming_uniform_(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="Generator"):
        init.xavier_uniform_(np.ones((2, 2), np.float32), generator=3)
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal_(np.ones((2, 2), np.float32), mode="fan")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.kaiming_normal_(np.ones((2, 2), np.float32), nonlinearity="swish")
