"""The network-namespace backend: hosts as plain network namespaces on a bridge, agents over pipes.

No container engine: root on a Linux kernel is enough (the kernel matrix runs the catalogue this way inside
QEMU guests). Per test bed, one namespace holds the bridge (with the gateway address, no route out) and one
namespace per host holds its `eth0`, the other end of a veth pair on that bridge; the machine's own network
namespace is never touched. Each host's agent is `python -m harness.agent` started with `ip netns exec` (which
also gives it a /sys of its namespace) under `setpriv`, bounded to Docker's default capabilities plus
NET_ADMIN and NET_RAW, talking over its stdin/stdout pipes: the control channel never crosses the test network.

Container operations map to their namespace equivalents: pause is SIGSTOP of every process in the host's
namespace (the cgroup freezer of `docker pause` freezes the same processes), kill/stop signal them all and
remove the namespace (its veth goes with it), start makes a new namespace with the same address and MAC.
Every namespace is named `nf-<run id>-...` and has a label file under /run/netfault/netns/ naming the process
that owns it, so `netfault reap` removes the namespaces of dead runs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import NetNS, netns

from ..channel import AgentChannel, PipeTransport
from ..errors import ConfigError, EngineUnavailable, SysctlError
from ..programs import AgentProgram, Program
from ..runinfo import RunInfo
from ..topology import HostSpec, Topology
from .base import Backend, Host, HostDriver, Testbed

NETNS_DIR = Path("/run/netns")
LABELS_DIR = Path("/run/netfault/netns")
# A host's files (Host.put_file) and its programs' default cwd: FILES_DIR/<namespace>, kept over kill and restart
# (a container's filesystem is), removed with the test bed or by the reaper. Not under /run: often noexec.
FILES_DIR = Path("/var/tmp/netfault/files")
PREFIX = "nf-"
BRIDGE = "br0"
# What the agent and its tools need on the machine, by the Debian package that has it.
REQUIRED_TOOLS = {"ip": "iproute2", "tc": "iproute2", "ss": "iproute2", "nft": "nftables", "iptables": "iptables",
                  "tcpdump": "tcpdump", "setpriv": "util-linux", "ps": "procps", "ping": "iputils-ping"}
# Docker's default capabilities plus the two hosts are given in docker-compose.yml: the agent's bounding set.
AGENT_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
              "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap", "net_admin")
# As in Docker containers (and on their bridge network without IPv6): no IPv6, so no link-local addresses,
# router solicitations or MLD reports on the test network.
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
# Routes made as `ip route add` and Docker make them (pyroute2 would say "static").
RTPROT_BOOT = 3
_GONE_TIMEOUT = 10.0


def _ns_path(name: str) -> Path:
    return NETNS_DIR / name


def namespace_pids(name: str) -> list[int]:
    """The processes whose network namespace is `name` (none when it does not exist)."""
    try:
        target = os.stat(_ns_path(name))
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                pids.append(int(entry))
    return pids


def _state_letter(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def signal_namespace(name: str, sig: signal.Signals) -> list[int]:
    """Send `sig` to every process in namespace `name`; returns the pids signalled."""
    pids = namespace_pids(name)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
    return pids


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    """Poll `done` every 10 ms for up to `timeout` seconds; whether it came true."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def stop_namespace(name: str) -> None:
    """SIGSTOP every process in `name` until none runs (new children of stopped ones are caught too)."""
    def all_stopped() -> bool:
        pids = signal_namespace(name, signal.SIGSTOP)
        return all(_state_letter(pid) in ("T", None) for pid in pids)
    if not _wait(all_stopped, _GONE_TIMEOUT):
        raise EngineUnavailable(f"processes of namespace {name} still running {_GONE_TIMEOUT:g} s after SIGSTOP")


def kill_namespace(name: str, term_timeout: float = 0.0) -> None:
    """SIGTERM (when `term_timeout` > 0: then wait that long) and SIGKILL every process in `name` until none is
    left, then remove the namespace: it is destroyed with its sockets and interfaces."""
    if term_timeout > 0 and signal_namespace(name, signal.SIGTERM):
        _wait(lambda: not namespace_pids(name), term_timeout)  # then SIGKILL, as `docker stop` does
    signal_namespace(name, signal.SIGCONT)
    if not _wait(lambda: not signal_namespace(name, signal.SIGKILL), _GONE_TIMEOUT):
        raise EngineUnavailable(f"processes of namespace {name} survived SIGKILL for {_GONE_TIMEOUT:g} s: "
                                f"{namespace_pids(name)}")
    remove_namespace(name)


def remove_namespace(name: str) -> None:
    """Unmount and delete the namespace's name and its label file (idempotent)."""
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    (LABELS_DIR / name).unlink(missing_ok=True)


