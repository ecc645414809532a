"""The topology of a test bed: read from docker-compose.yml (the one source shared with `docker-compose up`), or
made in code with `Topology.of`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
AGENT_MODES = ("auto", "sidecar")
# A host name is a container name, a hostname and part of a namespace name.
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,30}")


@dataclass(frozen=True)
class HostSpec:
    """One host: its name, its host number on the subnet and how its container is configured.

    `image` None is the session's peer image. `agent`: "auto" runs the agent inside the image when the image
    has it (the label netfault.agent=1, as on the peer image), else in a sidecar container sharing the host's
    network and PID namespaces; "sidecar" always uses one. `cap_add`/`cap_drop` go to the container that runs
    the agent: the host's own with the agent inside, else the sidecar (the image's program then gets Docker's
    default capabilities). `command` None runs the image's own CMD.
    """

    name: str
    host_number: int
    cap_add: tuple[str, ...] = ("NET_ADMIN", "NET_RAW")
    cap_drop: tuple[str, ...] = ()
    sysctls: dict[str, str] = field(default_factory=dict)
    init: bool = True
    command: tuple[str, ...] | None = None
    image: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    agent: str = "auto"

    def addr_in(self, subnet: ipaddress.IPv4Network) -> str:
        """This host's address on `subnet` (same host number as in the compose file)."""
        return str(subnet.network_address + self.host_number)


@dataclass(frozen=True)
class Topology:
    """Hosts on one internal bridge network."""

    hosts: tuple[HostSpec, ...]
    subnet: ipaddress.IPv4Network  # the compose file's; Docker sessions take a free one of its size
    gateway_number: int
    internal: bool
    source: str

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        raise ConfigError(f"unknown host {name!r} (hosts in {self.source}: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.hosts]

    def unused_host_number(self) -> int:
        """A host number on the subnet that no host and no gateway uses: the 'host that does not exist'."""
        used = {spec.host_number for spec in self.hosts} | {self.gateway_number}
        last = min(250, self.subnet.num_addresses - 2)
        return next(n for n in range(last, 1, -1) if n not in used)

    @classmethod
    def of(cls, hosts: Sequence[HostSpec], subnet: str | ipaddress.IPv4Network = "10.213.0.0/24",
           gateway_number: int = 1, source: str = "code", internal: bool = True) -> Topology:
        """A topology made in code (a scenario file, a test). Checked here, errors naming `source`: host names
        (letters, digits, '-'; unique), host numbers (unique, inside the subnet, not the gateway's), agent modes.

        The subnet is a template: a Docker session takes a free one of its size and keeps the host numbers.
        """
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise ConfigError(f"{source}: subnet {subnet!r}: {exc}") from None
        usable = range(1, net.num_addresses - 1)
        if gateway_number not in usable:
            raise ConfigError(f"{source}: gateway number {gateway_number} is outside {net} (1-{usable[-1]})")
        if not hosts:
            raise ConfigError(f"{source}: no hosts")
        names: set[str] = set()
        numbers = {gateway_number: "the gateway"}
        for spec in hosts:
            where = f"{source}: host {spec.name!r}"
            if not HOST_NAME.fullmatch(spec.name):
                raise ConfigError(f"{where}: a host name is 1-31 letters, digits and '-', starting with a letter "
                                  "or digit")
            if spec.name in names:
                raise ConfigError(f"{where}: defined twice (host names are unique)")
            if spec.host_number not in usable:
                raise ConfigError(f"{where}: host number {spec.host_number} is outside {net} (1-{usable[-1]})")
            if spec.host_number in numbers:
                raise ConfigError(f"{where}: host number {spec.host_number} ({net.network_address + spec.host_number})"
                                  f" is taken by {numbers[spec.host_number]}")
            if spec.agent not in AGENT_MODES:
                raise ConfigError(f"{where}: agent {spec.agent!r}: expected one of {', '.join(AGENT_MODES)}")
            names.add(spec.name)
            numbers[spec.host_number] = f"host {spec.name!r}"
        return cls(hosts=tuple(hosts), subnet=net, gateway_number=gateway_number, internal=internal, source=source)


def load_topology(path: Path = COMPOSE_FILE) -> Topology:
    """Parse the compose file; errors name the file and the field."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read topology from {path}: {exc}") from exc
    networks = doc.get("networks") or {}
    if len(networks) != 1:
        raise ConfigError(f"{path}: networks: expected exactly one network, found {list(networks)}")
    (net_name, net), = networks.items()
    try:
        pool = net["ipam"]["config"][0]
        subnet = ipaddress.IPv4Network(pool["subnet"])
        gateway = ipaddress.IPv4Address(pool["gateway"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: networks.{net_name}.ipam.config[0] needs subnet and gateway: {exc}") from exc
    hosts = []
    for name, svc in (doc.get("services") or {}).items():
        try:
            addr = ipaddress.IPv4Address(svc["networks"][net_name]["ipv4_address"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: services.{name}.networks.{net_name}.ipv4_address: {exc}") from exc
        if addr not in subnet:
            raise ConfigError(f"{path}: services.{name}: address {addr} is outside the subnet {subnet}")
        hosts.append(HostSpec(
            name=name,
            host_number=int(addr) - int(subnet.network_address),
            cap_add=tuple(svc.get("cap_add", ())),
            cap_drop=tuple(svc.get("cap_drop", ())),
            sysctls={k: str(v) for k, v in (svc.get("sysctls") or {}).items()},
            init=bool(svc.get("init", False)),
            command=tuple(svc["command"]) if svc.get("command") else None,
        ))
    if not hosts:
        raise ConfigError(f"{path}: services: no hosts defined")
    return Topology.of(hosts, subnet, int(gateway) - int(subnet.network_address), source=str(path),
                       internal=bool(net.get("internal", False)))
