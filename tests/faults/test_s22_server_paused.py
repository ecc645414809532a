"""S22: the server process (SIGSTOP) or its whole container (docker pause) is frozen while the client sends."""

import pytest
import tenacity

from faults import Pause, Signal
from harness.capture import capture
from harness.expect import expect_schedule
from harness.flows import Kind, Times, tcp_flow
from harness.kernel import TCP_RTO_MIN
from harness.sockets import sample, wait_acked

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S22",
    "title": "Server paused while the client sends",
    "fault": "SIGSTOP of the server process, or docker pause of the server's container (cgroup freezer), while "
             "the client writes; then SIGCONT / unpause.",
    "linux": "The server's kernel is not paused: it ACKs and buffers until the receive buffer is full, then "
             "advertises a zero window and answers the client's zero-window probes, sent with a doubling "
             "interval. Answered probes never count towards tcp_retries2: the connection does not time out.",
    "expect": "No error anywhere: non-blocking sends fill both buffers then return EAGAIN, a blocking send blocks "
              "(for as long as the pause lasts); the client stays ESTABLISHED on the persist timer. On resume the "
              "server reads every byte, in order, and the blocked send completes.",
    "lesson": "A frozen peer is not a dead one to TCP: a writer blocks (or gets EAGAIN) indefinitely. Bound writes "
              "with application deadlines (poll + timeout, SO_SNDTIMEO) and detect stuck peers with heartbeats "
              "answered by the application, not the kernel.",
}

PORT = 6666
INVALID_RATELIMIT = "net.ipv4.tcp_invalid_ratelimit"
# Fixed buffers (no autotuning): the kernel doubles them, so 128 KB at each end.
RCVBUF = SNDBUF = 65536
CHUNK = 16384
BLOCKED = 256 * 1024
PROBES = 4
PATTERN = bytes(range(256))
WAIT = 10


def _pattern(size: int) -> bytes:
    """What the agent sends for `size` (a repeating 0..255 pattern)."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def _accepted(proc, listener: str) -> str:
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT), wait=tenacity.wait_fixed(0.02),
                                     reraise=True):
        with attempt:
            accepted = proc.accepted(handle=listener)
            assert accepted, "the server process has not accepted yet"
    return accepted[0].handle


def _backed_off(client, probes: int) -> dict:
    """Wait until the client's persist timer has backed off `probes` times (each probe answered); its entry."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT), wait=tenacity.wait_fixed(0.05),
                                     reraise=True):
        with attempt:
            (entry,) = [e for e in client.sockets(dport=PORT) if e["state"] == "ESTABLISHED"]
            assert entry["tcp_info"]["backoff"] >= probes, f"waiting for {probes} zero-window probes: {entry}"
    return entry


