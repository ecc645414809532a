"""The Docker backend: one internal bridge network per session, one container per host (from the peer image or
any image on the engine), agents via exec: inside the container, or in a sidecar sharing its namespaces."""

from __future__ import annotations

import io
import ipaddress
import math
import posixpath
import random
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import docker
import docker.errors
import docker.types

from ..channel import AgentChannel
from ..errors import ConfigError, EngineUnavailable, SysctlError
from ..programs import ContainerProgram, ExecProgram, Program
from ..runinfo import RunInfo
from ..topology import HostSpec, Topology
from .base import Backend, Host, HostDriver, Testbed
from .docker_exec import DockerExecTransport

AGENT_CMD = ["python3", "-m", "netfault_agent"]
# An image with this label runs the agent inside (the peer image has it); others get an agent sidecar.
AGENT_LABEL = "netfault.agent"
# Sessions take /24s from this range; the compose file's own network is 10.213.0.0/24.
SUBNET_RANGE = ipaddress.IPv4Network("10.213.0.0/16")
_SUBNET_TRIES = 20
# Docker's default read-only /proc paths without /proc/sys (the API takes the list; the CLI has no flag for it).
_READONLY_PATHS_BUT_SYSCTLS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"]


def _docker_sysctl_error(exc: docker.errors.APIError, spec: HostSpec, source: str) -> Exception:
    text = str(exc)
    if "sysctl" in text or "/proc/sys/" in text:
        return SysctlError(f"host {spec.name}: the engine refused its sysctls {spec.sysctls} from {source}: {text}")
    return exc


@dataclass(frozen=True)
class _Sidecar:
    """A container sharing one host's namespaces, running only the agent (from the session's peer image)."""

    id: str
    channel: AgentChannel


class DockerHostDriver(HostDriver):
    """A host as a container; its agent runs inside it, or in a sidecar for an image without the agent.

    The sysctl sidecar: Docker mounts /proc/sys read-only in containers, and the host containers keep it that
    way (their workloads must not touch kernel-wide sysctls). A second container sharing the host's network
    namespace, with no capabilities at all and /proc/sys left writable (Docker's other read-only /proc paths stay
    read-only, masked paths stay masked), runs only the agent; the harness only sends it net.* keys, which are
    per network namespace. It is made on the first run-time sysctl change of a host.

    The agent sidecar (an image without the agent): shares the host container's network and PID namespaces and
    has the host's capabilities (NET_ADMIN, NET_RAW), so faults, captures, socket snapshots and signals to the
    host's programs work as with the agent inside. Both sidecars are replaced after a boot (a new namespace).
    """

    files_dir = "/"

    def __init__(self, backend: DockerBackend, container_id: str, name: str, spec: HostSpec,
                 agent_inside: bool) -> None:
        self.backend = backend
        self.container_id = container_id
        self.name = name
        self.spec = spec
        self.agent_inside = agent_inside
        self._sysctl_sidecar: _Sidecar | None = None
        self._agent_sidecar: _Sidecar | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        where = "" if self.agent_inside else ", agent in a sidecar"
        return f"container {self.name} ({self.container_id[:12]}{where})"

    def connect(self) -> AgentChannel:
        """A new agent for the (just booted) container: inside it, or in a new agent sidecar."""
        if self.agent_inside:
            return self.backend.connect_agent(self.container_id, self.spec.name)
        with self._lock:
            if self._agent_sidecar is not None:
                self.backend.remove_sidecar(self._agent_sidecar)
            self._agent_sidecar = self.backend.start_sidecar(self.container_id, self.name, "agent", self.spec)
            return self._agent_sidecar.channel

    def set_sysctls(self, values: Mapping[str, str]) -> dict[str, str]:
        with self._lock:
            if self._sysctl_sidecar is None:
                self._sysctl_sidecar = self.backend.start_sidecar(self.container_id, self.name, "sysctl", self.spec)
        return self._sysctl_sidecar.channel.call("sysctl_set", values=dict(values))

    def state(self) -> str:
        return str(self.backend.client.api.inspect_container(self.container_id)["State"]["Status"])

    def pause(self) -> None:
        self.backend.client.api.pause(self.container_id)

    def unpause(self) -> None:
        self.backend.client.api.unpause(self.container_id)

    def kill(self) -> None:
        api = self.backend.client.api
        api.kill(self.container_id, signal="SIGKILL")
        api.wait(self.container_id)

    def stop(self, timeout: float) -> None:
        self.backend.client.api.stop(self.container_id, timeout=math.ceil(timeout))

    def start(self) -> AgentChannel:
        self.backend.client.api.start(self.container_id)
        return self._booted()

    def restart(self, timeout: float) -> AgentChannel:
        self.backend.client.api.restart(self.container_id, timeout=math.ceil(timeout))
        return self._booted()

    def _booted(self) -> AgentChannel:
        """After a boot: a sysctl sidecar (if there was one) joins the new network namespace; a new agent."""
        with self._lock:
            if self._sysctl_sidecar is not None:
                self.backend.remove_sidecar(self._sysctl_sidecar)
                self._sysctl_sidecar = self.backend.start_sidecar(self.container_id, self.name, "sysctl",
                                                                  self.spec)
        return self.connect()

    def put_file(self, dest: str, data: bytes, mode: int) -> str:
        path = posixpath.normpath(posixpath.join("/", dest))
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        try:
            self.backend.client.api.put_archive(self.container_id, "/", archive.getvalue())
        except docker.errors.APIError as exc:
            raise ConfigError(f"host {self.spec.name}: cannot put a file at {path} in {self.describe()}: "
                              f"{exc}") from exc
        return path

    def launch(self, host: Host, argv: Sequence[str], name: str, env: Mapping[str, str] | None,
               cwd: str | None) -> Program:
        return ExecProgram(self.backend.client.api, self.container_id, host, name, argv, env, cwd)

    def main_program(self, host: Host) -> Program:
        return ContainerProgram(self.backend.client.api, self.container_id, host.name)


