"""Debian kernels for the kernel matrix: a spec resolved to a package, fetched and extracted into a cache.

A spec is a series (``"6.1"``, ``"7"``: the newest generic amd64 kernel of it), a release
(``"6.1.0-41-amd64"``) or the path of a vmlinuz whose modules are next to it or in /lib/modules. Packages
come from the mirror the host's apt uses (``harness.images.find_mirror``) through a private apt state
directory in the cache: the machine's own apt sources and lists are never read or written.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import NetfaultError
from .images import _run_step, exclusive_lock, find_mirror

Progress = Callable[[str], None]

DEFAULT_KERNELS = ("5.10", "6.1", "6.12", "7")
# (archive, suite): "security" suites come from the security archive next to the mirror.
SUITES = (("main", "bullseye"), ("security", "bullseye-security"), ("main", "bookworm"),
          ("security", "bookworm-security"), ("main", "trixie"), ("security", "trixie-security"),
          ("main", "trixie-backports"), ("main", "sid"))
# On the command line, since apt's defaults override these in the APT_CONFIG file: no binary caches (225 MB
# for 3 s saved per download), lists kept compressed (81 MB instead of 180).
APT_OPTIONS = ("-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "-o", "Acquire::GzipIndexes=true")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
UPDATE_EVERY = 6 * 3600  # seconds: apt-get update of the private lists at most this often
INDEX_FORMAT = 2
FLAVOUR = "amd64"
KINDS = ("image", "binary", "modules", "base")  # linux-<kind>-<release> packages
# The release of a real kernel package (not a meta package such as linux-image-6.1-amd64): x.y.z...-flavour
RELEASE_RE = re.compile(r"^(\d+)\.(\d+)\.\d+\S*-amd64$")
SERIES_RE = re.compile(r"^\d+(?:\.\d+)?$")
TOOLS = {"/sbin/depmod": "kmod", "dpkg-deb": "dpkg", "apt-config": "apt", "/usr/lib/apt/apt-helper": "apt"}


class KernelError(NetfaultError):
    """A kernel spec that cannot be resolved, fetched or used."""


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot: its image and the root given to ``modprobe -d`` / ``depmod -b``."""

    release: str
    vmlinuz: Path
    modules_root: Path  # holds lib/modules/<release>
    packages: tuple[str, ...]  # the Debian packages it came from (empty for a local vmlinuz)
    suite: str | None  # the suite they came from (None for a local vmlinuz)
    version: str | None  # their Debian version (None for a local vmlinuz)

    @property
    def modules_dir(self) -> Path:
        return self.modules_root / "lib" / "modules" / self.release


@dataclass(frozen=True)
class Package:
    """One stanza of a Packages list, the fields a kernel needs."""

    name: str
    version: str
    suite: str
    depends: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class Candidate:
    """A kernel release available from the mirror: what to download for it."""

    release: str
    version: str
    suite: str
    packages: tuple[str, ...]
    size: int

    @property
    def series(self) -> str:
        major, minor = RELEASE_RE.match(self.release).groups()  # type: ignore[union-attr]
        return f"{major}.{minor}"


