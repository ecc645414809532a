"""Sysctls faults: set for a block through the host's sidecar, read back through /proc/sys in the host itself."""

from __future__ import annotations

import pytest

from faults import Sysctls

pytestmark = pytest.mark.faults

SYN_RETRIES = "net.ipv4.tcp_syn_retries"
LINEAR = "net.ipv4.tcp_syn_linear_timeouts"
PORT_RANGE = "net.ipv4.ip_local_port_range"
PORT = 7003
EPHEMERAL = 45678


def _proc_sys(host, key: str) -> str:
    return host.run(["cat", "/proc/sys/" + key.replace(".", "/")], check=True).stdout.strip()


def test_sysctls_in_force_for_the_block_and_restored(pair):
    client, server = pair.client, pair.server
    before = {key: _proc_sys(client, key) for key in (SYN_RETRIES, LINEAR)}
    server_before = _proc_sys(server, SYN_RETRIES)
    fault = Sysctls(client, {SYN_RETRIES: 1, LINEAR: 0})
    with fault:
        during = {key: _proc_sys(client, key) for key in (SYN_RETRIES, LINEAR)}
        server_during = _proc_sys(server, SYN_RETRIES)
    after = {key: _proc_sys(client, key) for key in (SYN_RETRIES, LINEAR)}
    fault.heal()
    again = {key: _proc_sys(client, key) for key in (SYN_RETRIES, LINEAR)}
    evidence = f"\n{fault.record()}\nbefore {before}\nduring {during}\nafter {after}"

    assert during == {SYN_RETRIES: "1", LINEAR: "0"}, evidence
    assert server_during == server_before, "a sysctl of the client's namespace is not the server's" + evidence
    assert after == before and again == before, evidence
    assert fault.previous == before, evidence


def test_sysctls_shape_what_the_kernel_does(pair):
    """A one-port ephemeral range: the client's kernel picks exactly that port for a connect, and not after."""
    client, server = pair.client, pair.server
    listener = server.listen(port=PORT, accept=True)
    assert listener.ok, listener
    with Sysctls(client, {PORT_RANGE: f"{EPHEMERAL} {EPHEMERAL}"}):
        inside = client.connect(server.addr, PORT)
        inside_ports = [s["sport"] for s in client.sockets(dport=PORT) if s["handle"] == inside.handle]
    outside = client.connect(server.addr, PORT)
    outside_ports = [s["sport"] for s in client.sockets(dport=PORT) if s["handle"] == outside.handle]
    assert inside.ok and inside_ports == [EPHEMERAL], f"{inside} {client.sockets(dport=PORT)}"
    assert outside.ok and outside_ports != [EPHEMERAL], f"{outside} {client.sockets(dport=PORT)}"


def test_restored_when_the_block_raises(pair):
    client = pair.client
    before = _proc_sys(client, SYN_RETRIES)
    with pytest.raises(RuntimeError, match="workload"), Sysctls(client, {SYN_RETRIES: 2}):
        assert _proc_sys(client, SYN_RETRIES) == "2"
        raise RuntimeError("workload")
    assert _proc_sys(client, SYN_RETRIES) == before
