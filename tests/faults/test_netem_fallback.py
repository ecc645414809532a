"""netem's fallback against real hosts, forced with fallback="always" so it runs on any kernel: nft numgen loss
and the NFQUEUE delay line, each checked where it acts (datagrams lost, round trips delayed), through another
path than the fault's own (`nft -j list table`, `iptables -S`, `ps`, the queue table in /proc), and gone after
heal. Figures are printed (run with -s to see them)."""

from __future__ import annotations

import json
import re
import statistics

import pytest
import tenacity

from faults import Netem, NetemFallbackError, netem_missing

pytestmark = pytest.mark.faults

PORT = 6677
DATAGRAMS = 2000
LOSS_PCT = 10
# The loss is random (numgen's PRNG cannot be seeded): with n = 2000 and p = 0.1, the number lost is binomial
# with standard deviation sqrt(n p (1 - p)) = 13.4. Six of them (+-80 around 200) fail a correct fallback with
# probability 2e-9; a fallback that lost nothing, everything, or 5 % or 15 % would fail it.
LOSS_SD = (DATAGRAMS * LOSS_PCT / 100 * (1 - LOSS_PCT / 100)) ** 0.5
# Besides the datagrams only ARP leaves the client's eth0 during the send (the agent's channel is docker exec):
# the drop counter may exceed the datagrams lost by the few ARP packets the loss took.
ARP_SLACK = 3
DELAY_MS = 50
# The delay line releases a packet no earlier than its time, so a round trip is never shorter than the delay.
# How much later is the machine's business: on the idle 2-core machine the median round trip grew by 0.3-0.4 ms
# beyond the delay (bench/netem_fallback.py); with three CPU-bound processes on it, p99 by 6-9 ms and single
# round trips by up to 27 ms. The median must stay within 20 ms of delay + baseline: far above the measured
# overhead, well below a doubled delay.
SLACK_MS = 20
PINGS = 10
WAIT = 5.0
RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for every datagram
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(float(sys.argv[2]))
seen = []
try:
    while True:
        seen.append(int(sock.recv(64)))
except TimeoutError:
    pass
print(" ".join(map(str, seen)))
"""
SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    sock.sendto(str(i).encode(), (sys.argv[1], int(sys.argv[2])))
    time.sleep(float(sys.argv[4]))
"""


# Evidence read independently of faults.netem_fallback


def netfault_tables(host) -> list[tuple[str, str]]:
    listing = json.loads(host.run(["nft", "-j", "list", "tables"], check=True).stdout)["nftables"]
    return [(i["table"]["family"], i["table"]["name"]) for i in listing
            if "table" in i and i["table"]["name"].startswith("netfault_")]


def loss_rule(host, name: str) -> list:
    """The expressions of the one rule in table netdev `name`."""
    listing = json.loads(host.run(["nft", "-j", "list", "table", "netdev", name], check=True).stdout)["nftables"]
    (rule,) = [i["rule"] for i in listing if "rule" in i]
    return rule["expr"]


def delay_lines(host) -> list[str]:
    """Command lines of the delay line processes in the host."""
    ps = host.run(["ps", "-eo", "args="], check=True).stdout.splitlines()
    return [line for line in ps if "delayline" in line and not line.startswith("ps ")]


def bound_queues(host) -> list[int]:
    text = host.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=True).stdout
    return [int(line.split()[0]) for line in text.splitlines()]


def leftovers(host) -> dict[str, list]:
    """Everything of netfault's a netem fallback could leave behind."""
    links = json.loads(host.run(["ip", "-j", "link", "show"], check=True).stdout)
    return {"tables": netfault_tables(host),
            "chains": [line for line in host.run(["iptables", "-S"], check=True).stdout.splitlines()
                       if "netfault_" in line],
            "processes": delay_lines(host), "queues": bound_queues(host),
            "links": [link["ifname"] for link in links if link["ifname"] not in ("lo", "eth0")]}


NOTHING = {"tables": [], "chains": [], "processes": [], "queues": [], "links": []}


def ping(client, server, count: int = PINGS) -> tuple[list[float], str]:
    """The round-trip times (ms) of `count` pings from client to server, and ping's output."""
    out = client.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", server.addr], timeout=60).stdout
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)], out


def receive(server, name: str, silence: float):
    """Start a UDP receiver on the server (numbers of the datagrams, in arrival order); returns once bound."""
    server.spawn(["python3", "-c", RECEIVER, str(PORT), str(silence)], name=name)
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT), wait=tenacity.wait_fixed(0.05),
                                     reraise=True):
        with attempt:
            assert server.sockets(proto="udp", port=PORT), "waiting for the receiver to bind"


