"""Netem parameters are checked before anything is applied; a kernel without sch_netem is a reasoned refusal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from faults import GEModel, Netem, NetemUnavailable, netem_missing
from harness.agent.netem import NetemParamError, NetemParams, parse_rate

NETEM_REASON = "kernel lacks sch_netem: modprobe sch_netem or run it under the kernel matrix"


class FakeHost:
    """Answers tc_features like an agent; records every other call (there must be none before validation)."""

    name = "fake"

    def __init__(self, features: dict[str, str | None]) -> None:
        self.features = features
        self.calls: list[str] = []
        self.probes = 0

    def tc_features(self) -> dict[str, str | None]:
        self.probes += 1
        return self.features

    def netem_add(self, *args: object) -> dict[str, object]:
        self.calls.append("netem_add")
        return {"handle": 0x10000, "ifb": None}

    def netem_del(self, *args: object) -> dict[str, object]:
        self.calls.append("netem_del")
        return {"deleted": []}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"delay_ms": -1}, "delay_ms must be between 0 and 60000 ms, got -1"),
    ({"delay_ms": 60_001}, "delay_ms must be between 0 and 60000 ms"),
    ({"jitter_ms": float("nan")}, "jitter_ms must be a finite number"),
    ({"loss_pct": 101}, "loss_pct must be between 0 and 100 (percent), got 101"),
    ({"loss_pct": -0.5}, "loss_pct must be between 0 and 100 (percent)"),
    ({"duplicate_pct": 200}, "duplicate_pct must be between 0 and 100"),
    ({"corrupt_pct": "5"}, "corrupt_pct must be a finite number, got '5'"),
    ({"reorder_pct": 25}, "reorder_pct needs delay_ms > 0"),
    ({"delay_ms": 10, "correlation": 25}, "correlation shapes the jitter: it needs delay_ms > 0 and jitter_ms > 0"),
    ({"delay_ms": 10, "distribution": "normal"}, "distribution shapes the jitter"),
    ({"delay_ms": 10, "jitter_ms": 1, "distribution": "gauss"}, "distribution must be one of normal, pareto"),
    ({"loss_correlation": 10}, "loss_correlation needs loss_pct > 0"),
    ({"loss_pct": 1, "gemodel": GEModel(p=1)}, "gemodel and loss_pct/loss_correlation are two loss models"),
    ({"limit": 0}, "limit must be an int between 1 and 4294967295 (packets), got 0"),
    ({"seed": -1}, "seed must be an int between 0 and 2**64-1"),
    ({"rate": "fast"}, "rate must be bits per second (an int) or a string like '1mbit'"),
    ({"rate": 4}, "rate must be between 8 bit/s"),
    ({"direction": "both"}, "direction must be one of egress, ingress, got 'both'"),
    ({"iface": "a/b"}, "iface must be an interface name"),
    ({"iface": "sixteen-chars-xx"}, "iface must be an interface name of 1 to 15 characters"),
])
def test_invalid_parameters_fail_before_anything_is_applied(kwargs, message):
    host = FakeHost({"sch_netem": None, "ifb": None, "ingress_redirect": None})
    with pytest.raises(ValueError) as raised:
        Netem(host, **kwargs)
    assert message in str(raised.value)
    assert host.calls == [] and host.probes == 0


def test_gemodel_percentages_are_checked():
    with pytest.raises(NetemParamError, match=r"gemodel.loss_bad must be between 0 and 100 \(percent\), got 120"):
        GEModel(p=1, loss_bad=120)


def test_agent_side_rejects_unknown_parameters():
    with pytest.raises(NetemParamError, match="unknown netem parameter 'delay'"):
        NetemParams.from_dict({"delay": 10})
    with pytest.raises(NetemParamError, match="unknown gemodel parameter 'h'"):
        NetemParams.from_dict({"gemodel": {"p": 1, "h": 3}})


def test_params_round_trip_through_the_protocol_form():
    params = NetemParams(delay_ms=10, jitter_ms=2, distribution="pareto", gemodel=GEModel(p=2, r=20), seed=7,
                         rate_bit=parse_rate("1.5mbit"))
    assert NetemParams.from_dict(params.to_dict()) == params
    assert params.rate_bit == 1_500_000


def test_describe_reads_like_tc():
    fault = Netem(FakeHost({}), delay_ms=100, jitter_ms=10, correlation=25, loss_pct=1, rate="1mbit")
    assert fault.describe() == "netem on eth0 of fake (egress): delay 100ms 10ms 25% loss 1% rate 1000000bit"


@pytest.mark.parametrize(("features", "direction", "reason"), [
    ({"sch_netem": "ENOENT: No such file or directory", "ifb": None, "ingress_redirect": None}, "egress",
     NETEM_REASON),
    ({"sch_netem": None, "ifb": "EOPNOTSUPP: Operation not supported", "ingress_redirect": "needs ifb"}, "ingress",
     "kernel lacks ifb (needed for ingress netem): modprobe ifb or run it under the kernel matrix"),
    ({"sch_netem": None, "ifb": "EOPNOTSUPP: Operation not supported", "ingress_redirect": "needs ifb"}, "egress",
     None),
])
def test_missing_capability_is_a_reasoned_refusal_never_a_no_op(features, direction, reason):
    host = FakeHost(features)
    assert netem_missing(host, direction) == reason
    fault = Netem(host, delay_ms=10, direction=direction)
    if reason is None:
        with fault:
            assert host.calls == ["netem_add"]
        assert host.calls == ["netem_add", "netem_del"]
    else:
        with pytest.raises(NetemUnavailable) as raised, fault:
            pytest.fail("the block must not run without netem")
        assert raised.value.reason == reason and str(raised.value) == reason
        assert host.calls == [], "nothing is applied (nor deleted) when the kernel lacks a capability"
        assert fault.applied_at is None
    assert host.probes == 1, "the kernel is probed once per host"


MISSING = """
import pytest
from harness.errors import MissingCapability

REASON = "kernel lacks sch_netem: modprobe sch_netem or run it under the kernel matrix"

@pytest.fixture
def lossy():
    raise MissingCapability("sch_netem", REASON)

def test_needs_netem():
    raise MissingCapability("sch_netem", REASON)

def test_needs_netem_in_a_fixture(lossy):
    pass
"""


def test_plugin_reports_missing_capability_as_a_skip_with_its_reason(tmp_path):
    (tmp_path / "test_inner.py").write_text(MISSING)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NETFAULT_"))}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "--rootdir", str(tmp_path),
                          str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert "2 skipped" in out.stdout, out.stdout + out.stderr
    assert "SKIPPED [2] " in out.stdout and NETEM_REASON in out.stdout, out.stdout
