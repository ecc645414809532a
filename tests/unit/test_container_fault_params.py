"""Container and process fault parameters are checked before anything is applied."""

from __future__ import annotations

import pytest

from faults import Restart, Signal, Stop


class NoHost:
    name = "nohost"

    def __getattr__(self, name: str) -> object:
        pytest.fail(f"the fault called host.{name} while being made")


@pytest.mark.parametrize("fault", [Stop, Restart])
@pytest.mark.parametrize("timeout", [-1, 301, "10", True])
def test_timeouts(fault, timeout):
    with pytest.raises(ValueError, match=r"timeout must be seconds in \[0, 300\]"):
        fault(NoHost(), timeout=timeout)


def test_heal_before_apply_touches_nothing():
    fault = Restart(NoHost())
    fault.heal()
    assert fault.healed_at is None


def test_signal_names():
    with pytest.raises(ValueError, match="signal 'SIGFOO' is not a signal name"):
        Signal(NoHost(), "SIGFOO")