def _run(cmd: list[str], what: str) -> str:
    """Run ``cmd``, returning its stdout; KernelError with its stderr when it fails or is missing."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise KernelError(f"{what}: {cmd[0]} is not installed (apt-get install {TOOLS.get(cmd[0], cmd[0])})") from exc
    if done.returncode != 0:
        raise KernelError(f"{what}: `{shlex.join(cmd)}` failed with exit status {done.returncode}: "
                          f"{done.stderr.strip()[-2000:]}")
    return done.stdout


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/netfault/kernels`` (default ``~/.cache/netfault/kernels``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "netfault" / "kernels"


# ---------------------------------------------------------------- Debian versions and Packages lists

def _order(c: str) -> int:
    return -1 if c == "~" else ord(c) if c.isalpha() else ord(c) + 256


def _fragments(s: str) -> list[tuple[tuple[int, ...], int]]:
    """``s`` as (non-digit part, number) pairs, the units dpkg compares."""
    return [((*map(_order, text), 0), int(num or 0)) for text, num in re.findall(r"(\D*)(\d*)", s) if text or num]


def _compare_part(a: str, b: str) -> int:
    fa, fb = _fragments(a), _fragments(b)
    pad = ((0,), 0)
    for x, y in zip(fa + [pad] * (len(fb) - len(fa)), fb + [pad] * (len(fa) - len(fb)), strict=True):
        if x != y:
            return -1 if x < y else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """dpkg's version order: negative, zero or positive as ``a`` is older than, equal to or newer than ``b``."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch), upstream, revision
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    return (ea > eb) - (ea < eb) or _compare_part(ua, ub) or _compare_part(ra, rb)


def parse_packages(text: str, suite: str) -> list[Package]:
    """The linux-image/-binary/-modules/-base stanzas of a Packages list."""
    found = []
    for stanza in text.split("\n\n"):
        if not stanza.lstrip("\n").startswith(tuple(f"Package: linux-{kind}-" for kind in KINDS)):
            continue
        fields = dict(re.findall(r"^([\w-]+): ?(.*)$", stanza, re.M))
        depends = tuple(alt.split()[0] for dep in fields.get("Depends", "").split(",")
                        for alt in dep.split("|") if alt.strip())
        found.append(Package(fields["Package"], fields["Version"], suite, depends, int(fields.get("Size", 0))))
    return found


def candidates(packages: Iterable[Package]) -> dict[str, Candidate]:
    """The kernel releases (every flavour) by release, each at its newest version over the suites.

    A classic ``linux-image-<release>`` holds the kernel and its modules; a newer one is a meta package
    depending on ``linux-binary-<release>`` (the kernel), ``linux-modules-<release>`` and
    ``linux-base-<release>`` (modules.builtin, modules.order, config), which are then what to fetch.
    """
    by_name: dict[tuple[str, str, str], Package] = {(p.name, p.version, p.suite): p for p in packages}
    found: dict[str, Candidate] = {}
    for pkg in by_name.values():
        release = pkg.name.removeprefix("linux-image-")
        if not pkg.name.startswith("linux-image-") or not RELEASE_RE.match(release):
            continue
        parts = tuple(f"linux-{kind}-{release}" for kind in KINDS[1:])
        if parts[0] in pkg.depends:
            names = tuple(p for p in parts if p in pkg.depends)
            if any((p, pkg.version, pkg.suite) not in by_name for p in names):
                continue  # an incomplete split layout cannot be fetched
            size = sum(by_name[(p, pkg.version, pkg.suite)].size for p in names)
        else:
            names, size = (pkg.name,), pkg.size
        old = found.get(release)
        if old is None or compare_versions(pkg.version, old.version) > 0:
            found[release] = Candidate(release, pkg.version, pkg.suite, names, size)
    return found


def _flavour_refusal(release: str) -> str | None:
    """Why a kernel of that release cannot run the matrix's guests, or None for the generic flavour."""
    m = re.search(r"-(cloud|rt)-amd64$", release)
    if m is None:
        return None
    generic = f"{release.removesuffix(m[0])}-amd64"
    if m[1] == "cloud":
        return (f"{release} is a cloud kernel: it has no 9p support, so a guest cannot share the host's root "
                f"filesystem; use the generic flavour {generic}")
    return f"{release} is the {m[1]} flavour: only the generic amd64 flavour is supported, e.g. {generic}"


def is_generic(release: str) -> bool:
    return _flavour_refusal(release) is None


def _compare_candidates(a: Candidate, b: Candidate) -> int:
    return compare_versions(a.version, b.version)


BY_VERSION = functools.cmp_to_key(_compare_candidates)


