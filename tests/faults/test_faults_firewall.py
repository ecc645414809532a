"""Firewall faults against real hosts: Drop, Reject, Partition and PowerLoss, with nft and with iptables.

Each fault is checked three ways: in force when apply returns, read back through another path than the one
that set it (`nft -j list table` parsed as JSON; `iptables -S`, `arptables-save`); effective (what connect()
returns, what a capture on the receiving side sees); and gone after heal (no table or chain of ours left,
the traffic works again).
"""

from __future__ import annotations

import json

import pytest
import tenacity

from faults import Drop, Partition, PowerLoss, Reject
from harness.capture import capture

pytestmark = pytest.mark.faults

PORT = 6666
OTHER_PORT = 6667
BACKENDS = ["nft", "iptables"]
# As in S01: an answer to the first SYN comes in well under the first retransmission (1 s).
AT_ONCE = 0.5
# TCP_TIMEOUT_INIT: the first SYN retransmission is 1 s after the SYN, never earlier. Timing bounds here follow
# from the mechanism (never early; this retransmission and not a later one; no packet after the one that ended
# the call), not from the machine's speed: the 2-core machine these run on is shared, and under load timers
# and wake-ups were seen more than 0.5 s late. pcap times and record times are aligned within 2 ms (see S01).
SYN_RTO = 1.0
CLOCK_ALIGNMENT = 0.002
# Waiting for an event (not a timing assertion): a killed process's sockets close within milliseconds, but a
# loaded 2-core machine can take a second to schedule it.
WAIT_STATE = 5
POLL = 0.02
# How long "silence" is watched for: longer than an answer takes (AT_ONCE), shorter than a test should be.
SILENCE = 1.0

# reject_with -> (errno of a blocking connect(), the answer on the wire: ICMP destination-unreachable code, or
# "R." for a RST). Linux maps ICMP codes to errnos in icmp_err_convert; in SYN_SENT every one is fatal.
REJECTS = {
    "icmp-net-unreachable": ("ENETUNREACH", 0),
    "icmp-host-unreachable": ("EHOSTUNREACH", 1),
    "icmp-port-unreachable": ("ECONNREFUSED", 3),
    "icmp-net-prohibited": ("ENETUNREACH", 9),
    "icmp-host-prohibited": ("EHOSTUNREACH", 10),
    "icmp-admin-prohibited": ("EHOSTUNREACH", 13),
    "tcp-reset": ("ECONNREFUSED", "R."),
}


# Helpers: rules read back independently of faults.rules, answers on the wire, socket states


def nft_tables(host) -> list[tuple[str, str]]:
    """(family, name) of every netfault table in the host, from `nft -j list tables`."""
    listing = json.loads(host.run(["nft", "-j", "list", "tables"], check=True).stdout)["nftables"]
    return [(item["table"]["family"], item["table"]["name"]) for item in listing
            if "table" in item and item["table"]["name"].startswith("netfault_")]


def nft_rules(host, name: str, family: str = "ip") -> list[tuple[str, list]]:
    """(chain, expressions) of every rule in table `family name`, from `nft -j list table`; [] without it."""
    listed = host.run(["nft", "-j", "list", "table", family, name])
    if listed.returncode != 0 and "No such file or directory" in listed.stderr:
        return []
    listing = json.loads(listed.check().stdout)["nftables"]
    return [(item["rule"]["chain"], item["rule"]["expr"]) for item in listing if "rule" in item]


def xtables_lines(host, name: str, tool: str = "iptables") -> list[str]:
    """The `iptables -S` (or `arptables-save`) lines that mention chains named after `name`."""
    cmd = [tool, "-S"] if tool == "iptables" else ["arptables-save"]
    return [line for line in host.run(cmd, check=True).stdout.splitlines() if name in line]


def in_force(host, fault) -> list:
    """What the host has of `fault`: nft rules as JSON, or iptables lines, by the fault's backend."""
    if fault.backend == "nft":
        return nft_rules(host, fault.name)
    return xtables_lines(host, fault.name)


def leftovers(host) -> dict[str, list]:
    """Every netfault table (nft) and chain (iptables, arptables) in the host."""
    return {"nft": nft_tables(host), "iptables": xtables_lines(host, "netfault_"),
            "arptables": xtables_lines(host, "netfault_", "arptables")}


NOTHING_LEFT = {"nft": [], "iptables": [], "arptables": []}


def tcp_dport(port: int) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}}


