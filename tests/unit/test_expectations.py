"""harness.kernel (expectations from sysctls) and harness.expect (assertions that explain themselves)."""

from __future__ import annotations

import pytest

from harness import evidence
from harness.expect import (SOFTIRQ_AND_WAKEUP, expect_errno, expect_held, expect_left, expect_no_packet,
                            expect_schedule, schedule_bounds)
from harness.flows import Times, tcp_flow
from harness.kernel import retries_budget, syn_timeouts, wheel_slack
from harness.records import SyscallRecord
from harness.sockets import StateHistory
from harness.wire import Packet, Wire


@pytest.mark.parametrize(("retries", "linear", "timeouts"), [
    (2, 0, [1, 2, 4]),
    (6, 0, [1, 2, 4, 8, 16, 32, 64]),
    (2, 4, [1, 1, 1, 1, 1, 2]),
    (2, 6, [1, 1, 1, 1, 1, 1, 1]),
    (6, 4, [1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64]),
    (8, 0, [1, 2, 4, 8, 16, 32, 64, 120, 120]),
])
def test_syn_timeouts(retries, linear, timeouts):
    assert syn_timeouts(retries, linear) == timeouts


@pytest.mark.parametrize(("retries", "budget"), [(3, 3.0), (4, 6.2), (8, 102.2), (15, 924.6)])
def test_retries_budget_matches_the_kernels_model(retries, budget):
    assert retries_budget(retries) == pytest.approx(budget)


def test_wheel_slack_is_the_coarsest_bucket_over_common_hz():
    assert wheel_slack(0.2) == pytest.approx(0.01)       # level 0 at HZ=100: one 10 ms jiffy
    assert wheel_slack(1.0) == pytest.approx(0.08)       # level 1 at HZ=100: 8 jiffies
    assert wheel_slack(4.0) == pytest.approx(0.256)      # level 2 at HZ=250: 64 jiffies
    assert wheel_slack(2.0) == pytest.approx(64 / 300)   # level 2 at HZ=300: 64 jiffies
    assert wheel_slack(60.0) == pytest.approx(5.12)      # level 3 at HZ=100: 512 jiffies


def test_schedule_bounds_add_up_the_slack_of_each_timer():
    (low1, high1), (low2, high2) = schedule_bounds([1.0, 2.0], extra=0.0)
    assert low1 == pytest.approx(0.998) and high1 == pytest.approx(1.0 + 0.08 + 0.002)
    assert low2 == pytest.approx(2.998) and high2 == pytest.approx(3.0 + 0.08 + 64 / 300 + 0.002)


def record(errname: str | None, t0: float, t1: float) -> SyscallRecord:
    return SyscallRecord("connect", "s1", 1, None, 110 if errname else None, errname, None, t0, t1, t0, t1)


def syn(t: float) -> Packet:
    return Packet(t, t, "tcp", "10.0.0.10", "10.0.0.20", 40000, 6666, "S", 1, 0, 0, 64240)


def test_expect_errno_passes_and_fails_with_the_timeline():
    rec = record("ETIMEDOUT", 10.0, 17.0)
    expect_errno(rec, "ETIMEDOUT", between=(6.9, 7.1))
    with evidence.collecting():
        evidence.note_records("client", rec)
        evidence.note_wire(Wire("client", [syn(10.0), syn(11.0)]))
        with pytest.raises(AssertionError) as failed:
            expect_errno(rec, "ECONNREFUSED", between=(0, 0.5))
    message = str(failed.value)
    assert "errno ETIMEDOUT, expected ECONNREFUSED" in message and "elapsed 7.0000 s" in message
    assert "timeline:" in message and "Flags [S]" in message and "connect s1 ... (blocks)" in message


