"""S17: both ends close at the same time while a delay on the path keeps their FINs in flight."""

import pytest

from faults import Netem
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT
from harness.flows import Kind, tcp_flow
from harness.sockets import sample, wait_for
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S17",
    "title": "Simultaneous close",
    "fault": "A one-way delay of 200 ms on both hosts' egress (netem, or the NFQUEUE delay line where the kernel "
             "lacks sch_netem); both applications close() within that delay.",
    "linux": "Each side sends its FIN from FIN_WAIT1 and receives the peer's FIN before the ACK of its own: it "
             "ACKs at once and goes to CLOSING, then to TIME_WAIT when its FIN is acknowledged.",
    "expect": "close() returns 0 at once on both sides; both sockets go ESTABLISHED, FIN_WAIT1, CLOSING (for about "
              "the one-way delay), TIME_WAIT; two FINs and two ACKs on the wire, no retransmission, no RST.",
    "lesson": "CLOSING is not a hang: it is a simultaneous close waiting one trip for its ACK; both sides then hold "
              "TIME_WAIT, so both need SO_REUSEADDR to rebind a fixed port.",
}

PORT = 6666
DELAY_MS = 200
DELAY = DELAY_MS / 1000
# A delayed packet is never released early; the delay line (userspace) released single packets at most 27 ms
# late with three CPU-bound processes on the 2-core machine (docs/netem-fallback.md, "Fidelity"); netem's hrtimers
# are far more precise. 50 ms covers both.
LATE = 0.05 + SCHEDULING_SLACK
PERIOD_MS = 10
# close() only queues the FIN: it returns within a millisecond.
AT_ONCE = 0.05 + SCHEDULING_SLACK
STATES = ["ESTABLISHED", "FIN_WAIT1", "CLOSING", "TIME_WAIT"]


