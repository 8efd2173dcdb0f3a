"""SDK tests import moat from this tree and run against a real moatd
(started per module by tests/e2e/moatd_harness.py)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # sdk/python: the moat package
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "tests", "e2e"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    import moatd_harness
    moatd_harness.attach_log_on_failure(item, outcome.get_result())


@pytest.fixture(scope="module")
def moatd(request):
    import moatd_harness
    name = "sdk-" + request.module.__name__.rpartition(".")[2]
    yield from moatd_harness.moatd_fixture(request, name)


@pytest.fixture
def sock(moatd, monkeypatch):
    """moatd's socket, also exported as $MOAT_SOCKET."""
    monkeypatch.setenv("MOAT_SOCKET", moatd.socket)
    return moatd.socket


@pytest.fixture
def sandbox(sock):
    import moat
    with moat.Sandbox.create(socket=sock) as sb:
        yield sb
