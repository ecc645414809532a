"""QEMU guests: boot a kernel from harness.kernels and run one command of the host's root filesystem in it.

The guest's initramfs (busybox-static and the kernel's virtio/9p modules, built once per kernel) mounts the
host's ``/`` read-only over virtio-9p, tmpfs where programs write (/run, /tmp, /var/tmp, /dev/shm),
a writable 9p share (a host directory) where results go, and chroots into the host root to run the command.
Modules the command needs (sch_netem, veth, nf_tables...) are autoloaded by the guest kernel through a helper
that runs the host's ``/sbin/modprobe -d`` on the kernel's extracted modules. The serial console (the kernel's
boot log, the command's output and init's marker lines) is the guest's log.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import select
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, NetfaultError
from .kernels import Kernel
from .reaper import RunsSeen
from .runinfo import RunInfo, process_start_time

Progress = Callable[[str], None]

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
ACCEL_ENV = "NETFAULT_QEMU_ACCEL"
ACCELS = ("kvm", "tcg")
PROBE_TIMEOUT = 10.0  # seconds for the accelerator's test boot (a working KVM reaches init in about 1 s)
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")  # what mounting the host root needs, dependencies aside
ROOT_TAG, SHARE_TAG = "hostroot", "share"
NEWROOT = "/newroot"
MODULES_MOUNT = "/run/netfault/modules"  # the kernel's modules root, bound inside the guest for the helper
MSIZE = 262144
# tmpfs mounts over the read-only host root, with their modes. Not /root: a venv's interpreter may live there
# (pyenv); give the command a HOME on a tmpfs instead (GUEST_HOME).
TMPFS = (("/run", "0755"), ("/tmp", "1777"), ("/var/tmp", "1777"), ("/dev/shm", "1777"))
GUEST_HOME = "/tmp"
MARK_PROBE = "netfault-guest: probe ok"
MARK_START = "netfault-guest: command start"
MARK_EXIT = "netfault-guest: exit status "
MARK_ERROR = "netfault-guest: error: "
NAME_PREFIX = "netfault/"  # -name netfault/<run id>/<owner pid>/<owner start>/<release>
LOG_TAIL = 25
CONSOLE_LOGLEVEL = 5  # while the command runs, kernel messages reach the console from warnings up only
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class GuestError(NetfaultError):
    """A guest that could not be built, booted or finished."""


class GuestTimeout(GuestError):
    """A guest still running at its host-side timeout (QEMU was killed)."""


@dataclass(frozen=True)
class GuestResult:
    """How a guest's command ended, and what the guest cost."""

    returncode: int  # the command's exit status inside the guest
    first_output_s: float | None  # seconds from QEMU's start to the first byte on the serial console
    command_start_s: float | None  # seconds from QEMU's start to the command's exec
    wall_s: float  # seconds from QEMU's start to its exit
    peak_rss_kb: int  # QEMU's VmHWM
    serial_log: Path
    accel: str


def guest_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/netfault/guests`` (default ``~/.cache/netfault/guests``): the initramfs files."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "netfault" / "guests"


def missing_tools() -> list[str]:
    """What booting a guest needs and this machine lacks, each with its install command."""
    return [what for what, present in ((f"{QEMU} (apt-get install qemu-system-x86)", shutil.which(QEMU)),
                                       (f"{BUSYBOX} (apt-get install busybox-static)", BUSYBOX.is_file()))
            if not present]


def find_qemu() -> str:
    """The QEMU binary; GuestError with the install command when it is missing."""
    path = shutil.which(QEMU)
    if path is None:
        raise GuestError(f"QEMU is not installed: no {QEMU} on PATH ({os.environ.get('PATH', '')}); the kernel "
                         "matrix boots its guests with it: apt-get install qemu-system-x86")
    return path


# ---------------------------------------------------------------- modules

