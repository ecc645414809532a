"""Unit tests of harness.guest without QEMU: modules, initramfs, init scripts, QEMU's command line, the
accelerator choice, a fake QEMU for the console watch, and reaping on fake process tables."""
from __future__ import annotations

import json
import lzma
import os
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import guest
from harness.errors import ConfigError
from harness.guest import (
    GuestError, GuestProcess, GuestTimeout, build_initramfs, guests_to_reap, init_script, load_order, module_name,
    parse_guest, qemu_argv, run_script,
)
from harness.kernels import Kernel
from harness.runinfo import RunInfo

RELEASE = "6.1.0-47-amd64"
MODULES_DEP = """\
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz \
kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/net/sched/sch_netem.ko.xz:
"""
BUILTIN = "kernel/drivers/virtio/virtio.ko\nkernel/fs/fscache/fscache.ko\n"


def kernel_at(root: Path, release: str = RELEASE) -> Kernel:
    return Kernel(release, root / "boot" / f"vmlinuz-{release}", root, ("linux-image-x",), "bookworm", "6.1.158-1")


def test_module_name_normalises() -> None:
    assert module_name("kernel/net/9p/9pnet_virtio.ko.xz") == "9pnet_virtio"
    assert module_name("kernel/drivers/virtio/virtio-pci.ko.zst") == "virtio_pci"
    assert module_name("kernel/fs/9p/9p.ko") == "9p"


def test_load_order_puts_dependencies_first_once_and_skips_builtins() -> None:
    order = load_order(MODULES_DEP, BUILTIN, ["virtio_pci", "9pnet_virtio", "9p", "virtio"], RELEASE)
    names = [module_name(p) for p in order]
    assert sorted(names) == sorted(set(names)) and "virtio" not in names
    for module, deps in (("virtio_pci", ["virtio_pci_modern_dev", "virtio_ring"]), ("9pnet_virtio", ["9pnet"]),
                         ("9p", ["9pnet", "netfs"])):
        assert all(names.index(d) < names.index(module) for d in deps)
    assert "sch_netem" not in names


def test_load_order_missing_module_says_why() -> None:
    with pytest.raises(GuestError, match="has no module 9p and does not build it in.*cloud kernel"):
        load_order("kernel/net/9p/9pnet.ko:\n", "", ["9p"], "6.1.0-47-cloud-amd64")


def parse_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, body, (rdevmajor, rdevminor)) of a newc archive, checking its alignment."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701" and pos % 4 == 0
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = fields[11], fields[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        body_at = pos + 110 + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], data[body_at: body_at + size], (fields[9], fields[10]))
        pos = body_at + size + (-size % 4)


def fake_elf(path: Path, static: bool) -> Path:
    """An ELF64 header with one program header: PT_LOAD (static) or PT_INTERP (dynamic)."""
    head = bytearray(64)
    head[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", head, 0x20, 64)
    struct.pack_into("<HH", head, 0x36, 56, 1)
    phdr = struct.pack("<I", 1 if static else 3) + bytes(52)
    path.write_bytes(bytes(head) + phdr)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Kernel:
    """An extracted kernel with xz-compressed modules."""
    k = kernel_at(tmp_path / "k")
    mods = k.modules_dir
    for line in MODULES_DEP.splitlines():
        path = mods / line.split(":")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(b"\x7fELF module " + path.name.encode()))
    (mods / "modules.dep").write_text(MODULES_DEP)
    (mods / "modules.builtin").write_text(BUILTIN)
    return k


def test_initramfs_has_busybox_modules_init_and_console(tree: Kernel, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "BUSYBOX", fake_elf(tmp_path / "busybox", static=True))
    path = build_initramfs(tree, cache=tmp_path / "cache")
    entries = parse_cpio(path.read_bytes())
    assert stat.S_ISCHR(entries["dev/console"][0]) and entries["dev/console"][2] == (5, 1)
    assert entries["bin/busybox"][0] & 0o111 and entries["init"][0] & 0o111
    assert entries["lib/modules/9p.ko"][1] == b"\x7fELF module 9p.ko.xz"  # decompressed for busybox insmod
    assert "lib/modules/sch_netem.ko" not in entries
    for d in ("bin", "dev", "proc", "sys", "newroot", "netfault"):
        assert stat.S_ISDIR(entries[d][0])
    helper = entries["bin/netfault-modprobe"][1].decode()
    assert f"/sbin/modprobe -d {guest.MODULES_MOUNT}" in helper and "chroot /newroot" in helper
    assert build_initramfs(tree, cache=tmp_path / "cache") == path  # cached
    assert path.parent == tmp_path / "cache" / RELEASE