def available_text(found: dict[str, Candidate]) -> str:
    """The generic kernels by series, newest last: ``  6.1: 6.1.0-47-amd64 (bookworm), ...``."""
    series: dict[str, list[Candidate]] = {}
    for c in found.values():
        if is_generic(c.release):
            series.setdefault(c.series, []).append(c)
    lines = []
    for name in sorted(series, key=lambda s: tuple(map(int, s.split(".")))):
        listed = ", ".join(f"{c.release} ({c.suite})" for c in sorted(series[name], key=BY_VERSION))
        lines.append(f"  {name}: {listed}")
    return "\n".join(lines)


def select(spec: str, found: dict[str, Candidate], where: str) -> Candidate:
    """The candidate for a series or release spec; KernelError with what exists when nothing matches."""
    if SERIES_RE.match(spec):
        matching = [c for c in found.values() if is_generic(c.release)
                    and (c.series == spec or c.series.split(".")[0] == spec)]
        if matching:
            return max(matching, key=BY_VERSION)
    else:
        release = spec if spec.endswith("-amd64") else f"{spec}-{FLAVOUR}"
        if refusal := _flavour_refusal(release):
            raise KernelError(refusal)
        if release in found:
            return found[release]
    raise KernelError(f"no Debian kernel {spec!r} in {where}; the generic amd64 kernels there are:\n"
                      f"{available_text(found)}\n"
                      "give a series (e.g. 6.1, or 7 for the newest 7.x) or one of these releases")


# ---------------------------------------------------------------- private apt

