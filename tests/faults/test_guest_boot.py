"""A real QEMU guest: boot a cached kernel and prove that netem works there (harness.guest, harness.matrix).

Needs qemu-system-x86_64 and busybox-static; boots a kernel already in the cache, or fetches 6.1 (the kernel
test_kernel_matrix boots too) on a machine that has none yet. Skipped with what is missing otherwise, failed
instead when CI=true.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from harness import guest
from harness.images import REPO_ROOT
from harness.kernels import Kernel, KernelError, cache_dir, resolve
from harness.matrix import SMOKE_DELAY_MS, SMOKE_JSON, SMOKE_SYN_RETRIES, smoke_command
from harness.pytest_plugin import missing_prerequisite
from harness.runinfo import RunInfo

pytestmark = pytest.mark.faults

# The kernel fetched when none is cached: the one test_kernel_matrix boots too.
FETCH = "6.1"


def missing(reason: str) -> NoReturn:
    missing_prerequisite(reason, "guest prerequisite")


def a_kernel() -> Kernel:
    """A kernel already in the cache, else FETCH downloaded into it."""
    if guest.missing_tools():
        missing("a guest needs " + ", ".join(guest.missing_tools()))
    for release in sorted(p.parent.name for p in cache_dir().glob("*/kernel.json")):
        try:
            return resolve(release)
        except KernelError:
            continue  # e.g. a flavour the matrix refuses
    try:
        return resolve(FETCH, progress=lambda line: print(f"netfault: {line}", file=sys.stderr))
    except KernelError as exc:
        missing(f"no kernel in {cache_dir()}, and fetching {FETCH} failed: {exc}")


def test_guest_runs_netem_on_its_own_kernel(tmp_path: Path) -> None:
    kernel = a_kernel()
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
