"""Programs' pure parts: exit statuses, results, and the evidence a program leaves on the timeline."""

from __future__ import annotations

import pytest

from harness import evidence
from harness.programs import OUTPUT_LIMIT, Program, ProgramResult, _from_status
from harness.timeline import Timeline


@pytest.mark.parametrize("status, expected", [
    (0, (0, None)), (1, (1, None)), (137, (-9, "SIGKILL")), (143, (-15, "SIGTERM")), (128, (128, None)),
    (255, (255, None)), (None, (None, None)),
])
def test_docker_statuses_above_128_are_deaths_by_signal(status, expected):
    assert _from_status(status) == expected


def _result(**fields) -> ProgramResult:
    values = dict(host="h", name="p", argv=("prog", "a b"), returncode=0, signal=None, stdout=b"", stderr=b"",
                  stdout_size=0, stderr_size=0, t0=1.0, t1=2.0)
    return ProgramResult(**{**values, **fields})


def test_a_result_says_how_it_ended_and_which_streams_were_cut():
    assert str(_result()) == "program p on h (prog 'a b'): exited with status 0"
    killed = _result(returncode=-9, signal="SIGKILL", stdout=b"x" * 10, stdout_size=OUTPUT_LIMIT + 10)
    assert killed.truncated == ["stdout"]
    assert str(killed) == f"program p on h (prog 'a b'): killed by SIGKILL; stdout: last {OUTPUT_LIMIT} of " \
                          f"{OUTPUT_LIMIT + 10} bytes"
    assert _result(returncode=None, t1=None).running and _result(returncode=None).status() == "running"


class _Done(Program):
    """A program that ended at once (for the evidence it leaves)."""

    def __init__(self) -> None:
        super().__init__("h", "p", ["prog"])
        self._noted_start(1.0, 42)
        self._ended(_result(argv=("prog",), returncode=3, t0=1.0, t1=1.5))

    def wait(self, timeout=None): return self._final
    def kill(self, signal="SIGKILL"): pass
    def running(self): return False
    def output_so_far(self): return self._final


def test_launch_and_exit_are_on_the_timeline_once():
    with evidence.collecting() as collected:
        program = _Done()
        program._ended(_result(returncode=4))  # a later end does not replace the first
    assert program.wait().returncode == 3
    rows = [(e.t, e.host, e.source, e.text) for e in Timeline.of(collected).events]
    assert rows == [(1.0, "h", "program", "launch p: prog (pid 42)"),
                    (1.5, "h", "program", "exit   p: exited with status 3")]