def ip_addr(field: str, addr: str) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}}, "right": addr}}


IIF_LO = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}
TCP_RST = {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, "rst"]},
                     "right": "rst"}}


def nft_reject(reject_with: str) -> dict:
    if reject_with == "tcp-reset":
        return {"reject": {"type": "tcp reset"}}
    return {"reject": {"type": "icmp", "expr": reject_with.removeprefix("icmp-")}}


def answers_of(wire, server, reject_with: str) -> list:
    """The server's answers to the client's SYNs: ICMP destination-unreachable packets or RSTs."""
    code = REJECTS[reject_with][1]
    if code == "R.":
        return wire.tcp(src=server.addr, flags="R.")
    return [p for p in wire if p.proto == "icmp" and p.src == server.addr]


def wait_for_state(host, state: str, **where) -> dict:
    """The host's one socket matching `where` once it is in `state` (waits up to WAIT_STATE seconds)."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT_STATE), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            table = host.sockets(**where)
            assert [s["state"] for s in table] == [state], f"waiting for one {state} socket with {where}: {table}"
    return table[0]


def wait_for_neighbour(host, addr: str, state: str, within: float) -> dict:
    """The host's neighbour entry (`ip -j neigh`) for `addr` once it is in `state`."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(within), wait=tenacity.wait_fixed(10 * POLL),
                                     reraise=True):
        with attempt:
            entries = json.loads(host.run(["ip", "-j", "neigh", "show", "to", addr], check=True).stdout)
            assert [entry["state"] for entry in entries] == [[state]], f"waiting for {state}: {entries}"
    return entries[0]


# Drop


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_is_silence_in_force_at_once_and_gone_after_heal(pair, backend):
    """A dropped port: the SYN reaches the server's interface, its kernel never answers, and a non-blocking
    connect() is still in progress when the application's select() times out.

    Without the fault the same connect is refused at once; after heal it is refused again.
    """
    client, server = pair.client, pair.server
    before = client.connect(server.addr, PORT)
    assert before.errname == "ECONNREFUSED" and before.elapsed < AT_ONCE, before

    fault = Drop(server, protocol="tcp", dport=PORT, backend=backend)
    assert fault.backend == backend
    with fault:
        rules = in_force(server, fault)
        with capture(server, f"tcp port {PORT}") as wire:
            dropped = client.connect(server.addr, PORT, nonblocking=True, select_timeout=SILENCE)
            waiting = client.sockets(dport=PORT)
    after = leftovers(server)
    healed = client.connect(server.addr, PORT)
    fault.heal()
    evidence = (f"\n{fault.describe()}\nrules: {rules}\n{dropped} {dropped.extra}\nclient sockets: {waiting}\n"
                f"{wire.table(since=dropped.t0)}")

    if backend == "nft":
        assert rules == [("input", [tcp_dport(PORT), {"drop": None}])], evidence
    else:
        assert rules == [f"-N {fault.name}_in", f"-A INPUT -j {fault.name}_in",
                         f"-A {fault.name}_in -p tcp -m tcp --dport {PORT} -j DROP"], evidence
    assert dropped.errname == "EINPROGRESS", evidence
    assert not dropped.sub("select").extra["ready"] and dropped.sub("so_error").extra["value_name"] is None, evidence
    assert [s["state"] for s in waiting] == ["SYN_SENT"], evidence
    syns = wire.tcp(flags="S", src=client.addr, dst=server.addr)
    assert syns and dropped.t0 - CLOCK_ALIGNMENT <= syns[0].t <= dropped.t1 + CLOCK_ALIGNMENT, (
        "the SYN connect() sent reaches the server's interface" + evidence)
    assert wire.tcp(src=server.addr) == [], "the server's kernel never answers" + evidence
    assert after == NOTHING_LEFT, f"after heal: {after}" + evidence
    assert healed.errname == "ECONNREFUSED" and healed.elapsed < AT_ONCE, f"after heal: {healed}" + evidence
    assert fault.describe().startswith(f"Drop on server ({backend}, "), evidence
    assert fault.describe().endswith(": in tcp dport 6666 -> drop"), evidence
    record = fault.record()
    assert record["hosts"][0]["applied"][0]["cmd"][0] == ("nft" if backend == "nft" else "iptables-restore"), record
    assert record["applied_at"] < record["healed_at"], record