def test_initramfs_needs_static_busybox(tree: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "BUSYBOX", fake_elf(tmp_path / "busybox", static=False))
    with pytest.raises(GuestError, match="not statically linked.*apt-get install busybox-static"):
        build_initramfs(tree, cache=tmp_path / "cache")
    monkeypatch.setattr(guest, "BUSYBOX", tmp_path / "none")
    with pytest.raises(GuestError, match="missing.*apt-get install busybox-static"):
        build_initramfs(tree, cache=tmp_path / "cache")


def test_init_script_mounts_and_markers(tree: Kernel) -> None:
    order = load_order(MODULES_DEP, BUILTIN, guest.BOOT_MODULES, RELEASE)
    script = init_script(tree, order)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/busybox sh" and lines[-1] == "poweroff -f"
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert "R=/newroot" in lines and f"P9=trans=virtio,version=9p2000.L,msize={guest.MSIZE}" in lines
    assert f"mount -t 9p -o ro,$P9,cache=loose {guest.ROOT_TAG} $R ||" in script
    for path, mode in (("/run", "0755"), ("/tmp", "1777"), ("/var/tmp", "1777"), ("/dev/shm", "1777")):
        assert f"mnt tmpfs $R{path} -o mode={mode}" in lines
    assert "$R/root" not in script  # a venv's python may live under /root: no tmpfs over it
    assert f"modules={tree.modules_root}" in lines
    assert f'mount --bind "$R$modules" $R{guest.MODULES_MOUNT}' in script
    assert "echo /bin/netfault-modprobe > /proc/sys/kernel/modprobe" in lines
    assert f'mount -t 9p -o $P9 {guest.SHARE_TAG} "$R$SHARE_MOUNT"' in script
    assert f"for m in {' '.join(module_name(p) + '.ko' for p in order)}; do" in script
    assert script.index(". /netfault/run.sh") < script.index("\nrun\n") < script.index(guest.MARK_EXIT)
    assert guest.MARK_PROBE in script


