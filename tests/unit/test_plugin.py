"""The pytest plugin's answers to bad input, checked in separate pytest sessions that need no Docker."""

import os
import subprocess
import sys
from pathlib import Path

NO_ENGINE = "unix:///nonexistent/netfault-test.sock"


def _session(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(body)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NETFAULT_", "CI", "DOCKER_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "--rootdir", str(tmp_path), str(test_file)],
        cwd=tmp_path, env={**clean, "DOCKER_HOST": NO_ENGINE, **env}, capture_output=True, text=True, timeout=300,
    )


USES_PAIR = """
import pytest

@pytest.mark.faults
def test_needs_hosts(pair):
    pass
"""


def test_without_engine_fault_tests_skip_with_the_reason(tmp_path):
    out = _session(tmp_path, USES_PAIR)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 skipped" in out.stdout, out.stdout
    assert f"Docker engine not reachable at {NO_ENGINE}: is dockerd running? set DOCKER_HOST" in out.stdout, out.stdout


def test_without_engine_in_ci_fault_tests_fail(tmp_path):
    out = _session(tmp_path, USES_PAIR, CI="true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 error" in out.stdout, out.stdout
    assert "CI=true: a missing engine is a failure, not a skip" in out.stdout, out.stdout


def test_unknown_host_in_sysctls_marker_is_one_clear_error(tmp_path):
    out = _session(tmp_path, """
import pytest

@pytest.mark.sysctls(clinet={"net.ipv4.tcp_syn_retries": 2})
def test_typo(pair):
    pass
""")
    assert "1 error" in out.stdout, out.stdout
    assert "unknown host 'clinet' in marker sysctls on test_inner.py::test_typo (hosts: client, server)" in out.stdout


def test_unknown_pair_parameter_is_one_clear_error(tmp_path):
    out = _session(tmp_path, """
import pytest

@pytest.mark.parametrize("pair", [{"sysctl": {}}], indirect=True)
def test_typo(pair):
    pass
""")
    assert "1 error" in out.stdout, out.stdout
    assert "unknown parameter ['sysctl'] for fixture pair" in out.stdout and "(known: sysctls)" in out.stdout, out.stdout


def test_markers_are_registered_with_descriptions(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pytest", "--markers"], capture_output=True, text=True, cwd=tmp_path)
    assert "@pytest.mark.faults: a fault scenario run against real hosts" in out.stdout
    assert "@pytest.mark.sysctls(**hosts): per-host sysctls for one test" in out.stdout


def test_unknown_backend_names_its_source_and_the_known_ones(tmp_path):
    out = _session(tmp_path, USES_PAIR, NETFAULT_BACKEND="podman")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "unknown backend 'podman' from $NETFAULT_BACKEND (known: docker, netns)" in out.stdout + out.stderr


def test_a_test_marked_for_another_backend_skips_with_its_reason(tmp_path):
    out = _session(tmp_path, """
import pytest

@pytest.mark.backend("netns", "it inspects namespaces")
def test_only_netns(pair):
    pass
""")
    assert "1 skipped" in out.stdout, out.stdout
    assert "needs the netns backend (it inspects namespaces); this session uses docker" in out.stdout, out.stdout
