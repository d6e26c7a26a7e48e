"""Fixtures for the mnemod integration tests (helpers.py has the rest).

`start_server(config, args)` starts a mnemod for a module and stops it when
the module is done; `server` is one shared by a module, with default limits except the
rate limit (off, so that the suite's own traffic is never throttled).
"""
import pytest

from helpers import servers


@pytest.fixture(scope="module")
def start_server():
    """Factory: start_server(config, args) -> Server, stopped when the
    module is done."""
    with servers() as make:
        yield make


@pytest.fixture(scope="module")
def server(start_server):
    """A server with the default limits except a rate limit high enough
    for the tests, shared by a module."""
    return start_server({"server": {"rate_limit": 0}})
