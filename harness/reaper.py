"""Remove labelled leftovers of runs whose process is gone (killed pytest, crashed CLI)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import docker.errors

from .runinfo import LABEL_MACHINE, LABEL_RUN, owner_alive


@dataclass
class RunsSeen:
    """The runs a reaper left alone: live ones, and ones made on other machines (whose liveness it cannot know)."""

    kept_runs: set[str] = field(default_factory=set)
    foreign_runs: set[str] = field(default_factory=set)

    def summary_of(self, removed: str) -> str:
        """`removed`, then the runs kept and left, as one line."""
        parts = [removed]
        if self.kept_runs:
            parts.append(f"kept {len(self.kept_runs)} live run(s): {', '.join(sorted(self.kept_runs))}")
        if self.foreign_runs:
            parts.append(f"left {len(self.foreign_runs)} run(s) made on other machines (use --all): "
                         + ", ".join(sorted(self.foreign_runs)))
        return "; ".join(parts)


@dataclass
class ReapReport(RunsSeen):
    """What a reap of containers and networks found and did."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return self.summary_of(f"removed {len(self.containers)} container(s) and {len(self.networks)} network(s)")


def _gone_or_going(exc: docker.errors.APIError) -> bool:
    """Removed meanwhile, or being removed by another reaper (the engine answers 409 'already in progress')."""
    return isinstance(exc, docker.errors.NotFound) or (
        exc.status_code == 409 and "already in progress" in str(exc))


def _is_dead(labels: dict[str, str], report: RunsSeen, everything: bool, run_id: str | None) -> bool:
    run = labels.get(LABEL_RUN, "?")
    if run_id is not None:
        return run == run_id
    if everything:
        return True
    alive = owner_alive(labels)
    if alive is None:
        report.foreign_runs.add(run)
        return False
    if alive:
        report.kept_runs.add(run)
    return not alive


def reap(
    client: docker.DockerClient,
    *,
    everything: bool = False,
    run_id: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> ReapReport:
    """Remove containers, then networks, labelled `netfault.run` whose owning process is gone.

    `run_id` limits the reap to one run (alive or not); `everything` removes every labelled resource.
    """
    report = ReapReport()
    api = client.api
    # The low-level listings carry the labels: no inspect per resource, which another session's reaper or
    # teardown could make fail by removing the resource in between.
    for container in api.containers(all=True, filters={"label": LABEL_RUN}):
        labels, name = container.get("Labels") or {}, container["Names"][0].lstrip("/")
        if _is_dead(labels, report, everything, run_id):
            progress(f"removing container {name} (run {labels.get(LABEL_RUN)})")
            try:
                api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.APIError as exc:
                if _gone_or_going(exc):
                    continue
                raise
            report.containers.append(name)
    for network in api.networks(filters={"label": LABEL_RUN}):
        labels = network.get("Labels") or {}
        if _is_dead(labels, report, everything, run_id):
            progress(f"removing network {network['Name']} (run {labels.get(LABEL_RUN)})")
            try:
                api.remove_network(network["Id"])
            except docker.errors.APIError as exc:
                if _gone_or_going(exc):
                    continue
                raise
            report.networks.append(network["Name"])
    return report


@dataclass
class NamespaceReapReport(RunsSeen):
    """What a reap of network namespaces found and did."""

    namespaces: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return self.summary_of(f"removed {len(self.namespaces)} network namespace(s)")


def reap_namespaces(*, everything: bool = False, run_id: str | None = None,
                    progress: Callable[[str], None] = lambda line: None) -> NamespaceReapReport:
    """Remove the netns backend's namespaces (their processes killed first) whose owning process is gone; a
    namespace without a label file is a dead run's (the file is written before the namespace is made)."""
    from .backends.netns import kill_namespace, list_namespaces, namespace_labels, remove_host_files

    report = NamespaceReapReport()
    for name in list_namespaces():
        labels = namespace_labels(name) or {LABEL_RUN: "?", LABEL_MACHINE: socket.gethostname()}
        if _is_dead(labels, report, everything, run_id):
            progress(f"removing network namespace {name} (run {labels.get(LABEL_RUN)})")
            kill_namespace(name)
            remove_host_files(name)
            report.namespaces.append(name)
    return report