def test_backend_is_detected_and_nft_preferred(pair):
    """With no backend given, the first apply finds nft in the peer image (which also has iptables)."""
    fault = Drop(pair.server, dport=PORT)
    assert fault.backend == "auto"
    with fault:
        assert fault.backend == "nft"
        assert nft_tables(pair.server) == [("ip", fault.name)]
    assert nft_tables(pair.server) == []


# Reject


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reject_with", REJECTS)
def test_reject_gives_its_errno(pair, reject_with, backend):
    """S03: each REJECT answer and the errno a blocking connect() gets from it.

    On this zero-latency link the ICMP answering the first SYN arrives while connect() still holds the socket
    lock; the kernel then only stores it as a soft error and the connect fails on the ICMP answering the first
    retransmission, 1 s later. A RST is queued to the socket's backlog instead and fails the connect at once.
    """
    client, server = pair.client, pair.server
    errname, code = REJECTS[reject_with]
    with Reject(server, reject_with, protocol="tcp", dport=PORT, backend=backend) as fault:
        rules = in_force(server, fault)
        with capture(client, f"tcp port {PORT} or icmp") as wire:
            rec = client.connect(server.addr, PORT)
            lingering = client.sockets(port=PORT)
    syns = wire.tcp(flags="S", src=client.addr)
    answers = answers_of(wire, server, reject_with)
    evidence = f"\n{fault.describe()}\nrules: {rules}\n{rec}\n{wire.table(since=rec.t0)}"
    print(f"{reject_with} ({backend}): {rec.errname} after {rec.elapsed:.3f} s, {len(syns)} SYN(s)")

    # A tcp-reset Reject lets RSTs coming in on lo pass (see test_reject_both_ways_lets_its_answers_out).
    if backend == "nft":
        exempt = [("input", [IIF_LO, TCP_RST, {"accept": None}])] if code == "R." else []
        assert rules == [*exempt, ("input", [tcp_dport(PORT), nft_reject(reject_with)])], evidence
    else:
        exempt = [f"-A {fault.name}_in -i lo -p tcp -m tcp --tcp-flags RST RST -j RETURN"] if code == "R." else []
        reject = f"-A {fault.name}_in -p tcp -m tcp --dport {PORT} -j REJECT --reject-with {reject_with}"
        assert rules == [f"-N {fault.name}_in", f"-A INPUT -j {fault.name}_in", *exempt, reject], evidence
    assert rec.errname == errname, evidence
    assert lingering == [], "the failed connect leaves no socket behind" + evidence
    assert len(answers) == len(syns), "every SYN is answered" + evidence
    for syn, answer in zip(syns, answers):
        if code == "R.":
            assert (answer.sport, answer.dport, answer.ack) == (PORT, syn.sport, syn.seq + 1), evidence
        else:
            assert (answer.icmp_type, answer.icmp_code) == (3, code), evidence
            assert (answer.quoted_src, answer.sport, answer.dport) == (client.addr, syn.sport, PORT), evidence
    # connect() fails on the last answer: it returns after it, and no SYN follows it (the capture runs until
    # connect() returned, when another retransmission would have come 1 s later).
    assert syns[-1].t <= answers[-1].t <= rec.t1 + CLOCK_ALIGNMENT, evidence
    if code == "R." or len(syns) == 1:
        assert len(syns) == 1 and rec.elapsed < AT_ONCE, evidence
    else:
        # The answer to the SYN was lost to the socket lock; the first retransmission's answer failed it.
        assert len(syns) == 2, evidence
        assert SYN_RTO - 2 * CLOCK_ALIGNMENT <= syns[1].t - syns[0].t < 2 * SYN_RTO, evidence


@pytest.mark.parametrize(("backend", "reject_with", "scope"), [
    ("nft", "icmp-host-unreachable", "peer"), ("iptables", "icmp-admin-prohibited", "peer"),
    ("nft", "tcp-reset", "peer"), ("iptables", "tcp-reset", "peer"),
    ("nft", "icmp-port-unreachable", "everything"), ("iptables", "icmp-net-unreachable", "everything")])
