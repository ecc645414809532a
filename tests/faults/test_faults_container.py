"""Container faults on the server host: pause (its kernel still ACKs and buffers), hard and graceful reboots
(same address, new namespace; what the client's old connection sees), kill and stop healed to a running host.

State is checked through the engine's inspect (docker backend) or the processes in the host's namespace
(netns backend), and the host's own `ip -j`/procfs, not the driver call that changed it."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import tenacity

from faults import Kill, Pause, Restart, Stop
from harness.backends.netns import namespace_pids
from harness.capture import capture
from harness.channel import ChannelClosed

pytestmark = pytest.mark.faults

PORT = 7004
DATA = 32 * 1024
POLL = 0.05
# How long to wait for events (not timing assertions): ACKs from a paused host's kernel come within a
# round trip (sub-ms), an RST as the answer to the next segment likewise; a loaded 2-core machine can take
# a second or more to schedule the agents that observe them.
EVENT = 10
FIN_TIMEOUT_KEY = "net.ipv4.tcp_fin_timeout"


def _inspect(pair, host) -> dict:
    """Status, Paused and Running as `docker inspect` says them; for a namespace, from its processes."""
    backend = pair.testbed.backend
    if backend.name == "docker":
        return backend.client.api.inspect_container(host.driver.container_id)["State"]
    states = {Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
              for pid in namespace_pids(host.driver.ns)}
    paused = states == {"T"}
    return {"Status": "paused" if paused else "running" if states else "exited", "Paused": paused,
            "Running": bool(states)}


def _eth0(host) -> dict:
    """eth0's addresses and the identity of the network namespace it is in."""
    link = json.loads(host.run(["ip", "-j", "addr", "show", "dev", "eth0"], check=True).stdout)[0]
    netns = host.run(["readlink", "/proc/self/ns/net"], check=True).stdout.strip()
    return {"netns": netns, "addrs": [a["local"] for a in link["addr_info"]]}


def _proc_sys(host, key: str) -> str:
    return host.run(["cat", "/proc/sys/" + key.replace(".", "/")], check=True).stdout.strip()


def _sidecars(pair, host) -> list[str]:
    """The docker backend's sysctl sidecars of `host` (the netns backend writes sysctls from the agent)."""
    if pair.testbed.backend.name != "docker":
        return []
    name = f"{host.driver.name}-sysctl"
    return [c.id for c in pair.testbed.backend.client.containers.list(all=True, filters={"name": name})]


def _connected(pair, worker: bool) -> tuple[str, str, object]:
    """A client connection to the server; returns the client's handle, the server's, and the server process."""
    client, server = pair.client, pair.server
    proc = server.spawn_worker("server-process") if worker else server
    listener = proc.listen(port=PORT, accept=True)
    assert listener.ok, listener
    conn = client.connect(server.addr, PORT)
    assert conn.ok, conn
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            accepted = proc.accepted(listener.handle)
            assert accepted, "the server has not accepted yet"
    return conn.handle, accepted[0].handle, proc


def _mine(host, handle: str) -> list[dict]:
    return [s for s in host.sockets(port=PORT) if s["handle"] == handle]


