"""Healing leaves nothing behind: after a Ctrl-C in the middle of many faults, the hosts' rules, qdiscs,
links, addresses, routes and sysctls are as before, read through `nft -j`, `tc -j` and `ip -j`
(harness.netstate), not through the code that made the changes. The pair fixture runs the same comparison
after every test; here it is shown to see a leak.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from faults import Drop, LinkDown, Partition, Reject, Schedule, Sysctls
from harness.netstate import differences, snapshot

pytestmark = pytest.mark.faults

SYN_RETRIES = "net.ipv4.tcp_syn_retries"


def interrupt_after(seconds: float) -> threading.Timer:
    """A Ctrl-C for this process (SIGINT: the main thread raises KeyboardInterrupt) after `seconds`."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_inside_nested_faults_heals_all_of_them(pair):
    client, server = pair.client, pair.server
    before = {host.name: snapshot(host) for host in (client, server)}
    syn_retries = client.sysctl_get([SYN_RETRIES])[SYN_RETRIES]
    faults = [Drop(server, protocol="tcp", dport=7000, backend="nft"),
              Reject(client, "tcp-reset", direction="out", dport=7001, backend="iptables"),
              Partition(client, server, one_way=True, backend="iptables"),
              LinkDown(client),
              Sysctls(client, {SYN_RETRIES: 1})]
    interrupt_after(2.0)
    with pytest.raises(KeyboardInterrupt):
        with faults[0], faults[1], faults[2], faults[3], faults[4]:
            during = {host.name: snapshot(host) for host in (client, server)}
            time.sleep(30)
    for host in (client, server):
        assert differences(before[host.name], during[host.name]), f"no fault showed in {host.name}'s state"
        assert differences(before[host.name], snapshot(host)) == "", f"{host.name} kept some of the faults"
    assert client.sysctl_get([SYN_RETRIES])[SYN_RETRIES] == syn_retries
    assert all(fault.healed_at is not None for fault in faults), [fault.record() for fault in faults]


def test_ctrl_c_during_a_schedule_heals_what_was_applied(pair):
    client, server = pair.client, pair.server
    before = {host.name: snapshot(host) for host in (client, server)}
    early, late = Drop(server, dport=7000), Drop(client, direction="out", dport=7000)
    schedule = Schedule().add(early).add(LinkDown(server), at=0.3, duration=0.3).add(late, at=60)
    interrupt_after(1.5)
    with pytest.raises(KeyboardInterrupt):
        with schedule:
            time.sleep(30)
    for host in (client, server):
        assert differences(before[host.name], snapshot(host)) == "", f"{host.name} kept some of the faults"
    records = {record["describe"]: record for record in schedule.records()}
    assert records[early.describe()]["healed_at"] is not None, records
    assert records[late.describe()]["applied_at"] is None, records


def test_the_leak_check_sees_a_fault_that_was_not_healed(pair):
    server = pair.server
    before = snapshot(server)
    fault = Drop(server, dport=7000).apply()
    try:
        leak = differences(before, snapshot(server))
        assert fault.name in leak, leak
    finally:
        fault.heal()
    assert differences(before, snapshot(server)) == ""
