"""Fixtures for the agent's unit tests: a local agent over pipes, talking over 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.channel import AgentChannel, PipeTransport
from harness.endpoint import Endpoint


@pytest.fixture(scope="module")
def module_agent() -> Iterator[Endpoint]:
    """One agent process per test module on this machine (its network namespace)."""
    channel = AgentChannel(PipeTransport(), "local")
    try:
        yield Endpoint(channel, "local")
    finally:
        channel.close()


@pytest.fixture
def agent(module_agent: Endpoint) -> Iterator[Endpoint]:
    """The module's agent, reset after the test as the harness resets hosts between tests."""
    yield module_agent
    leftovers = module_agent.reset()
    assert not leftovers["errors"], leftovers
