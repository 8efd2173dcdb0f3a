"""End-to-end fixtures: one real moatd per test module (see moatd_harness)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moatd_harness  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    moatd_harness.attach_log_on_failure(item, outcome.get_result())


@pytest.fixture(scope="module")
def moatd(request):
    name = request.module.__name__.rpartition(".")[2]
    yield from moatd_harness.moatd_fixture(request, name)


@pytest.fixture
def sandbox(moatd):
    """A fresh sandbox on the module's moatd, deleted after the test."""
    sb = moatd_harness.moat.Sandbox.create(socket=moatd.socket)
    try:
        yield sb
    finally:
        sb.terminate()
