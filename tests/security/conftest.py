"""Fixtures of the adversarial suite: one real moatd per module, as in
tests/e2e (whose harness also proves, at teardown, that nothing leaked)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))

import moatd_harness  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    moatd_harness.attach_log_on_failure(item, outcome.get_result())


@pytest.fixture(scope="module")
def moatd(request):
    name = "sec-" + request.module.__name__.rpartition(".")[2]
    yield from moatd_harness.moatd_fixture(request, name)


@pytest.fixture
def sandbox(moatd):
    """A fresh sandbox on the module's moatd, deleted after the test."""
    sb = moatd_harness.moat.Sandbox.create(socket=moatd.socket)
    try:
        yield sb
    finally:
        sb.terminate()
