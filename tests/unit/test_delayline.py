"""The netem fallback without Docker: nfnetlink_queue messages byte for byte (layouts from
include/uapi/linux/netfilter/nfnetlink_queue.h), release-time scheduling, parameter checks, and the fault's
apply/heal against a fake host."""

from __future__ import annotations

import random
import statistics
import struct
import sys

import pytest

from faults import Netem, NetemUnavailable
from faults.netem_fallback import NetemFallbackError, loss_script, loss_threshold, mechanisms, queue_chains
from harness.agent.delayline import (DelayLine, Schedule, bound_queues, config_message, line_params, mark_for,
                                     messages, parse_error, parse_packet, start, verdict_message)
from harness.agent.errors import BadRequest
from harness.agent.netem import GEModel, NetemParamError, NetemParams
from harness.agent.procs import Children
from harness.records import CompletedRun

NETEM_REASON = "kernel lacks sch_netem: modprobe sch_netem or run it under the kernel matrix"
NO_NETEM = {"sch_netem": "ENOENT: No such file or directory", "ifb": None, "ingress_redirect": None}
WITH_NETEM = {"sch_netem": None, "ifb": None, "ingress_redirect": None}
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="netlink headers are in host byte order")
# Binomial bounds: n draws with probability p have standard deviation sqrt(n p (1 - p)); the RNGs are seeded
# (deterministic), and the bounds are 5 standard deviations, which a correct implementation meets for any seed
# but the rare one (false-failure probability below 1e-6).
N = 20_000


def _sd(p: float) -> float:
    return (N * p * (1 - p)) ** 0.5


# Messages


@little_endian
def test_config_message_binds_copies_whole_packets_and_sets_the_queue_length():
    expected = bytes.fromhex(
        "30000000" "0203" "0500" "07000000" "00000000"  # nlmsghdr: len 48, QUEUE<<8|CONFIG, REQUEST|ACK, seq 7
        "00" "00" "1234"                                # nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0x1234 (BE)
        "0800" "0100" "01" "00" "0000"                  # NFQA_CFG_CMD: command BIND, _pad, pf 0
        "0900" "0200" "0000ffff" "02" "000000"          # NFQA_CFG_PARAMS (packed, 5 bytes): copy_range, PACKET
        "0800" "0300" "000003e8")                       # NFQA_CFG_QUEUE_MAXLEN: 1000 (BE)
    assert config_message(0x1234, 1000, 7) == expected


@little_endian
def test_verdict_message_accepts_one_packet_by_id():
    expected = bytes.fromhex(
        "20000000" "0103" "0100" "00000000" "00000000"  # nlmsghdr: len 32, QUEUE<<8|VERDICT, REQUEST (no ACK)
        "00" "00" "1234"
        "0c00" "0200" "00000001" "deadbeef")            # NFQA_VERDICT_HDR: NF_ACCEPT, id (both BE)
    assert verdict_message(0x1234, 0xDEADBEEF) == expected
    assert verdict_message(1, 2, 0)[-8:] == bytes.fromhex("00000000" "00000002"), "NF_DROP"


@little_endian
def test_packet_message_as_the_kernel_builds_it_is_parsed():
    payload = bytes(range(21))  # odd length: the attribute is padded
    kernel = bytes.fromhex(
        "4c000000" "0003" "0000" "00000000" "00000000"  # nlmsghdr: len 76, QUEUE<<8|PACKET
        "02" "00" "0102"                                # nfgenmsg: AF_INET, v0, queue 258
        "0b00" "0100" "0000002a" "0800" "03" "00"       # NFQA_PACKET_HDR (packed, 7): id 42, ETH_P_IP, LOCAL_OUT
        "0800" "0300" "00000007"                        # NFQA_MARK 7
        "0800" "0680" "00000002"                        # NFQA_IFINDEX_OUTDEV with a flag bit set: type masked
        "1900" "0a00") + payload + b"\0\0\0"            # NFQA_PAYLOAD, padded to 4
    assert len(kernel) == 76
    ((msg_type, seq, body),) = messages(kernel)
    assert (msg_type, seq) == (0x0300, 0)
    packet = parse_packet(body)
    assert (packet.queue, packet.packet_id, packet.hw_protocol, packet.hook) == (258, 42, 0x0800, 3)
    assert packet.payload == payload


