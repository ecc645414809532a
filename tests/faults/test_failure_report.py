"""A failing scenario explains itself: a deliberately wrong expectation, run in a pytest session of its own as
a user would, fails with a message and a report section that show the test's timeline (the fault, the
syscall, the packets, the socket states)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

WRONG = """
import pytest
from faults import Drop
from harness.capture import capture
from harness.expect import expect_errno
from harness.sockets import sample

@pytest.mark.sysctls(client={"net.ipv4.tcp_syn_retries": 1})
def test_wrong_errno(pair):
    client, server = pair.client, pair.server
    with Drop(server, dport=6666), capture(client, "tcp port 6666"), sample(client, port=6666):
        rec = client.connect(addr=server.addr, port=6666)
    expect_errno(rec, "ECONNREFUSED")
"""
# Hosts of an inner session come up in seconds; a busy 2-core machine can take far longer.
SESSION = 300


def test_a_wrong_expectation_fails_with_the_timeline(pair, tmp_path: Path, inner_env: dict[str, str]):
    test_file = tmp_path / "test_wrong.py"
    test_file.write_text(WRONG)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          str(test_file)], cwd=tmp_path, env=inner_env, capture_output=True, text=True,
                         timeout=SESSION).stdout

    assert "1 failed" in out, out
    message = out[out.index("AssertionError: connect"):]
    assert "errno ETIMEDOUT, expected ECONNREFUSED" in message, out
    timeline = message[message.index("timeline:"):]
    for event in ("apply  Drop on server", "connect s1 ... (blocks)", "Flags [S]", "SYN_SENT",
                  "connect s1 -> -1 ETIMEDOUT"):
        assert event in timeline, f"{event!r} missing from the timeline in the message:\n{out}"
    section = out[out.index("netfault timeline"):]
    assert "heal   Drop on server" in section, f"the report section has the whole timeline:\n{out}"