def remove_host_files(name: str) -> None:
    """Delete the files directory of namespace `name` (idempotent)."""
    shutil.rmtree(FILES_DIR / name, ignore_errors=True)


def list_namespaces() -> list[str]:
    """The netfault namespaces on this machine (named `nf-...`)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def namespace_labels(name: str) -> dict[str, str]:
    """The labels the creating process wrote for namespace `name` ({} when there are none)."""
    try:
        return json.loads((LABELS_DIR / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def check_prerequisites() -> None:
    """Root and the tools the agent runs; raises EngineUnavailable saying what is missing and how to get it."""
    if os.geteuid() != 0:
        raise EngineUnavailable("the netns backend needs root (it creates network namespaces): run as root, or use "
                                "--netfault-backend docker")
    missing = {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None}
    if missing:
        raise EngineUnavailable(f"the netns backend runs the agent's tools on this machine; missing: "
                                f"{', '.join(missing)}: apt-get install {' '.join(sorted(set(missing.values())))}")


def _mac(addr: str) -> str:
    """Docker's MAC for an address: 02:42 and the four address bytes (so a reboot keeps it)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(addr).packed)


class NetnsHostDriver(HostDriver):
    """A host as a network namespace with an agent in it."""

    def __init__(self, backend: NetnsBackend, spec: HostSpec, ns: str, channel: AgentChannel) -> None:
        self.backend = backend
        self.spec = spec
        self.ns = ns
        self.channel = channel
        self._paused = False

    def describe(self) -> str:
        return f"network namespace {self.ns}"

    def set_sysctls(self, values: Mapping[str, str]) -> dict[str, str]:
        return self.channel.call("sysctl_set", values=dict(values))

    def state(self) -> str:
        if not namespace_pids(self.ns):
            return "exited"
        return "paused" if self._paused else "running"

    def pause(self) -> None:
        stop_namespace(self.ns)
        self._paused = True

    def unpause(self) -> None:
        signal_namespace(self.ns, signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        kill_namespace(self.ns)
        self._paused = False

    def stop(self, timeout: float) -> None:
        kill_namespace(self.ns, term_timeout=timeout)
        self._paused = False

    def start(self) -> AgentChannel:
        self.channel = self.backend.boot(self.spec, self.ns)
        return self.channel

    def restart(self, timeout: float) -> AgentChannel:
        self.stop(timeout)
        return self.start()

    @property
    def files_dir(self) -> str:  # type: ignore[override]
        return str(FILES_DIR / self.ns)

    def put_file(self, dest: str, data: bytes, mode: int) -> str:
        root = Path(self.files_dir)
        path = Path(os.path.normpath(root / dest))
        if not path.is_relative_to(root) or path == root:
            raise ConfigError(f"host {self.spec.name}: put_file destination {dest!r}: on the netns backend a host's "
                              f"files live in its files_dir {root}; give a path relative to it (or under it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        return str(path)

    def launch(self, host: Host, argv: Sequence[str], name: str, env: Mapping[str, str] | None,
               cwd: str | None) -> Program:
        environment = {**self.spec.environment, **(env or {})}
        return AgentProgram(host, name, argv, environment or None, cwd or self.files_dir)

    def main_program(self, host: Host) -> Program:
        raise ConfigError(f"host {self.spec.name}: main_program is a container's own command, and the netns backend "
                          "has no containers: start programs with host.launch (or use the docker backend)")


class NetnsBackend(Backend):
    """Creates hosts as network namespaces on a bridge that lives in a namespace of its own."""

    name = "netns"

    def __init__(self, topology: Topology, run: RunInfo, progress: Callable[[str], None] = lambda line: None,
                 python: str = sys.executable) -> None:
        for spec in topology.hosts:
            if spec.image is not None:
                raise ConfigError(f"host {spec.name} ({topology.source}): image {spec.image} needs the docker backend: "
                                  "the netns backend makes hosts as network namespaces running this machine's "
                                  "programs, not images (use --netfault-backend docker, or drop the image)")
        check_prerequisites()
        self.topology = topology
        self.run = run
        self.progress = progress
        self.python = python
        self._lock = threading.Lock()
        self._namespaces: list[str] = []
        self._channels: list[AgentChannel] = []
        self.bridges: dict[str, str] = {}  # the bridge namespace of each worker
        self.host_ready_seconds: dict[str, float] = {}

    def _new_namespace(self, name: str, role: str, sysctls: Mapping[str, str]) -> None:
        """Namespace `name` with its label file, loopback up and `sysctls` (IPv6 off) set before any link is in."""
        LABELS_DIR.mkdir(parents=True, exist_ok=True)
        (LABELS_DIR / name).write_text(json.dumps(self.run.labels(role)))
        with self._lock:
            self._namespaces.append(name)
        try:
            netns.create(name)
        except FileExistsError:
            raise EngineUnavailable(f"network namespace {name} exists already: `netfault reap` removes leftovers "
                                    "of dead runs") from None
        settings = [f"{key}={value}" for key, value in {**NO_IPV6, **sysctls}.items()]
        done = subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", *settings], capture_output=True,
                              text=True, timeout=30)
        if done.returncode != 0:
            raise SysctlError(f"namespace {name}: setting {settings} (IPv6 off, and the sysctls of "
                              f"{self.topology.source}) failed: {done.stderr.strip()}")
        with NetNS(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def create(self, worker: str) -> Testbed:
        prefix = f"{PREFIX}{self.run.run_id}-{worker}"
        subnet = self.topology.subnet
        bridge_ns = f"{prefix}-bridge"
        self._new_namespace(bridge_ns, "bridge", {"net.ipv4.ip_forward": "0"})
        with NetNS(bridge_ns) as ipr:
            ipr.link("add", ifname=BRIDGE, kind="bridge")
            index = ipr.link_lookup(ifname=BRIDGE)[0]
            ipr.addr("add", index=index, address=str(subnet.network_address + self.topology.gateway_number),
                     prefixlen=subnet.prefixlen)
            ipr.link("set", index=index, state="up")
        self.bridges[worker] = bridge_ns
        self.progress(f"network {bridge_ns} {subnet} (bridge {BRIDGE} in its own namespace)")
        with ThreadPoolExecutor(max_workers=len(self.topology.hosts)) as pool:
            futures = {spec.name: pool.submit(self._create_host, spec, f"{prefix}-{spec.name}", bridge_ns)
                       for spec in self.topology.hosts}
            hosts = {name: future.result() for name, future in futures.items()}
        unused = str(subnet.network_address + self.topology.unused_host_number())
        return Testbed(self, hosts, subnet, unused)

    def _create_host(self, spec: HostSpec, ns: str, bridge_ns: str) -> Host:
        started = time.monotonic()
        (FILES_DIR / ns).mkdir(parents=True, exist_ok=True)
        channel = self.boot(spec, ns, bridge_ns)
        host = Host(spec, spec.addr_in(self.topology.subnet), channel, NetnsHostDriver(self, spec, ns, channel))
        host.info()
        self.host_ready_seconds[spec.name] = time.monotonic() - started
        return host

    def boot(self, spec: HostSpec, ns: str, bridge_ns: str | None = None) -> AgentChannel:
        """A new namespace `ns` for host `spec`: eth0 on the bridge with its address and MAC, a default route via
        the gateway, the topology's sysctls, an agent; returns the agent's channel."""
        bridge_ns = bridge_ns or ns.rsplit("-", 1)[0] + "-bridge"
        subnet = self.topology.subnet
        addr = spec.addr_in(subnet)
        self._new_namespace(ns, "host", spec.sysctls)
        port, peer = f"v{spec.host_number}", f"p{spec.host_number}"
        with NetNS(bridge_ns) as ipr:
            for stale in ipr.link_lookup(ifname=port):  # the old port, if the namespace is still going away
                ipr.link("del", index=stale)
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
            index = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=index, master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
        with NetNS(ns) as ipr:
            index = ipr.link_lookup(ifname=peer)[0]
            ipr.link("set", index=index, ifname="eth0", address=_mac(addr))
            ipr.addr("add", index=index, address=addr, prefixlen=subnet.prefixlen)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=str(subnet.network_address + self.topology.gateway_number),
                      proto=RTPROT_BOOT)
        return self._agent(spec, ns)

    def _agent(self, spec: HostSpec, ns: str) -> AgentChannel:
        argv = ["ip", "netns", "exec", ns, "setpriv", f"--bounding-set=-all,{','.join('+' + c for c in AGENT_CAPS)}",
                "--", self.python, "-m", "harness.agent", "--name", spec.name]
        channel = AgentChannel(PipeTransport(argv), name=f"{spec.name} ({ns})")
        with self._lock:
            self._channels.append(channel)
        return channel

    def destroy(self) -> None:
        """Close agents, kill what runs in the hosts' namespaces and remove every namespace. Idempotent."""
        with self._lock:
            channels, self._channels = self._channels, []
            namespaces, self._namespaces = self._namespaces, []
        for channel in channels:
            channel.close()
        errors = []
        for name in reversed(namespaces):
            try:
                kill_namespace(name)
            except EngineUnavailable as exc:
                errors.append(str(exc))
            remove_host_files(name)
        if errors:
            raise EngineUnavailable("could not remove everything; `netfault reap` retries: " + "; ".join(errors))
