"""Unit tests of the netfault command line (no Docker: the engine and builds are stubbed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli
from harness.errors import EngineUnavailable
from harness.images import BuildError


def test_help_lists_build(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "build" in capsys.readouterr().out


def test_build_help_explains_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["build", "--help"])
    out = capsys.readouterr().out
    assert "--base {auto,registry,debootstrap}" in out and "--force" in out and "debootstrap" in out


def test_build_prints_tag_on_stdout(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def fake_ensure(client, *, base, force, progress, extra_packages):
        calls.append((client, base, force, extra_packages))
        progress("[   0.0s] netfault/peer:0123456789ab is up to date")
        return "netfault/peer:0123456789ab"

    monkeypatch.setattr(cli, "connect_docker", lambda: "client")
    monkeypatch.setattr(cli, "ensure_peer_image", fake_ensure)
    assert cli.main(["build", "--base", "debootstrap", "--force"]) == 0
    out, err = capsys.readouterr()
    assert out == "netfault/peer:0123456789ab\n" and "up to date" in err
    assert cli.main(["build", "--extra-packages", "curl", "nginx-light"]) == 0
    assert calls == [("client", "debootstrap", True, []), ("client", "auto", False, ["curl", "nginx-light"])]


def test_build_scratch_compiles_then_builds_and_prints_the_tag(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "connect_docker", lambda: "client")
    monkeypatch.setattr(cli, "compile_static", lambda source, *, client, progress: Path(f"/bin/{source.stem}"))
    monkeypatch.setattr(cli, "build_scratch_image", lambda client, binary, *, progress: f"netfault/{binary.name}:1")
    assert cli.main(["build", "--scratch", "examples/c/tcpprobe.c"]) == 0
    assert capsys.readouterr().out == "netfault/tcpprobe:1\n"


@pytest.mark.parametrize("error", [
    EngineUnavailable("Docker engine not reachable at unix:///var/run/docker.sock: is dockerd running?"),
    BuildError("debootstrap is not installed; ...: apt-get install debootstrap"),
])
def test_expected_errors_have_no_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           error: Exception) -> None:
    def fail():
        raise error

    monkeypatch.setattr(cli, "connect_docker", fail)
    assert cli.main(["build"]) == 1
    err = capsys.readouterr().err
    assert err == f"netfault build: error: {error}\n" and "Traceback" not in err


def test_docker_unreachable_message(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from harness.docker_client import connect_docker
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(EngineUnavailable) as info:
        connect_docker()
    assert str(info.value).startswith(f"Docker engine not reachable at unix://{tmp_path}/no.sock: "
                                      "is dockerd running? set DOCKER_HOST")


@pytest.mark.parametrize("base_url, local", [
    ("http+docker://localhost", True),  # unix socket
    ("http://127.0.0.1:2375", True),
    ("https://build-box.example:2376", False),
    ("http+docker://ssh", False),
])
def test_engine_is_local(base_url: str, local: bool) -> None:
    from types import SimpleNamespace

    from harness.docker_client import engine_is_local
    assert engine_is_local(SimpleNamespace(api=SimpleNamespace(base_url=base_url))) is local