def module_name(path: str) -> str:
    """``kernel/net/9p/9pnet_virtio.ko.xz`` -> ``9pnet_virtio`` (the name modprobe and the kernel use)."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


def load_order(modules_dep: str, builtin: str, wanted: Iterable[str], release: str) -> list[str]:
    """The module files (paths as in modules.dep) to insmod for ``wanted``, dependencies first; built-in
    modules are skipped. GuestError for a module that is neither."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        path, _, rest = line.partition(":")
        deps[module_name(path)] = (path, rest.split())
    builtins = {module_name(line) for line in builtin.split()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtins:
            return
        if name not in deps:
            raise GuestError(f"Linux {release} has no module {name} and does not build it in: a guest cannot "
                             "mount the host root over virtio-9p with it (a cloud kernel? use the generic flavour)")
        path, needs = deps[name]
        if path not in order:
            for dep in needs:
                visit(module_name(dep))
            order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def _decompressed(path: Path) -> bytes:
    """A module file's ELF content (.ko, .ko.xz, .ko.gz, .ko.zst): kernels before 5.17 cannot decompress
    modules themselves, so the initramfs holds them decompressed."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise GuestError(f"{path} is zstd-compressed and zstd is not installed: apt-get install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


# ---------------------------------------------------------------- initramfs

class Cpio:
    """An initramfs archive in the kernel's ``newc`` format (directories first: the kernel makes no parents)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._ino = 0

    def _entry(self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        fields = (self._ino, mode, 0, 0, 1, 0, len(body), 0, 0, *rdev, len(name) + 1, 0)
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        self.data += b"\0" * (-len(self.data) % 4) + body
        self.data += b"\0" * (-len(self.data) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, body)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.data)


def modprobe_helper(kernel: Kernel) -> str:
    """The script /proc/sys/kernel/modprobe points at: the host's modprobe on the kernel's own modules."""
    return (f"#!/bin/sh\n# {kernel.release}: autoloads through the host's modprobe on {kernel.modules_root}\n"
            f"exec /bin/chroot {NEWROOT} /sbin/modprobe -d {MODULES_MOUNT} \"$@\"\n")


def init_script(kernel: Kernel, modules: Sequence[str]) -> str:
    """The guest's /init: mounts, then ``run`` from /netfault/run.sh (made per command), then power off."""
    q = shlex.quote
    tmpfs = "\n".join(f"mnt tmpfs $R{path} -o mode={mode}" for path, mode in TMPFS)
    insmod = " ".join(Path(m).name.split(".ko")[0] + ".ko" for m in modules)
    return f"""#!/bin/busybox sh
# netfault guest init for Linux {kernel.release} (harness/guest.py): the host root read-only over 9p,
# one command chrooted into it, its exit status on the console, power off.
/bin/busybox --install -s /bin
export PATH=/bin
R={NEWROOT}
P9=trans=virtio,version=9p2000.L,msize={MSIZE}
fail() {{ echo "{MARK_ERROR}$*"; sync; poweroff -f; }}
mnt() {{ t=$1 d=$2; shift 2; mkdir -p "$d" && mount -t "$t" "$@" "$t" "$d" || fail "mounting $t on $d"; }}
mnt proc /proc; mnt sysfs /sys; mnt devtmpfs /dev
if grep -qw netfault.probe /proc/cmdline; then echo "{MARK_PROBE}"; poweroff -f; fi
for m in {insmod}; do insmod /lib/modules/$m || fail "insmod $m"; done
. /netfault/run.sh
mkdir -p $R && mount -t 9p -o ro,$P9,cache=loose {ROOT_TAG} $R || fail 'mounting the host root (9p)'
mnt proc $R/proc; mnt sysfs $R/sys; mnt devtmpfs $R/dev; mnt devpts $R/dev/pts
{tmpfs}
modules={q(str(kernel.modules_root))}
mkdir -p $R{MODULES_MOUNT} && mount --bind "$R$modules" $R{MODULES_MOUNT} || fail "binding the modules in $modules"
echo /bin/netfault-modprobe > /proc/sys/kernel/modprobe
mkdir -p "$R$SHARE_MOUNT" && mount -t 9p -o $P9 {SHARE_TAG} "$R$SHARE_MOUNT" ||
  fail "mounting the share at $SHARE_MOUNT (it must exist on the host or be under a tmpfs)"
ip link set lo up
echo {CONSOLE_LOGLEVEL} > /proc/sys/kernel/printk
run
echo "{MARK_EXIT}$?"
sync
poweroff -f
"""


def run_script(argv: Sequence[str], cwd: str, env: Mapping[str, str], share_mount: str) -> str:
    """/netfault/run.sh: the share's guest path and ``run``, the command in the host root with only ``env``."""
    q = shlex.quote
    inner = f'cd "$1" || exit 125; shift; echo "{MARK_START}"; exec "$@"'
    words = ["chroot", NEWROOT, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), "/bin/sh", "-c", inner,
             "sh", cwd, *argv]
    return f"SHARE_MOUNT={q(share_mount)}\nrun() {{\n  {' '.join(map(q, words))}\n}}\n"