@little_endian
def test_errors_and_acks_and_several_messages_in_one_read():
    error = bytes.fromhex("24000000" "0200" "0000" "07000000" "00000000" "f0ffffff") + bytes(16)  # -EBUSY
    ack = bytes.fromhex("24000000" "0200" "0000" "08000000" "00000000" "00000000") + bytes(16)
    found = list(messages(error + ack))
    assert [(t, s) for t, s, _ in found] == [(2, 7), (2, 8)]
    assert [parse_error(body) for _, _, body in found] == [16, 0]


def test_malformed_messages_are_refused():
    with pytest.raises(ValueError, match="malformed netlink message at byte 0: length 200 of 20"):
        list(messages((200).to_bytes(4, sys.byteorder) + bytes(16)))


def test_bound_queues_from_proc():
    text = "    1  12345     0 2 65531     0     0        0  1\n22211  20404     3 2 65531     0     0       17  1\n"
    assert bound_queues(text) == {1, 22211}
    assert bound_queues("") == set()


def test_copies_are_marked_with_their_queue():
    assert mark_for(0x1234) == 0x4E461234


# Scheduling


def _schedule(seed: int = 1, table: list[int] | None = None, **params: object) -> Schedule:
    return Schedule(NetemParams(**params), random.Random(seed), table)


def test_delay_without_jitter_is_exact():
    assert _schedule(delay_ms=50).releases(100.0) == (100.05, None)


def test_uniform_jitter_stays_within_delay_plus_minus_jitter_and_fills_it():
    schedule = _schedule(delay_ms=50, jitter_ms=10)
    delays = [schedule.delay() for _ in range(N)]
    assert 0.040 <= min(delays) < 0.0401 and 0.0599 < max(delays) < 0.060
    # Uniform on [40, 60) ms: standard deviation 20/sqrt(12) = 5.77 ms; the mean's is 5.77/sqrt(N) = 0.04 ms.
    assert statistics.mean(delays) == pytest.approx(0.050, abs=5 * 0.0000408)
    assert statistics.pstdev(delays) == pytest.approx(0.02 / 12 ** 0.5, rel=0.02)


def test_distribution_table_scales_jitter_as_netem_does_and_never_goes_below_zero():
    schedule = _schedule(table=[-8192, 0, 8192, 4 * 8192], delay_ms=50, jitter_ms=10, distribution="normal")
    assert {round(schedule.delay(), 6) for _ in range(1000)} == {0.04, 0.05, 0.06, 0.09}
    low = _schedule(table=[-8192 * 3], delay_ms=10, jitter_ms=10, distribution="normal")
    assert low.delay() == 0.0
    assert min(_schedule(delay_ms=5, jitter_ms=10).delay() for _ in range(1000)) == 0.0


def test_reorder_sends_that_fraction_at_once_and_delays_the_rest():
    schedule = _schedule(seed=7, delay_ms=50, reorder_pct=25)
    releases = [schedule.releases(10.0)[0] for _ in range(N)]
    at_once = sum(1 for r in releases if r == 10.0)
    assert abs(at_once - 0.25 * N) < 5 * _sd(0.25), at_once
    assert schedule.reordered == at_once
    assert all(r == 10.05 for r in releases if r != 10.0), "the others keep the full delay"


def test_duplicates_get_their_own_release_time():
    schedule = _schedule(seed=3, delay_ms=20, jitter_ms=5, duplicate_pct=10)
    pairs = [schedule.releases(0.0) for _ in range(N)]
    copies = [copy for _, copy in pairs if copy is not None]
    assert abs(len(copies) - 0.10 * N) < 5 * _sd(0.10), len(copies)
    assert all(0.015 <= c < 0.025 for c in copies)
    assert sum(1 for original, copy in pairs if copy is not None and copy != original) == len(copies)


def test_releases_are_never_before_arrival():
    schedule = _schedule(seed=5, delay_ms=1, jitter_ms=5, reorder_pct=50, duplicate_pct=50)
    assert all(r >= 3.0 for pair in (schedule.releases(3.0) for _ in range(1000)) for r in pair if r is not None)


# The delay line's loop, on fake sockets


