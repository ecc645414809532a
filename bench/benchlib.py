"""What the benchmarks share: a test bed of the compose file's hosts outside pytest, and percentiles."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from harness.backends.base import Testbed
from harness.backends.docker import DockerBackend
from harness.docker_client import connect_docker
from harness.images import ensure_peer_image
from harness.runinfo import RunInfo
from harness.topology import load_topology


@dataclass
class Bench:
    """A running test bed, the peer image it runs, the Docker engine's version, and its backend."""

    testbed: Testbed
    image: str
    engine_version: str
    backend: DockerBackend


@contextmanager
def bench_testbed(worker: str = "bench") -> Iterator[Bench]:
    """The hosts of docker-compose.yml on a network of their own, removed when the block ends."""
    engine = connect_docker()
    image = ensure_peer_image(engine)
    backend = DockerBackend(engine, load_topology(), image, RunInfo.current())
    try:
        yield Bench(backend.create(worker), image, engine.version()["Version"], backend)
    finally:
        backend.destroy()


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
