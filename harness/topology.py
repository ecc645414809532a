"""The topology of a test bed, read from docker-compose.yml (the one source shared with `docker-compose up`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


@dataclass(frozen=True)
class HostSpec:
    """One host: its name, its host number on the subnet and how its container is configured."""

    name: str
    host_number: int
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    sysctls: dict[str, str] = field(default_factory=dict)
    init: bool = True
    command: tuple[str, ...] = ("sleep", "infinity")

    def addr_in(self, subnet: ipaddress.IPv4Network) -> str:
        """This host's address on `subnet` (same host number as in the compose file)."""
        return str(subnet.network_address + self.host_number)


@dataclass(frozen=True)
class Topology:
    """Hosts on one internal bridge network."""

    hosts: tuple[HostSpec, ...]
    prefixlen: int
    gateway_number: int
    internal: bool
    source: str

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
        return next(n for n in range(250, 1, -1) if n not in used)


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
            command=tuple(svc.get("command", ("sleep", "infinity"))),
        ))
    if not hosts:
        raise ConfigError(f"{path}: services: no hosts defined")
    return Topology(
        hosts=tuple(hosts),
        prefixlen=subnet.prefixlen,
        gateway_number=int(gateway) - int(subnet.network_address),
        internal=bool(net.get("internal", False)),
        source=str(path),
    )
