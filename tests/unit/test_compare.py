"""`netfault compare` on fixture runs written with the results writer (no Docker): no change between equal runs,
exactly the change made, tolerances on times, tests in one run only, and bad input exiting 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.compare import ABSENT, Change, changed, compare, render_html, render_text
from harness.results import write_json
from harness.results_reader import load_run

from compare_helpers import Scenario, make_run
from test_results_reader import MANIFEST

REFUSED = "t.py::test_refused"
TIMEOUT = "t.py::test_timeout[syn]"


def _pair(tmp_path: Path, b_refused: Scenario) -> tuple[Path, Path]:
    a = make_run(tmp_path, "a", {REFUSED: Scenario(), TIMEOUT: Scenario(errname="ETIMEDOUT", elapsed=7.0)})
    b = make_run(tmp_path, "b", {REFUSED: b_refused, TIMEOUT: Scenario(errname="ETIMEDOUT", elapsed=7.0)})
    return a, b


def _changes(a: Path, b: Path) -> dict[str, tuple[Change, ...]]:
    return {test.nodeid: test.changes for test in compare(load_run(a), load_run(b)).changed}


def test_two_runs_of_the_same_content_report_no_change_and_exit_0(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]):
    a, b = _pair(tmp_path, Scenario())
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "no change in 2 tests" in out and "FAIL" not in out
    assert "engine kernel   6.1.0" in out and "commit" in out


def test_a_different_errno_is_exactly_that_change_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = _pair(tmp_path, Scenario(errname="EHOSTUNREACH"))
    assert _changes(a, b) == {REFUSED: (Change("errno", "client connect EINPROGRESS, client connect ECONNREFUSED",
                                                       "client connect EINPROGRESS, client connect EHOSTUNREACH"),)}
    assert cli.main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {REFUSED}" in out and TIMEOUT not in out and "1 of 2 tests changed, 1 in outcome or errno" in out


def test_an_outcome_change_exits_1(tmp_path: Path):
    a, b = _pair(tmp_path, Scenario(outcome="failed"))
    assert _changes(a, b) == {REFUSED: (Change("outcome", "passed", "failed"),)}
    assert cli.main(["compare", str(a), str(b)]) == 1


@pytest.mark.parametrize("a, b, is_change", [
    (1.0, 1.08, False),    # 8 %: within 10 %
    (1.0, 0.93, False),
    (0.010, 0.055, False),  # 450 %, but 45 ms
    (1.0, 1.2, True),
    (1.0, 0.8, True),
    (0.010, 0.100, True),
])
def test_times_within_10_percent_or_50_ms_are_not_changes(a: float, b: float, is_change: bool):
    assert changed(a, b) is is_change


def test_elapsed_within_tolerance_is_no_change_outside_it_is_and_fails_only_when_strict(tmp_path: Path):
    a, b = _pair(tmp_path, Scenario(elapsed=1.09))
    assert _changes(a, b) == {}
    a2, b2 = _pair(tmp_path / "2", Scenario(elapsed=1.5))
    assert _changes(a2, b2) == {REFUSED: (Change("elapsed", "client connect ECONNREFUSED in 1.000 s",
                                                 "client connect ECONNREFUSED in 1.500 s"),)}
    assert cli.main(["compare", str(a2), str(b2)]) == 0
    assert cli.main(["compare", "--strict", str(a2), str(b2)]) == 1


def test_the_retransmission_schedule_is_compared_by_count_and_intervals(tmp_path: Path):
    a, b = _pair(tmp_path, Scenario(syns=(0.0, 1.0, 3.05, 7.0)))
    assert _changes(a, b) == {}
    for i, syns in enumerate([(0.0, 1.0, 3.0, 9.0), (0.0, 1.0, 3.0)]):
        a, b = _pair(tmp_path / str(i), Scenario(syns=syns))
        [change] = _changes(a, b)[REFUSED]
        assert change.aspect == "retransmissions" and change.a == "client syn-retransmission x3 every 2.000 4.000 s"


def test_states_reached_are_compared(tmp_path: Path):
    a, b = _pair(tmp_path, Scenario(states=("SYN_SENT", "ESTABLISHED")))
    assert _changes(a, b) == {REFUSED: (Change("states", "client SYN_SENT", "client ESTABLISHED SYN_SENT"),)}


def test_a_test_in_one_run_only_is_reported_as_an_outcome_change(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]):
    a = make_run(tmp_path, "a", {REFUSED: Scenario(), TIMEOUT: Scenario()})
    b = make_run(tmp_path, "b", {REFUSED: Scenario()})
    assert _changes(a, b) == {TIMEOUT: (Change("outcome", "passed", ABSENT),)}
    assert _changes(b, a) == {TIMEOUT: (Change("outcome", ABSENT, "passed"),)}
    assert cli.main(["compare", str(a), str(b)]) == 1
    assert f"FAIL {TIMEOUT}" in capsys.readouterr().out


def test_the_header_marks_different_kernels_and_versions(tmp_path: Path):
    a = make_run(tmp_path, "a", {REFUSED: Scenario()})
    engine = {**MANIFEST["engine"], "kernel_version": "6.18.0"}
    b = make_run(tmp_path, "b", {REFUSED: Scenario()}, engine=engine,
                 harness={"version": "0.2.0", "git_commit": "a" * 40})
    text = render_text(compare(load_run(a), load_run(b)))
    assert "engine kernel * 6.1.0" in text and "6.18.0" in text
    assert "harness       * 0.1.0" in text and "commit        * unknown" in text and "a" * 40 in text
    assert "run id        * a" in text


def test_html_holds_the_same_comparison_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = _pair(tmp_path, Scenario(errname="EHOSTUNREACH"))
    page = tmp_path / "compare.html"
    assert cli.main(["compare", str(a), str(b), "--html", str(page)]) == 1
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "http" not in text.split("<body>")[1]
    assert "t.py::test_refused" in text and "client connect EHOSTUNREACH" in text and "1 of 2 tests changed" in text
    assert "<td>6.1.0</td>" in text


def test_html_escapes_what_the_runs_hold(tmp_path: Path):
    nodeid = "t.py::test_x[<script>]"
    a = make_run(tmp_path, "a", {nodeid: Scenario()})
    b = make_run(tmp_path, "b", {nodeid: Scenario(outcome="failed")})
    page = render_html(compare(load_run(a), load_run(b)))
    assert "<script>" not in page and "t.py::test_x[&lt;script&gt;]" in page


def _expect_bad_input(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compare", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("netfault compare: error: ") and message in err and "Traceback" not in err


def test_a_missing_run_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a = make_run(tmp_path, "a", {REFUSED: Scenario()})
    _expect_bad_input([str(a), str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such run directory", capsys)


def test_a_half_written_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = _pair(tmp_path, Scenario())
    (b / "manifest.json").unlink()
    _expect_bad_input([str(a), str(b)], "half-written run: it has no manifest.json", capsys)


def test_an_incompatible_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = _pair(tmp_path, Scenario())
    manifest = json.loads((b / "manifest.json").read_text())
    write_json(b / "manifest.json", {**manifest, "format": 2})
    _expect_bad_input([str(a), str(b)], "results format 2, but this netfault", capsys)


def test_a_damaged_timeline_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = _pair(tmp_path, Scenario())
    timeline = next((b / "tests").iterdir()) / "timeline.json"
    timeline.write_text(timeline.read_text()[:50])
    _expect_bad_input([str(a), str(b)], f"{timeline}: not valid JSON", capsys)
    timeline.unlink()
    _expect_bad_input([str(a), str(b)], f"{timeline}: missing", capsys)


def test_a_state_seen_in_one_sample_only_is_within_tolerance(tmp_path: Path):
    """10 ms sampling: a FIN_WAIT1 that lasted under one interval is caught in one run and missed in the next."""
    caught = Scenario(states=("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"), state_spacing=0.01)
    missed = Scenario(states=("ESTABLISHED", "FIN_WAIT2", "TIME_WAIT"), state_spacing=0.01)
    a = make_run(tmp_path, "a", {REFUSED: caught})
    b = make_run(tmp_path, "b", {REFUSED: missed})
    assert _changes(a, b) == {}
    held = make_run(tmp_path, "c", {REFUSED: Scenario(states=("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"))})
    assert [c.aspect for c in _changes(held, b)[REFUSED]] == ["states"], "a state held for seconds is compared"