def test_reject_both_ways_lets_its_answers_out(pair, backend, reject_with, scope):
    """Reject both ways in the server: the client's connect gets the fault's answer, and so does the server's
    own connect to the client.

    The answers must pass the fault's own chains: the answer to the client's SYN leaves through output, the
    answer to the server's SYN comes back to the server itself (in on lo; a RST with the client's address as
    its source), where the same match would otherwise swallow it and leave both connects to time out.
    """
    client, server = pair.client, pair.server
    errname, _ = REJECTS[reject_with]
    peer = client if scope == "peer" else None
    with Reject(server, reject_with, direction="both", peer=peer, backend=backend) as fault:
        rules = in_force(server, fault)
        inbound = client.connect(server.addr, PORT, nonblocking=True, select_timeout=2 * SYN_RTO)
        outbound = server.connect(client.addr, PORT, nonblocking=True, select_timeout=2 * SYN_RTO)
    evidence = (f"\n{fault.describe()}\nrules: {rules}\ninbound {inbound} {inbound.extra}\n"
                f"outbound {outbound} {outbound.extra}")
    for way, rec in (("inbound", inbound), ("outbound", outbound)):
        print(f"{reject_with} both ways ({backend}, {scope}): {way} {rec.sub('so_error').extra['value_name']} "
              f"after {rec.sub('select').t1 - rec.t0:.3f} s")

    assert inbound.sub("so_error").extra["value_name"] == errname, evidence
    assert outbound.sub("so_error").extra["value_name"] == errname, evidence
    assert leftovers(server) == NOTHING_LEFT, evidence


# Healing


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_faults_on_one_host_heal_independently(pair, backend):
    """Heal one fault: its rules are gone, the other fault's rules are still there and still effective."""
    client, server = pair.client, pair.server
    for port in (PORT, OTHER_PORT):
        assert server.listen(port=port, accept=True, options={"reuseaddr": 1}).ok
    drop = Drop(server, protocol="tcp", dport=PORT, backend=backend)
    reject = Reject(server, "tcp-reset", dport=OTHER_PORT, backend=backend)
    with reject:
        with drop:
            both = in_force(server, drop), in_force(server, reject)
        rules_after = in_force(server, drop), in_force(server, reject)
        freed = client.connect(server.addr, PORT)
        refused = client.connect(server.addr, OTHER_PORT)
    evidence = f"\n{drop.describe()}\n{reject.describe()}\nwith both: {both}\nafter healing the drop: {rules_after}"

    assert both[0] and both[1], evidence
    assert rules_after == ([], both[1]), evidence
    assert freed.ok, f"{freed}" + evidence
    assert refused.errname == "ECONNREFUSED" and refused.elapsed < AT_ONCE, f"{refused}" + evidence
    assert leftovers(server) == NOTHING_LEFT, evidence


def test_heal_runs_when_the_body_raises(pair):
    server = pair.server
    with pytest.raises(RuntimeError, match="test body failed"):
        with Drop(server, dport=PORT) as fault:
            assert nft_tables(server) == [("ip", fault.name)]
            raise RuntimeError("test body failed")
    assert leftovers(server) == NOTHING_LEFT


@pytest.mark.parametrize("backend", BACKENDS)
def test_heal_is_idempotent_and_tolerates_rules_removed_by_someone_else(pair, backend):
    """heal before apply does nothing; heal after someone else removed the rules, and heal twice, succeed."""
    server = pair.server
    fault = PowerLoss(server, backend=backend)
    fault.heal()
    assert fault.healed_at is None
    fault.apply()
    name = fault.name
    if backend == "nft":
        server.run(["nft", "delete", "table", "ip", name], check=True)
        assert nft_tables(server) == [("arp", name)]
    else:
        for cmd in (["iptables", "-D", "INPUT", "-j", f"{name}_in"], ["arptables", "-F", f"{name}_out"],
                    ["arptables", "-D", "OUTPUT", "-j", f"{name}_out"], ["arptables", "-X", f"{name}_out"]):
            server.run(cmd, check=True)
    fault.heal()
    fault.heal()
    assert leftovers(server) == NOTHING_LEFT
    assert fault.healed_at is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_heal_leaves_rules_it_did_not_add(pair, backend):
    """A table (nft) or rule (iptables) the test adds itself survives the fault's apply and heal."""
    client, server = pair.client, pair.server

    def read_mine() -> list:
        if backend == "nft":
            return nft_rules(server, "testowned")
        return [line for line in xtables_lines(server, "") if str(OTHER_PORT) in line]

    if backend == "nft":
        mine = ("table ip testowned {\n chain input {\n  type filter hook input priority filter; policy accept;\n"
                f"  tcp dport {OTHER_PORT} drop\n }}\n}}\n")
        server.run(["nft", "-f", "-"], input=mine, check=True)
        remove = ["nft", "delete", "table", "ip", "testowned"]
    else:
        rule = ["INPUT", "-p", "tcp", "--dport", str(OTHER_PORT), "-j", "DROP"]
        server.run(["iptables", "-A", *rule], check=True)
        # iptables-nft created the filter table for this rule: the test removes both (the leak check).
        remove = ["sh", "-c", f"iptables -D {' '.join(rule)} && nft delete table ip filter"]
    try:
        before = read_mine()
        with Drop(server, dport=PORT, backend=backend):
            pass
        after = read_mine()
        still_dropped = client.connect(server.addr, OTHER_PORT, nonblocking=True, select_timeout=SILENCE)
    finally:
        server.run(remove, check=True)
    assert before and after == before, f"before: {before}\nafter: {after}"
    assert not still_dropped.extra["select"]["ready"], f"the test's own rule still drops: {still_dropped.extra}"
    assert leftovers(server) == NOTHING_LEFT