def test_expect_schedule_names_the_late_retransmission():
    flow = tcp_flow([syn(0.0), syn(1.0), syn(3.5)])
    expect_schedule(Times((0.0, 1.0, 3.0)), [1.0, 2.0], "SYN", extra=0.0)
    with pytest.raises(AssertionError, match=r"retransmission 2 of the SYN at \+3.5000 s, expected \+2.9980"):
        expect_schedule(flow.syn_schedule(), [1.0, 2.0], "SYN", flow=flow, extra=0.0)
    with pytest.raises(AssertionError, match="1 retransmissions of the SYN, expected 2"):
        expect_schedule(Times((0.0, 1.0)), [1.0, 2.0], "SYN")


def test_expect_no_packet_after_a_cut_off():
    flow = tcp_flow([syn(0.0), syn(1.0), syn(3.0)])
    expect_no_packet(flow, after=3.5)
    with pytest.raises(AssertionError, match=r"1 syn-retransmission segment\(s\) after the cut-off"):
        expect_no_packet(flow, after=2.0, kinds=["syn-retransmission"])


def _fin_wait1_for_2s() -> StateHistory:
    """A socket sampled every 10 ms: in FIN_WAIT1 at t=1.0 (not at 0.99), gone at t=3.0 (there at 2.99)."""
    history = StateHistory("client")
    entry = {"proto": "tcp", "family": "inet", "src": "10.0.0.10", "sport": 40000, "dst": "10.0.0.20", "dport": 6666, "cookie": 1,
             "recv_q": 0, "send_q": 0, "timer": None, "tcp_info": None, "handle": "s1", "t_real": 0.0}
    history.load({"entries": [{**entry, "t": 1.0, "t_end": 1.0, "prev_t": 0.99, "change": "new", "state": "FIN_WAIT1"},
                              {**entry, "t": 3.0, "t_end": 3.0, "prev_t": 2.99, "change": "gone", "state": "GONE"}],
                  "t_first": 0.99, "t_last": 3.5, "samples": 100, "missed": 0, "period_ms": 10.0, "error": None,
                  "interval_ms": {"p50": 10.0, "max": 10.0}})
    return history


def test_expect_held_bounds():
    history = _fin_wait1_for_2s()
    assert expect_held(history, "FIN_WAIT1", at_least=1.9, at_most=2.1) == pytest.approx(2.0)
    with pytest.raises(AssertionError, match=r"FIN_WAIT1 held 2.0000 s \(between 1.9900 and 2.0100 s\), expected "
                                             r"at most 1.0000 s"):
        expect_held(history, "FIN_WAIT1", at_most=1.0)
    # The samples allow 1.99 to 2.01 s: within a bound 5 ms off the measured 2.0 s, beyond one 15 ms off.
    assert expect_held(history, "FIN_WAIT1", at_least=2.005, at_most=1.995) == pytest.approx(2.0)
    with pytest.raises(AssertionError, match="expected at least 2.0150 s"):
        expect_held(history, "FIN_WAIT1", at_least=2.015)
    with pytest.raises(AssertionError, match="no socket was seen in TIME_WAIT"):
        expect_held(history, "TIME_WAIT")


def test_expect_left_takes_the_samples_around_the_change_and_the_wakeup():
    history = _fin_wait1_for_2s()
    expect_left(history, "FIN_WAIT1", when=record("ETIMEDOUT", 0.5, 2.995))
    expect_left(history, "FIN_WAIT1", when=record("ETIMEDOUT", 0.5, 3.0 + SOFTIRQ_AND_WAKEUP))
    with pytest.raises(AssertionError, match=r"FIN_WAIT1 ended between 2.9900 and 3.0000, but connect s1 .* "
                                             r"returned at 2.9000"):
        expect_left(history, "FIN_WAIT1", when=record("ETIMEDOUT", 0.5, 2.9))
    with pytest.raises(AssertionError, match=r"ended between 2.9900 and 3.0000, but .* returned at 3\.\d{4}"):
        expect_left(history, "FIN_WAIT1", when=record("ETIMEDOUT", 0.5, 3.01 + SOFTIRQ_AND_WAKEUP + 0.05))
    with pytest.raises(AssertionError, match="no socket was seen in TIME_WAIT"):
        expect_left(history, "TIME_WAIT", when=record(None, 0.5, 3.0))
