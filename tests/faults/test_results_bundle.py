"""A run writes results a reader can trust: an inner pytest session with two xdist workers and
--netfault-results writes a manifest and one evidence bundle per test (passing and failing), every file valid
against its schema, the pcaps readable, the JUnit XML pointing at the bundles, and load_run reading it back."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import dpkt
import jsonschema
import pytest

from harness.results_reader import load_run
from harness.results_schema import MANIFEST_SCHEMA, OUTCOME_SCHEMA, SOCKETS_SCHEMA, TIMELINE_SCHEMA

pytestmark = pytest.mark.faults

TESTS = """
import pytest
from faults import Drop
from harness.capture import capture
from harness.expect import expect_errno
from harness.sockets import sample

@pytest.mark.sysctls(client={"net.ipv4.tcp_syn_retries": 1})
@pytest.mark.parametrize("expected", ["ETIMEDOUT", "ECONNREFUSED"])
def test_connect_to_a_silent_host(pair, expected, record_property):
    client, server = pair.client, pair.server
    with Drop(server, dport=6666), capture(client, "tcp port 6666"), sample(client, port=6666):
        rec = client.connect(addr=server.addr, port=6666)
    record_property("kernel_wait", 3.0)
    expect_errno(rec, expected)
"""
# Hosts of an inner session come up in seconds; a busy 2-core machine can take far longer.
SESSION = 600


def _validate(path: Path, schema: dict) -> object:
    value = json.loads(path.read_text())
    jsonschema.validate(value, schema)
    return value


def test_a_run_writes_a_manifest_and_a_valid_bundle_per_test(pair, tmp_path: Path, inner_env: dict[str, str]):
    (tmp_path / "test_inner.py").write_text(TESTS)
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          "-n", "2", f"--netfault-results={results}", f"--junitxml={tmp_path / 'junit.xml'}",
                          "test_inner.py"], cwd=tmp_path, env=inner_env, capture_output=True, text=True, timeout=SESSION)
    out = run.stdout + run.stderr
    assert "1 failed, 1 passed" in out, out

    run_dir = (results / "latest").resolve()
    manifest = _validate(run_dir / "manifest.json", MANIFEST_SCHEMA)
    assert manifest["run_id"] == run_dir.name and manifest["exit_status"] == 1, manifest
    assert manifest["engine"]["error"] is None and manifest["engine"]["server_version"], manifest["engine"]
    assert datetime.fromisoformat(manifest["start"]["utc"]) <= datetime.fromisoformat(manifest["end"]["utc"])
    assert sorted(manifest["workers"]) == ["gw0", "gw1"], manifest["workers"]
    baseline = {h["host"]: h["sysctls"]["net.ipv4.tcp_syn_retries"] for h in manifest["hosts"]}
    assert baseline == {"client": "6", "server": "6"}, f"baselines, not the test's pinned value: {manifest['hosts']}"

    bundles = sorted((run_dir / "tests").iterdir())
    assert [t["bundle"] for t in manifest["tests"]] == [b.name for b in bundles], manifest["tests"]
    outcomes = {}
    for bundle in bundles:
        outcome = _validate(bundle / "outcome.json", OUTCOME_SCHEMA)
        outcomes[outcome["nodeid"].split("[")[1].rstrip("]")] = outcome
        _validate(bundle / "timeline.json", TIMELINE_SCHEMA)
        assert (len(outcome["pcaps"]), len(outcome["sockets"])) == (1, 1), outcome
        written = {"outcome.json", "timeline.json"}
        for pcap in outcome["pcaps"]:
            packets = list(dpkt.pcap.Reader(io.BytesIO((bundle / pcap["file"]).read_bytes())))
            assert len(packets) == pcap["packets"] >= 2 and not pcap["truncated"], pcap
            written.add(pcap["file"])
        for sockets in outcome["sockets"]:
            history = _validate(bundle / sockets["file"], SOCKETS_SCHEMA)
            assert "SYN_SENT" in [entry["state"] for entry in history["entries"]], history
            written.add(sockets["file"])
        written |= set(outcome["agent_logs"].values())
        assert sorted(outcome["agent_logs"]) == ["client", "server"], outcome["agent_logs"]
        assert {path.name for path in bundle.iterdir()} == written, f"{bundle} holds files outcome.json omits"
        assert outcome["sysctls"] == {"client": {"net.ipv4.tcp_syn_retries": 1}}, outcome["sysctls"]
        assert [f["describe"].startswith("Drop on server") for f in outcome["faults"]] == [True], outcome["faults"]
        assert outcome["faults"][0]["applied_at"] < outcome["faults"][0]["healed_at"], outcome["faults"]
        assert outcome["properties"]["kernel_wait"] == 3.0, outcome["properties"]
    assert {h["worker"] for h in manifest["hosts"]} == {o["worker"] for o in outcomes.values()}, manifest["hosts"]
    assert outcomes["ETIMEDOUT"]["outcome"] == "passed" and outcomes["ETIMEDOUT"]["longrepr"] is None
    assert outcomes["ECONNREFUSED"]["outcome"] == "failed", outcomes["ECONNREFUSED"]
    assert "expected ECONNREFUSED" in outcomes["ECONNREFUSED"]["longrepr"]["summary"], outcomes["ECONNREFUSED"]
    assert manifest["totals"]["tests"] == 2 and manifest["totals"]["pcap_files"] == 2, manifest["totals"]

    evidence = {case.get("name"): dict((p.get("name"), p.get("value")) for p in case.iter("property"))
                for case in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")}
    assert {Path(props["netfault.evidence"]) for props in evidence.values()} == set(bundles), evidence
    assert load_run(results / "latest").bundles.keys() == {o["nodeid"] for o in outcomes.values()}