class PrivateApt:
    """apt-get with its own configuration, sources, lists and cache under ``root`` (through APT_CONFIG).

    Of the machine's apt configuration only the network settings (``Acquire::*``: proxies, Check-Valid-Until)
    are copied: its sources, lists, pinning and hooks (e.g. APT::Update::Post-Invoke) are not used.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def write_config(self) -> str:
        """Write sources.list (SUITES from the host's mirror) and apt.conf; return the mirror's URL."""
        mirror = find_mirror().url
        security = mirror.removesuffix("/debian") + "/debian-security" if mirror.endswith("/debian") else None
        signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
        lines = [f"deb {signed}{security if archive == 'security' else mirror} {suite} main"
                 for archive, suite in SUITES if archive == "main" or security]
        for sub in ("lists/partial", "cache/archives/partial", "apt.conf.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")
        settings = {"Dir::Etc::Main": "/dev/null", "Dir::Etc::Parts": self.root / "apt.conf.d",
                    "Dir::Etc::SourceList": self.root / "sources.list", "Dir::Etc::SourceParts": "/dev/null",
                    "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": "/dev/null",
                    "Dir::State::Lists": self.root / "lists", "Dir::State::status": "/dev/null",
                    "Dir::Cache": self.root / "cache", "Acquire::Languages": "none",
                    "APT::Sandbox::User": "root"}
        host = _run(["apt-config", "dump", "Acquire"], "reading the host's apt network settings")
        network = [line for line in host.splitlines()
                   if line.startswith("Acquire::") and not line.startswith(("Acquire::IndexTargets",
                                                                             "Acquire::Languages"))]
        (self.root / "apt.conf").write_text("\n".join([*network, *(f'{k} "{v}";' for k, v in settings.items())])
                                            + "\n")
        return mirror

    def command(self, *args: str, cwd: Path | None = None) -> list[str]:
        """``apt-get ARGS`` with this configuration (run in ``cwd``: apt-get download writes there)."""
        return ["env", *(["-C", str(cwd)] if cwd else []), f"APT_CONFIG={self.root / 'apt.conf'}", "apt-get",
                "-q", *APT_OPTIONS, *args]

    def packages(self) -> list[Package]:
        """The kernel stanzas of every Packages list apt fetched."""
        targets = _run(self.command("indextargets", "--format", "$(FILENAME)\t$(RELEASE)", "Identifier: Packages"),
                       "listing the Packages lists")
        found = []
        for line in targets.splitlines():
            path, suite = line.split("\t")
            if Path(path).exists():
                found += parse_packages(_run(["/usr/lib/apt/apt-helper", "cat-file", path], f"reading {path}"),
                                        suite)
        return found


def _update_index(root: Path, say: Progress, old: dict | None) -> dict:
    """apt-get update of the private lists, then the kernels they list; ``old`` is kept if the update fails."""
    apt = PrivateApt(root / "apt")
    mirror = apt.write_config()
    say(f"apt-get update: {len(SUITES)} suites from {mirror} (private lists in {apt.root})")
    started = time.monotonic()
    try:
        _run_step("apt-get update", apt.command("update"), root / "apt-update.log", say)
    except NetfaultError as exc:
        if old is None:
            raise
        say(f"apt-get update failed, using the lists of {time.ctime(old['updated'])}: {exc}")
        return old
    found = candidates(apt.packages())
    data = {"format": INDEX_FORMAT, "mirror": mirror, "updated": time.time(),
            "kernels": [asdict(c) for c in found.values()]}
    tmp = root / "index.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(root / "index.json")
    say(f"apt-get update: done in {time.monotonic() - started:.1f} s, {len(found)} kernel releases")
    return data


def load_index(root: Path, say: Progress, refresh: bool = False) -> dict[str, Candidate]:
    """The kernels the mirror has, from the private lists, updated when they are older than UPDATE_EVERY."""
    index = root / "index.json"
    with exclusive_lock(root / "apt.lock", say, "run updating the kernel package lists"):
        data = json.loads(index.read_text()) if index.exists() else None
        if data is not None and data.get("format") != INDEX_FORMAT:
            data = None
        if refresh or data is None or time.time() - data["updated"] >= UPDATE_EVERY:
            data = _update_index(root, say, data)
    return {c["release"]: Candidate(**{**c, "packages": tuple(c["packages"])}) for c in data["kernels"]}


# ---------------------------------------------------------------- trees

def _find_modules_root(tree: Path, release: str) -> Path | None:
    for root in (tree, tree / "usr"):
        if (root / "lib" / "modules" / release).is_dir():
            return root
    return None


def _ensure_depmod(modules_root: Path, release: str, say: Progress) -> None:
    """Packages ship no modules.dep (their postinst makes it): make it with ``depmod -b``."""
    if not (modules_root / "lib" / "modules" / release / "modules.dep").exists():
        say(f"{release}: depmod -b {modules_root}")
        _run(["/sbin/depmod", "-b", str(modules_root), release], f"making modules.dep for {release}")


def _extract(candidate: Candidate, target: Path, apt: PrivateApt, say: Progress) -> Kernel:
    """Download the candidate's packages and unpack them into ``target`` (made atomically)."""
    work = Path(tempfile.mkdtemp(prefix=f".{candidate.release}-", dir=target.parent))
    try:
        debs = work / "debs"
        debs.mkdir()
        say(f"{candidate.release}: downloading {', '.join(candidate.packages)} {candidate.version} "
            f"({candidate.size / 1e6:.0f} MB) from {candidate.suite}")
        _run_step(f"download {candidate.release}",
                  apt.command("download", *(f"{p}={candidate.version}" for p in candidate.packages), cwd=debs),
                  target.parent / f"{candidate.release}.download.log", say)
        say(f"{candidate.release}: extracting")
        tree = work / "root"
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tree)], f"extracting {deb.name}")
        shutil.rmtree(debs)
        modules_root = _find_modules_root(tree, candidate.release)
        vmlinuz = next((p for p in (tree / "boot" / f"vmlinuz-{candidate.release}",
                                    tree / "usr/lib/modules" / candidate.release / "vmlinuz",
                                    tree / "lib/modules" / candidate.release / "vmlinuz") if p.is_file()), None)
        if modules_root is None or vmlinuz is None:
            raise KernelError(f"{', '.join(candidate.packages)} {candidate.version} has no "
                              f"{'kernel image' if vmlinuz is None else 'lib/modules/' + candidate.release}: "
                              f"an unknown package layout (extracted in {tree})")
        _ensure_depmod(modules_root, candidate.release, say)
        rel = lambda p: str(p.relative_to(work))  # noqa: E731
        (work / "kernel.json").write_text(json.dumps({
            "release": candidate.release, "vmlinuz": rel(vmlinuz), "modules_root": rel(modules_root),
            "packages": candidate.packages, "suite": candidate.suite, "version": candidate.version}))
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return _load_kernel(target)