def _packet_message(queue: int, packet_id: int, payload: bytes) -> bytes:
    """An NFQNL_MSG_PACKET as the kernel sends it (see the byte layout in the test above)."""
    attrs = (struct.pack("=HH", 11, 1) + struct.pack("!IHB", packet_id, 0x0800, 3) + b"\0"
             + struct.pack("=HH", 4 + len(payload), 10) + payload + b"\0" * (-len(payload) % 4))
    body = struct.pack("!BBH", 2, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


class FakeSocket:
    """recv() hands out `incoming` one message at a time, then EAGAIN; send()/sendto() are recorded."""

    def __init__(self, incoming: list[bytes] = ()) -> None:
        self.incoming = list(incoming)
        self.sent: list[bytes] = []
        self.sent_to: list[tuple[bytes, tuple[str, int]]] = []

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        return self.incoming.pop(0)

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.sent_to.append((data, addr))
        return len(data)


class FakeQueue:
    def __init__(self, number: int, sock: FakeSocket) -> None:
        self.number, self.sock = number, sock


def _verdict_ids(sent: list[bytes]) -> list[int]:
    return [parse_verdict_id(body) for data in sent for _, _, body in messages(data)]


def parse_verdict_id(body: bytes) -> int:
    verdict, packet_id = struct.unpack("!II", body[8:16])  # nfgenmsg, nlattr, then nfqnl_msg_verdict_hdr
    assert verdict == 1, "NF_ACCEPT"
    return packet_id


def test_delay_line_accepts_each_packet_at_its_time_and_sends_copies_raw():
    ip = bytes.fromhex("4500001c00000000401100000a0000140a00000a") + bytes(8)  # IPv4 10.0.0.20 -> 10.0.0.10
    sock = FakeSocket([_packet_message(7, 1, ip), _packet_message(7, 2, ip)])
    line = DelayLine(FakeQueue(7, sock), _schedule(delay_ms=50, duplicate_pct=100), FakeSocket())
    line.receive()
    arrival = line.held[0][0] - 0.05
    assert len(line.held) == 4 and line.counters.packets == 2 and line.counters.duplicated == 2
    line.release_due(arrival + 0.049)
    assert sock.sent == [] and line.raw.sent_to == [], "nothing before its time"
    line.release_due(arrival + 0.051)
    assert _verdict_ids(sock.sent) == [1, 2]
    assert line.raw.sent_to == [(ip, ("10.0.0.10", 0))] * 2
    assert line.counters.released == 2 and line.counters.copies_sent == 2 and line.held == []
    assert 0.9 <= line.counters.late_max_ms <= 1.1


def test_stopping_releases_what_is_held_at_once_and_drops_pending_copies():
    sock = FakeSocket([_packet_message(7, 5, b"\x45" + bytes(27))])
    line = DelayLine(FakeQueue(7, sock), _schedule(delay_ms=1000, duplicate_pct=100), FakeSocket())
    line.receive()
    line.flush()
    assert _verdict_ids(sock.sent) == [5] and line.raw.sent_to == [] and line.held == []
    c = line.counters
    assert (c.released, c.released_early, c.copies_unsent, c.late_max_ms) == (1, 1, 1, 0.0)


@little_endian
def test_kernel_errors_on_verdicts_are_counted_by_name():
    error = bytes.fromhex("24000000" "0200" "0000" "00000000" "00000000" "feffffff") + bytes(16)  # -ENOENT
    line = DelayLine(FakeQueue(7, FakeSocket([error])), _schedule(), FakeSocket())
    line.receive()
    assert line.counters.verdict_errors == {"ENOENT": 1} and line.counters.packets == 0


# Parameters


def test_delay_line_refuses_what_it_does_not_do_by_name():
    with pytest.raises(NetemParamError, match="the delay line cannot do loss_pct, seed; it does delay_ms"):
        line_params({"delay_ms": 1, "loss_pct": 1, "seed": 3})
    with pytest.raises(NetemParamError, match="reorder_pct needs delay_ms > 0"):
        line_params({"reorder_pct": 5})


def test_agent_op_refuses_bad_params_before_starting_anything():
    children = Children()
    with pytest.raises(BadRequest, match="argument 'params': the delay line cannot do corrupt_pct"):
        start(children, "dl", {"corrupt_pct": 1})
    with pytest.raises(BadRequest, match="argument 'params': delay_ms must be between 0 and 60000 ms"):
        start(children, "dl", {"delay_ms": -1})
    assert children.stop_all() == []


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"delay_ms": 10, "jitter_ms": 1, "correlation": 25}, ["correlation"]),
    ({"loss_pct": 1, "loss_correlation": 25}, ["loss_correlation"]),
    ({"gemodel": GEModel(p=1)}, ["gemodel"]),
    ({"corrupt_pct": 1, "rate": "1mbit"}, ["corrupt_pct", "rate"]),
    ({"seed": 0}, ["seed"]),
    ({"loss_pct": 0.004}, ["loss_pct below 0.01"]),
    ({"delay_ms": 10, "jitter_ms": 2, "distribution": "pareto", "reorder_pct": 5, "duplicate_pct": 1,
      "loss_pct": 0.01, "limit": 50}, []),
])
def test_fallback_names_the_parameters_it_cannot_do(kwargs, names):
    host = FakeHost(NO_NETEM)
    fault = Netem(host, fallback=True, **kwargs)
    assert fault.fallback_cannot == names
    if names:
        with pytest.raises(NetemParamError, match="fallback='always': the netem fallback cannot do "
                                                  + ", ".join(names)):
            Netem(host, fallback="always", **kwargs)
    assert host.calls == [] and host.probes == 0, "checked without the host"