def test_s17_simultaneous_close_passes_through_closing_to_time_wait_on_both_sides(pair, record_property):
    """S17, seed experiment "TCP状态转换: CLOSING" (the rare CLOSING state: "如果双方几乎在同时close一个SOCKET的话",
    if both sides close a socket at almost the same time).

    Both hosts delay their outgoing packets by 200 ms and both applications close() within a few milliseconds
    of each other, so each FIN is still on its way when the other side closes: each side, in FIN_WAIT1,
    receives the peer's FIN before the ACK of its own, ACKs it at once and moves to CLOSING; one trip later its
    own FIN's ACK arrives and it moves to TIME_WAIT. Both sides end in TIME_WAIT. On a kernel without sch_netem
    the delay is the NFQUEUE delay line, faithful enough here: it delays IPv4 packets after the TCP stack sent
    them, as netem does, and the test checks each FIN and ACK left its host a full delay (never less, at most
    LATE more) after the event that sent it.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 2 * DELAY)
    listener = server.listen(port=PORT)
    assert listener.ok, listener
    with Netem(client, delay_ms=DELAY_MS, fallback=True), Netem(server, delay_ms=DELAY_MS, fallback=True), \
            capture(client, f"tcp port {PORT}") as wire, capture(server, f"tcp port {PORT}") as server_wire:
        conn = client.connect(addr=server.addr, port=PORT)
        accepted = server.accept(listener.handle, timeout=5 * DELAY)
        assert conn.ok and accepted.ok, (conn, accepted)
        with sample(client, port=PORT, period_ms=PERIOD_MS) as states, \
                sample(server, sport=PORT, states=STATES, period_ms=PERIOD_MS) as server_states:
            closing = client.close(conn.handle, background=True), server.close(accepted.handle, background=True)
            closed, server_closed = (future.result() for future in closing)
            wait_for(client, "TIME_WAIT", dport=PORT, timeout=10 * DELAY)
            wait_for(server, "TIME_WAIT", sport=PORT, timeout=10 * DELAY)
    flow, server_flow = tcp_flow(wire, port=PORT), tcp_flow(server_wire, port=PORT)
    evidence = (f"\n{closed}\n{server_closed}\nclient capture:\n{flow.render(since=closed.t0)}\nserver capture:\n"
                f"{server_flow.render(since=closed.t0)}\n{states.table()}\n{server_states.table()}")

    for rec in (closed, server_closed):
        assert rec.ok and rec.elapsed < AT_ONCE, rec
    gap = abs(closed.t0 - server_closed.t0)
    assert gap < DELAY, f"the closes were {gap:.3f} s apart, more than the {DELAY} s delay: no crossing" + evidence

    # Seen from each host: its FIN leaves and the peer's FIN arrives, neither acknowledging the other (both were
    # sent before either side had seen the other's); then each side's ACK of the peer's FIN. Nothing else.
    for side, capture_flow, own_close, local, history in (("client", flow, closed, True, states),
                                                          ("server", server_flow, server_closed, False, server_states)):
        after_handshake = capture_flow.segments[3:]
        assert sorted((s.kind, s.from_client == local) for s in after_handshake) == [
            (Kind.ACK, False), (Kind.ACK, True), (Kind.FIN, False), (Kind.FIN, True)], (
            f"{side}: two crossing FINs and their ACKs, nothing else" + evidence)
        assert {s.kind for s in after_handshake[:2]} == {Kind.FIN}, f"{side}: both FINs before any ACK" + evidence
        (own_fin,), (peer_fin,) = (capture_flow.of(Kind.FIN, from_client=local),
                                   capture_flow.of(Kind.FIN, from_client=not local))
        (own_ack,), (peer_ack,) = (capture_flow.of(Kind.ACK, from_client=local)[-1:],
                                   capture_flow.of(Kind.ACK, from_client=not local)[-1:])
        assert own_fin.ack == peer_fin.seq and peer_fin.ack == own_fin.seq, (
            f"{side}: neither FIN acknowledges the other" + evidence)
        assert own_ack.ack == peer_fin.end and peer_ack.ack == own_fin.end, evidence
        # The delay: each packet leaves its host DELAY after it was made (the FIN during close(), the ACK when
        # the peer's FIN arrived), never earlier, at most LATE later.
        for what, made, left in (("FIN", (own_close.t0, own_close.t1), own_fin.t),
                                 ("ACK", (peer_fin.t, peer_fin.t), own_ack.t)):
            assert made[0] + DELAY - CLOCK_ALIGNMENT <= left <= made[1] + DELAY + LATE, (
                f"{side}: its {what} left {left - made[0]:.4f} s after it was made, expected {DELAY} s (up to "
                f"{LATE} s late)" + evidence)
        # CLOSING: from the arrival of the peer's FIN to the arrival of the ACK of its own FIN.
        (span,) = history.spans("CLOSING")
        assert span.entered_after - CLOCK_ALIGNMENT <= peer_fin.t <= span.entered_by + CLOCK_ALIGNMENT, (
            f"{side}: CLOSING entered in ({span.entered_after:.4f}, {span.entered_by:.4f}], the peer's FIN arrived "
            f"at {peer_fin.t:.4f}" + evidence)
        assert span.left_after - CLOCK_ALIGNMENT <= peer_ack.t <= span.left_by + CLOCK_ALIGNMENT, (
            f"{side}: CLOSING left in ({span.left_after:.4f}, {span.left_by:.4f}], the ACK of its FIN arrived at "
            f"{peer_ack.t:.4f}" + evidence)
        assert [sock.states for sock in history.sockets] == [STATES], evidence
        # CLOSING lasts one trip of the delay, shorter or longer by the gap between the closes (the peer's FIN
        # was made at its close, the ACK of the own FIN one delay after the own FIN arrived), later by the
        # lateness of the peer's FIN (shorter) or of both packets of the own FIN's round trip (longer).
        held = peer_ack.t - peer_fin.t
        assert DELAY - gap - LATE - CLOCK_ALIGNMENT <= held <= DELAY + gap + 2 * LATE + CLOCK_ALIGNMENT, (
            f"{side}: CLOSING for {held:.4f} s, expected about {DELAY} s (the closes {gap:.4f} s apart)" + evidence)
