"""Fixtures shared by the tests that start inner netfault sessions."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def inner_env(pair) -> dict[str, str]:
    """The environment for an inner pytest or netfault session: this one's backend (and image, so it needs no
    build), without this session's pytest and netfault variables (run id, results)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NETFAULT_"))}
    backend = pair.testbed.backend
    env["NETFAULT_BACKEND"] = backend.name
    if backend.name == "docker":
        env["NETFAULT_IMAGE"] = backend.image
    return env