def test_fallback_argument_is_checked():
    with pytest.raises(ValueError, match="fallback must be False, True or 'always', got 'yes'"):
        Netem(FakeHost(NO_NETEM), fallback="yes")


def test_mechanisms_and_loss_resolution():
    assert mechanisms(NetemParams(loss_pct=1)) == ("nft-numgen",)
    assert mechanisms(NetemParams(delay_ms=1)) == ("nfqueue-delayline",)
    assert mechanisms(NetemParams()) == ("nfqueue-delayline",), "no impairment still passes the delay line"
    assert mechanisms(NetemParams(loss_pct=1, duplicate_pct=1)) == ("nft-numgen", "nfqueue-delayline")
    assert [loss_threshold(p) for p in (0.01, 2.5, 33.333, 100)] == [1, 250, 3333, 10000]


def test_loss_rules_steal_on_egress_and_drop_on_ingress():
    egress = loss_script("netfault_0a1b2c3d", "eth0", "egress", 2.5)
    assert 'type filter hook egress device "eth0" priority filter;' in egress
    assert 'numgen random mod 10000 < 250 counter fwd to "nfbh0a1b2c3d"' in egress
    ingress = loss_script("netfault_0a1b2c3d", "eth1", "ingress", 100)
    assert 'hook ingress device "eth1"' in ingress
    assert "\t\tcounter drop\n" in ingress, "nft refuses `mod 10000 < 10000`: 100 % has no numgen"


def test_queue_chains_finds_other_delay_lines_on_the_same_interface_and_direction():
    save = ("*filter\n:OUTPUT ACCEPT [0:0]\n:netfault_aa_out - [0:0]\n:netfault_bb_in - [0:0]\n"
            "-A OUTPUT -j netfault_aa_out\n"
            "-A netfault_aa_out -o eth0 -m mark ! --mark 0x4e460101 -j NFQUEUE --queue-num 257\n"
            "-A netfault_bb_in -i eth0 -m mark ! --mark 0x4e460102 -j NFQUEUE --queue-num 258\nCOMMIT\n")
    assert queue_chains(save, "eth0", "egress") == ["netfault_aa_out"]
    assert queue_chains(save, "eth0", "ingress") == ["netfault_bb_in"]
    assert queue_chains(save, "eth1", "egress") == []


# The fault against a fake host


FILTER = '{"nftables": [{"table": {"family": "ip", "name": "filter"}}, {"chain": {"family": "ip", "table": "filter", ' \
         '"name": "OUTPUT", "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}]}'


