"""Fixtures shared by the test modules."""
import pytest

import pynn
from pynn._kernels import core as kernels


@pytest.fixture(params=kernels.supported_isas())
def isa(request):
    """Run the test once on every kernel path this CPU supports."""
    before = kernels.chosen_isa()
    kernels.choose_isa(request.param)
    yield request.param
    kernels.choose_isa(before)


@pytest.fixture
def set_threads():
    """pynn.set_num_threads for one test; the count before it is restored after."""
    before = pynn.get_num_threads()
    yield pynn.set_num_threads
    pynn.set_num_threads(before)