def test_init_mount_helper_mounts_type_on_dir(tmp_path: Path) -> None:
    """The script's mnt function, with mkdir and mount replaced by echo."""
    script = init_script(kernel_at(tmp_path), [])
    mnt = next(line for line in script.splitlines() if line.startswith("mnt()"))
    out = subprocess.run(["sh", "-c", f"mkdir() {{ :; }}\nmount() {{ echo mount \"$@\"; }}\n{mnt}\n"
                                      "mnt tmpfs /newroot/tmp -o mode=1777; mnt proc /proc"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp", "mount -t proc proc /proc"]


def test_run_script_runs_argv_in_cwd_with_only_env(tmp_path: Path) -> None:
    """run.sh as init sources it, with chroot replaced by running its command on this machine."""
    show = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ)]))"
    argv = [sys.executable, "-c", show, "a b", "it's", '"$HOME"', "*"]
    env = {"PATH": "/usr/bin:/bin", "WEIRD": "x y 'z' $HOME"}
    script = run_script(argv, str(tmp_path), env, "/results share")
    out = subprocess.run(["sh", "-c", f'chroot() {{ shift; "$@"; }}\n{script}\necho "share=$SHARE_MOUNT"\nrun'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "share=/results share" and out[1] == guest.MARK_START
    args, cwd, seen = json.loads(out[2])
    assert args == ["a b", "it's", '"$HOME"', "*"] and cwd == str(tmp_path)
    assert {k: v for k, v in seen.items() if k not in ("PWD", "OLDPWD", "LC_CTYPE")} == env  # set by sh, python


def test_run_script_bad_cwd_exits_125(tmp_path: Path) -> None:
    script = run_script(["true"], str(tmp_path / "missing"), {}, "/s")
    done = subprocess.run(["sh", "-c", f'chroot() {{ shift; "$@"; }}\n{script}\nrun'], capture_output=True)
    assert done.returncode == 125


def test_qemu_argv(tmp_path: Path) -> None:
    k = kernel_at(tmp_path)
    argv = qemu_argv("/usr/bin/qemu-system-x86_64", k, tmp_path / "initrd", accel="tcg", memory_mb=512, cpus=2,
                     name="netfault/r1/42/999/6.1", append="console=ttyS0", share=tmp_path / "a,b")
    text = " ".join(argv)
    for flag in ("-nic none", "-no-reboot", "-nographic", "-nodefaults", "-accel tcg", "-cpu max", "-m 512",
                 "-smp 2", "-serial stdio", "-monitor none", f"-kernel {k.vmlinuz}", "-append console=ttyS0",
                 "-name netfault/r1/42/999/6.1"):
        assert flag in text, flag
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert fsdevs[0] == (f"local,id={guest.ROOT_TAG},path=/,security_model=passthrough,readonly=on,"
                         "multidevs=remap")
    assert fsdevs[1].startswith(f"local,id={guest.SHARE_TAG},path={tmp_path}/a,,b,") and "readonly" not in fsdevs[1]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices == [f"virtio-9p-pci,fsdev={guest.ROOT_TAG},mount_tag={guest.ROOT_TAG}",
                       f"virtio-9p-pci,fsdev={guest.SHARE_TAG},mount_tag={guest.SHARE_TAG}"]
    probe = qemu_argv("q", k, tmp_path / "i", accel="kvm", memory_mb=256, cpus=1, name="n", append="a", share=None)
    assert "-cpu host" in " ".join(probe) and probe.count("-fsdev") == 1


def test_missing_qemu_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GuestError, match=r"QEMU is not installed.*apt-get install qemu-system-x86"):
        guest.find_qemu()


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the test boots; none has run in this process yet."""
    calls: list[str] = []
    monkeypatch.setattr(guest, "_accel_probed", {})
    monkeypatch.setattr(guest, "_probe_kvm", lambda kernel, initrd, progress: calls.append("probe") or "tcg")
    monkeypatch.delenv(guest.ACCEL_ENV, raising=False)
    return calls


def test_accel_argument_and_environment_override_the_probe(probes: list[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    k = kernel_at(tmp_path)
    assert guest.choose_accel(k, tmp_path, "kvm") == "kvm"
    monkeypatch.setenv(guest.ACCEL_ENV, "kvm")
    assert guest.choose_accel(k, tmp_path) == "kvm"
    assert guest.choose_accel(k, tmp_path, "tcg") == "tcg"
    monkeypatch.setenv(guest.ACCEL_ENV, "hvf")
    with pytest.raises(ConfigError, match=r"'hvf' from \$NETFAULT_QEMU_ACCEL \(known: kvm, tcg\)"):
        guest.choose_accel(k, tmp_path)
    with pytest.raises(ConfigError, match="from the accel argument"):
        guest.choose_accel(k, tmp_path, "xen")
    assert probes == []


def test_accel_probe_runs_once_per_process(probes: list[str], tmp_path: Path) -> None:
    k = kernel_at(tmp_path)
    assert [guest.choose_accel(k, tmp_path) for _ in range(3)] == ["tcg"] * 3
    assert probes == ["probe"]


def test_no_usable_dev_kvm_means_tcg_without_a_boot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(guest.os, "access", lambda path, mode: False)
    monkeypatch.setattr(guest, "_watch", lambda *a, **kw: pytest.fail("no test boot without /dev/kvm"))
    lines: list[str] = []
    assert guest._probe_kvm(kernel_at(tmp_path), tmp_path, lines.append) == "tcg"
    assert lines == ["accelerator: tcg (no usable /dev/kvm)"]


FAKE_QEMU = """#!/bin/sh
# a stand-in for qemu-system-x86_64: prints what the guest's console would, per $FAKE_GUEST
printf 'SeaBIOS\\r\\n'
echo "qemu-system-x86_64: warning: a host-side message" >&2
case "$FAKE_GUEST" in
  ok) printf 'Linux booting\\r\\nnetfault-guest: command start\\r\\nhello\\r\\nnetfault-guest: exit status 3\\r\\n' ;;
  initfail) printf 'netfault-guest: error: mounting the host root (9p)\\r\\n'; exit 0 ;;
  hang) echo $$ > "$FAKE_PIDFILE"; printf 'netfault-guest: command start\\r\\n'; exec sleep 60 ;;
