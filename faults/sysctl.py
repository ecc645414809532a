"""Per-host sysctls for the duration of a block, restored on heal."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from harness.backends.base import Host

from .base import Fault


class Sysctls(Fault):
    """Set net.* sysctls of `host` (its network namespace); heal writes back the values they had.

    `Sysctls(client, {"net.ipv4.tcp_syn_retries": 2})`. A host restarted meanwhile has a new namespace with
    the topology's values: heal then writes the old values into it, which is what they were anyway.
    """

    def __init__(self, host: Host, values: Mapping[str, int | str]) -> None:
        if not isinstance(values, Mapping) or not values:
            raise ValueError(f"values must be a non-empty mapping of sysctl name -> value, got {values!r}")
        for key, value in values.items():
            if not isinstance(key, str) or not re.fullmatch(r"net(\.[\w-]+)+", key):
                raise ValueError(f"sysctl {key!r}: only dotted net.* names (e.g. net.ipv4.tcp_syn_retries) belong "
                                 "to a host's network namespace")
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(f"sysctl {key}: value must be an int or a string, got {value!r}")
        self.host = host
        self.values = {key: str(value) for key, value in values.items()}
        self.previous: dict[str, str] | None = None
        self._in_force = False

    def prepare(self) -> None:
        """Check the names exist on the host and get its sysctl writer ready (a Docker host's sidecar
        container takes seconds to create), so that `apply` only writes."""
        self.host.sysctl_get(list(self.values))
        self.host.set_sysctls({})

    def _apply(self) -> None:
        self.previous = self.host.set_sysctls(self.values)
        self._in_force = True

    def _heal(self) -> None:
        if self._in_force and self.previous is not None:
            self.host.set_sysctls(self.previous)
            self._in_force = False

    def describe(self) -> str:
        values = ", ".join(f"{key}={value}" for key, value in self.values.items())
        return f"sysctls of {self.host.name}: {values} (heal: previous values)"

    def record(self) -> dict[str, Any]:
        return {**super().record(), "values": self.values, "previous": self.previous}
