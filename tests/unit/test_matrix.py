"""Unit tests of harness.matrix and `netfault matrix` without QEMU: commands, matrix.json, the comparison call."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from harness import cli, matrix
from harness.errors import NetfaultError
from harness.guest import GuestError, GuestResult
from harness.kernels import DEFAULT_KERNELS, Kernel, KernelError


def kernel(release: str) -> Kernel:
    return Kernel(release, Path(f"/cache/{release}/vmlinuz"), Path(f"/cache/{release}/root"), ("linux-image",),
                  "sid", "1.0-1")


def test_guest_command_runs_the_catalogue_on_netns(tmp_path: Path) -> None:
    argv, env = matrix.guest_command(kernel("6.1.0-47-amd64"), tmp_path / "6.1.0-47-amd64", ["-k", "s01"])
    assert argv == [sys.executable, "-m", "harness.cli", "catalogue", "--backend", "netns", "--results",
                    str(tmp_path / "6.1.0-47-amd64"), "--", "-k", "s01"]
    assert matrix.guest_command(kernel("x"), tmp_path, [])[0][-1] == str(tmp_path)
    assert env["HOME"] == "/tmp" and "/sbin" in env["PATH"] and env["NETFAULT_KERNEL"] == "6.1.0-47-amd64"


def test_smoke_command_is_python_that_checks_the_delay(tmp_path: Path) -> None:
    argv, _ = matrix.smoke_command(kernel("7.2.13+deb14-amd64"), tmp_path)
    assert argv[:2] == [sys.executable, "-c"]
    assert argv[3:] == [str(tmp_path), str(matrix.SMOKE_DELAY_MS), str(matrix.SMOKE_SYN_RETRIES)]
    compile(argv[2], "smoke", "exec")
    assert "/sbin/tc" in argv[2] and "netem" in argv[2] and "tcp_syn_linear_timeouts" in argv[2]
    assert "RetransSegs" in argv[2] and "tcp_syn_retries" in argv[2]


@pytest.fixture
def fake_guests(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """resolve and run_guest stand-ins: "bad" does not resolve, "6.1" exits 0, others exit 1."""
    calls: list[dict] = []

    def resolve(spec: str, progress) -> Kernel:
        if spec == "bad":
            raise KernelError("no Debian kernel 'bad'")
        return kernel({"6.1": "6.1.0-47-amd64", "7": "7.2.13+deb14-amd64"}.get(spec, spec))

    def run_guest(k: Kernel, argv, *, share, share_mount, log_path, cancel, **kw) -> GuestResult:
        calls.append({"release": k.release, "argv": argv, "share": share, "share_mount": share_mount, **kw})
        assert isinstance(cancel, threading.Event)
        if k.release == "hang":
            raise GuestError("the guest on Linux hang (tcg) was still running after 5 s and was killed")
        results = Path(argv[3] if argv[1] == "-c" else argv[argv.index("--results") + 1])
        if argv[1] == "-c":
            (results / matrix.SMOKE_JSON).write_text(json.dumps({"tcp_syn_linear_timeouts": 4}))
        log_path.write_text("console\n")
        return GuestResult(0 if k.release.startswith("6.1") else 1, 0.1, 5.123, 9.87, 300 * 1024, log_path, "tcg")

    monkeypatch.setattr(matrix, "resolve", resolve)
    monkeypatch.setattr(matrix, "run_guest", run_guest)
    return calls


def test_run_matrix_writes_matrix_json(tmp_path: Path, fake_guests: list[dict]) -> None:
    lines: list[str] = []
    matrix_dir, entries = matrix.run_matrix(["6.1", "7", "bad", "hang"], results=tmp_path, parallel=2, timeout=5,
                                            smoke=True, progress=lines.append)
    assert matrix_dir.parent == tmp_path and matrix_dir.name.startswith("matrix-")
    data = json.loads((matrix_dir / matrix.MATRIX_JSON).read_text())
    assert data["command"] == "smoke" and data["parallel"] == 2
    first, second, bad, hang = data["kernels"]
    assert first == {
        "spec": "6.1", "release": "6.1.0-47-amd64", "suite": "sid", "version": "1.0-1",
        "results": str(matrix_dir / "6.1.0-47-amd64"), "serial_log": str(matrix_dir / "6.1.0-47-amd64.serial.log"),
        "accel": "tcg", "returncode": 0, "first_output_s": 0.1, "boot_to_command_s": 5.12, "wall_s": 9.87,
        "peak_rss_mb": 300.0, "smoke": {"tcp_syn_linear_timeouts": 4}, "error": None}
    assert second["returncode"] == 1 and second["release"] == "7.2.13+deb14-amd64"
    assert bad["release"] is None and bad["error"] == "no Debian kernel 'bad'"
    assert hang["error"].startswith("the guest on Linux hang") and hang["returncode"] is None
    assert [e.ok for e in entries] == [True, False, False, False]
    call = next(c for c in fake_guests if c["release"] == "6.1.0-47-amd64")
    assert call["share"] == matrix_dir and call["share_mount"] == str(matrix_dir) and call["timeout"] == 5
    assert any("6.1.0-47-amd64: done in 10 s" in line and "exit status 0" in line for line in lines)
    assert any(line.endswith("bad: failed: no Debian kernel 'bad'") for line in lines)
    assert "1/4 kernel(s) passed" in lines[-1]


def test_catalogue_matrix_calls_the_comparison_once(tmp_path: Path, fake_guests: list[dict],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []
    monkeypatch.setattr(matrix, "load_run", lambda path: f"run:{path.parent.name}")
    monkeypatch.setattr(matrix.matrix_compare, "compare_matrix", lambda runs: compared.append(runs) or "table")
    monkeypatch.setattr(matrix.matrix_compare, "render_text", lambda c: f"{c}\n")
    monkeypatch.setattr(matrix.matrix_compare, "render_html", lambda c, page_dir: f"<p>{c}</p>")
    real = matrix._run_one

    def run_one(spec, matrix_dir, **kw):
        entry = real(spec, matrix_dir, **kw)
        (Path(entry.results) / "latest").mkdir()
        return entry
    monkeypatch.setattr(matrix, "_run_one", run_one)
    matrix_dir, _ = matrix.run_matrix(["6.1", "7"], results=tmp_path, parallel=1, timeout=5, extra=["-k", "s01"])
    assert compared == [[("6.1.0-47-amd64", "run:6.1.0-47-amd64"), ("7.2.13+deb14-amd64", "run:7.2.13+deb14-amd64")]]
    assert (matrix_dir / "comparison.html").read_text() == "<p>table</p>"
    assert all(c["argv"][-3:] == ["--", "-k", "s01"] for c in fake_guests)


def test_bad_parallel(tmp_path: Path) -> None:
    with pytest.raises(NetfaultError, match="--parallel must be 1 or more"):
        matrix.run_matrix(["6.1"], results=tmp_path, parallel=0, timeout=1)


def test_cli_matrix_passes_options_and_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_run_matrix(specs, **kw):
        seen.update(kw, specs=list(specs))
        return Path("/r/matrix-x"), [matrix.Entry("6.1", returncode=0), matrix.Entry("7", returncode=2)]
    monkeypatch.setattr(matrix, "run_matrix", fake_run_matrix)
    assert cli.main(["matrix", "--kernel", "6.1", "--kernel", "7", "--parallel", "1", "--accel", "tcg",
                     "--", "-k", "s01"]) == 1
    assert seen["specs"] == ["6.1", "7"] and seen["extra"] == ["-k", "s01"] and seen["timeout"] == 3600
    assert seen["parallel"] == 1 and seen["accel"] == "tcg" and seen["smoke"] is False
    assert cli.main(["matrix", "--smoke"]) == 1
    assert seen["specs"] == list(DEFAULT_KERNELS) and seen["timeout"] == 300 and seen["extra"] == []


def test_cli_matrix_smoke_takes_no_extra_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["matrix", "--smoke", "--", "-k", "s01"]) == 1
    assert "--smoke runs a fixed command" in capsys.readouterr().err
