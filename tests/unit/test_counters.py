"""SNMP counters read through an agent (the local one: this machine's namespace)."""

from __future__ import annotations

import pytest

from harness.counters import snmp_counters, tcp_ext
from harness.endpoint import Endpoint


def test_tcp_ext_and_snmp_groups(agent: Endpoint) -> None:
    ext = tcp_ext(agent)
    assert {"LockDroppedIcmps", "ListenOverflows", "TCPKeepAlive"} <= set(ext)
    assert all(isinstance(value, int) and value >= 0 for value in ext.values())
    assert "ActiveOpens" in snmp_counters(agent, "Tcp")


def test_unknown_group_names_the_host(agent: Endpoint) -> None:
    with pytest.raises(LookupError, match="no counter group 'Nope' .* of local"):
        snmp_counters(agent, "Nope")
