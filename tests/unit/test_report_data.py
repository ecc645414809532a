"""The HTML report's figures, from constructed bundles: the key syscall's errno and elapsed time, the
retransmissions (each counted once though both hosts captured it), the failure message, the picture's marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.report_data import bundle_report
from harness.report_svg import picture, seconds_label, tick_step
from harness.results_reader import load_run
from harness.timeline import Timeline, key_syscall, syscall_events

from report_helpers import FAILED, FAILURE, PASSED, PROBE_ERROR, syscall, write_run


@pytest.fixture
def reports(tmp_path: Path):
    run = load_run(write_run(tmp_path))
    return {nodeid: bundle_report(bundle) for nodeid, bundle in run.bundles.items()}


def test_summary_figures_come_from_the_bundles(reports):
    blackhole, refused = reports[PASSED], reports[FAILED]
    assert (blackhole.scenario, blackhole.outcome, blackhole.errname, blackhole.message) == (
        "S02", "passed", "ETIMEDOUT", None)
    assert blackhole.elapsed == pytest.approx(7.0)
    assert blackhole.retransmissions == 2 and len(blackhole.retransmitted) == 4
    assert (refused.scenario, refused.errname, refused.retransmissions) == ("S01", "ECONNREFUSED", 0)
    assert refused.elapsed == pytest.approx(0.0002) and refused.message == f"call: {FAILURE}"


def test_the_evidence_files_are_listed_with_paths_from_the_run(tmp_path: Path):
    run = load_run(write_run(tmp_path))
    refused = bundle_report(run.bundles[FAILED])
    assert [label for label, _ in refused.files] == ["client-1.pcap", "server-1.pcap", "probe on client: stderr"]
    assert (run.path / refused.files[-1][1]).read_bytes() == PROBE_ERROR
    assert all((run.path / href).is_file() for _, href in refused.files)


def test_the_key_syscall_is_the_first_real_failure_else_the_slowest_call():
    events = [*syscall_events("client", syscall("connect", 1.0, 1.0001, "EINPROGRESS")),
              *syscall_events("client", syscall("recv", 1.5, 1.9, "EAGAIN")),
              *syscall_events("client", syscall("send", 2.0, 2.5, "ECONNRESET")),
              *syscall_events("client", syscall("send", 3.0, 3.0001, "EPIPE")),
              *syscall_events("client", syscall("connect", 4.0, 4.0001, "EINPROGRESS"))]
    key = key_syscall(Timeline(events).events)
    assert key is not None and (key.data["op"], key.data["errname"], key.t) == ("send", "ECONNRESET", 2.5)
    waits = [*syscall_events("client", syscall("recv", 1.0, 4.0, "EAGAIN")),
             *syscall_events("client", syscall("send", 5.0, 5.0001))]
    slowest = key_syscall(Timeline(waits).events)
    assert slowest is not None and (slowest.data["op"], slowest.data["errname"]) == ("recv", "EAGAIN")
    assert key_syscall(Timeline([]).events) is None


def test_the_picture_has_a_lane_per_host_and_marks_for_each_event(reports):
    pic = picture(reports[PASSED])
    assert pic is not None
    assert [s.text for s in pic.lanes if s.kind == "text"] == ["client", "server"]
    classes = [s.cls for s in pic.marks]
    assert classes.count("packet") == 2 and classes.count("packet retransmission") == 4
    assert classes.count("syscall error") == 1 and classes.count("syscall-blocked") == 1
    assert classes.count("state") == 2
    faults = pic.faults
    server_lane = next(s for s in pic.lanes if s.title == "server")
    assert len(faults) == 1 and faults[0].y == server_lane.y and faults[0].w > 0


def test_axis_steps_and_labels_are_round():
    assert tick_step(7.6) == 1 and tick_step(0.8) == pytest.approx(0.1) and tick_step(7.7e-5) == pytest.approx(1e-5)
    assert seconds_label(3.0, 1.0) == "+3 s" and seconds_label(0.2, 0.1) == "+200 ms"
    assert seconds_label(3e-5, 1e-5) == "+30 µs"


def test_netfault_report_writes_the_file_and_names_a_bad_run(tmp_path: Path, capsys):
    run_dir = write_run(tmp_path)
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    html = (run_dir / "report.html").read_text()
    assert FAILURE.split(":")[0] in html and "<script" not in html and "<link" not in html
    (run_dir / "manifest.json").unlink()
    assert main(["report", str(run_dir)]) == 1
    assert "half-written run" in capsys.readouterr().err
