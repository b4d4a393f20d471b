"""Learning-rate schedules: closed forms, and PyTorch's values when importable."""
import math

import numpy as np
import pytest

from pynn import optim
from pynn.optim.lr_scheduler import CosineAnnealingLR, StepLR


class Holder:
    def parameter_owners(self):
        return []


def rates(scheduler, epochs):
    values = [scheduler.optimizer.lr]
    for _ in range(epochs):
        scheduler.step()
        values.append(scheduler.optimizer.lr)
    return np.array(values)


def test_step_lr_closed_form():
    scheduler = StepLR(optim.SGD(Holder(), lr=0.5), step_size=3, gamma=0.1)
    expected = [0.5 * 0.1 ** (epoch // 3) for epoch in range(11)]
    np.testing.assert_allclose(rates(scheduler, 10), expected, rtol=1e-12)


def test_cosine_closed_form_within_and_past_t_max():
    scheduler = CosineAnnealingLR(optim.Adam(Holder(), lr=0.2), T_max=7, eta_min=0.01)
    expected = [0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * t / 7)) / 2 for t in range(30)]
    np.testing.assert_allclose(rates(scheduler, 29), expected, rtol=1e-9, atol=1e-12)


def test_schedule_drives_the_optimizer_lr():
    optimizer = optim.SGD(Holder(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.step()
    assert optimizer.lr == 0.5 and scheduler.get_last_lr() == [0.5]


@pytest.mark.parametrize("make, make_torch", [
    (lambda o: StepLR(o, step_size=4, gamma=0.3), lambda o, t: t.optim.lr_scheduler.StepLR(o, 4, 0.3)),
    (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=0.001),
     lambda o, t: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.001)),
])
def test_matches_torch_bit_for_bit(make, make_torch):
    torch = pytest.importorskip("torch")
    reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    reference = make_torch(reference_optimizer, torch)
    scheduler = make(optim.SGD(Holder(), lr=0.3))
    for _ in range(23):
        reference_optimizer.step()
        reference.step()
        scheduler.step()
        assert scheduler.optimizer.lr == reference_optimizer.param_groups[0]["lr"]


def test_state_dict_resumes_the_schedule():
    first = CosineAnnealingLR(optim.SGD(Holder(), lr=0.1), T_max=10)
    rates(first, 4)
    second = CosineAnnealingLR(optim.SGD(Holder(), lr=0.1), T_max=10)
    second.load_state_dict(first.state_dict())
    second.optimizer.lr = first.optimizer.lr
    np.testing.assert_array_equal(rates(first, 8), rates(second, 8))


def test_bad_arguments():
    with pytest.raises(TypeError, match="StepLR: optimizer must be a pynn.optim optimizer"):
        StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="StepLR: step_size must be >= 1, got 0"):
        StepLR(optim.SGD(Holder(), lr=0.1), step_size=0)
    with pytest.raises(TypeError, match="CosineAnnealingLR: T_max must be an integer"):
        CosineAnnealingLR(optim.SGD(Holder(), lr=0.1), T_max=2.5)
