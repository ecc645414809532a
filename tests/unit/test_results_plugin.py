"""The plugin writes results only when asked, in separate pytest sessions that need no Docker (tests using `pair`
skip there, and still get a bundle saying why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from harness import cli
from harness.results import write_json
from harness.results_reader import load_run
from harness.results_schema import MANIFEST_SCHEMA, OUTCOME_SCHEMA
from harness.runinfo import RUN_ID_ENV

from report_helpers import MANIFEST

NO_ENGINE = "unix:///nonexistent/netfault-test.sock"
TESTS = """
import pytest

def test_without_hosts():
    pass

@pytest.mark.faults
def test_with_hosts(pair):
    pass
"""


def _session(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(TESTS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NETFAULT_", "CI", "DOCKER_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), *args, "test_inner.py"],
        cwd=tmp_path, env={**clean, "DOCKER_HOST": NO_ENGINE, **env}, capture_output=True, text=True, timeout=300)


def test_without_a_results_setting_nothing_is_written(tmp_path: Path):
    out = _session(tmp_path)
    assert "1 passed, 1 skipped" in out.stdout, out.stdout + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_inner.py"]


def test_a_run_writes_its_manifest_and_a_bundle_for_each_test_using_pair(tmp_path: Path):
    out = _session(tmp_path, "--netfault-results", "out", **{RUN_ID_ENV: "run-1"})
    assert "1 passed, 1 skipped" in out.stdout, out.stdout + out.stderr
    run_dir = tmp_path / "out" / "run-1"
    assert (tmp_path / "out" / "latest").resolve() == run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    assert manifest["run_id"] == "run-1" and manifest["workers"] == ["main"] and manifest["exit_status"] == 0
    assert manifest["engine"]["error"].startswith(f"Docker engine not reachable at {NO_ENGINE}"), manifest["engine"]
    assert manifest["command_line"]["pytest_args"][-1] == "test_inner.py" and manifest["command_line"]["dir"] == str(
        tmp_path)
    assert [t["nodeid"] for t in manifest["tests"]] == ["test_inner.py::test_with_hosts"], manifest["tests"]
    outcome = json.loads((run_dir / "tests" / manifest["tests"][0]["bundle"] / "outcome.json").read_text())
    jsonschema.validate(outcome, OUTCOME_SCHEMA)
    assert outcome["outcome"] == "skipped" and "Docker engine not reachable" in outcome["longrepr"]["summary"]
    assert list(load_run(run_dir).bundles) == ["test_inner.py::test_with_hosts"]
    assert (run_dir / "report.html").is_file() and "test_with_hosts" in (run_dir / "report.html").read_text()
    assert f"netfault results: {run_dir} (report: {run_dir / 'report.html'})" in out.stdout, out.stdout


def test_a_run_whose_report_cannot_be_written_says_why(tmp_path: Path):
    (tmp_path / "test_half.py").write_text(
        "from pathlib import Path\n\ndef test_leaves_a_half_written_bundle():\n"
        "    Path('out/run-2/tests/half').mkdir(parents=True)\n")
    out = _session(tmp_path, "--netfault-results", "out", "test_half.py", **{RUN_ID_ENV: "run-2"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"netfault results: {tmp_path / 'out' / 'run-2'} (no report: " in out.stdout, out.stdout
    assert "half" in out.stdout and f"`netfault report {tmp_path / 'out' / 'run-2'}`" in out.stdout, out.stdout


def test_the_environment_names_the_results_directory_and_xdist_workers_share_one_manifest(tmp_path: Path):
    out = _session(tmp_path, "-n", "2", NETFAULT_RESULTS=str(tmp_path / "env"), **{RUN_ID_ENV: "run-x"})
    assert "1 passed, 1 skipped" in out.stdout, out.stdout + out.stderr
    run = load_run(tmp_path / "env" / "latest")
    assert run.manifest["workers"] == ["gw0", "gw1"], run.manifest["workers"]
    assert run.bundles["test_inner.py::test_with_hosts"].outcome["worker"] in ("gw0", "gw1")
    assert run.manifest["totals"]["tests"] == 1


def test_a_finished_run_is_never_overwritten(tmp_path: Path):
    assert _session(tmp_path, "--netfault-results", "out", **{RUN_ID_ENV: "run-1"}).returncode == 0
    before = (tmp_path / "out" / "run-1" / "manifest.json").read_text()
    out = _session(tmp_path, "--netfault-results", "out", **{RUN_ID_ENV: "run-1"})
    assert out.returncode == 4, out.stdout + out.stderr
    assert "already holds a finished run (it has manifest.json)" in out.stderr, out.stderr
    assert (tmp_path / "out" / "run-1" / "manifest.json").read_text() == before


def test_the_catalogue_gives_pytest_its_results_directory_and_run_id(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, object] = {}

    def pytest_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
        seen.update(cmd=cmd, run_id=env[RUN_ID_ENV])
        run_dir = tmp_path / "res" / env[RUN_ID_ENV]
        (run_dir / "junit.xml").write_text("<testsuites><testsuite/></testsuites>")
        write_json(run_dir / "manifest.json", {**MANIFEST, "run_id": env[RUN_ID_ENV]})
        return 0
    monkeypatch.setattr(cli.subprocess, "call", pytest_run)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["catalogue", "--results", "res", "--workers", "0"]) == 0
    assert f"--netfault-results={tmp_path / 'res'}" in seen["cmd"], seen["cmd"]
    assert f"--junitxml={tmp_path / 'res' / seen['run_id'] / 'junit.xml'}" in seen["cmd"], seen["cmd"]
    assert (tmp_path / "res" / "latest").resolve() == tmp_path / "res" / seen["run_id"]
    assert (tmp_path / "res" / seen["run_id"] / "report.html").is_file()