def _elf_is_static(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header (no dynamic loader)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def build_initramfs(kernel: Kernel, *, cache: Path | None = None, progress: Progress = lambda line: None) -> Path:
    """The kernel's initramfs (cached by content: busybox, modules, init), built if missing."""
    if not BUSYBOX.is_file() or not _elf_is_static(BUSYBOX):
        raise GuestError(f"{BUSYBOX} is {'missing' if not BUSYBOX.exists() else 'not statically linked'}: the guest's "
                         "initramfs needs busybox-static: apt-get install busybox-static")
    mdir = kernel.modules_dir
    builtin = mdir / "modules.builtin"
    modules = load_order((mdir / "modules.dep").read_text(), builtin.read_text() if builtin.exists() else "",
                         BOOT_MODULES, kernel.release)
    init, helper = init_script(kernel, modules), modprobe_helper(kernel)
    key = hashlib.sha256()
    for part in (init.encode(), helper.encode(), BUSYBOX.read_bytes(), *((mdir / m).read_bytes() for m in modules)):
        key.update(hashlib.sha256(part).digest())
    path = (cache or guest_cache_dir()) / kernel.release / f"initramfs-{key.hexdigest()[:12]}.cpio"
    if path.exists():
        return path
    started = time.monotonic()
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "netfault", NEWROOT.lstrip("/")):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    cpio.file("bin/netfault-modprobe", helper.encode(), 0o755)
    for m in modules:
        cpio.file(f"lib/modules/{Path(m).name.split('.ko')[0]}.ko", _decompressed(mdir / m))
    cpio.file("init", init.encode(), 0o755)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cpio.finish())
    tmp.replace(path)
    for stale in path.parent.glob("initramfs-*.cpio"):  # built from an older init, busybox or module set
        if stale != path:
            stale.unlink()
    progress(f"initramfs built in {time.monotonic() - started:.2f} s ({len(modules)} modules, "
             f"{path.stat().st_size / 1e6:.1f} MB): {path}")
    return path


def _run_cpio(script: str) -> bytes:
    cpio = Cpio()
    cpio.file("netfault/run.sh", script.encode(), 0o755)
    return cpio.finish()


# ---------------------------------------------------------------- QEMU

def guest_name(run: RunInfo, release: str) -> str:
    """QEMU's ``-name``: the run id, the owner's pid and start time (for the reaper), and the kernel."""
    return f"{NAME_PREFIX}{run.run_id}/{run.pid}/{run.pid_start}/{release}"


def _opt(value: str | Path) -> str:
    """A value inside a QEMU option list (commas doubled)."""
    return str(value).replace(",", ",,")


def qemu_argv(qemu: str, kernel: Kernel, initrd: Path, *, accel: str, memory_mb: int, cpus: int, name: str,
              append: str, share: Path | None) -> list[str]:
    """The QEMU command line: no network device, no reboot, serial console on stdout, the host root as a
    read-only 9p export and ``share`` as a writable one."""
    argv = [qemu, "-name", _opt(name), "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(memory_mb), "-smp", str(cpus), "-nodefaults", "-no-user-config", "-nographic",
            "-monitor", "none", "-serial", "stdio", "-nic", "none", "-no-reboot",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", append,
            "-fsdev", f"local,id={ROOT_TAG},path=/,security_model=passthrough,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev={ROOT_TAG},mount_tag={ROOT_TAG}"]
    if share is not None:
        argv += ["-fsdev", f"local,id={SHARE_TAG},path={_opt(share)},security_model=passthrough,multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev={SHARE_TAG},mount_tag={SHARE_TAG}"]
    return argv


def kernel_cmdline(*, probe: bool = False) -> str:
    return "console=ttyS0 panic=-1 rdinit=/init" + (" netfault.probe" if probe else "")


def _vm_hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


@dataclass
class _Boot:
    """What one QEMU run showed on its console."""

    qemu_status: int | None = None
    timed_out: bool = False
    first_output_s: float | None = None
    command_start_s: float | None = None
    exit_status: int | None = None
    probe_ok: bool = False
    guest_error: str | None = None
    qemu_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_kb: int = 0


