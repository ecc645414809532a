"""Link fault parameters are checked when the fault is made, before anything reaches a host."""

from __future__ import annotations

import pytest

from faults import LinkDown, LinkFlap


class NoHost:
    """Any call on it fails the test: validation must not touch the host."""

    name = "nohost"

    def __getattr__(self, name: str) -> object:
        pytest.fail(f"the fault called host.{name} while being made")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"down_ms": 0, "up_ms": 100, "count": 1}, "down_ms must be a number of milliseconds in (0, 600000], got 0"),
    ({"down_ms": 100, "up_ms": -5, "count": 1}, "up_ms must be a number of milliseconds in (0, 600000], got -5"),
    ({"down_ms": True, "up_ms": 100, "count": 1}, "down_ms must be a number of milliseconds"),
    ({"down_ms": 100, "up_ms": 100, "count": 0}, "count must be an int >= 1, got 0"),
    ({"down_ms": 100, "up_ms": 100, "count": 2.5}, "count must be an int >= 1, got 2.5"),
    ({"down_ms": 100, "up_ms": 100, "count": 1, "iface": ""}, "iface must be an interface name of 1 to 15"),
])
def test_flap_parameters(kwargs, message):
    with pytest.raises(ValueError) as raised:
        LinkFlap(NoHost(), **kwargs)
    assert message in str(raised.value)


@pytest.mark.parametrize("iface", ["eth0:1", "a b", "x" * 16, None])
def test_iface_names(iface):
    with pytest.raises(ValueError, match="iface must be an interface name"):
        LinkDown(NoHost(), iface)


def test_heal_before_apply_does_nothing():
    fault = LinkFlap(NoHost(), down_ms=10, up_ms=10, count=3)
    fault.heal()
    fault.heal()
    assert fault.describe() == ("link eth0 of nohost flapping: down 10 ms, up 10 ms, 3 times "
                                "(heal: up, addresses and routes restored)")
