"""The kernel matrix as CI runs it: `netfault matrix` with one kernel from before tcp_syn_linear_timeouts (6.1)
and one from after (the newest 7.x), each booted in a QEMU guest that runs S02 (the SYN schedule), S19 and S20
(loss, duplication, reordering, corruption: real sch_netem in the guests, which this host's kernel may lack) on
the netns backend. The rest of
the catalogue and the other default kernels run on demand (`netfault matrix`).

What differs between the kernels is measured in the guests, never written down here: the test asserts that
the comparison finds the S02 row different in its SYN retransmissions and explains it with the sysctl one
kernel has and the other lacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import guest
from harness.matrix_compare import compare_matrix, render_text
from harness.pytest_plugin import missing_prerequisite
from harness.results_reader import load_run

pytestmark = pytest.mark.faults

KERNELS = ("6.1", "7")
SELECT = "s02 or s19 or s20"
# Per guest: a boot of 10-20 s and the selected scenarios, a few minutes under software emulation.
GUEST_TIMEOUT = 1200
LINEAR = "net.ipv4.tcp_syn_linear_timeouts"


def test_matrix_of_two_kernels_shows_the_syn_schedule_difference_and_runs_netem_for_real(tmp_path: Path):
    if guest.missing_tools():
        missing_prerequisite("the kernel matrix needs " + ", ".join(guest.missing_tools()), "guest prerequisite")
    argv = [sys.executable, "-m", "harness.cli", "matrix", *(a for k in KERNELS for a in ("--kernel", k)),
            "--results", str(tmp_path), "--timeout", str(GUEST_TIMEOUT), "--", "-k", SELECT]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=2 * GUEST_TIMEOUT + 600)
    output = f"{done.stdout[-10000:]}\n{done.stderr[-6000:]}"
    assert done.returncode == 0, output
    (matrix_dir,) = tmp_path.glob("matrix-*")
    entries = json.loads((matrix_dir / "matrix.json").read_text())["kernels"]
    runs = [(entry["release"], load_run(Path(entry["results"]) / "latest")) for entry in entries]
    comparison = compare_matrix(runs)
    text = render_text(comparison)
    print(text)

    syn_rows = [row for row in comparison.rows if row.scenario == "S02"]
    assert syn_rows and all(row.differs for row in syn_rows), "S02's SYN schedule should differ:\n" + text
    for row in syn_rows:
        changed = [change for cell in row.cells for change in cell.changes]
        assert any(change.aspect == "retransmissions" and "syn-retransmission" in change.a + change.b
                   for change in changed), text
        assert any(LINEAR in line for line in row.explanations), text
    present = {label: LINEAR in run.manifest["hosts"][0]["sysctls"] for label, run in runs}
    assert sorted(present.values()) == [False, True], f"one kernel before {LINEAR}, one after: {present}"

    for label, run in runs:
        netem = {nodeid: [f for f in bundle.outcome["faults"] if f["fault"] == "Netem"]
                 for nodeid, bundle in run.bundles.items()}
        netem = {nodeid: faults for nodeid, faults in netem.items() if faults}
        assert len([n for n in netem if "test_s20_" in n]) == 4 and len(netem) >= 6, f"{label}: {sorted(netem)}"
        for nodeid, faults in netem.items():
            assert run.bundles[nodeid].outcome["outcome"] == "passed", f"{label} {nodeid}"
            assert {f["mechanism"] for f in faults} == {"netem"}, f"{label} {nodeid}: sch_netem, not a fallback"
