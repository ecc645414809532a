"""What every backend provides: a test bed of hosts on one network, each with an agent and a driver."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping

from ..channel import AgentChannel, BadRequest
from ..endpoint import Endpoint
from ..errors import ConfigError, SysctlError
from ..topology import HostSpec


class HostDriver(ABC):
    """Backend-specific operations on one host (the part of a host that is not its agent)."""

    @abstractmethod
    def set_sysctls(self, values: Mapping[str, str]) -> dict[str, str]:
        """Set net.* sysctls in the host's network namespace; return the previous values."""

    @abstractmethod
    def describe(self) -> str:
        """Where the host lives (container name and id, namespace path, ...)."""


class Host(Endpoint):
    """A host of the test bed: its agent's main process (the Endpoint API), its address and its driver."""

    def __init__(self, spec: HostSpec, addr: str, channel: AgentChannel, driver: HostDriver) -> None:
        super().__init__(channel, host=spec.name)
        self.spec = spec
        self.name = spec.name
        self.addr = addr
        self.driver = driver
        self.channel = channel

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} {self.driver.describe()}>"

    def set_sysctls(self, values: Mapping[str, object]) -> dict[str, str]:
        """Set per-host sysctls now; returns the previous values (to restore them later).

        Only net.* sysctls are per network namespace, so only those can differ between hosts.
        """
        strings = {key: str(value) for key, value in values.items()}
        for key in strings:
            if not key.startswith("net."):
                raise SysctlError(
                    f"sysctl {key} on host {self.name}: only net.* sysctls belong to a host's network "
                    "namespace; others are kernel-wide and netfault does not change them"
                )
        try:
            self.sysctl_get(list(strings))
        except BadRequest as exc:
            raise SysctlError(f"host {self.name}: {exc.error.get('message', exc)} (kernel {self.kernel_release})") from None
        return self.driver.set_sysctls(strings)

    @property
    def kernel_release(self) -> str:
        return str(self.info()["kernel"])


class Testbed:
    """The hosts of one session on one network."""

    def __init__(self, backend: Backend, hosts: Mapping[str, Host], subnet: ipaddress.IPv4Network,
                 unused_addr: str) -> None:
        self.backend = backend
        self.hosts = dict(hosts)
        self.subnet = subnet
        self.unused_addr = unused_addr

    def __getitem__(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise ConfigError(f"unknown host {name!r}: this test bed has {', '.join(self.hosts)}") from None

    def reset(self) -> None:
        """Bring every agent back to its fresh state (no sockets, workers, captures)."""
        for host in self.hosts.values():
            host.reset()


class Backend(ABC):
    """Makes and destroys test beds."""

    name: str

    @abstractmethod
    def create(self, worker: str) -> Testbed:
        """Create the network and hosts of the topology; ready when it returns (agents answered)."""

    @abstractmethod
    def destroy(self) -> None:
        """Remove everything this backend created; idempotent, never raises for already-gone resources."""
