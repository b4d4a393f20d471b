"""Fixtures shared by the test modules, and the opt-in that makes a skip fail
the session.

With ``PYNN_TEST_FAIL_ON_SKIP=1`` in the environment (CI sets it for the
stages whose point is tests that skip elsewhere: scale-out and PyTorch
parity), any skipped test or skipped module makes pytest exit non-zero and
the summary lists each one with its reason. Without it a skip is a skip, so
the README's plain ``pytest`` passes where an optional peer is missing."""
import os

import pytest

import pynn
from pynn._kernels import core as kernels

FAIL_ON_SKIP = "PYNN_TEST_FAIL_ON_SKIP"


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


class _SkipGuard:
    """Collects every skipped test and module; a session with any fails."""

    def __init__(self):
        self.skipped = []

    def _record(self, report):
        if not report.skipped:
            return
        if isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
            reason = report.longrepr[2]
        else:
            reason = getattr(report, "wasxfail", None) or str(report.longrepr)
        self.skipped.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report):
        # the setup phase reports skips from marks and fixtures, the call phase pytest.skip
        self._record(report)

    def pytest_collectreport(self, report):
        # a module-level importorskip skips the whole file at collection
        self._record(report)

    def pytest_sessionfinish(self, session):
        if self.skipped and session.exitstatus in (pytest.ExitCode.OK,
                                                   pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.skipped:
            return
        terminalreporter.section(f"{FAIL_ON_SKIP}=1 and {len(self.skipped)} skipped: this run fails",
                                 red=True)
        for nodeid, reason in self.skipped:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}")


def pytest_configure(config):
    value = os.environ.get(FAIL_ON_SKIP, "").strip()
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{FAIL_ON_SKIP} must be 0 or 1, got {value!r}")
    if value == "1":
        config.pluginmanager.register(_SkipGuard(), "pynn-fail-on-skip")
