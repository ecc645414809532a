"""S04: a non-blocking connect() bounded by the application's select() timeout, to a host that never answers."""

import time
from contextlib import ExitStack

import pytest

from faults import Drop, Sysctls
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_schedule, schedule_bounds
from harness.flows import Kind, tcp_flow
from harness.kernel import SYN_LINEAR_TIMEOUTS, SYN_RETRIES, host_syn_timeouts, wheel_slack
from harness.sockets import sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

PORT = 6666
# The application's connect timeout: after the first SYN retransmission (1 s), before the second (3 s).
APP_TIMEOUT = 1.5
# A non-blocking connect() only sends the SYN: it returns within milliseconds.
AT_ONCE = 0.1 + SCHEDULING_SLACK
# Sampler period; its longest measured interval stays under 2 periods on the loaded 2-core machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK

SCENARIO = {
    "id": "S04",
    "title": "Non-blocking connect with a select() timeout",
    "fault": "The server drops SYNs; the client connects with O_NONBLOCK and waits in select() with a timeout.",
    "linux": "connect() returns EINPROGRESS at once; select() times out while the kernel still retransmits the "
             "SYN; SO_ERROR is 0 then. Kept open, the socket fails per tcp_syn_retries and SO_ERROR says "
             "ETIMEDOUT; closed, it vanishes silently and no SYN follows.",
    "expect": "EINPROGRESS in under 0.1 s, select() returns 0 after its timeout (1.5 s), SO_ERROR 0; later "
              "ETIMEDOUT from SO_ERROR at the SYN schedule's end (7 s with tcp_syn_retries=2).",
    "lesson": "A non-blocking connect with select()/poll() bounds the wait yourself, independent of "
              "tcp_syn_retries; on timeout close the socket; check SO_ERROR when it becomes writable.",
}