def received(server, name: str) -> list[int]:
    run = server.wait(name, timeout=60)
    assert run.returncode == 0, run
    return [int(word) for word in run.stdout.split()]


# Loss


def test_loss_fallback_drops_about_n_percent_silently(pair):
    """2000 UDP datagrams, client egress loss 10 %: about 200 lost (binomial bound), every sendto() succeeds
    (netem's loss is silent to the sender), the rule's own counter accounts for the loss."""
    client, server = pair.client, pair.server
    fault = Netem(client, loss_pct=LOSS_PCT, fallback="always")
    receive(server, "rx", silence=2.0)
    with fault:
        expr = loss_rule(client, fault.substitute.name)
        handle = client.socket("udp").handle
        sent = client.send(handle, data=b"0", count=DATAGRAMS, addr=server.addr, port=PORT)
        dropped = next(e["counter"]["packets"] for e in loss_rule(client, fault.substitute.name) if "counter" in e)
    lost = DATAGRAMS - len(received(server, "rx"))
    print(f"\nloss fallback: {lost}/{DATAGRAMS} lost ({100 * lost / DATAGRAMS:.2f} %, expected {LOSS_PCT} % "
          f"+- {6 * LOSS_SD:.0f}); nft counter {dropped}")

    assert [r.errname for r in sent if r.errno is not None] == [], "sendto never fails: the loss is silent"
    assert expr[0] == {"match": {"op": "<", "left": {"numgen": {"mode": "random", "mod": 10000, "offset": 0}},
                                 "right": 1000}}, expr
    assert "counter" in expr[1] and expr[2] == {"fwd": {"dev": f"nfbh{fault.substitute.name[9:]}"}}, expr
    assert abs(lost - DATAGRAMS * LOSS_PCT / 100) <= 6 * LOSS_SD, lost
    assert 0 <= dropped - lost <= ARP_SLACK, f"the rule dropped {dropped}, the receiver missed {lost}"
    assert fault.record()["mechanism"] == "nft-numgen" and "fallback: nft numgen loss" in fault.describe()
    assert leftovers(client) == NOTHING


# Delay


def test_delay_fallback_adds_the_delay_to_round_trips_and_the_handshake(pair):
    """delay 50 ms on the server's egress: every ping round trip and the client's connect() take >= 50 ms more."""
    client, server = pair.client, pair.server
    baseline, _ = ping(client, server)
    server.listen(port=PORT, accept=True)
    before = client.connect(addr=server.addr, port=PORT)
    fault = Netem(server, delay_ms=DELAY_MS, fallback="always")
    with fault:
        during, out = ping(client, server)
        handshake = client.connect(addr=server.addr, port=PORT)
        queue = fault.substitute.line["queue"]
        chains = [line for line in server.run(["iptables", "-S"], check=True).stdout.splitlines()
                  if "NFQUEUE" in line]
        in_force = {"processes": delay_lines(server), "queues": bound_queues(server)}
    counters = fault.record()["fallback"]["delayline_exit"]["counters"]
    added = statistics.median(during) - statistics.median(baseline)
    print(f"\ndelay fallback {DELAY_MS} ms: baseline median {statistics.median(baseline):.3f} ms, during median "
          f"{statistics.median(during):.3f} ms (added {added:.3f}), min {min(during):.3f}, max {max(during):.3f}; "
          f"connect {1000 * before.elapsed:.3f} -> {1000 * handshake.elapsed:.3f} ms; delay line {counters}")

    assert len(during) == PINGS and min(during) >= DELAY_MS, out
    assert added <= DELAY_MS + SLACK_MS, out
    assert before.errno is None and handshake.errno is None and handshake.elapsed >= DELAY_MS / 1000, handshake
    assert chains == [f"-A {fault.substitute.chain} -o eth0 -m mark ! --mark {queue | 0x4E460000:#x} "
                      f"-j NFQUEUE --queue-num {queue}"], chains
    assert len(in_force["processes"]) == 1 and in_force["queues"] == [queue], in_force
    assert counters["packets"] == counters["released"] >= PINGS + 1, counters
    assert fault.record()["mechanism"] == "nfqueue-delayline"
    assert "(fallback: NFQUEUE delay line (userspace))" in fault.describe()
    assert leftovers(server) == NOTHING


