"""Scenario files against real hosts: the S02 file and the S02 Python test produce the same evidence, and
`netfault run` on a file whose expectation does not hold exits 1 naming it, with the timeline and the results
(programs' output included)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.compare import diff, facts
from harness.results_reader import load_run

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
S02_FILE = "examples/s02_syn_blackhole.netfault.yaml"
S02_TEST = "tests/faults/test_s02_syn_blackhole.py"
# Hosts of an inner session come up in seconds; a busy 2-core machine can take far longer.
SESSION = 600

REFUSED = """\
version: 1
duration: 5
hosts:
  client:
  server:
capture:
  - {host: client, filter: tcp port 6666}
workload:
  c:
    host: client
    probe:
      - connect: {to: server, port: 6666}
  say:
    host: server
    run: [sh, -c, 'echo ready; echo warned >&2; exit 3']
expect:
  probes:
    c.connect: {errno: ETIMEDOUT}
"""


def test_the_s02_file_and_the_s02_test_produce_the_same_evidence(pair, tmp_path: Path, inner_env: dict[str, str]):
    """Both run in one inner session; `netfault compare`'s facts of their bundles agree within its tolerance: the
    errno of each failed syscall, the key syscall's elapsed time, the SYN retransmission schedule, the states."""
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--netfault-results={results}",
                          S02_TEST, S02_FILE], cwd=REPO, env=inner_env, capture_output=True, text=True,
                         timeout=SESSION)
    assert "2 passed" in run.stdout, run.stdout + run.stderr
    bundles = load_run(results / "latest").bundles
    (python,) = (bundle for nodeid, bundle in bundles.items() if nodeid.startswith(S02_TEST))
    (file,) = (bundle for nodeid, bundle in bundles.items() if nodeid.startswith(S02_FILE))
    a, b = facts(python), facts(file)
    assert a.errnos == b.errnos == ("client connect ETIMEDOUT",), (a, b)
    syns = len(a.repeats["client syn-retransmission"])
    assert syns == len(b.repeats["client syn-retransmission"]) >= 2, (a, b)  # 2, or 5 with linear timeouts
    assert a.states == b.states and "SYN_SENT" in a.states["client"] and "server" not in a.states, (a, b)
    changes = diff(a, b)
    assert changes == (), "\n".join(f"{c.aspect}: test {c.a}, file {c.b}" for c in changes)


def test_run_reports_a_failed_expectation_with_the_timeline_and_writes_results(pair, tmp_path: Path,
                                                                               inner_env: dict[str, str]):
    path = tmp_path / "refused.netfault.yaml"
    path.write_text(REFUSED)
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), f"--results={results}"],
                         cwd=tmp_path, env=inner_env, capture_output=True, text=True, timeout=SESSION)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (f"scenario refused: 1 of 1 expectations failed\n  {path}:18: expect.probes['c.connect'].errno: connect s1 "
            "-> -1 ECONNREFUSED (Connection refused)") in run.stdout, run.stdout
    assert "errno ECONNREFUSED, expected ETIMEDOUT\ntimeline (t in s after the start):\n" in run.stdout, run.stdout
    assert "\n  probe   c.connect: started" in run.stdout and re.search(
        r"\n  program say on server: started \+[0-9.]+, exited with status 3 at .*\n    stdout: ready\n"
        r"    stderr: warned\n", run.stdout), run.stdout
    assert "hosts up in" in run.stderr and "probe c.connect on client: connect s1 -> -1 ECONNREFUSED" in run.stderr
    loaded = load_run(results / "latest")
    (bundle,) = loaded.bundles.values()
    assert bundle.outcome["outcome"] == "failed" and bundle.outcome["nodeid"].endswith("refused.netfault.yaml::refused")
    assert "expected ETIMEDOUT" in bundle.outcome["longrepr"]["summary"]
    assert bundle.outcome["pcaps"][0]["packets"] == 2, bundle.outcome["pcaps"]   # SYN, RST/ACK
    (say,) = bundle.outcome["programs"]
    assert (say["name"], say["returncode"], say["stdout"], say["stderr"]) == (
        "say", 3, "program-server-say-1.stdout", "program-server-say-1.stderr"), say
    assert (bundle.path / say["stdout"]).read_text() == "ready\n" and (bundle.path / say["stderr"]).read_text() == \
        "warned\n", "the program's output is in the bundle"
    assert loaded.manifest["exit_status"] == 1 and (loaded.path / "report.html").is_file()