class FakeHost:
    """Answers like a host's agent (and its nft/iptables); records every call. `died` makes the delay line exit
    before heal; `fail` makes that command fail; iptables-restore creates iptables-nft's `ip filter` table."""

    name = "fake"

    def __init__(self, features: dict[str, str | None], save: str = "", fail: str | None = None,
                 died: bool = False) -> None:
        self.features = features
        self.save = save
        self.fail = fail
        self.died = died
        self.calls: list[tuple] = []
        self.probes = 0
        self.stopped = False
        self.filter_table = False

    def tc_features(self) -> dict[str, str | None]:
        self.probes += 1
        return self.features

    def netem_add(self, *args: object) -> dict[str, object]:
        self.calls.append(("netem_add",))
        return {"handle": 0x10000, "ifb": None}

    def netem_del(self, *args: object) -> dict[str, object]:
        self.calls.append(("netem_del",))
        return {"deleted": []}

    def run(self, cmd: list[str], timeout: float | None = None, input: str | None = None,
            check: bool = False) -> CompletedRun:
        self.calls.append(("run", list(cmd), input))
        out, err, failed = "", "", self.fail is not None and cmd[0] == self.fail
        if cmd[0] == "iptables-save":
            out = self.save
        elif cmd[:4] == ["nft", "-j", "list", "table"]:
            out, err = (FILTER, "") if self.filter_table else ("", "Error: No such file or directory")
            failed = not self.filter_table
        elif cmd[0] == "iptables-restore" and not failed:
            self.filter_table = True
        elif cmd[:2] == ["nft", "delete"]:
            self.filter_table = False
        run = CompletedRun(cmd, 1 if failed else 0, None, out, "boom" if failed and not err else err)
        return run.check() if check else run

    def delayline_start(self, name: str, params: dict[str, object], timeout: float = 30.0) -> dict[str, object]:
        self.calls.append(("delayline_start", name, dict(params)))
        return {"name": name, "queue": 0x1234, "mark": mark_for(0x1234), "pid": 99}

    def signal(self, name: str, signal: str = "SIGKILL") -> None:
        self.calls.append(("signal", signal))
        self.stopped = True

    def wait(self, name: str, timeout: float | None = None) -> CompletedRun:
        self.calls.append(("wait", timeout))
        if self.died:
            return CompletedRun(name, 1, None, "", "OSError: [Errno 105] No buffer space available")
        if not self.stopped:
            return CompletedRun(name, None, None, "", "", timed_out=True)
        return CompletedRun(name, 0, None, '{"queue": 4660, "packets": 3}\n', "")


def _kind(call: tuple) -> str:
    """"wait", "signal", ... or a command's first words ("nft -j", "sh: ip link")."""
    if call[0] != "run":
        return call[0]
    cmd = call[1]
    return "sh: " + " ".join(cmd[2].split()[:2]) if cmd[0] == "sh" else " ".join(cmd[:2])


def _kinds(host: FakeHost) -> list[str]:
    return [_kind(call) for call in host.calls]


APPLY_LINE = ["iptables-save -t", "delayline_start", "sh: command -v", "nft -j", "iptables-restore --noflush"]
HEAL_LINE = ["iptables-restore --noflush", "wait", "signal", "wait", "nft -j", "nft delete"]


def test_fallback_applies_loss_table_and_delay_line_then_heals_everything_once():
    host = FakeHost(NO_NETEM)
    fault = Netem(host, delay_ms=20, jitter_ms=2, loss_pct=2.5, fallback=True)
    with fault:
        assert _kinds(host) == ["sh: ip link", *APPLY_LINE]
        name = fault.substitute.name
        hole = "nfbh" + name.removeprefix("netfault_")
        loss, started, rule = host.calls[0], host.calls[2], host.calls[-1][2]
        assert loss[1][2] == f"ip link add {hole} type veth peer name nfbp{name[9:]} && nft -f -"
        assert f"table netdev {name} {{" in loss[2] and "numgen random mod 10000 < 250 counter fwd to" in loss[2]
        assert started[2] == {"delay_ms": 20, "jitter_ms": 2, "distribution": None, "reorder_pct": 0,
                              "duplicate_pct": 0, "limit": 1000}
        assert (f"-A {name}_out -o eth0 -m mark ! --mark 0x4e461234 -j NFQUEUE --queue-num 4660\n"
                f"-I OUTPUT 1 -j {name}_out\n") in rule
        assert fault.describe().endswith("delay 20ms 2ms loss 2.5% (fallback: nft numgen loss + NFQUEUE delay "
                                         "line (userspace))")
        assert fault.record()["mechanism"] == "nft-numgen+nfqueue-delayline"
    heal = host.calls[6:]
    assert [_kind(c) for c in heal] == [*HEAL_LINE, "sh: nft -f"], "rule first, then the delay line, then the loss"
    assert f"-D OUTPUT -j {name}_out\n-F {name}_out\n-X {name}_out\n" in heal[0][2]
    assert heal[1] == ("wait", 0) and heal[2] == ("signal", "SIGTERM")
    assert heal[5][1] == ["nft", "delete", "table", "ip", "filter"], "the table iptables-nft made, once the delay " \
                                                                    "line released what it held"
    assert heal[6][2] == f"add table netdev {name}\ndelete table netdev {name}\n"
    assert heal[6][1][2].endswith(f"then ip link del {hole}; fi")
    assert fault.record()["fallback"]["delayline_exit"]["counters"] == {"queue": 4660, "packets": 3}
    calls = len(host.calls)
    fault.heal()
    assert len(host.calls) == calls, "heal is idempotent"


