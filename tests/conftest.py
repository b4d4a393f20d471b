"""Fixtures shared by the test modules."""
import pytest

from pynn._kernels import runtime


@pytest.fixture(params=runtime.supported_isas())
def isa(request):
    """Run the test once on every kernel path this CPU supports."""
    before = runtime.chosen_isa()
    runtime.choose_isa(request.param)
    yield request.param
    runtime.choose_isa(before)
