"""Content-addressed builds of the peer image (``netfault build``), with or without a registry.

The peer image is ``images/peer/Dockerfile`` built on a base: ``debian:bookworm-slim`` where the engine
has it or a registry answers, else ``netfault/base:bookworm-<hash>``, a debootstrap rootfs from the host's
Debian mirror streamed into the engine with ``docker import``. On it: the peer image plus extra Debian packages
(``images/extras/Dockerfile``), and ``FROM scratch`` images of one static binary. See docs/images.md.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
import requests
from docker.models.images import Image

from .docker_client import docker_host, engine_is_local
from .errors import NetfaultError

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = REPO_ROOT / "images" / "peer"
EXTRAS_DIR = REPO_ROOT / "images" / "extras"
AGENT_DIR = REPO_ROOT / "harness" / "agent"
AGENT_PACKAGE = "netfault_agent"

PEER_REPO = "netfault/peer"
BASE_REPO = "netfault/base"
REGISTRY_BASE = "debian:bookworm-slim"
SUITE = "bookworm"
VARIANT = "minbase"
# Bump when _preconfigure_dpkg, _slim_rootfs or _import_rootfs change what the base image holds.
BASE_RECIPE = "1"
BASE_MODES = ("auto", "registry", "debootstrap")

MIRROR_ENV = "NETFAULT_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_SCHEMES = ("http://", "https://", "file:/")
PULL_TIMEOUT = 20  # seconds without a byte from the engine before a pull counts as unanswered
HEARTBEAT = 10.0  # seconds between "still running" lines of a long step
LOG_TAIL = 20

# Emptied in the debootstrap rootfs and kept out of later installs by dpkg, as in debian:*-slim
# (docs too, but for copyright files).
SLIM_DIRS = ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/groff",
             "usr/share/lintian", "usr/share/linda")
DPKG_SLIM_CFG = "".join(f"path-exclude /{d}/*\n" for d in SLIM_DIRS) + (
    "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n")
DPKG_SLIM = "etc/dpkg/dpkg.cfg.d/netfault-slim"  # kept in the image
DPKG_UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/netfault-unsafe-io"  # removed after debootstrap

Progress = Callable[[str], None]

DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
SCRATCH_RECIPE = 'FROM scratch\nCOPY {name} /{name}\nCMD ["/{name}"]\n'  # the context's file is mode 755
PT_INTERP = 3


class BuildError(NetfaultError):
    """An expected build failure; the message says what failed and what to do about it."""


def step_failure(step: str, status: int | str, log: Path, tail: int = LOG_TAIL) -> BuildError:
    """A BuildError naming the step, its exit status, the last lines of its log and the log's path."""
    lines = log.read_text(errors="replace").splitlines()[-tail:] if log.exists() else []
    body = "\n".join(f"    {line}" for line in lines) if lines else "    (empty)"
    return BuildError(f"step {step!r} failed with exit status {status}\n"
                      f"  last lines of the log:\n{body}\n  full log: {log}")