def test_ingress_fallback_uses_the_ingress_hook_and_input():
    host = FakeHost(NO_NETEM)
    with Netem(host, direction="ingress", loss_pct=1, delay_ms=5, fallback=True) as fault:
        name, rule = fault.substitute.name, host.calls[-1][2]
        assert host.calls[0][1] == ["nft", "-f", "-"] and 'hook ingress device "eth0"' in host.calls[0][2]
        assert "\t\tnumgen random mod 10000 < 100 counter drop\n" in host.calls[0][2]
        assert f"-A {name}_in -i eth0 -m mark" in rule and f"-I INPUT 1 -j {name}_in" in rule


def test_a_dead_delay_line_is_reported_at_heal_after_everything_is_removed():
    host = FakeHost(NO_NETEM, died=True)
    fault = Netem(host, delay_ms=20, loss_pct=1, fallback=True).apply()
    with pytest.raises(NetemFallbackError, match=r"(?s)delay line .* died while the fault was in force \(exit status "
                                                 r"1\).*dropped the interface's egress packets.*No buffer space"):
        fault.heal()
    after = ["iptables-restore --noflush", "wait", "nft -j", "nft delete", "sh: nft -f"]
    assert _kinds(host)[6:] == after, "rule and loss table removed all the same"
    assert ("signal", "SIGTERM") not in host.calls
    fault.heal()
    assert _kinds(host)[6:] == after, "reported once"


def test_a_failed_apply_stops_the_delay_line_and_removes_what_was_added():
    host = FakeHost(NO_NETEM, fail="iptables-restore")
    fault = Netem(host, delay_ms=20, fallback=True)
    with pytest.raises(NetemFallbackError, match="adding iptables chain netfault_.*_out on host fake failed"):
        fault.apply()
    assert _kinds(host) == [*APPLY_LINE, "iptables-restore --noflush", "iptables-save -t",
                            "wait", "signal", "wait", "nft -j"]
    assert fault.applied_at is None


def test_a_second_delay_line_on_the_same_interface_and_direction_is_refused():
    save = "-A netfault_aa_out -o eth0 -m mark ! --mark 0x4e460101 -j NFQUEUE --queue-num 257\n"
    host = FakeHost(NO_NETEM, save=save)
    with pytest.raises(NetemFallbackError, match="eth0 of host fake has a delay line in egress already "
                                                 r"\(iptables chain netfault_aa_out\): heal that fault first"):
        Netem(host, delay_ms=20, fallback=True).apply()
    assert "delayline_start" not in _kinds(host)


def test_unsupported_parameters_skip_with_the_module_and_their_names_where_netem_is_missing():
    host = FakeHost(NO_NETEM)
    fault = Netem(host, delay_ms=10, corrupt_pct=1, rate="1mbit", fallback=True)
    with pytest.raises(NetemUnavailable) as raised:
        fault.apply()
    assert raised.value.reason == f"{NETEM_REASON}; its fallback (allowed here) cannot do corrupt_pct, rate"
    assert host.calls == []


def test_netem_is_used_where_the_kernel_has_it_unless_the_fallback_is_forced():
    host = FakeHost(WITH_NETEM)
    with Netem(host, delay_ms=10, corrupt_pct=1, fallback=True) as fault:
        assert fault.mechanism == "netem" and fault.record()["fallback"] is None
    assert _kinds(host) == ["netem_add", "netem_del"]
    forced = FakeHost(WITH_NETEM)
    with Netem(forced, delay_ms=10, fallback="always") as fault:
        assert fault.mechanism == "nfqueue-delayline"
    assert forced.probes == 0 and "netem_add" not in _kinds(forced)


def test_without_fallback_a_missing_netem_is_still_the_plain_reason():
    host = FakeHost(NO_NETEM)
    with pytest.raises(NetemUnavailable) as raised:
        Netem(host, delay_ms=10).apply()
    assert raised.value.reason == NETEM_REASON and host.calls == []
