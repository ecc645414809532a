"""The kernel matrix comparison on fixture runs (one per kernel, no Docker): the row that differs and only it,
its explanation from the recorded sysctls (a pinned one not blamed), errno differences failing, a test missing
or skipped on one kernel, and the HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import cli
from harness.compare import ABSENT, Change
from harness.matrix_compare import MatrixComparison, compare_matrix, label_runs, render_html, render_text
from harness.results_reader import load_run

from compare_helpers import Scenario, make_run

KERNELS = ("6.1.0-41-amd64", "6.12.38-1-amd64", "7.2.0-1-amd64")
S01 = "tests/faults/test_s01_no_listener.py::test_s01_connect_is_refused"
S02 = "tests/faults/test_s02_syn_blackhole.py::test_s02_connect_times_out"
TITLES = {"S01": "Connect to a host where nothing listens on the port", "S02": "Connect to a host that never answers"}
BASELINE = {"net.ipv4.tcp_syn_retries": "6", "net.ipv4.tcp_retries2": "15", "net.ipv4.tcp_congestion_control": "cubic"}
PINNED = {"client": {"net.ipv4.tcp_syn_retries": 2}}
LINEAR = "net.ipv4.tcp_syn_linear_timeouts"


def _blackhole(**changes: object) -> Scenario:
    """S02 with tcp_syn_retries pinned to 2: SYNs at 0, 1 and 3 s, ETIMEDOUT after 7 s."""
    return Scenario(**{"errname": "ETIMEDOUT", "elapsed": 7.0, "syns": (0.0, 1.0, 3.0), "sysctls": PINNED,
                       **changes})


def _kernels(tmp_path: Path, *tests: dict[str, Scenario], sysctls: tuple[dict[str, str], ...] = ()) -> list[Path]:
    """One run per kernel of KERNELS with these tests, both hosts with BASELINE and the kernel's extra sysctls."""
    extras = sysctls or ({},) * len(tests)
    return [make_run(tmp_path, f"run-{i}", scenarios,
                     hosts=[{"worker": "main", "host": host, "kernel_release": kernel, "sysctls": {**BASELINE, **extra}}
                            for host in ("client", "server")])
            for i, (kernel, scenarios, extra) in enumerate(zip(KERNELS, tests, extras))]


def _matrix(runs: list[Path]) -> MatrixComparison:
    return compare_matrix([(kernel, load_run(run)) for kernel, run in zip(KERNELS, runs)], TITLES)


def _same(**s02: object) -> dict[str, Scenario]:
    return {S01: Scenario(), S02: _blackhole(**s02)}


def test_identical_runs_all_agree_and_exit_0(tmp_path: Path):
    comparison = _matrix(_kernels(tmp_path, _same(), _same(), _same()))
    assert comparison.differing == [] and comparison.exit_status(strict=True) == 0
    text = render_text(comparison)
    assert "2 tests, 0 differ across 3 kernels: all agree" in text
    assert "*" not in text.split("test")[1] and "FAIL" not in text and "note" not in text
    assert re.search(r"S02 Connect to a host that never answers\n +test_s02_connect_times_out +"
                     r"passed ETIMEDOUT 7\.00s SYN×2 2s +passed", text)


def test_one_kernel_with_another_syn_schedule_and_sysctl_is_the_one_highlighted_cell(tmp_path: Path):
    """Linear SYN timeouts on the newest kernel: its S02 cell alone differs, and the sysctl it alone has is the
    explanation; tcp_syn_retries differs too, but the test pinned it, so it is not blamed."""
    linear = _blackhole(syns=(0.0, 1.0, 2.0), elapsed=3.0)
    runs = _kernels(tmp_path, _same(), _same(), {S01: Scenario(), S02: linear},
                    sysctls=({}, {}, {LINEAR: "4", "net.ipv4.tcp_syn_retries": "5"}))
    comparison = compare_matrix([(kernel, load_run(run)) for kernel, run in zip(KERNELS, runs)])  # titles: catalogue
    [row] = comparison.differing
    assert row.nodeid == S02 and row.reference == KERNELS[0] and row.title == TITLES["S02"]
    assert [[c.aspect for c in cell.changes] for cell in row.cells] == [[], [], ["elapsed", "retransmissions"]]
    assert row.explanations == (
        f"sysctl {LINEAR}: absent on 6.1.0-41-amd64, 4 on 7.2.0-1-amd64",
        "pinned by the test: net.ipv4.tcp_syn_retries: client 2 on each "
        "(baseline: 6 on 6.1.0-41-amd64, 5 on 7.2.0-1-amd64)")
    assert comparison.exit_status() == 0 and comparison.exit_status(strict=True) == 1

    text = render_text(comparison)
    assert "2 tests, 1 differ across 3 kernels, 0 in outcome or errno" in text
    [line] = [line for line in text.splitlines() if line.startswith("note  test_s02")]
    assert line.count("*") == 1 and line.endswith("*passed ETIMEDOUT 3.00s SYN×2 1s")
    assert [line for line in text.splitlines() if "test_s01" in line][0].count("*") == 0
    assert f"note {S02} (reference 6.1.0-41-amd64)" in text
    assert ("    7.2.0-1-amd64: elapsed: client connect ETIMEDOUT in 3.000 s vs client connect ETIMEDOUT in "
            "7.000 s") in text
    assert ("    7.2.0-1-amd64: retransmissions: client syn-retransmission x2 every 1.000 s vs client "
            "syn-retransmission x2 every 2.000 s") in text
    assert f"    sysctl {LINEAR}: absent on 6.1.0-41-amd64, 4 on 7.2.0-1-amd64" in text