def _watch(argv: list[str], log_path: Path, timeout: float, cancel: threading.Event | None,
           say: Progress = lambda line: None) -> _Boot:
    """Run QEMU, copying its console to ``log_path`` and reading init's marker lines, until it exits, the
    timeout passes or ``cancel`` is set; QEMU is killed by its pid whatever happens."""
    boot = _Boot()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        log.write(f"[host] {shlex.join(argv)}\n".encode())
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            streams = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}  # type: ignore[union-attr]
            while streams:
                if cancel is not None and cancel.is_set():
                    raise GuestError("cancelled: QEMU was killed")
                if time.monotonic() - started > timeout:
                    boot.timed_out = True
                    break
                boot.peak_rss_kb = max(boot.peak_rss_kb, _vm_hwm_kb(proc.pid))
                for fd in select.select(list(streams), [], [], 0.2)[0]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        del streams[fd]
                        continue
                    now = time.monotonic() - started
                    *lines, streams[fd] = (streams[fd] + chunk).split(b"\n")
                    if fd == proc.stdout.fileno():  # type: ignore[union-attr]
                        boot.first_output_s = boot.first_output_s or now
                        log.write(chunk)
                        for line in lines:
                            text = line.decode(errors="replace").strip()
                            _read_marker(boot, text, now)
                            if text == MARK_START:
                                say(f"running the command ({now:.1f} s after QEMU started)")
                    else:
                        log.write(b"".join(b"[qemu] " + line + b"\n" for line in lines))
                        boot.qemu_errors += [line.decode(errors="replace") for line in lines]
                log.flush()
        finally:
            if proc.poll() is None:
                proc.kill()
            boot.qemu_status = proc.wait()
            boot.wall_s = time.monotonic() - started
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    return boot


def _read_marker(boot: _Boot, line: str, now: float) -> None:
    if line == MARK_START:
        boot.command_start_s = now
    elif line.startswith(MARK_EXIT) and line[len(MARK_EXIT):].isdigit():
        boot.exit_status = int(line[len(MARK_EXIT):])
    elif line == MARK_PROBE:
        boot.probe_ok = True
    elif line.startswith(MARK_ERROR):
        boot.guest_error = line[len(MARK_ERROR):]


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    text = path.read_text(errors="replace").replace("\r", "").splitlines()[-lines:] if path.exists() else []
    return "\n".join(f"    {line}" for line in text) or "    (empty)"


# ---------------------------------------------------------------- accelerator

_accel_lock = threading.Lock()
_accel_probed: dict[str, str] = {}


def _checked_accel(value: str, source: str) -> str:
    if value not in ACCELS:
        raise ConfigError(f"unknown QEMU accelerator {value!r} from {source} (known: {', '.join(ACCELS)})")
    return value


def choose_accel(kernel: Kernel, initrd: Path, override: str | None = None,
                 progress: Progress = lambda line: None) -> str:
    """``override``, else ``$NETFAULT_QEMU_ACCEL``, else kvm if a short test boot with it reaches init,
    else tcg. The test boot runs once per process: /dev/kvm may exist and not work (QEMU aborts or hangs)."""
    if override:
        return _checked_accel(override, "the accel argument")
    if os.environ.get(ACCEL_ENV):
        return _checked_accel(os.environ[ACCEL_ENV], f"${ACCEL_ENV}")
    with _accel_lock:
        if "choice" not in _accel_probed:
            _accel_probed["choice"] = _probe_kvm(kernel, initrd, progress)
        return _accel_probed["choice"]


def _probe_kvm(kernel: Kernel, initrd: Path, progress: Progress) -> str:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        progress("accelerator: tcg (no usable /dev/kvm)")
        return "tcg"
    name = guest_name(RunInfo.current(), f"{kernel.release}-probe")
    argv = qemu_argv(find_qemu(), kernel, initrd, accel="kvm", memory_mb=256, cpus=1, name=name,
                     append=kernel_cmdline(probe=True), share=None)
    with tempfile.TemporaryDirectory(prefix="netfault-probe-") as tmp:
        boot = _watch(argv, Path(tmp) / "probe.log", PROBE_TIMEOUT, None)
    if boot.probe_ok:
        progress(f"accelerator: kvm (test boot reached init in {boot.wall_s:.1f} s)")
        return "kvm"
    why = (f"no init within {PROBE_TIMEOUT:.0f} s" if boot.timed_out else
           f"QEMU exit status {boot.qemu_status}: {' '.join(boot.qemu_errors[-2:]) or 'no message'}")
    progress(f"accelerator: tcg (a kvm test boot failed: {why}; ${ACCEL_ENV}=kvm|tcg overrides)")
    return "tcg"


# ---------------------------------------------------------------- running a command