# Partition


@pytest.mark.parametrize("backend", BACKENDS)
def test_partition_two_way_nothing_arrives_then_the_connection_recovers(pair, backend):
    """Client and server partitioned: data sent either way never reaches the other host's interface; after
    heal the client's retransmission delivers it and the connection carries on."""
    client, server = pair.client, pair.server
    listener = server.listen(port=PORT, options={"reuseaddr": 1})
    conn = client.connect(server.addr, PORT)
    assert conn.ok, conn
    accepted = server.accept(listener.handle, timeout=2)
    assert accepted.ok, accepted
    fault = Partition(client, server, backend=backend)
    with fault:
        rules = {"client": in_force(client, fault), "server": in_force(server, fault)}
        with capture(server, f"host {client.addr}") as at_server, capture(client, f"host {server.addr}") as at_client:
            sent = client.send(conn.handle, size=100)
            back = server.send(accepted.handle, size=50)
            lost = server.recv(accepted.handle, timeout=SILENCE)
    delivered = server.recv(accepted.handle, timeout=5)
    evidence = (f"\n{fault.describe()}\nrules: {rules}\n{sent}\n{back}\n{lost}\n{delivered}\n"
                f"{at_server.table(since=sent.t0)}\n{at_client.table(since=sent.t0)}")

    if backend == "nft":
        for host, other in ((client, server), (server, client)):
            assert rules[host.name] == [("input", [ip_addr("saddr", other.addr), {"drop": None}]),
                                        ("output", [ip_addr("daddr", other.addr), {"drop": None}])], evidence
    else:
        for host, other in ((client, server), (server, client)):
            name = fault.name
            assert rules[host.name] == [f"-N {name}_in", f"-N {name}_out", f"-A INPUT -j {name}_in",
                                        f"-A OUTPUT -j {name}_out", f"-A {name}_in -s {other.addr}/32 -j DROP",
                                        f"-A {name}_out -d {other.addr}/32 -j DROP"], evidence
    assert sent.ret == 100 and back.ret == 50, "TCP send() queues the data; nothing fails locally" + evidence
    assert lost.errname == "EAGAIN", evidence
    assert list(at_server) == [] and list(at_client) == [], "no host's interface sees the other's packets" + evidence
    assert delivered.ret == 100, "after heal the retransmitted data arrives" + evidence
    assert leftovers(client) == NOTHING_LEFT and leftovers(server) == NOTHING_LEFT, evidence


@pytest.mark.parametrize("on_arrival", [False, True], ids=["where-it-leaves", "on-arrival"])
def test_partition_one_way_client_is_not_heard_but_hears(pair, on_arrival):
    """One-way: the server hears nothing from the client, the client still hears the server (UDP both ways).

    Dropped where it leaves, the client's datagram fails locally with EPERM and never shows on the server's
    interface; dropped on arrival, the sendto() succeeds, the datagram shows on the server's interface, and
    the server's socket never gets it.
    """
    client, server = pair.client, pair.server
    at_client = client.socket("udp")
    at_server = server.socket("udp")
    assert client.bind(at_client.handle, port=PORT).ok and server.bind(at_server.handle, port=PORT).ok
    fault = Partition(client, server, one_way=True, on_arrival=on_arrival)
    with fault:
        tables = {"client": nft_tables(client), "server": nft_tables(server)}
        with capture(server, f"udp port {PORT}") as wire:
            lost = client.send(at_client.handle, size=10, addr=server.addr, port=PORT)
            heard = server.send(at_server.handle, size=20, addr=client.addr, port=PORT)
            got = client.recv(at_client.handle, timeout=SILENCE)
            nothing = server.recv(at_server.handle, timeout=SILENCE)
    evidence = (f"\n{fault.describe()}\ntables: {tables}\n{lost}\n{heard}\n{got}\n{nothing}\n"
                f"{wire.table(since=lost.t0)}")

    assert tables["server"] == [("ip", fault.name)], evidence
    assert tables["client"] == ([] if on_arrival else [("ip", fault.name)]), evidence
    assert heard.ret == 20 and got.ret == 20, "the client hears the server" + evidence
    assert nothing.errname == "EAGAIN", "the server hears nothing" + evidence
    from_client = [p for p in wire if p.src == client.addr]
    if on_arrival:
        assert lost.ret == 10, evidence
        assert len(from_client) == 1, "the datagram reaches the server's interface" + evidence
    else:
        assert lost.errname == "EPERM", "netfilter reports a drop on output to the sender" + evidence
        assert from_client == [], "nothing reaches the server's interface" + evidence
    assert leftovers(client) == NOTHING_LEFT and leftovers(server) == NOTHING_LEFT, evidence