def test_duplicate_and_reorder_through_the_delay_line(pair):
    """duplicate 100 %: every echo reply comes twice; reorder 50 % with delay 100 ms: about half the datagrams
    go at once, overtaking the ones sent before them."""
    client, server = pair.client, pair.server
    with Netem(server, delay_ms=5, duplicate_pct=100, fallback="always") as dup:
        _, out = ping(client, server)
    dups = re.search(r"\+(\d+) duplicates", out)
    assert dups and int(dups.group(1)) >= PINGS - 1, out  # the last copy may come after ping stopped
    copies = dup.record()["fallback"]["delayline_exit"]["counters"]
    assert copies["copies_sent"] == copies["duplicated"] == copies["packets"], copies

    count = 200
    receive(client, "rx", silence=1.0)
    with Netem(server, delay_ms=100, reorder_pct=50, fallback="always") as reorder:
        server.run(["python3", "-c", SENDER, client.addr, str(PORT), str(count), "0.002"], timeout=60, check=True)
    order = received(client, "rx")
    stats = reorder.record()["fallback"]["delayline_exit"]["counters"]
    overtaking = sum(1 for i in range(1, len(order)) if order[i] < order[i - 1])
    print(f"\nduplicate: {copies}\nreorder: {stats['reordered']}/{stats['packets']} sent at once, "
          f"{overtaking} inversions in the arrival order")
    assert sorted(order) == list(range(count)), "nothing lost, nothing duplicated"
    # Binomial: n = 200, p = 0.5, sd 7.1: 6 sd is +-42 around 100.
    assert stats["packets"] == count and abs(stats["reordered"] - count / 2) <= 42, stats
    assert overtaking > 0, order


# Heal


def test_two_faults_on_one_host_heal_independently(pair):
    """An egress and an ingress delay line on the server: each has its own queue, chain and process; healing
    one leaves the other in force; healing both leaves nothing."""
    client, server = pair.client, pair.server
    egress = Netem(server, delay_ms=30, fallback="always").apply()
    ingress = Netem(server, direction="ingress", delay_ms=20, loss_pct=0.01, fallback="always").apply()
    try:
        both = leftovers(server)
        rtt_both, _ = ping(client, server, 3)
        egress.heal()
        one = leftovers(server)
        rtt_one, _ = ping(client, server, 3)
    finally:
        egress.heal()
        ingress.heal()
    after = leftovers(server)
    print(f"\nboth: {both}\nafter healing egress: {one}\nrtt both {rtt_both}, ingress only {rtt_one}")

    queues = {egress.substitute.line["queue"], ingress.substitute.line["queue"]}
    assert len(both["processes"]) == 2 and set(both["queues"]) == queues and len(queues) == 2, both
    assert both["tables"] == [("netdev", ingress.substitute.name)] and len(both["chains"]) == 6, both
    assert min(rtt_both) >= 50 and min(rtt_one) >= 20, (rtt_both, rtt_one)
    assert one["queues"] == [ingress.substitute.line["queue"]] and len(one["processes"]) == 1, one
    assert one["tables"] == both["tables"] and len(one["chains"]) == 3, one
    assert all(ingress.substitute.chain in line for line in one["chains"]), one
    assert after == NOTHING


def test_dead_delay_line_stops_traffic_and_heal_says_so(pair):
    """No queue bypass: with its delay line killed the interface passes nothing (never un-faulted traffic);
    heal removes the rule, reports the death, and traffic flows again."""
    client, server = pair.client, pair.server
    fault = Netem(server, delay_ms=10, fallback="always").apply()
    server.signal(fault.substitute.line["name"], "SIGKILL")
    _, out = ping(client, server, 3)
    with pytest.raises(NetemFallbackError, match="died while the fault was in force \\(killed by SIGKILL\\)"):
        fault.heal()
    after, _ = ping(client, server, 3)
    assert "0 received" in out, out
    assert len(after) == 3 and leftovers(server) == NOTHING
    assert fault.record()["fallback"]["delayline_exit"] == {"returncode": -9, "signal": "SIGKILL", "counters": None}


def test_fallback_true_takes_netem_where_the_kernel_has_it(pair):
    server = pair.server
    with Netem(server, delay_ms=10, fallback=True) as fault:
        mechanism = fault.mechanism
    assert mechanism == ("netem" if netem_missing(server) is None else "nfqueue-delayline")
    assert leftovers(server) == NOTHING