def _load_kernel(tree: Path) -> Kernel:
    data = json.loads((tree / "kernel.json").read_text())
    return Kernel(data["release"], tree / data["vmlinuz"], tree / data["modules_root"], tuple(data["packages"]),
                  data["suite"], data["version"])


def image_release(vmlinuz: Path) -> str:
    """The release a bzImage was built as (the kernel_version string its setup header points to)."""
    with vmlinuz.open("rb") as f:
        head = f.read(0x10000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise KernelError(f"{vmlinuz} is not an x86 bzImage (no HdrS setup header)")
    offset = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
    return head[offset:head.index(b"\0", offset)].decode(errors="replace").split()[0]


def local_kernel(vmlinuz: Path) -> Kernel:
    """A kernel from a vmlinuz file, its modules in /lib/modules/<release> or next to it."""
    vmlinuz = vmlinuz.resolve()
    if not vmlinuz.is_file():
        raise KernelError(f"{vmlinuz}: no such kernel image")
    release = image_release(vmlinuz)
    if refusal := _flavour_refusal(release):
        raise KernelError(refusal)
    tried = [Path("/"), vmlinuz.parent.parent, vmlinuz.parent.parent / "usr"]
    if vmlinuz.parent.name == release and vmlinuz.parent.parent.name == "modules":  # <root>/lib/modules/<r>/vmlinuz
        tried.insert(0, vmlinuz.parents[3])
    for root in tried:
        if (root / "lib" / "modules" / release / "modules.dep").is_file():
            return Kernel(release, vmlinuz, root, (), None, None)
    raise KernelError(f"{vmlinuz} is Linux {release} but its modules were not found: looked for lib/modules/"
                      f"{release}/modules.dep under {', '.join(map(str, dict.fromkeys(tried)))}; put them there "
                      f"(and run depmod -b ROOT {release}) or give a Debian release such as 6.1")


def resolve(spec: str, *, cache: Path | None = None, progress: Progress = lambda line: None,
            refresh: bool = False) -> Kernel:
    """The kernel for ``spec``, fetched and extracted into the cache if it is not there yet."""
    spec = spec.strip()
    if "/" in spec or Path(spec).is_file():
        return local_kernel(Path(spec))
    root = cache or cache_dir()
    if not SERIES_RE.match(spec):
        release = spec if spec.endswith("-amd64") else f"{spec}-{FLAVOUR}"
        if refusal := _flavour_refusal(release):
            raise KernelError(refusal)
        if (root / release / "kernel.json").exists():
            return _load_kernel(root / release)
    found = load_index(root, progress, refresh)
    candidate = select(spec, found, f"the lists of {', '.join(s for _, s in SUITES)} ({root / 'apt'})")
    target = root / candidate.release
    with exclusive_lock(root / f"{candidate.release}.lock", progress, f"run fetching {candidate.release}"):
        if (target / "kernel.json").exists():
            return _load_kernel(target)
        started = time.monotonic()
        kernel = _extract(candidate, target, PrivateApt(root / "apt"), progress)
        progress(f"{candidate.release}: ready in {time.monotonic() - started:.1f} s ({target})")
        return kernel