def run_guest(kernel: Kernel, argv: Sequence[str], *, share: Path, share_mount: str, cwd: str,
              env: Mapping[str, str], timeout: float, log_path: Path, memory_mb: int = 1024, cpus: int = 1,
              accel: str | None = None, run: RunInfo | None = None, progress: Progress = lambda line: None,
              cancel: threading.Event | None = None) -> GuestResult:
    """Boot ``kernel`` and run ``argv`` in the host root inside it, in ``cwd`` with only ``env``, the host
    directory ``share`` writable at ``share_mount``. GuestTimeout when it runs past ``timeout`` seconds,
    GuestError when the guest ends without the command's exit status; QEMU never outlives the call."""
    qemu = find_qemu()
    if not share.is_dir():
        raise GuestError(f"the share {share} is not a directory: create it first")
    base = build_initramfs(kernel, progress=progress)
    accel = choose_accel(kernel, base, accel, progress)
    name = guest_name(run or RunInfo.current(), kernel.release)
    with tempfile.NamedTemporaryFile(prefix="netfault-initrd-", suffix=".cpio") as initrd:
        initrd.write(base.read_bytes() + _run_cpio(run_script(argv, cwd, env, share_mount)))
        initrd.flush()
        qargv = qemu_argv(qemu, kernel, Path(initrd.name), accel=accel, memory_mb=memory_mb, cpus=cpus, name=name,
                          append=kernel_cmdline(), share=share)
        boot = _watch(qargv, log_path, timeout, cancel, progress)
    if boot.timed_out:
        raise GuestTimeout(f"the guest on Linux {kernel.release} ({accel}) was still running after {timeout:.0f} s "
                           f"and was killed; last lines of its console:\n{log_tail(log_path)}\n  full log: {log_path}")
    if boot.exit_status is None:
        what = f"init failed: {boot.guest_error}" if boot.guest_error else f"QEMU exit status {boot.qemu_status}"
        raise GuestError(f"the guest on Linux {kernel.release} ({accel}) ended without the command's exit status "
                         f"({what}); last lines of its console:\n{log_tail(log_path)}\n  full log: {log_path}")
    return GuestResult(boot.exit_status, boot.first_output_s, boot.command_start_s, boot.wall_s, boot.peak_rss_kb,
                       log_path, accel)


# ---------------------------------------------------------------- reaping

@dataclass(frozen=True)
class GuestProcess:
    """A running QEMU guest of netfault, as its ``-name`` says."""

    pid: int
    run_id: str
    owner_pid: int
    owner_start: str
    release: str


def parse_guest(pid: int, argv: Sequence[str]) -> GuestProcess | None:
    """The guest a process is, from its command line; None for any other process."""
    if not argv or not Path(argv[0]).name.startswith("qemu-system") or "-name" not in argv[:-1]:
        return None
    name = argv[argv.index("-name") + 1].replace(",,", ",")
    parts = name.removeprefix(NAME_PREFIX).split("/", 3)
    if not name.startswith(NAME_PREFIX) or len(parts) != 4 or not parts[1].isdigit():
        return None
    return GuestProcess(pid, parts[0], int(parts[1]), parts[2], parts[3])


def list_guests(proc: Path = Path("/proc")) -> list[GuestProcess]:
    """netfault's QEMU processes on this machine."""
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited while listing
            guest = parse_guest(int(entry.name), [a.decode(errors="replace") for a in argv])
            if guest is not None:
                found.append(guest)
    return found


def owner_alive(guest: GuestProcess) -> bool:
    """Whether the process that started the guest still runs (same pid and start time)."""
    return process_start_time(guest.owner_pid) == guest.owner_start


@dataclass
class GuestReapReport(RunsSeen):
    """What a reap of guests found and did."""

    killed: list[GuestProcess] = field(default_factory=list)

    def summary(self) -> str:
        return self.summary_of(f"killed {len(self.killed)} guest(s)")


def guests_to_reap(guests: Iterable[GuestProcess], *, alive: Callable[[GuestProcess], bool],
                   everything: bool = False, run_id: str | None = None) -> GuestReapReport:
    """Which guests a reap kills (harness.reaper's rules): ``run_id``'s alone (alive or not), every one with
    ``everything``, else those whose owning process is gone. The report's ``killed`` is the plan."""
    report = GuestReapReport()
    for guest in guests:
        if run_id is not None:
            dead = guest.run_id == run_id
        elif everything:
            dead = True
        else:
            dead = not alive(guest)
            if not dead:
                report.kept_runs.add(guest.run_id)
        if dead:
            report.killed.append(guest)
    return report


def reap_guests(*, everything: bool = False, run_id: str | None = None,
                progress: Progress = lambda line: None) -> GuestReapReport:
    """Kill (SIGKILL, by pid) the QEMU guests of runs whose process is gone (see guests_to_reap)."""
    report = guests_to_reap(list_guests(), alive=owner_alive, everything=everything, run_id=run_id)
    gone = []
    for guest in report.killed:
        progress(f"killing guest {guest.release} (pid {guest.pid}, run {guest.run_id})")
        try:
            os.kill(guest.pid, signal.SIGKILL)
        except ProcessLookupError:
            gone.append(guest)  # exited meanwhile
    report.killed = [g for g in report.killed if g not in gone]
    return report
