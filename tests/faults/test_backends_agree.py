"""The catalogue passes on both backends, and they agree: `netfault catalogue` runs once with Docker containers
and once with network namespaces of this machine, and `netfault compare` finds no outcome or errno that differs.

Timings, retransmission counts and socket states may differ within noise (both share this kernel); those are
printed, not asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.compare import compare, render_text
from harness.results_reader import load_run

pytestmark = [pytest.mark.faults, pytest.mark.backend("docker", "it starts its own sessions on both backends; "
                                                      "one such test per CI run is enough")]

# Two catalogue runs of about 70 s each (2 workers); a loaded 2-core machine takes far longer.
CATALOGUE_TIMEOUT = 900


def _catalogue(backend: str, results: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "catalogue", "--backend", backend, "--workers", "2",
                           "--results", str(results)], env=env, capture_output=True, text=True,
                          timeout=CATALOGUE_TIMEOUT)


def test_docker_and_netns_backends_pass_the_catalogue_with_the_same_outcomes_and_errnos(
        tmp_path: Path, inner_env: dict[str, str]):
    runs = {}
    for backend in ("docker", "netns"):
        done = _catalogue(backend, tmp_path / backend, inner_env)
        assert done.returncode == 0, f"the catalogue failed on the {backend} backend:\n{done.stdout[-8000:]}" \
                                     f"\n{done.stderr[-3000:]}"
        runs[backend] = load_run(tmp_path / backend / "latest")
    comparison = compare(runs["docker"], runs["netns"])
    text = render_text(comparison)
    print(text)
    assert len(runs["docker"].bundles) == len(runs["netns"].bundles) >= 50, text
    assert comparison.exit_status(strict=False) == 0, "the backends disagree on an outcome or errno:\n" + text
