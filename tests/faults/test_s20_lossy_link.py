"""S20: a bulk transfer over a lossy link: loss, duplication, reordering, corruption."""

import json

import pytest

from faults import Netem
from harness.sockets import wait_for

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S20",
    "title": "Lossy link",
    "fault": "netem during a 16 MB transfer: 5 % loss (server ingress), 5 % duplication, 25 % reordering with "
             "10 ms delay, 5 % corruption (client egress); the nft / NFQUEUE fallback where the kernel lacks "
             "sch_netem (corruption has none: skipped).",
    "linux": "TCP repairs everything below the application: lost and corrupted segments are retransmitted (SACK, "
             "RACK, RTO), duplicates are dropped and reported with D-SACK, reordered segments wait in the "
             "out-of-order queue.",
    "expect": "The transfer completes byte-exact (same SHA-256) with no error; the sender counts retransmissions "
              "the receiver did not D-SACK (repairs) under loss and corruption, D-SACKs under duplication, the receiver out-of-order packets under reordering; "
              "throughput is reported against a clean run.",
    "lesson": "Packet loss costs throughput and latency, not correctness: do not add application checksums or "
              "retries for loss; do set timeouts, since heavy loss can stall a transfer for backed-off RTOs.",
}

PORT = 6666
SIZE = 16 << 20
NO_METRICS = "net.ipv4.tcp_no_metrics_save"
# netem parameters, where and how the fault applies, and which tcp_info counter must show its effect
# ("repaired": total_retrans less dsack_dups, the retransmissions the receiver did not report as duplicates).
# The loss takes packets on arrival at the server, the others act on the client's way out. Segments travel
# as GSO packets of up to 64 KB (about 260 for 16 MB): a 5 % loss misses all of them with probability 2e-6.
VARIANTS = {
    "loss": ("server", "ingress", {"loss_pct": 5}, ("sender", "repaired")),
    "duplicate": ("client", "egress", {"duplicate_pct": 5}, ("sender", "dsack_dups")),
    "reorder": ("client", "egress", {"delay_ms": 10, "reorder_pct": 25, "limit": 10000}, ("receiver", "rcv_ooopack")),
    "corrupt": ("client", "egress", {"corrupt_pct": 5}, ("sender", "repaired")),
}
# struct tcp_info (include/uapi/linux/tcp.h): byte offsets of the counters read (u32 each, bytes_retrans u64).
TCP_INFO = """
import socket, struct
OFFSETS = {"total_retrans": (100, "I"), "data_segs_out": (156, "I"), "bytes_retrans": (208, "Q"),
           "dsack_dups": (216, "I"), "reord_seen": (220, "I"), "rcv_ooopack": (224, "I")}
def tcp_info(sock):
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 240)
    info = {name: struct.unpack_from(kind, raw, at)[0] for name, (at, kind) in OFFSETS.items()
            if at + struct.calcsize(kind) <= len(raw)}
    info["cong"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\\0")[0].decode()
    return info
"""
# The receiver: accept one connection, read to EOF, close, print the byte count, SHA-256 and its tcp_info.
RECEIVER = TCP_INFO + """
import hashlib, json, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(1)
conn, _ = listener.accept()
digest, size = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk)
    size += len(chunk)
info = tcp_info(conn)
conn.close()
print(json.dumps({"bytes": size, "sha256": digest.hexdigest(), **info}))
"""
# The sender: SIZE seeded random bytes, then shutdown; done when the receiver's EOF comes back (it has read
# everything). Prints the elapsed time, the SHA-256 and its tcp_info.
SENDER = TCP_INFO + """
import hashlib, json, random, sys, time
addr, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = random.Random(seed).randbytes(size)
sock = socket.create_connection((addr, port))
start = time.monotonic()
sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
assert sock.recv(1) == b"", "the receiver sent data"
elapsed = time.monotonic() - start
print(json.dumps({"bytes": size, "sha256": hashlib.sha256(data).hexdigest(), "elapsed": elapsed, **tcp_info(sock)}))
"""
WAIT = 60


def _transfer(client, server, name: str, seed: int) -> dict[str, dict]:
    """One transfer of SIZE bytes from client to server; the sender's and the receiver's reports."""
    server.spawn(["python3", "-c", RECEIVER, str(PORT)], name=name)
    wait_for(server, "LISTEN", sport=PORT, timeout=WAIT)
    sent = client.run(["python3", "-c", SENDER, server.addr, str(PORT), str(SIZE), str(seed)], timeout=WAIT,
                      check=True)
    received = server.wait(name, timeout=WAIT)
    assert received.returncode == 0, received
    sender = json.loads(sent.stdout)
    sender["repaired"] = sender["total_retrans"] - sender["dsack_dups"]
    return {"sender": sender, "receiver": json.loads(received.stdout)}


@pytest.mark.sysctls(client={NO_METRICS: 1}, server={NO_METRICS: 1})
@pytest.mark.parametrize("variant", VARIANTS)
def test_s20_bulk_transfer_over_a_lossy_link_completes_byte_exact(pair, variant, record_property):
    """S20, seed experiment "TCP协议...如何用面向连接的服务来代替应用程序解决传输的可靠性问题" (how TCP, not the
    application, solves reliability: sequence numbers, ACKs, retransmission, the sliding window).

    A 16 MB transfer runs once with netem loss, duplication, reordering or corruption and once over the clean
    link. Each completes with the very bytes sent (SHA-256 of both ends) and no error: TCP retransmits
    what was lost or corrupted, drops and D-SACKs duplicates, holds reordered segments in its out-of-order
    queue, and its counters show which. The throughput against the clean run is recorded (measured with bbr:
    5 % loss cost nothing on this 0.1 ms link). On a kernel without sch_netem loss runs on nft and duplication
    and reordering on the NFQUEUE delay line, faithful for this (packets are lost, copied or reordered after
    the sender's stack, as with netem); the delay line's userspace path slows every packet, so its throughput
    figures are the fallback's, not netem's. Corruption has no fallback and is skipped with the reason.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    host_name, direction, params, (side, counter) = VARIANTS[variant]
    fault = Netem(client if host_name == "client" else server, direction=direction, fallback=True, **params)
    with fault:
        impaired = _transfer(client, server, variant, seed=1)
    clean = _transfer(client, server, "clean", seed=2)
    mechanism = fault.record()["mechanism"]
    rates = {"clean": SIZE / clean["sender"]["elapsed"] / 1e6, variant: SIZE / impaired["sender"]["elapsed"] / 1e6}
    record_property("mechanism", mechanism)
    record_property("throughput_MBps", json.dumps({name: round(rate, 1) for name, rate in rates.items()}))
    record_property("tcp_info", json.dumps({"clean": clean, variant: impaired}))
    print(f"S20 {variant} ({mechanism}, {clean['sender']['cong']}): clean {rates['clean']:.0f} MB/s, impaired "
          f"{rates[variant]:.0f} MB/s; {json.dumps(impaired)}; fault {json.dumps(fault.record()['fallback'])}")

    for run in (clean, impaired):
        assert run["receiver"]["bytes"] == SIZE and run["receiver"]["sha256"] == run["sender"]["sha256"], (
            f"the receiver got other bytes than were sent: {run}")
    # A clean run may retransmit a segment or two too (a tail loss probe; under emulation, RTOs that a stalled
    # machine fired early): the impaired run must show more.
    assert impaired[side][counter] > clean[side][counter], (
        f"the {side}'s tcp_info {counter} shows the {variant}: {impaired[side][counter]} against "
        f"{clean[side][counter]} in the clean run\n{impaired}\n{clean}")
