"""Backends make the hosts of a topology: `docker` (containers) or `netns` (network namespaces of this machine)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..runinfo import RunInfo
from ..topology import Topology
from .base import Backend

BACKENDS = ("docker", "netns")


def open_backend(name: str, topology: Topology, run: RunInfo, *, image: str | None = None,
                 progress: Callable[[str], None] = lambda line: None) -> Backend:
    """A backend ready to `create` the topology's hosts: the engine (or root and the tools) checked, leftovers of
    dead runs reaped (said on `progress`), and for docker the peer image (`image`, else the content tag of the
    current sources, built if missing). Raises EngineUnavailable when the backend cannot run here."""
    if name == "docker":
        from ..docker_client import connect_docker
        from ..images import ensure_peer_image
        from ..reaper import reap
        from .docker import DockerBackend

        client = connect_docker()
        reaped = reap(client)
        if reaped.containers or reaped.networks:
            progress("reaped leftovers of dead runs: " + reaped.summary())
        return DockerBackend(client, topology, image or ensure_peer_image(client, progress=progress), run,
                             progress=progress)
    if name == "netns":
        from ..reaper import reap_namespaces
        from .netns import NetnsBackend, check_prerequisites

        check_prerequisites()
        reaped_ns = reap_namespaces()
        if reaped_ns.namespaces:
            progress("reaped leftovers of dead runs: " + reaped_ns.summary())
        return NetnsBackend(topology, run, progress=progress)
    raise ConfigError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