@pytest.mark.sysctls(server={INVALID_RATELIMIT: 0})
@pytest.mark.parametrize("how", ["process", "container"])
def test_s22_paused_server_still_acks_and_buffers_and_drains_on_resume(pair, how, record_property):
    """S22, seed experiments "滑动窗口 (TCP流量控制)" (the sliding window: a receiver that does not read makes the
    sender stop at a zero window) and "server进程崩溃" (the server process stops serving), with the process
    stopped (SIGSTOP) or its container frozen (docker pause).

    The server's process is frozen, its kernel is not: it ACKs and buffers the client's data until its receive
    buffer is full, then advertises a zero window. The client's non-blocking sends fill both buffers and then
    return EAGAIN, a blocking send blocks; nothing fails. The client probes the zero window on the persist
    timer, from the RTO and doubling, and the server's kernel answers every probe, so the probe counter never
    adds up and tcp_retries2 never ends the connection (the server's tcp_invalid_ratelimit is 0 so that no answer
    is rate-limited). On resume the server reads every byte in order and the blocked send completes. The seed
    expected send() to fail with ENOBUFS once the kernel's buffer is full: it does not, a full send buffer is
    EAGAIN on a non-blocking socket and a wait on a blocking one.
    """
    client, server = pair.client, pair.server
    proc = server.spawn_worker("server-process")
    listener = proc.listen(port=PORT, accept=True, options={"rcvbuf": RCVBUF})
    conn = client.connect(addr=server.addr, port=PORT, options={"sndbuf": SNDBUF})
    assert listener.ok and conn.ok, (listener, conn)
    server_handle = _accepted(proc, listener.handle)
    fault = Signal(proc, "SIGSTOP") if how == "process" else Pause(server)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=10, fields=True) as states:
        with fault:
            fill = client.send(conn.handle, size=CHUNK, count=None, nonblocking=True)
            blocked = client.send(conn.handle, size=BLOCKED, background=True)
            held = _backed_off(client, PROBES)
            still_blocked = not blocked.done()
        received = bytearray()
        while len(received) < fill.total + BLOCKED:
            rec = proc.recv(server_handle, size=1 << 20, timeout=WAIT)
            assert rec.ret, f"the server's read after the resume: {rec}"
            received += rec.data
        sent = blocked.result()
        wait_acked(client, port=PORT)
    flow = tcp_flow(wire, port=PORT)
    evidence = f"\n{fill}\n{sent}\n{states.table()}"
    # During the pause. The drain after the resume may close the window again for a moment (a reader slower
    # than the sender: seen in the 6.12 and 7.3 guests): those zero windows are not the pause's.
    paused = fault.healed_at
    zero_window = [s for s in flow.of(Kind.ZERO_WINDOW, from_client=False) if s.t < paused]
    probes = [s for s in flow.of(Kind.ZERO_WINDOW_PROBE, from_client=True) if s.t < paused]
    answers = [s for s in flow.of(Kind.ZERO_WINDOW_PROBE_ACK, from_client=False) if s.t < paused]
    print(f"S22 {how}: {fill.total} bytes queued before EAGAIN, {len(probes)} zero-window probes every "
          f"{[round(i, 3) for i in Times(tuple(p.t for p in probes)).intervals]} s, drained {len(received)} bytes")

    # No error: the sends that fit succeed, then EAGAIN; the blocking send waits out the pause and completes.
    assert fill.stopped == "errno" and fill[-1].errname == "EAGAIN" and all(r.ok for r in fill[:-1]), fill
    assert still_blocked and sent.ok and sent.ret == BLOCKED and sent.t1 >= fault.healed_at, (
        "the blocking send blocked until the resume, then completed" + evidence)
    assert fill.total >= RCVBUF, f"the server's kernel buffered data for the frozen process: {fill}"
    # The zero window, probed on a doubling interval from the RTO and answered by the frozen server's kernel.
    assert zero_window and probes and len(answers) == len(probes) >= PROBES, (
        f"zero window, then {len(probes)} probes and {len(answers)} answers\n{flow.render()}")
    assert zero_window[-1].t < probes[0].t, flow.render()
    # tcp_probe0_base: the RTO when the window closed, at least TCP_RTO_MIN.
    base = max(TCP_RTO_MIN, next(e["tcp_info"]["rto_us"] for e in reversed(states.entries)
                                 if e.get("tcp_info") and e["t"] <= probes[0].t) / 1e6)
    record_property("kernel_wait", base * (2 ** PROBES - 1))
    schedule = Times((zero_window[-1].t, *(p.t for p in probes)))
    expect_schedule(schedule, [base * 2 ** k for k in range(len(probes))], "zero-window probe", flow=flow)
    assert all(a.win == 0 for a in answers) and not flow.of(Kind.RST), flow.render()
    info = [e["tcp_info"] for e in states.entries if e.get("tcp_info")]
    # The probe count (what tcp_retries2 limits) is 1 only while a probe waits for its answer (a round trip),
    # back to 0 with the answer; the backoff grows all the same.
    assert max(i["probes"] for i in info) <= 1 and held["tcp_info"]["backoff"] >= PROBES, (
        "every probe answered: the probe count never adds up" + evidence)
    assert [sock.states for sock in states.sockets] == [["ESTABLISHED"]], evidence
    assert any(e.get("timer_name") == "persist" for e in states.entries), evidence
    # The resume drains everything, in order.
    expected = b"".join(_pattern(CHUNK)[:r.ret] for r in fill if r.ok)
    assert bytes(received) == expected + _pattern(BLOCKED), "the server read every byte sent, in order"