esac
"""


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake QEMU on PATH, a prebuilt initramfs, tcg: run_guest without QEMU. Returns the share."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / guest.QEMU).write_text(FAKE_QEMU)
    (bindir / guest.QEMU).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (tmp_path / "base.cpio").write_bytes(b"base")
    monkeypatch.setattr(guest, "build_initramfs", lambda kernel, progress: tmp_path / "base.cpio")
    share = tmp_path / "share"
    share.mkdir()
    return share


def run_fake(share: Path, log: Path, timeout: float = 20) -> guest.GuestResult:
    return guest.run_guest(kernel_at(share.parent), ["true"], share=share, share_mount="/results", cwd="/", env={},
                           timeout=timeout, log_path=log, accel="tcg", run=RunInfo("run1", 1, "2", "m"))


def test_run_guest_reads_markers_and_figures(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GUEST", "ok")
    temp = fake_qemu.parent / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    log = fake_qemu.parent / "logs" / "guest.log"
    result = run_fake(fake_qemu, log)
    assert result.returncode == 3 and result.accel == "tcg" and result.serial_log == log
    assert 0 <= result.first_output_s <= result.command_start_s <= result.wall_s
    text = log.read_text()
    assert "hello" in text and "[qemu] qemu-system-x86_64: warning: a host-side message" in text
    assert list(temp.iterdir()) == []  # the per-command initramfs is gone


def test_run_guest_init_failure_is_a_guest_error(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GUEST", "initfail")
    with pytest.raises(GuestError, match=r"(?s)ended without the command's exit status \(init failed: mounting "
                                         r"the host root \(9p\)\).*full log") as info:
        run_fake(fake_qemu, fake_qemu.parent / "guest.log")
    assert not isinstance(info.value, GuestTimeout)


def test_run_guest_timeout_kills_qemu(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = fake_qemu.parent / "qemu.pid"
    monkeypatch.setenv("FAKE_GUEST", "hang")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    with pytest.raises(GuestTimeout, match=r"still running after 2 s and was killed"):
        run_fake(fake_qemu, fake_qemu.parent / "guest.log", timeout=2)
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists()


def test_guest_name_round_trips_through_parse_guest() -> None:
    run = RunInfo("20260101-000000-abcdef", 4242, "987654", "m")
    name = guest.guest_name(run, "7.2.13+deb14-amd64")
    argv = ["/usr/bin/qemu-system-x86_64", "-name", name, "-m", "512"]
    assert parse_guest(77, argv) == GuestProcess(77, run.run_id, 4242, "987654", "7.2.13+deb14-amd64")


@pytest.mark.parametrize("argv", [
    [], ["/usr/bin/python3", "-name", "netfault/r/1/2/k"], ["qemu-system-x86_64", "-name", "other-vm"],
    ["qemu-system-x86_64", "-name"], ["qemu-system-x86_64", "-name", "netfault/r/notapid/2/k"],
])
def test_parse_guest_ignores_other_processes(argv: list[str]) -> None:
    assert parse_guest(1, argv) is None


def test_list_guests_reads_a_proc_table(tmp_path: Path) -> None:
    for pid, argv in ((10, ["qemu-system-x86_64", "-name", "netfault/r1/5/100/6.1"]), (11, ["bash"]),
                      (12, ["qemu-system-x86_64", "-name", "netfault/r2/6/200/7.2"])):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()
    assert sorted(g.pid for g in guest.list_guests(tmp_path)) == [10, 12]


TABLE = [GuestProcess(10, "r1", 5, "100", "6.1"), GuestProcess(11, "r1", 5, "100", "7.2"),
         GuestProcess(12, "r2", 6, "200", "6.1"), GuestProcess(13, "r3", 7, "300", "6.12")]
LIVE = {(6, "200")}  # only run r2's owner still runs


def alive(g: GuestProcess) -> bool:
    return (g.owner_pid, g.owner_start) in LIVE


def test_reap_kills_guests_of_dead_owners_only() -> None:
    report = guests_to_reap(TABLE, alive=alive)
    assert [g.pid for g in report.killed] == [10, 11, 13] and report.kept_runs == {"r2"}
    assert report.summary() == "killed 3 guest(s); kept 1 live run(s): r2"


def test_reap_one_run_or_everything() -> None:
    assert [g.pid for g in guests_to_reap(TABLE, alive=alive, run_id="r2").killed] == [12]
    assert [g.pid for g in guests_to_reap(TABLE, alive=alive, everything=True).killed] == [10, 11, 12, 13]


def test_owner_alive_checks_pid_and_start_time() -> None:
    me = RunInfo.current()
    assert guest.owner_alive(GuestProcess(1, "r", me.pid, me.pid_start, "k"))
    assert not guest.owner_alive(GuestProcess(1, "r", me.pid, "1", "k"))  # the pid was reused


def test_reap_guests_kills_a_fake_guest_of_its_run(tmp_path: Path) -> None:
    """A real process that looks like a guest (its argv[0] and -name) is found in /proc and killed by pid."""
    fake = tmp_path / "qemu-system-x86_64"  # argv[0] only: the process is a sleeping python
    name = f"netfault/reap-test-{os.getpid()}/{os.getpid()}/0/6.1"
    proc = subprocess.Popen([str(fake), "-c", "import time; time.sleep(30)", "-name", name], executable=sys.executable)
    try:
        deadline = time.monotonic() + 5  # /proc/PID/cmdline is empty until exec has set up the new stack
        while proc.pid not in [g.pid for g in guest.list_guests()] and time.monotonic() < deadline:
            time.sleep(0.01)
        report = guest.reap_guests(run_id=f"reap-test-{os.getpid()}")
        assert [g.pid for g in report.killed] == [proc.pid]
        assert proc.wait(timeout=5) == -9
    finally:
        proc.kill()
        proc.wait()