def test_an_errno_difference_fails_and_exits_1(tmp_path: Path):
    runs = _kernels(tmp_path, _same(), {S01: Scenario(errname="EHOSTUNREACH"), S02: _blackhole()}, _same())
    comparison = _matrix(runs)
    [row] = comparison.differing
    assert row.nodeid == S01 and row.failing and comparison.exit_status() == 1
    assert row.explanations == ("no recorded baseline sysctl differs between these kernels",)
    text = render_text(comparison)
    assert "2 tests, 1 differ across 3 kernels, 1 in outcome or errno" in text and f"FAIL {S01}" in text
    assert ("6.12.38-1-amd64: errno: client connect EINPROGRESS, client connect EHOSTUNREACH vs "
            "client connect EINPROGRESS, client connect ECONNREFUSED") in text


def test_a_test_missing_on_one_kernel_is_shown_absent_and_fails(tmp_path: Path):
    comparison = _matrix(_kernels(tmp_path, _same(), {S01: Scenario()}, _same()))
    [row] = comparison.differing
    assert row.nodeid == S02 and comparison.exit_status() == 1
    assert [cell.changes for cell in row.cells] == [(), (Change("outcome", "passed", ABSENT),), ()]
    assert row.cells[1].lines == ["absent"]


def test_a_test_skipped_on_one_kernel_is_shown_with_its_reason_and_does_not_fail(tmp_path: Path):
    """sch_netem missing on the host kernel (given first), present in the guests: the first kernel in which the
    test ran is the reference."""
    reason = "Skipped: the kernel lacks sch_netem (modprobe sch_netem failed)"
    runs = _kernels(tmp_path, {S01: Scenario(), S02: Scenario(outcome="skipped", reason=reason)}, _same(), _same())
    comparison = _matrix(runs)
    [row] = comparison.differing
    assert row.reference == KERNELS[1] and row.cells[0].skipped and not row.failing
    assert row.cells[0].changes == (Change("outcome", "passed", f"skipped (setup: {reason})"),)
    assert comparison.exit_status() == 0 and comparison.exit_status(strict=True) == 1
    text = render_text(comparison)
    assert f"6.1.0-41-amd64: outcome: skipped (setup: {reason}) vs passed" in text
    assert re.search(r"note  test_s02\S* +\*skipped +passed ETIMEDOUT", text)


def test_html_highlights_the_differing_cell_links_the_bundles_and_fetches_nothing(tmp_path: Path):
    runs = _kernels(tmp_path, _same(), _same(), {S01: Scenario(), S02: _blackhole(errname="ECONNRESET")},
                    sysctls=({}, {}, {LINEAR: "4"}))
    (runs[2] / "report.html").write_text("<!DOCTYPE html>")
    page = render_html(_matrix(runs), tmp_path)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split("<body>")[1]
    cells = re.findall(r'<td class="cell([^"]*)" data-kernel="([^"]+)">(.*?)</td>', page, re.DOTALL)
    highlighted = [(kernel, body) for classes, kernel, body in cells if "differs" in classes]
    assert [kernel for kernel, _ in highlighted] == ["7.2.0-1-amd64"]
    [(_, body)] = highlighted
    assert "ECONNRESET" in body and "errno: client connect EINPROGRESS, client connect ECONNRESET vs" in body
    assert f'href="run-2/tests/{next((runs[2] / "tests").glob("test_s02*")).name}"' in body
    assert 'href="run-2/report.html"' in body and "run-0/report.html" not in page
    assert f"sysctl {LINEAR}: absent on 6.1.0-41-amd64, 4 on 7.2.0-1-amd64" in page
    assert "2 tests, 1 differ across 3 kernels, 1 in outcome or errno" in page


def test_html_escapes_what_the_runs_hold(tmp_path: Path):
    nodeid = "t.py::test_x[<script>]"
    runs = _kernels(tmp_path, {nodeid: Scenario()}, {nodeid: Scenario(outcome="failed")})
    page = render_html(_matrix(runs))
    assert "<script>" not in page and "test_x[&lt;script&gt;]" in page and ">other tests</th>" in page


def test_runs_are_labelled_by_their_hosts_kernel_and_netfault_compare_takes_three_or_more(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    runs = _kernels(tmp_path, _same(), _same(), {S01: Scenario(errname="EHOSTUNREACH"), S02: _blackhole()})
    assert [label for label, _ in label_runs([load_run(run) for run in runs])] == list(KERNELS)
    assert [label for label, _ in label_runs([load_run(runs[0]), load_run(runs[1])] + [load_run(runs[0])])] == [
        "6.1.0-41-amd64 (run-0) #1", "6.12.38-1-amd64", "6.1.0-41-amd64 (run-0) #3"]
    page = tmp_path / "matrix.html"
    assert cli.main(["compare", *map(str, runs), "--html", str(page)]) == 1
    assert f"FAIL {S01}" in capsys.readouterr().out and 'data-kernel="7.2.0-1-amd64"' in page.read_text()


def test_runs_need_distinct_labels(tmp_path: Path):
    run = load_run(_kernels(tmp_path, _same())[0])
    with pytest.raises(ValueError, match="distinct labels"):
        compare_matrix([("k", run), ("k", run)], TITLES)