def test_paused_host_kernel_acks_and_buffers(pair):
    """S22's container variant: the paused server's kernel ACKs everything the client sends (Send-Q drains to
    0 on the client), the client sees no error; after unpause the server process reads it all."""
    client, server = pair.client, pair.server
    conn, accepted, _ = _connected(pair, worker=False)
    fault = Pause(server)
    with fault:
        state = _inspect(pair, server)
        sent = client.send(conn, size=4096, count=DATA // 4096)
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                drained = _mine(client, conn)
                assert drained and drained[0]["send_q"] == 0, drained
    fault.heal()
    total = 0
    while total < DATA:
        chunk = server.recv(accepted, size=DATA, timeout=EVENT)
        assert chunk.ok and chunk.ret > 0, chunk
        total += chunk.ret
    evidence = f"\n{fault.record()}\nstate {state}\nsent {sent}\nclient socket {drained}"

    assert state["Paused"] is True and state["Status"] == "paused", evidence
    assert all(r.ok for r in sent) and sent.total == DATA, "no error on the client" + evidence
    assert drained[0]["state"] == "ESTABLISHED" and drained[0]["tcp_info"]["unacked"] == 0, evidence
    assert drained[0]["t"] < fault.healed_at, "drained while the server was paused" + evidence
    assert total == DATA, evidence
    assert _inspect(pair, server)["Status"] == "running" and server.info()["name"] == "server", evidence


def test_pause_healed_when_the_block_raises(pair):
    server = pair.server
    with pytest.raises(RuntimeError, match="workload"), Pause(server) as fault:
        assert _inspect(pair, server)["Paused"] is True
        raise RuntimeError("workload")
    fault.heal()
    assert _inspect(pair, server)["Status"] == "running" and server.info()["name"] == "server"


def _rebooted(pair, graceful: bool) -> dict:
    """Reboot the server under a client connection; everything observed before and after."""
    client, server = pair.client, pair.server
    server.set_sysctls({FIN_TIMEOUT_KEY: 7})
    seen: dict = {"eth0": _eth0(server), "sidecars": _sidecars(pair, server), "info": server.info()}
    conn, _, _ = _connected(pair, worker=True)
    with capture(client, f"tcp port {PORT}") as wire:
        fault = Restart(server, graceful=graceful).apply()
        seen["client_after_boot"] = _mine(client, conn)
        seen["send"] = client.send(conn, size=100)
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                assert not _mine(client, conn), "the RST has not closed the client's socket yet"
        seen["recv"] = client.recv(conn, size=100, timeout=1)
        seen["send_again"] = client.send(conn, size=100)
    seen.update(fault=fault, wire=wire, eth0_after=_eth0(server), info_after=server.info(),
                fin_timeout_after=_proc_sys(server, FIN_TIMEOUT_KEY),
                icmp_ratelimit_after=_proc_sys(server, "net.ipv4.icmp_ratelimit"),
                sysctl_previous=server.set_sysctls({FIN_TIMEOUT_KEY: 9}),
                fin_timeout_set=_proc_sys(server, FIN_TIMEOUT_KEY), sidecars_after=_sidecars(pair, server))
    fault.heal()
    seen["state_after_heal"] = _inspect(pair, server)["Status"]
    seen["evidence"] = "\n".join(f"{k}: {v}" for k, v in seen.items() if k != "wire") + "\n" + wire.table()
    return seen


def _same_host_new_namespace(seen: dict) -> None:
    evidence = seen["evidence"]
    assert seen["eth0_after"]["addrs"] == seen["eth0"]["addrs"], "same address" + evidence
    assert seen["eth0_after"]["netns"] != seen["eth0"]["netns"], "a new network namespace" + evidence
    assert seen["fin_timeout_after"] == "60", "run-time sysctls are gone (kernel default 60)" + evidence
    assert seen["icmp_ratelimit_after"] == "0", "the compose file's sysctls are back" + evidence
    assert seen["sysctl_previous"] == {FIN_TIMEOUT_KEY: "60"} and seen["fin_timeout_set"] == "9", (
        "the recreated sidecar writes into the new namespace" + evidence)
    if seen["sidecars"]:
        assert len(seen["sidecars_after"]) == 1 and seen["sidecars_after"] != seen["sidecars"], evidence
    assert seen["state_after_heal"] == "running", evidence


def test_hard_restart_old_connection_gets_econnreset(pair):
    """S14: the server reboots without a word (links down, then killed and booted). The client's connection
    stays ESTABLISHED; its next segment is answered with RST and the next call gets ECONNRESET."""
    server, client = pair.server, pair.client
    seen = _rebooted(pair, graceful=False)
    wire, evidence = seen["wire"], seen["evidence"]

    _same_host_new_namespace(seen)
    assert [s["state"] for s in seen["client_after_boot"]] == ["ESTABLISHED"], "nothing reached the client" + evidence
    assert wire.tcp(src=server.addr, flags="F.") == [], evidence
    assert seen["send"].ok and seen["send"].ret == 100, "the first write only queues" + evidence
    rst = wire.tcp(src=server.addr, flags="R")
    assert len(rst) == 1 and rst[0].t > seen["fault"].applied_at, "the RST answers the write after boot" + evidence
    assert seen["recv"].errno == errno.ECONNRESET, evidence
    assert seen["send_again"].errno == errno.EPIPE, "after the error is reported, the socket is closed" + evidence
    assert client.info()["name"] == "client"


def test_graceful_restart_old_connection_gets_fin_then_epipe(pair):
    """docker restart: the server's processes die with the network up, so the client gets a FIN (CLOSE_WAIT,
    recv() returns 0); its next write is answered with RST, which in CLOSE_WAIT is reported as EPIPE."""
    server = pair.server
    seen = _rebooted(pair, graceful=True)
    wire, evidence = seen["wire"], seen["evidence"]

    _same_host_new_namespace(seen)
    assert [s["state"] for s in seen["client_after_boot"]] == ["CLOSE_WAIT"], evidence
    fins = wire.tcp(src=server.addr, flags="F.")
    assert fins and len({p.seq for p in fins}) == 1, "one FIN (retransmitted if the ACK came late)" + evidence
    assert seen["send"].ok and seen["send"].ret == 100, evidence
    assert len(wire.tcp(src=server.addr, flags="R")) == 1, evidence
    assert seen["recv"].ok and seen["recv"].ret == 0, "EOF: the FIN came first" + evidence
    assert seen["send_again"].errno == errno.EPIPE, evidence


@pytest.mark.parametrize("fault_class", [Kill, Stop])
def test_kill_and_stop_heal_to_a_running_host(pair, fault_class):
    server = pair.server
    before = _eth0(server)
    fault = fault_class(server)
    fault.apply()
    down = _inspect(pair, server)
    with pytest.raises(ChannelClosed):
        server.info()
    fault.heal()
    up = _inspect(pair, server)
    fault.heal()
    after = _eth0(server)
    evidence = f"\n{fault.record()}\ndown {down}\nup {up}\nbefore {before}\nafter {after}"
    assert down["Status"] == "exited" and down["Running"] is False, evidence
    assert up["Status"] == "running" and after["addrs"] == before["addrs"], evidence
    assert server.info()["name"] == "server" and _inspect(pair, server)["Status"] == "running", evidence
