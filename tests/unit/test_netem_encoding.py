"""The netem options the agent sends are the ones iproute2's tc sends for the same parameters.

tc runs under strace in a new network namespace: its RTM_NEWQDISC request is recorded whether or not the
kernel has sch_netem (this one does not), and compared attribute by attribute with `encode_options`.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.agent.netem import (
    TCA_NETEM_CORR, TCA_NETEM_PRNG_SEED, GEModel, NetemParams, distribution_table, encode_options, parse_rate,
    tick_in_usec,
)
from agent_helpers import unshare_argv

CASES = [
    ("", NetemParams()),
    ("delay 1.234ms 100us", NetemParams(delay_ms=1.234, jitter_ms=0.1)),
    ("delay 0.5ms limit 20", NetemParams(delay_ms=0.5, limit=20)),
    ("delay 10ms 2ms 25%", NetemParams(delay_ms=10, jitter_ms=2, correlation=25)),
    ("loss 5% 10%", NetemParams(loss_pct=5, loss_correlation=10)),
    ("loss 0.001%", NetemParams(loss_pct=0.001)),
    ("loss gemodel 1%", NetemParams(gemodel=GEModel(p=1))),
    ("loss gemodel 1% 10%", NetemParams(gemodel=GEModel(p=1, r=10))),
    ("delay 10ms reorder 25%", NetemParams(delay_ms=10, reorder_pct=25)),
    ("duplicate 5% corrupt 1%", NetemParams(duplicate_pct=5, corrupt_pct=1)),
    ("rate 10gbit", NetemParams(rate_bit=parse_rate("10gbit"))),
    ("delay 10ms 1ms distribution pareto", NetemParams(delay_ms=10, jitter_ms=1, distribution="pareto")),
    ("delay 10ms 2ms 25% distribution normal loss gemodel 1% 10% 70% 0.1% duplicate 1% corrupt 0.5% "
     "reorder 25% rate 1mbit limit 500",
     NetemParams(delay_ms=10, jitter_ms=2, correlation=25, distribution="normal",
                 gemodel=GEModel(p=1, r=10, loss_bad=70, loss_good=0.1), duplicate_pct=1, corrupt_pct=0.5,
                 reorder_pct=25, rate_bit=1_000_000, limit=500)),
]


def _tc_options(args: str) -> bytes:
    """The TCA_OPTIONS payload of the request `tc qdisc add dev lo root netem <args>` sends."""
    missing = [tool for tool in ("strace", "tc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"comparing with iproute2 needs {' and '.join(missing)} on this machine")
    script = f"ip link set lo up; strace -e trace=sendmsg -xx -s 65536 tc qdisc add dev lo root netem {args}"
    out = subprocess.run([*unshare_argv(), "sh", "-c", script], capture_output=True, text=True, timeout=60)
    request = [line for line in out.stderr.splitlines() if "RTM_NEWQDISC" in line]
    assert len(request) == 1, out.stderr
    found = re.search(r'nla_type=TCA_OPTIONS\}, "((?:\\x[0-9a-f]{2})*)"', request[0])
    assert found, request[0]
    return bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", found.group(1)))


def _parse(options: bytes) -> tuple[tuple[int, ...], dict[int, bytes]]:
    """tc_netem_qopt's six fields and the attributes by type; an all-zero TCA_NETEM_CORR means no correlation
    (tc 6.1 sends one for `corrupt`), so it is dropped."""
    qopt, rest, attrs = struct.unpack_from("<6I", options), options[24:], {}
    while rest:
        length, kind = struct.unpack_from("<HH", rest)
        attrs[kind] = rest[4:length]
        rest = rest[(length + 3) & ~3:]
    if attrs.get(TCA_NETEM_CORR) == bytes(12):
        del attrs[TCA_NETEM_CORR]
    return qopt, attrs


@pytest.mark.parametrize(("tc_args", "params"), CASES, ids=[c[0] or "defaults" for c in CASES])
def test_options_match_iproute2(tc_args, params):
    per_usec = tick_in_usec(Path("/proc/net/psched").read_text())
    table = distribution_table(params.distribution) if params.distribution else None
    ours = _parse(encode_options(params, per_usec, table))
    theirs = _parse(_tc_options(tc_args))
    assert ours == theirs, f"tc {tc_args!r}\nours:   {ours}\ntheirs: {theirs}"


def test_seed_is_a_u64_attribute():
    """iproute2 6.1 has no `seed`; the attribute is TCA_NETEM_PRNG_SEED (14), a u64 (Linux >= 6.3)."""
    _, attrs = _parse(encode_options(NetemParams(loss_pct=1, seed=2**40 + 5), tick_in_usec("3e8 40 f4240 3b9aca00")))
    assert attrs[TCA_NETEM_PRNG_SEED] == struct.pack("<Q", 2**40 + 5)


def test_tick_in_usec_matches_tc_core():
    assert tick_in_usec("000003e8 00000040 000f4240 3b9aca00") == 15.625
    assert tick_in_usec("000003e8 00000040 3b9aca00 3b9aca00") == 1000.0


def test_the_request_carries_the_options_even_after_pyroute2_compiled_tcmsg():
    """The agent lists qdiscs (pyroute2 compiles tcmsg) before it adds netem: the options must still be sent as
    given. They were once sent as zeros (netem "limit 0", every packet dropped), seen only where sch_netem
    exists (the kernel matrix's guests)."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    from harness.agent.tc import TC_H_ROOT, _tcmsg_class

    tcmsg().encode()
    options = encode_options(NetemParams(loss_pct=20, delay_ms=5), 1.0)
    for _ in range(2):
        msg = _tcmsg_class()()
        msg["index"], msg["handle"], msg["parent"] = 5, 0x10000, TC_H_ROOT
        msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", options]]
        msg.encode()
        assert struct.pack("<HH", 4 + len(options), 2) + options in bytes(msg.data)
