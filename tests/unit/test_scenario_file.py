"""Scenario files: valid ones load into typed objects; each kind of bad input is reported as file:line: field:
message, all problems of a file together, before anything starts (no Docker needed here)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faults import Drop
from harness.cli import main
from harness.programs import ProgramResult
from harness.records import SyscallRecord
from harness.scenario_file import SUFFIX, ScenarioError, _placeholder_host, expand, load_scenario
from harness.scenario_run import ScenarioRun, check

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEAD = """\
version: 1
duration: 10
hosts:
  client:
    sysctls: {net.ipv4.tcp_syn_retries: 2}
  server:
"""


def write(tmp_path: Path, text: str, name: str = "case") -> Path:
    path = tmp_path / f"{name}{SUFFIX}"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value) == "\n".join(map(str, caught.value.problems))
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob(f"*{SUFFIX}")), ids=lambda p: p.name)
def test_every_example_is_a_valid_scenario_file(path: Path):
    scenario = load_scenario(path)
    assert scenario.expectations, "an example checks what happened"


def test_a_valid_file_loads_into_typed_objects(tmp_path: Path):
    (tmp_path / "site.conf").write_text("server {}\n")
    path = write(tmp_path, HEAD + textwrap.dedent("""\
      web:
        extra_packages: [nginx-light]
        files:
          /etc/nginx/sites-enabled/default: site.conf
          /srv/hello.txt: {content: "hello\\n", mode: 0600}
    workload:
      nginx: {host: web, run: [nginx, -g, daemon off;]}
      fetch: {host: client, at: 1.5, run: [curl, "http://${web}/"], env: {PEER: "${server}"}}
      syn:
        host: client
        at: 2
        probe:
          - connect: {to: unused, port: 80}
          - send: {size: 100, at: 3}
          - close:
    capture:
      - {host: client, filter: "tcp port 80 and host ${web}"}
    sample:
      - {host: client, port: 80}
    timeline:
      - {at: 1, for: 2, fault: drop, host: web, dport: 80}
      - {at: 2, fault: partition, a: client, b: [server, web]}
      - {at: 3, fault: signal, program: fetch, signal: SIGSTOP}
    expect:
      programs:
        fetch: {exit_code: 28, stderr: "timed out", exits_within: [5, 6.5]}
        nginx: {still_running_at: 9}
      probes:
        syn.connect: {errno: EHOSTUNREACH, elapsed: 4}
      sockets:
        - {host: client, port: 80, reached: [SYN_SENT], not_reached: [ESTABLISHED]}
    """))
    s = load_scenario(path)
    assert (s.name, s.duration, s.backend) == ("case", 10.0, None)
    assert [(h.name, h.host_number) for h in s.hosts] == [("client", 10), ("server", 20), ("web", 30)]
    web = s.host("web")
    assert web.extra_packages == ("nginx-light",) and web.image is None and web.command is None
    assert [(f.dest, f.source, f.content, f.mode) for f in web.files] == [
        ("/etc/nginx/sites-enabled/default", tmp_path / "site.conf", None, 0o644),
        ("/srv/hello.txt", None, "hello\n", 0o600)]
    assert s.host("client").sysctls == {"net.ipv4.tcp_syn_retries": "2"}
    fetch = s.programs[1]
    assert (fetch.name, fetch.host, fetch.at, fetch.argv, fetch.env) == (
        "fetch", "client", 1.5, ("curl", "http://${web}/"), {"PEER": "${server}"})
    (probe,) = s.probes
    assert [(st.name, st.op, st.args, st.at) for st in probe.steps] == [
        ("connect", "connect", {"to": "unused", "port": 80}, None), ("send", "send", {"size": 100}, 3),
        ("close", "close", {}, None)]
    assert [(f.kind, f.at, f.duration) for f in s.timeline] == [("drop", 1, 2), ("partition", 2, None),
                                                                 ("signal", 3, None)]
    assert s.timeline[0].where == f"{path}:27: timeline[0]"
    checks = {(e.section, e.subject, e.field): e.value for e in s.expectations}
    assert checks[("programs", "fetch", "exits_within")] == (5.0, 6.5)
    assert checks[("probes", "syn.connect", "elapsed")] == (0.0, 4.0)
    assert checks[("sockets", "client", "not_reached")] == ["ESTABLISHED"]
    assert expand("http://${web}/ $${HOME}", {"web": "10.1.2.30"}) == "http://10.1.2.30/ ${HOME}"


def test_faults_are_made_by_the_fault_classes_with_names_resolved(tmp_path: Path):
    timeline = "timeline:\n  - {at: 0, fault: drop, host: server, dport: 80, peer: client}\n"
    s = load_scenario(write(tmp_path, HEAD + timeline))
    hosts = {name: _placeholder_host(name, number) for name, number in (("client", 10), ("server", 20))}
    fault = s.timeline[0].make(hosts.__getitem__, lambda name: None)
    assert isinstance(fault, Drop) and fault.host is hosts["server"]
    assert fault.describe().endswith(": in tcp+udp dport 80 peer 10.213.0.10 -> drop")


@pytest.mark.parametrize(("body", "expected"), [
    ("version: 1\nhosts: {a: }\n", ":1: duration: missing (this field is required)"),
    (HEAD + "workload:\n  w: {host: client, at: soon, run: [sh]}\n",
     ":8: workload.w.at: expected number, got str 'soon'"),
    (HEAD + "timeline:\n  - {at: 1, fault: blackhole, host: server}\n",
     ":8: timeline[0].fault: unknown fault 'blackhole' (kinds: drop, reject, partition"),
    (HEAD + "timeline:\n  - {at: -1, fault: drop, host: server}\n",
     ":8: timeline[0].at: must not be negative (seconds, counts), got -1"),
    (HEAD + "timeline:\n  - {at: 1, for: 0, fault: drop, host: server}\n",
     ":8: timeline[0].for: 0 is less than or equal to the minimum of 0"),
    (HEAD + "timeline:\n  - {at: 1, fault: power_loss, host: db}\n",
     ":8: timeline[0].host: unknown host 'db' (hosts: client, server)"),
    (HEAD + "timeline:\n  - {at: 1, fault: drop, host: server, dprt: 80}\n",
     ":8: timeline[0].dprt: unknown field 'dprt' (known: at, backend, direction, dport, fault, for, host, peer, "
     "protocol, sport)"),
    (HEAD + "timeline:\n  - {at: 1, fault: drop, host: server,\n     dport: 70000}\n",
     ":9: timeline[0].dport: drop: dport must be a port number in 1..65535; got 70000"),
    (HEAD + "timeline:\n  - {at: 9, for: 2, fault: pause, host: server}\n",
     ":8: timeline[0]: ends at 11 s, after the scenario's duration (10 s)"),
    (HEAD + "timeline:\n  - {at: 1, fault: signal, program: nginx}\n",
     ":8: timeline[0].program: unknown program 'nginx' (programs: none)"),
    (HEAD + "workload:\n  w: {host: client, run: [sh]}\nexpect:\n  programs:\n    w: {exitcode: 0}\n",
     ":11: expect.programs.w.exitcode: unknown field 'exitcode' (known: exit_code, exits_within, signal, stderr, "
     "stdout, still_running_at)"),
    (HEAD + "workload:\n  w: {host: client, run: [sh]}\nexpect:\n  programs:\n    v: {exit_code: 0}\n",
     ":11: expect.programs.v: unknown program 'v' (programs: w)"),
    (HEAD + "workload:\n  p: {host: client, probe: [{connect: {to: server, port: 1}}]}\nexpect:\n  probes:\n"
            "    p.send: {errno: EPIPE}\n",
     ":11: expect.probes['p.send']: unknown probe step 'p.send' (probes: p.connect)"),
    (HEAD + "workload:\n  p: {host: client, probe: [{connect: {to: server, port: 1}}]}\nexpect:\n  probes:\n"
            "    p.connect: {errno: ETIMEOUT}\n",
     ":11: expect.probes['p.connect'].errno: unknown errno name 'ETIMEOUT'"),
    (HEAD + "expect:\n  sockets:\n    - {host: client, port: 80, reached: [SYN_SENT]}\n",
     ":9: expect.sockets[0]: no sampler on client port 80: add one under `sample:`"),
    (HEAD + "workload:\n  w: {host: client, run: [curl, 'http://${web}/']}\n",
     ":8: workload.w.run[1]: unknown host 'web' in ${web} (hosts: client, server, unused; write $${ for a literal ${)"),
    (HEAD + "  client: {}\n", ":7: hosts.client: duplicate key 'client': the earlier one would be ignored"),
    (HEAD + "  web: {files: {/etc/x.conf: missing.conf}}\n", ":7: hosts.web.files['/etc/x.conf']: no such file"),
    (HEAD + "timeline: [\n", ":8: not valid YAML: expected the node content, but found '<stream end>'"),
    ("duration: 5\n", ":1: version: missing: add `version: 1` (the format of this file) at the top"),
    ("hosts: {a: }\nversion: 2\n", ":2: version: unsupported version 2: this netfault reads version 1"),
], ids=lambda value: value if len(value) < 40 else None)
def test_each_bad_input_names_file_line_and_field(tmp_path: Path, body: str, expected: str):
    path = write(tmp_path, body)
    found = problems(path)
    assert any(p.startswith(f"{path}{expected}") for p in found), "\n".join(found)


def test_every_problem_of_a_file_is_listed_at_once_by_line(tmp_path: Path):
    path = write(tmp_path, HEAD + textwrap.dedent("""\
    workload:
      w: {host: clinet, at: -1, run: [sh]}
    timeline:
      - {at: 1, fault: blackhole, host: server}
      - {at: 2, fault: drop, host: nobody}
    expect:
      programs:
        w: {exitcode: 1}
    """))
    found = problems(path)
    assert [p.split(": ")[0:2] for p in found] == [
        [f"{path}:8", "workload.w.at"], [f"{path}:8", "workload.w.host"], [f"{path}:10", "timeline[0].fault"],
        [f"{path}:11", "timeline[1].host"], [f"{path}:14", "expect.programs.w.exitcode"]]


def test_cli_run_rejects_an_invalid_file_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/netfault-test.sock")
    path = write(tmp_path, HEAD + "timeline:\n  - {at: 1, fault: blackhole, host: server}\n")
    assert main(["run", str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert f"netfault run: {path} is not a valid scenario file:\n{path}:8: timeline[0].fault: unknown fault" in err
    assert not (tmp_path / "results").exists()


def test_pytest_collects_a_scenario_file_and_fails_an_invalid_one_with_its_problems(tmp_path: Path):
    """No engine here: the file is checked before any host is made, so the item fails rather than skips."""
    write(tmp_path, HEAD + "timeline:\n  - {at: -1, fault: drop, host: db}\n", "broken")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NETFAULT_", "CI", "DOCKER_"))}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          "-m", "faults", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**clean, "DOCKER_HOST": "unix:///nonexistent/netfault-test.sock"})
    assert "1 failed" in out.stdout, out.stdout + out.stderr
    assert "broken.netfault.yaml::broken" in out.stdout, out.stdout
    assert f"{tmp_path / ('broken' + SUFFIX)}:8: timeline[0].at: must not be negative" in out.stdout, out.stdout
    assert f"{tmp_path / ('broken' + SUFFIX)}:8: timeline[0].host: unknown host 'db'" in out.stdout, out.stdout


def test_expectations_are_checked_against_what_the_run_recorded(tmp_path: Path):
    """The runner's checks on a made-up run: each failure names its place in the file, what came and what was
    expected; a program killed at the end only satisfies still_running_at."""
    s = load_scenario(write(tmp_path, HEAD + textwrap.dedent("""\
    workload:
      fetch: {host: client, run: [curl]}
      hang: {host: client, run: [curl]}
      p: {host: client, probe: [{connect: {to: server, port: 80}}]}
    expect:
      programs:
        fetch: {exit_code: 28, stderr: 'timed out', exits_within: [7, 8]}
        hang: {still_running_at: 9, exit_code: 0}
      probes:
        p.connect: {errno: ETIMEDOUT, elapsed: [6.9, 7.5]}
    """)))
    run = ScenarioRun(s, origin=100.0, killed_at_end={"hang"})
    run.programs = {"fetch": ProgramResult("client", "fetch", ("curl",), 28, None, b"", b"curl: (28) Operation "
                                           b"timed out", 0, 0, 100.0, 109.0),
                    "hang": ProgramResult("client", "hang", ("curl",), -9, "SIGKILL", b"", b"", 0, 0, 100.0, 110.0)}
    run.steps = {"p.connect": SyscallRecord("connect", "s1", 1, None, 110, "ECONNREFUSED", "Connection refused",
                                            100.0, 100.001, 0.0, 0.0)}
    assert [f.split(": ", 2)[1:] for f in check(run)] == [
        ["expect.programs.fetch.exits_within", "exited with status 28 after 9.000 s, expected after 7 .. 8 s"],
        ["expect.programs.hang.exit_code", "still running at the end (+10 s), expected exit_code 0"],
        ["expect.probes['p.connect'].errno",
         "connect s1 -> -1 ECONNREFUSED (Connection refused) in 1.0 ms: errno ECONNREFUSED, expected ETIMEDOUT"],
        ["expect.probes['p.connect'].elapsed",
         "connect s1 -> -1 ECONNREFUSED (Connection refused) in 1.0 ms: elapsed 0.0010 s, expected 6.9 .. 7.5 s"]]
