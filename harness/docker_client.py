"""Connecting to the Docker engine, with an error that says what to do when it is not there."""
from __future__ import annotations

import os
from urllib.parse import urlparse

import docker
import requests

from .errors import EngineUnavailable

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def docker_host() -> str:
    """The engine address the SDK uses: ``$DOCKER_HOST`` or the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect_docker(timeout: int = 60) -> docker.DockerClient:
    """A client for the engine from the environment, checked with a ping.

    Raises EngineUnavailable naming the address tried and the underlying cause.
    """
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineUnavailable(
            f"Docker engine not reachable at {docker_host()}: is dockerd running? set DOCKER_HOST\n"
            f"  cause: {exc}"
        ) from exc
    return client


def engine_is_local(client: docker.DockerClient) -> bool:
    """True when the engine runs on this machine (unix socket or a loopback TCP address)."""
    return urlparse(client.api.base_url).hostname in ("localhost", "127.0.0.1", "::1")
