"""A real QEMU guest: boot a cached kernel and prove that netem works there (harness.guest, harness.matrix).

Needs qemu-system-x86_64, busybox-static and a kernel already in the cache (``netfault matrix --smoke``
fetches the default ones); skipped with what is missing otherwise, failed instead when CI=true.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import pytest

from harness import guest
from harness.images import REPO_ROOT
from harness.kernels import DEFAULT_KERNELS, Kernel, KernelError, cache_dir, resolve
from harness.matrix import SMOKE_DELAY_MS, SMOKE_JSON, SMOKE_SYN_RETRIES, smoke_command
from harness.pytest_plugin import missing_prerequisite
from harness.runinfo import RunInfo

pytestmark = pytest.mark.faults


def missing(reason: str) -> NoReturn:
    missing_prerequisite(reason, "guest prerequisite")


def cached_kernel() -> Kernel:
    """The first default kernel already in the cache (no download in a test)."""
    if guest.missing_tools():
        missing("a guest needs " + ", ".join(guest.missing_tools()))
    for release in sorted(p.parent.name for p in cache_dir().glob("*/kernel.json")):
        try:
            return resolve(release)
        except KernelError:
            continue  # e.g. a flavour the matrix refuses
    missing(f"no kernel in {cache_dir()}: fetch one with `netfault matrix --smoke --kernel "
            f"{DEFAULT_KERNELS[0]}`")


def test_guest_runs_netem_on_its_own_kernel(tmp_path: Path) -> None:
    kernel = cached_kernel()
    run = RunInfo.current()
    results = tmp_path / kernel.release
    argv, env = smoke_command(kernel, results)
    log = tmp_path / "serial.log"
    result = guest.run_guest(kernel, argv, share=tmp_path, share_mount=str(tmp_path), cwd=str(REPO_ROOT), env=env,
                             timeout=300, log_path=log, memory_mb=512, run=run)
    smoke = json.loads((results / SMOKE_JSON).read_text())
    assert result.returncode == 0, guest.log_tail(log)
    assert smoke["release"] == kernel.release and smoke["connect"] == "ECONNREFUSED"
    assert "netem" in smoke["qdisc"] and smoke["connect_ms"] >= SMOKE_DELAY_MS
    assert smoke["lost_syns_connect"] == "ETIMEDOUT" and smoke["lost_syns_retransmissions"] >= SMOKE_SYN_RETRIES
    assert 0 < result.first_output_s < result.command_start_s < result.wall_s and result.peak_rss_kb > 0
    assert [g for g in guest.list_guests() if g.run_id == run.run_id] == []