@pytest.mark.sysctls(client={SYN_RETRIES: 2})
@pytest.mark.parametrize("on_timeout", ["close", "keep"])
def test_s04_nonblocking_connect_select_timeout_fires_before_the_kernel_gives_up(pair, on_timeout, record_property):
    """S04, seed experiment "客户端连接一个网络达不到的主机: connect设为非阻塞, 利用select探测" (the connect
    timeout is long: make connect non-blocking and wait in select() with a timeout).

    The server drops the client's SYNs. connect(O_NONBLOCK) returns EINPROGRESS at once; select() for
    writability times out after the application's 1.5 s while the kernel is still retransmitting the SYN, and
    SO_ERROR is then 0: the connect is still in progress, not failed. This answers the seed's question: yes,
    non-blocking connect plus select bounds the wait, independently of tcp_syn_retries. What happens next is
    the application's choice: closed at the timeout (the seed's client), the socket vanishes at once, without a
    RST, and no further SYN leaves; kept, the kernel goes on to the end of its SYN schedule (SYNs at 0, 1, 3 s
    with tcp_syn_retries=2) and gives up at 7 s, when the socket becomes writable and SO_ERROR is ETIMEDOUT
    (read once: it is cleared).
    """
    client, server = pair.client, pair.server
    with ExitStack() as faults:
        if client.has_sysctl(SYN_LINEAR_TIMEOUTS):
            faults.enter_context(Sysctls(client, {SYN_LINEAR_TIMEOUTS: 0}))
        faults.enter_context(Drop(server, protocol="tcp", dport=PORT))
        timeouts = host_syn_timeouts(client)
        assert timeouts[0] < APP_TIMEOUT < timeouts[0] + timeouts[1], (
            f"the application timeout must fall between the first and the second SYN retransmission: {timeouts}")
        with capture(client, f"tcp port {PORT}") as wire, \
                sample(client, port=PORT, period_ms=PERIOD_MS) as states:
            rec = client.connect(addr=server.addr, port=PORT, nonblocking=True, select_timeout=APP_TIMEOUT)
            pending = client.sockets(port=PORT)
            if on_timeout == "close":
                after = client.close(rec.handle)
                # Watch the wire until the second retransmission would have left: proving an absence takes
                # the wait.
                would_retransmit = rec.t0 + timeouts[0] + timeouts[1] + wheel_slack(timeouts[1]) + SOFTIRQ_AND_WAKEUP
                time.sleep(max(0.0, would_retransmit - time.monotonic()))
            else:
                after = client.select(rec.handle, write=True, timeout=2 * sum(timeouts))
                failed, cleared = client.so_error(rec.handle), client.so_error(rec.handle)
    record_property("kernel_wait", timeouts[0] + timeouts[1] if on_timeout == "close" else sum(timeouts))
    flow = tcp_flow(wire, port=PORT)
    syns = flow.syn_schedule()
    selected, so_error = rec.sub("select"), rec.sub("so_error")
    print(f"S04 {on_timeout}: connect {rec.errname} in {rec.elapsed * 1000:.1f} ms, select {selected.ret} after "
          f"{selected.elapsed:.3f} s, SO_ERROR {so_error.extra['value']}; then {after} "
          f"at +{after.t1 - rec.t0:.3f} s")

    expect_errno(rec, "EINPROGRESS", between=(0, AT_ONCE))
    assert (selected.ret, selected.extra["ready"]) == (0, False), f"select() timed out: {selected}"
    # select() sleeps on an hrtimer: late only by the wake-up.
    assert APP_TIMEOUT <= selected.elapsed <= APP_TIMEOUT + SOFTIRQ_AND_WAKEUP, selected
    assert (so_error.extra["value"], so_error.errno) == (0, None), f"still in progress, no error: {so_error}"
    assert [s["state"] for s in pending] == ["SYN_SENT"], pending
    assert wire.complete and not flow.of(from_client=False), f"the server never answers\n{flow}"

    if on_timeout == "close":
        expect_errno(after, None, between=(0, AT_ONCE))
        expect_schedule(syns, timeouts[:1], "SYN", flow=flow)
        assert flow.kinds() == [Kind.SYN, Kind.SYN_RETRANSMISSION] and syns.times[-1] < after.t0, (
            f"no SYN after close(), no RST either\n{flow.render(since=rec.t0)}")
        (connecting,) = states.sockets
        assert [span.state for span in connecting.spans] == ["SYN_SENT"], states.table()
        gone = connecting.spans[0]
        assert gone.left_after <= after.t1 and after.t0 - CLOCK_ALIGNMENT <= gone.left_by <= after.t1 + SAMPLING, (
            f"close() removes the connecting socket at once\n{after}\n{states.table()}")
    else:
        low, high = schedule_bounds(timeouts)[-1]
        gave_up = after.t1 - syns.times[0]
        assert (after.ret, after.extra["writable"]) == (1, True), f"writable once the connect failed: {after}"
        assert low <= gave_up <= high, (
            f"select() returned {gave_up:.4f} s after the first SYN, expected the kernel to give up at "
            f"{low:.4f} .. {high:.4f} s\n{flow.render(since=rec.t0)}")
        expect_schedule(syns, timeouts[:-1], "SYN", flow=flow)
        assert (failed.extra["value_name"], cleared.extra["value_name"]) == ("ETIMEDOUT", None), (
            f"SO_ERROR reports the failure once: {failed.extra}, then {cleared.extra}")
        spans = states.spans("SYN_SENT")
        assert len(spans) == 1 and spans[0].end is not None, states.table()
        assert spans[0].left_after - CLOCK_ALIGNMENT <= after.t1 <= spans[0].left_by + SOFTIRQ_AND_WAKEUP, (
            f"the socket left SYN_SENT (gone from the table though its descriptor is open) when select() "
            f"returned\n{after}\n{states.table()}")
        assert client.sockets(port=PORT) == [], "the failed socket is in CLOSE: no longer in the table"
