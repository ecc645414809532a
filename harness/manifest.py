"""What a run's manifest says about where it ran: harness version and commit, engine, hosts, Python, pytest."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .docker_client import connect_docker
from .errors import EngineUnavailable
from .results import FORMAT, totals

if TYPE_CHECKING:
    from .backends.base import Host

REPO_ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "unknown"
# The baseline sysctls that decide the scenarios' timings, read on every host (net.ipv4.*).
BASELINE_SYSCTLS = tuple(f"net.ipv4.{name}" for name in (
    "tcp_syn_retries", "tcp_retries2", "tcp_orphan_retries", "tcp_fin_timeout", "tcp_keepalive_time",
    "tcp_keepalive_intvl", "tcp_keepalive_probes", "tcp_congestion_control", "tcp_early_retrans",
    "icmp_ratelimit"))
# Read only where the kernel has them (tcp_syn_linear_timeouts appeared in Linux 6.8).
OPTIONAL_SYSCTLS = ("net.ipv4.tcp_syn_linear_timeouts",)


def timestamp() -> dict[str, Any]:
    """Now, as UTC ISO 8601 and epoch seconds."""
    epoch = time.time()
    return {"utc": datetime.fromtimestamp(epoch, timezone.utc).isoformat(), "epoch": epoch}


def harness_version() -> str:
    """The installed netfault package's version ("unknown" when it runs from sources not installed)."""
    try:
        return metadata.version("netfault")
    except metadata.PackageNotFoundError:
        return UNKNOWN


def git_commit(root: Path = REPO_ROOT) -> str:
    """The commit checked out at `root`, "unknown" outside a git checkout (or without git)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30)
    except FileNotFoundError:
        return UNKNOWN
    return out.stdout.strip() if out.returncode == 0 else UNKNOWN


# The engine facts of a run whose hosts were all network namespaces.
NO_ENGINE = {"server_version": None, "kernel_version": None, "operating_system": None,
             "error": "no container engine: the hosts were network namespaces (netns backend)"}


def engine_facts() -> dict[str, Any]:
    """The Docker engine's version, kernel and OS from `docker info`; an `error` instead when it is unreachable."""
    try:
        info = connect_docker(timeout=30).info()
    except EngineUnavailable as exc:
        return {"server_version": None, "kernel_version": None, "operating_system": None, "error": str(exc)}
    return {"server_version": info.get("ServerVersion"), "kernel_version": info.get("KernelVersion"),
            "operating_system": info.get("OperatingSystem"), "error": None}


def host_facts(worker: str, host: Host) -> dict[str, Any]:
    """A host's backend, kernel release and baseline sysctls (read before any test pins its own)."""
    keys = list(BASELINE_SYSCTLS) + [key for key in OPTIONAL_SYSCTLS if host.has_sysctl(key)]
    return {"worker": worker, "host": host.name, "backend": host.driver.backend.name,
            "kernel_release": host.kernel_release, "sysctls": host.sysctl_get(keys)}


def runtime_facts(config: pytest.Config | None) -> dict[str, Any]:
    """Python, pytest, harness and the command line of this session (None: a command other than pytest)."""
    params = None if config is None else config.invocation_params
    return {
        "harness": {"version": harness_version(), "git_commit": git_commit()},
        "python": platform.python_version(),
        "pytest": pytest.__version__,
        "command_line": {"argv": [sys.executable, *sys.argv],
                         "pytest_args": [] if params is None else list(params.args),
                         "dir": str(Path.cwd() if params is None else params.dir)},
    }


def run_manifest(run_dir: Path, run_id: str, start: dict[str, Any], runtime: dict[str, Any],
                 hosts: list[dict[str, Any]], workers: list[str], exit_status: int,
                 tests: list[dict[str, str]]) -> dict[str, Any]:
    """A run's manifest, once every test of it has run: `runtime` from runtime_facts, `hosts` from host_facts,
    `tests` the nodeid and bundle directory of each."""
    return {
        "format": FORMAT, "run_id": run_id, "start": start, "end": timestamp(), **runtime,
        "engine": NO_ENGINE if hosts and all(h.get("backend") == "netns" for h in hosts) else engine_facts(),
        "hosts": hosts, "workers": workers, "exit_status": exit_status,
        "tests": sorted(tests, key=lambda test: test["nodeid"]), "totals": totals(run_dir),
    }