# Power loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_power_loss_no_fin_no_rst_no_arp(pair, backend):
    """The server loses power while a client is connected; its process dies meanwhile: no FIN, no RST, no
    ARP answer reaches the client, whose neighbour entry for the server fails. After heal the server answers
    ARP and its kernel answers the next SYN (a RST: the listener is gone)."""
    client, server = pair.client, pair.server
    # The client's neighbour entry fails after mcast_solicit unanswered probes, retrans_time_ms apart.
    probes, interval = "net.ipv4.neigh.eth0.mcast_solicit", "net.ipv4.neigh.eth0.retrans_time_ms"
    arp = client.sysctl_get([probes, interval])
    arp_gives_up = int(arp[probes]) * int(arp[interval]) / 1000
    proc = server.spawn_worker("server-process")
    # reuseaddr: an earlier test's orphan may still hold the port (FIN_WAIT, TIME_WAIT).
    assert proc.listen(port=PORT, accept=True, options={"reuseaddr": 1}).ok
    conn = client.connect(server.addr, PORT)
    assert conn.ok, conn
    fault = PowerLoss(server, backend=backend)
    with fault:
        if backend == "nft":
            rules = {family: nft_rules(server, fault.name, family) for family in ("ip", "arp")}
        else:
            rules = {tool: xtables_lines(server, fault.name, tool) for tool in ("iptables", "arptables")}
        with capture(client, f"host {server.addr}") as wire:
            proc.signal("SIGKILL")
            orphan = wait_for_state(server, "FIN_WAIT1", sport=PORT, dport=conn.extra["local"][1])
            client.run(["ip", "neigh", "flush", "to", server.addr], check=True)
            silent = client.connect(server.addr, OTHER_PORT, nonblocking=True, select_timeout=SILENCE)
            neighbour = wait_for_neighbour(client, server.addr, "FAILED", arp_gives_up + WAIT_STATE)
    refused = client.connect(server.addr, PORT)
    evidence = (f"\n{fault.describe()}\nrules: {rules}\nthe server's socket: {orphan}\n{silent} {silent.extra}\n"
                f"client's neighbour entry: {neighbour}\n{wire.table()}")

    if backend == "nft":
        assert rules == {"ip": [("input", [{"drop": None}]), ("output", [{"drop": None}])],
                         "arp": [("input", [{"drop": None}]), ("output", [{"drop": None}])]}, evidence
    else:
        name = fault.name
        jumps_and_drops = [f"-A INPUT -j {name}_in", f"-A OUTPUT -j {name}_out", f"-A {name}_in -j DROP",
                           f"-A {name}_out -j DROP"]
        assert rules == {"iptables": [f"-N {name}_in", f"-N {name}_out", *jumps_and_drops],
                         "arptables": [f":{name}_in -", f":{name}_out -", *jumps_and_drops]}, evidence
    assert wire.tcp(src=server.addr) == [], "no FIN, no RST leaves the server" + evidence
    assert not silent.extra["select"]["ready"], evidence
    assert "lladdr" not in neighbour, "no ARP answer: the client never learnt the server's address" + evidence
    # The failed entry is probed again at the next packet: answered at once now.
    assert refused.errname == "ECONNREFUSED" and refused.elapsed < AT_ONCE, f"after heal: {refused}" + evidence
    assert leftovers(server) == NOTHING_LEFT, evidence