def build_log_dir() -> Path:
    """Where build logs (and the temporary rootfs) go: ``$XDG_CACHE_HOME`` or ``~/.cache``, netfault/build."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "netfault" / "build"


# ---------------------------------------------------------------- content hashes

def read_packages(peer_dir: Path = PEER_DIR) -> list[str]:
    """The package names of ``packages.txt`` (one per line, ``#`` comments)."""
    text = (peer_dir / "packages.txt").read_text()
    return [name for line in text.splitlines() if (name := line.split("#", 1)[0].strip())]


def context_files(peer_dir: Path = PEER_DIR, agent_dir: Path = AGENT_DIR) -> dict[str, bytes]:
    """The build context by path: Dockerfile, packages.txt and the agent as netfault_agent/ (no bytecode)."""
    if not (peer_dir / "Dockerfile").is_file():
        raise BuildError(f"no Dockerfile at {peer_dir}: run netfault from a checkout (pip install -e .)")
    if not agent_dir.is_dir():
        raise BuildError(f"the agent is missing: {agent_dir} is not a directory")
    files = {name: (peer_dir / name).read_bytes() for name in ("Dockerfile", "packages.txt")}
    for path in sorted(agent_dir.rglob("*")):
        rel = path.relative_to(agent_dir)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            files[f"{AGENT_PACKAGE}/{rel.as_posix()}"] = path.read_bytes()
    return files


def _digest(parts: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (name, data) pairs, length-prefixed so that no two sequences collide."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def peer_content_hash(base_id: str, files: Mapping[str, bytes]) -> str:
    """The peer image's content hash: its build context plus the ID of the base image it is built on."""
    return _digest([*sorted(files.items()), ("base", base_id.encode())])


def peer_image_tag(base_id: str, *, peer_dir: Path = PEER_DIR, agent_dir: Path = AGENT_DIR) -> str:
    """``netfault/peer:<hash12>`` for the current sources built on the base image ``base_id``."""
    return f"{PEER_REPO}:{peer_content_hash(base_id, context_files(peer_dir, agent_dir))[:12]}"


def base_content_hash(packages: Iterable[str]) -> str:
    """The debootstrap base's content hash: suite, variant, recipe and package list (not the mirror)."""
    return _digest([("suite", SUITE.encode()), ("variant", VARIANT.encode()),
                    ("recipe", BASE_RECIPE.encode()), ("packages", "\n".join(sorted(packages)).encode())])


def base_image_tag(packages: Iterable[str]) -> str:
    """``netfault/base:bookworm-<hash12>``."""
    return f"{BASE_REPO}:{SUITE}-{base_content_hash(packages)[:12]}"


# ---------------------------------------------------------------- Debian mirror

@dataclass(frozen=True)
class AptSource:
    """One ``deb`` line of an apt sources file."""

    uri: str
    suite: str


@dataclass(frozen=True)
class Mirror:
    """The Debian mirror debootstrap uses, and where that choice came from (for the progress output)."""

    url: str
    origin: str


def parse_sources_list(text: str) -> list[AptSource]:
    """The ``deb`` entries of a one-line-style sources.list (``deb [opts] uri suite components``)."""
    entries = []
    for line in text.splitlines():
        m = re.match(r"deb(?:\s+\[[^\]]*\])?\s+(\S+)\s+(\S+)", line.split("#", 1)[0].strip())
        if m:
            entries.append(AptSource(m[1], m[2]))
    return entries


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Stanzas of a deb822 file as {lowercased field: value}; continuation lines are appended."""
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        else:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            fields[key] = value.strip()


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The enabled ``deb`` entries of a deb822 ``.sources`` file, one per URI and suite."""
    return [AptSource(uri, suite)
            for stanza in _deb822_stanzas(text)
            if "deb" in stanza.get("types", "").split() and stanza.get("enabled", "yes").lower() != "no"
            for uri in stanza.get("uris", "").split()
            for suite in stanza.get("suites", "").split()]


def _is_debian_archive(src: AptSource) -> bool:
    """A main Debian archive (not security/updates/backports, nor another distribution)."""
    if not src.uri.startswith(MIRROR_SCHEMES) or "-" in src.suite or "/" in src.suite:
        return False
    return src.suite == SUITE or src.uri.rstrip("/").endswith("/debian")


def find_mirror(env: Mapping[str, str] = os.environ, apt_dir: Path = Path("/etc/apt")) -> Mirror:
    """The mirror for debootstrap: ``$NETFAULT_DEBIAN_MIRROR``, else the host apt's Debian archive
    (a ``bookworm`` entry first, else a ``.../debian`` one), else deb.debian.org."""
    if env.get(MIRROR_ENV):
        return Mirror(env[MIRROR_ENV], f"${MIRROR_ENV}")
    files = [apt_dir / "sources.list",
             *sorted([*apt_dir.glob("sources.list.d/*.list"), *apt_dir.glob("sources.list.d/*.sources")])]
    found: list[tuple[AptSource, Path]] = []
    for path in files:
        if path.is_file():
            parse = parse_deb822_sources if path.suffix == ".sources" else parse_sources_list
            found += [(src, path) for src in parse(path.read_text()) if _is_debian_archive(src)]
    found.sort(key=lambda item: item[0].suite != SUITE)
    if found:
        return Mirror(found[0][0].uri.rstrip("/"), str(found[0][1]))
    return Mirror(DEFAULT_MIRROR, f"default: no Debian archive in {apt_dir}/sources.list*")


# ---------------------------------------------------------------- steps

class _Reporter:
    """Progress lines prefixed with the seconds elapsed since the build started."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        self._progress(f"[{time.monotonic() - self._t0:6.1f}s] {message}")


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return lines[-1].strip() if lines else ""


def _run_step(step: str, cmd: list[str], log: Path, say: Progress) -> None:
    """Run ``cmd`` with its output in ``log``, saying every HEARTBEAT s that it is alive."""
    started = time.monotonic()
    with log.open("wb") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        pidfd = os.pidfd_open(proc.pid)
        try:
            while not select.select([pidfd], [], [], HEARTBEAT)[0]:
                say(f"{step}: running for {time.monotonic() - started:.0f} s: {_last_line(log)}")
        finally:
            os.close(pidfd)
            if proc.poll() is None:
                proc.kill()
            status = proc.wait()
    if status != 0:
        raise step_failure(step, status, log)


def _local_image(client: docker.DockerClient, ref: str) -> Image | None:
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _api_url(client: docker.DockerClient, path: str) -> str:
    return f"{client.api.base_url}/v{client.api.api_version}{path}"


def _engine_error(resp: requests.Response) -> str:
    try:
        return str(resp.json()["message"])
    except (ValueError, KeyError):
        return resp.text.strip()


class _NoRegistry(Exception):
    """The engine could not pull the registry base."""


def _pull_registry_base(client: docker.DockerClient, log: Path) -> None:
    """Pull debian:bookworm-slim, giving up when the engine is silent for PULL_TIMEOUT s."""
    repo, tag = REGISTRY_BASE.split(":")
    try:
        with client.api.post(_api_url(client, "/images/create"), params={"fromImage": repo, "tag": tag},
                             stream=True, timeout=(10, PULL_TIMEOUT)) as resp, log.open("w") as out:
            if not resp.ok:
                out.write(resp.text)
                raise _NoRegistry(_engine_error(resp))
            for line in resp.iter_lines():
                out.write(line.decode(errors="replace") + "\n")
                if "error" in (event := json.loads(line)):
                    raise _NoRegistry(event["error"])
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise _NoRegistry(f"no answer within {PULL_TIMEOUT} s ({exc})") from exc


def _check_debootstrap_possible(client: docker.DockerClient) -> None:
    if not engine_is_local(client):
        raise BuildError(f"no registry answered and the Docker engine at {docker_host()} is remote: the "
                         "debootstrap base is built on this machine and needs a local engine (unset "
                         "DOCKER_HOST, or make debian:bookworm-slim available to that engine)")
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed; it builds the base image when no registry answers:"
                         " apt-get install debootstrap")
    if os.geteuid() != 0:
        raise BuildError("debootstrap must run as root: run netfault build as root (e.g. with sudo)")


def _preconfigure_dpkg(rootfs: Path) -> None:
    """dpkg config that debootstrap's dpkg runs pick up: no docs, and no fsync (much faster)."""
    (rootfs / DPKG_SLIM).parent.mkdir(parents=True)
    (rootfs / DPKG_SLIM).write_text(DPKG_SLIM_CFG)
    (rootfs / DPKG_UNSAFE_IO).write_text("force-unsafe-io\n")


def _slim_rootfs(rootfs: Path) -> None:
    """Drop docs, man pages, locales and apt caches (some come from debootstrap's own extraction)."""
    for rel in (*SLIM_DIRS, "var/lib/apt/lists"):
        for child in (rootfs / rel).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "etc/hostname", "etc/resolv.conf"):
        for path in rootfs.glob(pattern):
            path.unlink()
    for dirpath, _dirs, names in os.walk(rootfs / "usr/share/doc"):  # does not follow symlinks
        for name in names:
            if name != "copyright":
                os.unlink(os.path.join(dirpath, name))
    (rootfs / DPKG_UNSAFE_IO).unlink()


def _tar_chunks(stream: IO[bytes], say: Progress) -> Iterator[bytes]:
    """The tar stream in 1 MiB chunks, saying every HEARTBEAT s how much went to the engine."""
    sent, last = 0, time.monotonic()
    while chunk := stream.read(1 << 20):
        sent += len(chunk)
        if time.monotonic() - last >= HEARTBEAT:
            say(f"import: {sent / 1e6:.0f} MB streamed")
            last = time.monotonic()
        yield chunk
    say(f"import: {sent / 1e6:.0f} MB streamed, the engine is storing the layer")


def _import_rootfs(client: docker.DockerClient, rootfs: Path, tag: str, content: str, say: Progress,
                   log: Path) -> None:
    """Stream a tar of ``rootfs`` into the engine as ``tag``, labelled as the netfault base."""
    repo, _, version = tag.partition(":")
    tar = ["tar", "--create", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--exclude=./dev/*",
           "--exclude=./proc/*", "--exclude=./sys/*", "-C", str(rootfs), "."]
    changes = ["LABEL netfault.image=base", f"LABEL netfault.content={content}", 'CMD ["bash"]']
    with log.open("wb") as out:
        out.write(f"$ {shlex.join(tar)} | POST /images/create?fromSrc=-\n".encode())
        out.flush()
        proc = subprocess.Popen(tar, stdout=subprocess.PIPE, stderr=out)
        try:
            resp = client.api.post(
                _api_url(client, "/images/create"),
                params={"fromSrc": "-", "repo": repo, "tag": version, "changes": changes},
                data=_tar_chunks(proc.stdout, say),
                headers={"Content-Type": "application/tar"}, timeout=(10, 600))
        finally:
            proc.stdout.close()
            status = proc.wait()
        out.write(resp.content)
    failed = not resp.ok or any("error" in json.loads(line) for line in resp.iter_lines() if line.strip())
    if status != 0:
        if not failed:  # the engine may have imported a truncated tar: do not keep it under a content tag
            client.images.remove(tag)
        raise step_failure("import: tar of the rootfs", status, log)
    if failed:
        raise step_failure("import", f"engine error (HTTP {resp.status_code})", log)


def _remove_rootfs(rootfs: Path) -> None:
    """Unmount whatever a failed debootstrap left mounted inside ``rootfs``, then delete it."""
    prefix = f"{rootfs}/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=True)
    shutil.rmtree(rootfs)


def _debootstrap_base(client: docker.DockerClient, tag: str, say: Progress, logs: Path) -> Image:
    """Build the base with debootstrap from the host's Debian mirror and import it as ``tag``."""
    _check_debootstrap_possible(client)
    packages = read_packages()
    mirror = find_mirror()
    say(f"debootstrap: {SUITE} ({VARIANT}, {len(packages)} extra packages) from {mirror.url} "
        f"(mirror from {mirror.origin}), log {logs / 'debootstrap.log'}")
    for stale in logs.glob("rootfs-*"):  # left by a killed build (builds hold the lock, so none is running)
        _remove_rootfs(stale)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=logs))
    try:
        _preconfigure_dpkg(rootfs)
        cmd = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(packages)}",
               SUITE, str(rootfs), mirror.url]
        _run_step("debootstrap", cmd, logs / "debootstrap.log", say)
        _slim_rootfs(rootfs)
        say(f"import: streaming the rootfs into the engine as {tag}")
        _import_rootfs(client, rootfs, tag, base_content_hash(packages), say, logs / "import.log")
    finally:
        _remove_rootfs(rootfs)
    return client.images.get(tag)


def _resolve_base(client: docker.DockerClient, mode: str, force: bool, say: Progress,
                  logs: Path) -> tuple[str, Image]:
    """The base image to build on, as (name for FROM, image), making it if needed."""
    if mode != "debootstrap" and (image := _local_image(client, REGISTRY_BASE)):
        say(f"base: {REGISTRY_BASE} (already in the engine)")
        return REGISTRY_BASE, image
    base_tag = base_image_tag(read_packages())
    if mode != "registry" and not force and (image := _local_image(client, base_tag)):
        say(f"base: {base_tag} (debootstrap base, already in the engine)")
        return base_tag, image
    if mode != "debootstrap":
        say(f"base: pulling {REGISTRY_BASE}")
        try:
            _pull_registry_base(client, logs / "pull.log")
            say(f"base: pulled {REGISTRY_BASE}")
            return REGISTRY_BASE, client.images.get(REGISTRY_BASE)
        except _NoRegistry as exc:
            if mode == "registry":
                raise BuildError(f"--base registry: cannot pull {REGISTRY_BASE}: {exc}") from exc
            say(f"base: no registry ({exc}); building the base with debootstrap")
    return base_tag, _debootstrap_base(client, base_tag, say, logs)


def _docker_build(client: docker.DockerClient, files: Mapping[str, bytes], tag: str, *, buildargs: dict[str, str],
                  labels: dict[str, str], nocache: bool, say: Progress, log: Path,
                  executables: Iterable[str] = ()) -> None:
    """docker build of a generated context (`files` by path; `executables` get mode 755, COPY keeps it), a
    progress line per Dockerfile step."""
    step = "build: start"
    with tempfile.TemporaryDirectory(prefix="netfault-context-") as ctx, log.open("w", buffering=1) as out:
        for rel, data in files.items():
            (Path(ctx) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(ctx) / rel).write_bytes(data)
        for rel in executables:
            (Path(ctx) / rel).chmod(0o755)
        events = client.api.build(path=ctx, tag=tag, buildargs=buildargs, nocache=nocache, rm=True, forcerm=True,
                                  pull=False, decode=True, timeout=1800, labels=labels)
        for event in events:
            text = event.get("stream", "")
            out.write(text)
            for line in text.splitlines():
                if line.startswith("Step "):
                    step = f"build: {line}" if len(line) <= 90 else f"build: {line[:87]}..."
                    say(step)
            if "error" in event:
                out.write(f"ERROR: {event['error']}\n")
                out.flush()
                raise step_failure(step, event.get("errorDetail", {}).get("code", "n/a"), log)


@contextmanager
def exclusive_lock(path: Path, say: Progress, waiting: str) -> Iterator[None]:
    """An exclusive flock on ``path`` (parents made): other netfault processes and threads wait, saying
    "waiting for another netfault <waiting>" when they have to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another netfault {waiting} (lock {path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ensure_peer_image(client: docker.DockerClient, *, base: str = "auto", force: bool = False,
                      progress: Progress = _stderr, extra_packages: Sequence[str] = ()) -> str:
    """Return the peer image's content tag, building the image (and its base) if missing.

    ``base``: ``auto`` (local debian:bookworm-slim, else a local debootstrap base, else a pull, else
    debootstrap), ``registry`` or ``debootstrap``. ``force`` rebuilds the peer image and, when the base
    comes from debootstrap, the base too (without the build cache). Also tags the result
    ``netfault/peer:latest``. With ``extra_packages`` (Debian package names), returns instead the tag of the
    peer image plus those packages (see `ensure_extras_image`), built on it if missing.
    """
    if base not in BASE_MODES:
        raise ValueError(f"base must be one of {', '.join(BASE_MODES)}, not {base!r}")
    packages = check_package_names(extra_packages)
    say = _Reporter(progress)
    logs = build_log_dir()
    logs.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(logs / "build.lock", say, "build to finish"):
        base_ref, base_image = _resolve_base(client, base, force, say, logs)
        files = context_files()
        content = peer_content_hash(base_image.id, files)
        tag = f"{PEER_REPO}:{content[:12]}"
        if not force and _local_image(client, tag):
            say(f"{tag} is up to date")
        else:
            say(f"building {tag} on {base_ref}, log {logs / 'build.log'}")
            _docker_build(client, files, tag, buildargs={"BASE": base_ref}, labels={"netfault.content": content},
                          nocache=force, say=say, log=logs / "build.log")
            say(f"built {tag} ({client.images.get(tag).attrs['Size'] / 1e6:.0f} MB)")
        client.api.tag(tag, PEER_REPO, "latest")
        return _ensure_extras(client, tag, packages, force, say, logs) if packages else tag


# ---------------------------------------------------------------- extra packages

def check_package_names(packages: Iterable[str]) -> list[str]:
    """Sorted, without repeats; a name that is not a Debian package name is a BuildError naming it."""
    names = sorted(set(packages))
    bad = [name for name in names if not DEBIAN_PACKAGE.fullmatch(name)]
    if bad:
        raise BuildError(f"not Debian package names: {', '.join(map(repr, bad))} (lower-case letters, digits, "
                         "'+', '-', '.'; at least two characters)")
    return names


def extras_context(packages: Sequence[str], mirror_url: str, extras_dir: Path = EXTRAS_DIR) -> dict[str, bytes]:
    """The build context of a peer-plus-packages image: its Dockerfile, packages.txt, sources.list."""
    return {"Dockerfile": (extras_dir / "Dockerfile").read_bytes(),
            "packages.txt": "".join(f"{name}\n" for name in packages).encode(),
            "sources.list": f"deb {mirror_url} {SUITE} main\n".encode()}


def extras_image_tag(packages: Sequence[str], peer_id: str, files: Mapping[str, bytes]) -> tuple[str, str]:
    """(tag, content hash): ``netfault/peer-<hash8 of the packages>:<hash12>`` over the context but the mirror
    (every mirror gives the same tag, as for the base) and the peer image's ID."""
    content = _digest([*sorted((k, v) for k, v in files.items() if k != "sources.list"), ("peer", peer_id.encode())])
    packages_hash = _digest([("packages", "\n".join(packages).encode())])[:8]
    return f"{PEER_REPO}-{packages_hash}:{content[:12]}", content


def _ensure_extras(client: docker.DockerClient, peer_tag: str, packages: list[str], force: bool, say: Progress,
                   logs: Path) -> str:
    """The peer image plus `packages`, installed by apt from the base's Debian mirror in a build container."""
    mirror = find_mirror()
    if not mirror.url.startswith(("http://", "https://")):
        raise BuildError(f"extra packages are installed by apt in a build container, which cannot read the mirror "
                         f"{mirror.url} (from {mirror.origin}): set {MIRROR_ENV} to an http(s) Debian mirror")
    files = extras_context(packages, mirror.url)
    tag, content = extras_image_tag(packages, client.images.get(peer_tag).id, files)
    repo = tag.split(":", 1)[0]
    if not force and _local_image(client, tag):
        say(f"{tag} (extra packages: {' '.join(packages)}) is up to date")
    else:
        log = logs / "build-extras.log"
        say(f"building {tag} on {peer_tag} with {' '.join(packages)} from {mirror.url}, log {log}")
        _docker_build(client, files, tag, buildargs={"PEER": peer_tag}, nocache=force, say=say, log=log,
                      labels={"netfault.content": content, "netfault.extra-packages": " ".join(packages)})
        say(f"built {tag} ({client.images.get(tag).attrs['Size'] / 1e6:.0f} MB)")
    client.api.tag(tag, repo, "latest")
    return tag


# ---------------------------------------------------------------- FROM scratch images of one static binary

def _elf_interpreter(binary: Path) -> bool | None:
    """Whether an ELF file asks for a program interpreter (dynamic linking); None if it is not a 64-bit ELF."""
    data = binary.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return None
    order = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    return any(struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] == PT_INTERP for i in range(phnum))


def build_scratch_image(client: docker.DockerClient, binary: Path, tag: str | None = None, *,
                        progress: Progress = _stderr) -> str:
    """A ``FROM scratch`` image holding only the static `binary`, as ``/<its name>`` and its CMD; no registry is
    needed. The tag defaults to ``netfault/<name>:<hash12>`` of the binary; an up-to-date image is not rebuilt."""
    say = _Reporter(progress)
    interpreted = _elf_interpreter(binary)
    if interpreted is None:
        raise BuildError(f"{binary} is not a 64-bit ELF executable")
    if interpreted:
        raise BuildError(f"{binary} is dynamically linked: a FROM scratch image has no libc or loader; link it with "
                         "-static (see compile_static)")
    name = binary.name
    content = _digest([("recipe", SCRATCH_RECIPE.encode()), ("name", name.encode()), ("mode", b"755"),
                       ("binary", binary.read_bytes())])
    tag = tag or f"netfault/{name.lower()}:{content[:12]}"
    image = _local_image(client, tag)
    if image is not None and image.labels.get("netfault.content") == content:
        say(f"{tag} is up to date")
        return tag
    files = {"Dockerfile": SCRATCH_RECIPE.format(name=name).encode(), name: binary.read_bytes()}
    logs = build_log_dir()
    logs.mkdir(parents=True, exist_ok=True)
    _docker_build(client, files, tag, buildargs={}, labels={"netfault.image": "scratch", "netfault.content": content},
                  nocache=False, say=say, log=logs / "build-scratch.log", executables=[name])
    say(f"built {tag}: only /{name} ({binary.stat().st_size / 1e3:.0f} kB)")
    return tag


def compile_static(source: Path, output: Path | None = None, *, client: docker.DockerClient | None = None,
                   image: str | None = None, progress: Progress = _stderr) -> Path:
    """Compile one C file into a static binary (``gcc -static -O2``): with this machine's gcc, or in `image` (a
    Docker image with gcc and libc6-dev; default when this machine has no gcc and `client` is given: the peer
    image plus those packages, built if missing). Output: `output`, default ``<build log dir>/bin/<stem>``."""
    say = _Reporter(progress)
    output = output or build_log_dir() / "bin" / source.stem
    output.parent.mkdir(parents=True, exist_ok=True)
    flags = ["-static", "-O2", "-Wall", "-Wextra"]
    if image is None and shutil.which("gcc"):
        say(f"gcc: {source} -> {output}")
        _run_step("gcc", ["gcc", *flags, "-o", str(output), str(source)], build_log_dir() / "gcc.log", say)
        return output
    if client is None:
        raise BuildError("this machine has no gcc: apt-get install gcc libc6-dev, or pass a Docker client (and an "
                         "image with gcc) to compile in a container")
    image = image or ensure_peer_image(client, extra_packages=["gcc", "libc6-dev"], progress=progress)
    say(f"gcc in {image}: {source} -> {output}")
    api = client.api
    container = api.create_container(image, command=["sleep", "infinity"], network_disabled=True,
                                     labels={"netfault.image": "compile"})["Id"]
    try:
        api.start(container)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(source, arcname=f"src/{source.name}")
        api.put_archive(container, "/", archive.getvalue())
        run = api.exec_create(container, ["gcc", *flags, "-o", "/src/a.out", f"/src/{source.name}"])["Id"]
        printed = api.exec_start(run).decode(errors="replace")
        if api.exec_inspect(run)["ExitCode"] != 0:
            raise BuildError(f"gcc in {image} failed on {source}:\n{printed}")
        stream, _ = api.get_archive(container, "/src/a.out")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            output.write_bytes(tar.extractfile("a.out").read())  # type: ignore[union-attr]
        output.chmod(0o755)
    finally:
        api.remove_container(container, force=True)
    return output
