"""Remove labelled leftovers of runs whose process is gone (killed pytest, crashed CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import docker.errors

from .runinfo import LABEL_RUN, owner_alive


@dataclass
class ReapReport:
    """What a reap found and did."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    kept_runs: set[str] = field(default_factory=set)
    foreign_runs: set[str] = field(default_factory=set)

    def summary(self) -> str:
        parts = [f"removed {len(self.containers)} container(s) and {len(self.networks)} network(s)"]
        if self.kept_runs:
            parts.append(f"kept {len(self.kept_runs)} live run(s): {', '.join(sorted(self.kept_runs))}")
        if self.foreign_runs:
            parts.append(
                f"left {len(self.foreign_runs)} run(s) made on other machines (use --all): "
                + ", ".join(sorted(self.foreign_runs))
            )
        return "; ".join(parts)


def _gone_or_going(exc: docker.errors.APIError) -> bool:
    """Removed meanwhile, or being removed by another reaper (the engine answers 409 'already in progress')."""
    return isinstance(exc, docker.errors.NotFound) or (
        exc.status_code == 409 and "already in progress" in str(exc))


def _is_dead(labels: dict[str, str], report: ReapReport, everything: bool, run_id: str | None) -> bool:
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
