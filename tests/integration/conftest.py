"""Fixtures for the mnemod integration tests (helpers.py has the rest).

`start_server(config, args)` starts a mnemod for a module and stops it when
the module is done; `server` is one shared by a module, with default limits except the
rate limit (off, so that the suite's own traffic is never throttled).
"""
import pytest

from helpers import Server


@pytest.fixture(scope="module")
def start_server():
    """Factory: start_server(config, args) -> Server, stopped when the
    module is done."""
    started = []

    def make(config=None, args=(), **kw):
        s = Server(config, args, **kw).start()
        started.append(s)
        return s

    yield make
    problems = []
    for s in started:
        s.cleanup()
        problems += s.sanitizer_reports()
    # Under `make test-asan` the servers run instrumented: any report fails
    # the module that started them.
    assert not problems, "sanitizer reports from mnemod:\n" + "".join(
        problems[:40])


@pytest.fixture(scope="module")
def server(start_server):
    """A server with the default limits except a rate limit high enough
    for the tests, shared by a module."""
    return start_server({"server": {"rate_limit": 0}})
