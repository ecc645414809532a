"""Sysctls faults take only net.* names with int or string values, checked before anything is applied."""

from __future__ import annotations

import pytest

from faults import Sysctls


class FakeHost:
    name = "fake"

    def __init__(self) -> None:
        self.values = {"net.ipv4.tcp_syn_retries": "6"}
        self.calls: list[dict[str, str]] = []

    def set_sysctls(self, values: dict[str, str]) -> dict[str, str]:
        self.calls.append(dict(values))
        previous = {key: self.values[key] for key in values}
        self.values.update(values)
        return previous


@pytest.mark.parametrize(("values", "message"), [
    ({}, "values must be a non-empty mapping"),
    ({"kernel.pid_max": 100}, "sysctl 'kernel.pid_max': only dotted net.* names"),
    ({"net/ipv4/tcp_syn_retries": 2}, "only dotted net.* names"),
    ({"net.ipv4.tcp_syn_retries": 2.5}, "value must be an int or a string, got 2.5"),
    ({"net.ipv4.tcp_syn_retries": None}, "value must be an int or a string, got None"),
])
def test_invalid_sysctls(values, message):
    host = FakeHost()
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("*", r"\*")):
        Sysctls(host, values)
    assert host.calls == []


def test_restores_previous_values_once():
    host = FakeHost()
    fault = Sysctls(host, {"net.ipv4.tcp_syn_retries": 2})
    with fault:
        assert host.values["net.ipv4.tcp_syn_retries"] == "2"
    fault.heal()
    assert host.values["net.ipv4.tcp_syn_retries"] == "6"
    assert host.calls == [{"net.ipv4.tcp_syn_retries": "2"}, {"net.ipv4.tcp_syn_retries": "6"}], "healed once"
    assert fault.record()["previous"] == {"net.ipv4.tcp_syn_retries": "6"}