class DockerBackend(Backend):
    """Creates hosts as containers from the peer image on a private `internal` bridge network."""

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        topology: Topology,
        image: str,
        run: RunInfo,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.client = client
        self.topology = topology
        self.image = image
        self.run = run
        self.progress = progress
        self._containers: list[str] = []
        self._networks: list[str] = []
        self._channels: list[AgentChannel] = []
        self._lock = threading.Lock()
        self.host_ready_seconds: dict[str, float] = {}

    def _prefix(self, worker: str) -> str:
        return f"netfault-{self.run.run_id}-{worker}"

    def _used_subnets(self) -> list[ipaddress.IPv4Network]:
        used = []
        for net in self.client.networks.list():
            for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
                if pool.get("Subnet") and ":" not in pool["Subnet"]:
                    used.append(ipaddress.IPv4Network(pool["Subnet"], strict=False))
        return used

    def _create_network(self, name: str) -> tuple[str, ipaddress.IPv4Network]:
        candidates = [net for net in SUBNET_RANGE.subnets(new_prefix=self.topology.prefixlen)][1:]
        random.shuffle(candidates)
        tried: list[str] = []
        for subnet in candidates[:_SUBNET_TRIES]:
            if any(subnet.overlaps(used) for used in self._used_subnets()):
                continue
            gateway = str(subnet.network_address + self.topology.gateway_number)
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=gateway)])
            try:
                network = self.client.networks.create(
                    name, driver="bridge", internal=self.topology.internal, ipam=ipam,
                    labels=self.run.labels("network"), check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if "overlap" in str(exc).lower():
                    tried.append(str(subnet))
                    continue
                raise
            with self._lock:
                self._networks.append(network.id)
            return network.id, subnet
        raise EngineUnavailable(
            f"no free /{self.topology.prefixlen} subnet in {SUBNET_RANGE} for network {name} "
            f"(overlapping: {', '.join(tried) or 'all candidates in use'}); run `netfault reap` to remove leftovers"
        )

    def _agent_inside(self, spec: HostSpec, image: str) -> bool:
        """Whether `image` runs the agent itself (its label says so, and the host does not ask for a sidecar)."""
        try:
            labels = self.client.api.inspect_image(image)["Config"].get("Labels") or {}
        except docker.errors.ImageNotFound:
            how = ("run `netfault build`" if image == self.image else
                   "build it (`netfault build --extra-packages ...`, `docker build`) or `docker load` it: no "
                   "registry is used")
            raise ConfigError(f"host {spec.name} ({self.topology.source}): image {image} is not on the engine: "
                              f"{how}") from None
        return spec.agent == "auto" and labels.get(AGENT_LABEL) == "1"

    def _create_host(self, spec: HostSpec, network_id: str, subnet: ipaddress.IPv4Network, prefix: str) -> Host:
        started = time.monotonic()
        api = self.client.api
        addr = spec.addr_in(subnet)
        name = f"{prefix}-{spec.name}"
        image = spec.image or self.image
        inside = self._agent_inside(spec, image)
        caps = {"cap_add": list(spec.cap_add), "cap_drop": list(spec.cap_drop)} if inside else {}
        container = api.create_container(
            image,
            command=None if spec.command is None else list(spec.command),
            name=name,
            hostname=spec.name,
            environment=dict(spec.environment),
            labels=self.run.labels("host"),
            host_config=api.create_host_config(
                **caps,
                sysctls=dict(spec.sysctls),
                init=spec.init,
                network_mode=network_id,
            ),
            networking_config=api.create_networking_config(
                {network_id: api.create_endpoint_config(ipv4_address=addr)}
            ),
        )
        with self._lock:
            self._containers.append(container["Id"])
        try:
            api.start(container["Id"])
        except docker.errors.APIError as exc:
            raise _docker_sysctl_error(exc, spec, self.topology.source) from exc
        driver = DockerHostDriver(self, container["Id"], name, spec, inside)
        host = Host(spec, addr, driver.connect(), driver)
        host.info()
        self.host_ready_seconds[spec.name] = time.monotonic() - started
        return host

    def connect_agent(self, container_id: str, name: str) -> AgentChannel:
        """A new agent in the container (docker exec), closed by `destroy` at the latest."""
        channel = AgentChannel(DockerExecTransport(self.client.api, container_id, AGENT_CMD), name=name)
        with self._lock:
            self._channels.append(channel)
        return channel

    def remove_sidecar(self, sidecar: _Sidecar) -> None:
        """Close a sidecar's agent and remove its container (after its host's namespace was replaced)."""
        sidecar.channel.close()
        self.client.api.remove_container(sidecar.id, force=True, v=True)
        with self._lock:
            self._containers.remove(sidecar.id)
            self._channels.remove(sidecar.channel)

    def start_sidecar(self, target_id: str, host_name: str, role: str, spec: HostSpec) -> _Sidecar:
        """A sidecar of the running container `target_id` (see DockerHostDriver): role "sysctl" or "agent"."""
        api = self.client.api
        shared = {"network_mode": f"container:{target_id}"}
        if role == "sysctl":
            config = api.create_host_config(**shared, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                                            init=True) | {"ReadonlyPaths": _READONLY_PATHS_BUT_SYSCTLS}
        else:
            config = api.create_host_config(**shared, pid_mode=f"container:{target_id}", cap_add=list(spec.cap_add),
                                            cap_drop=list(spec.cap_drop))
        container_id = api.create_container(self.image, command=["sleep", "infinity"], name=f"{host_name}-{role}",
                                            labels=self.run.labels(f"{role}-sidecar"), host_config=config)["Id"]
        with self._lock:
            self._containers.append(container_id)
        try:
            api.start(container_id)
        except docker.errors.APIError as exc:
            state = api.inspect_container(target_id)["State"]
            raise EngineUnavailable(
                f"host {spec.name}: its {role} sidecar could not join container {host_name}, which is "
                f"{state['Status']} (exit status {state['ExitCode']}): {exc}; a host's command must keep running "
                "(start short programs with host.launch)") from exc
        return _Sidecar(container_id, self.connect_agent(container_id, f"{spec.name} ({role} sidecar)"))

    def create(self, worker: str) -> Testbed:
        prefix = self._prefix(worker)
        network_id, subnet = self._create_network(prefix)
        self.progress(f"network {prefix} {subnet} (internal)")
        with ThreadPoolExecutor(max_workers=len(self.topology.hosts)) as pool:
            futures = {spec.name: pool.submit(self._create_host, spec, network_id, subnet, prefix)
                       for spec in self.topology.hosts}
            hosts = {name: future.result() for name, future in futures.items()}
        unused = str(subnet.network_address + self.topology.unused_host_number())
        return Testbed(self, hosts, subnet, unused)

    def destroy(self) -> None:
        """Close agents, remove containers (sidecars first), then networks. Idempotent."""
        with self._lock:
            channels, self._channels = self._channels, []
            containers, self._containers = self._containers, []
            networks, self._networks = self._networks, []
        for channel in channels:
            channel.close()
        errors = []
        for container_id in reversed(containers):
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                errors.append(f"container {container_id[:12]}: {exc}")
        for network_id in networks:
            try:
                self.client.api.remove_network(network_id)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                errors.append(f"network {network_id[:12]}: {exc}")
        if errors:
            raise EngineUnavailable("could not remove everything; `netfault reap` retries: " + "; ".join(errors))
