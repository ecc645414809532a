"""Unit tests of harness.images that need no Docker: content hashes, mirror choice, failure messages."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import images
from harness.images import (
    AptSource, BuildError, Mirror, base_image_tag, find_mirror, parse_deb822_sources, parse_sources_list,
    peer_image_tag, read_packages, step_failure,
)

BASE_ID = "sha256:" + "ab" * 32


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of images/peer and a small agent, as (peer_dir, agent_dir)."""
    peer = tmp_path / "peer"
    shutil.copytree(images.PEER_DIR, peer)
    agent = tmp_path / "agent"
    (agent / "sub").mkdir(parents=True)
    (agent / "__init__.py").write_text("")
    (agent / "__main__.py").write_text("print('agent')\n")
    (agent / "sub" / "ops.py").write_text("OPS = {}\n")
    return peer, agent


def tag(peer: Path, agent: Path, base_id: str = BASE_ID) -> str:
    return peer_image_tag(base_id, peer_dir=peer, agent_dir=agent)


def test_peer_tag_format_and_stability(sources: tuple[Path, Path]) -> None:
    peer, agent = sources
    first = tag(peer, agent)
    assert first.startswith("netfault/peer:") and len(first.split(":")[1]) == 12
    assert tag(peer, agent) == first


def test_peer_tag_ignores_bytecode(sources: tuple[Path, Path]) -> None:
    peer, agent = sources
    before = tag(peer, agent)
    (agent / "__pycache__").mkdir()
    (agent / "__pycache__" / "ops.cpython-311.pyc").write_bytes(b"\0junk")
    (agent / "sub" / "stray.pyc").write_bytes(b"\0junk")
    assert tag(peer, agent) == before


@pytest.mark.parametrize("change", [
    lambda peer, agent: (agent / "sub" / "ops.py").write_text("OPS = {'x': 1}\n"),
    lambda peer, agent: (agent / "new.py").write_text(""),
    lambda peer, agent: (agent / "sub" / "ops.py").rename(agent / "sub" / "ops2.py"),
    lambda peer, agent: (peer / "Dockerfile").write_text((peer / "Dockerfile").read_text() + "USER nobody\n"),
    lambda peer, agent: (peer / "packages.txt").write_text((peer / "packages.txt").read_text() + "curl\n"),
], ids=["agent-edit", "agent-add", "agent-rename", "dockerfile", "packages"])
def test_peer_tag_changes_with_sources(sources: tuple[Path, Path], change) -> None:
    peer, agent = sources
    before = tag(peer, agent)
    change(peer, agent)
    assert tag(peer, agent) != before


def test_peer_tag_changes_with_base(sources: tuple[Path, Path]) -> None:
    peer, agent = sources
    assert tag(peer, agent) != tag(peer, agent, "sha256:" + "cd" * 32)


def test_missing_agent_is_a_build_error(sources: tuple[Path, Path], tmp_path: Path) -> None:
    peer, _ = sources
    with pytest.raises(BuildError, match="agent is missing"):
        tag(peer, tmp_path / "nope")


def test_base_tag_depends_on_packages_not_order() -> None:
    packages = read_packages()
    assert "python3-pyroute2" in packages and "iproute2" in packages
    assert base_image_tag(packages).startswith("netfault/base:bookworm-")
    assert base_image_tag(list(reversed(packages))) == base_image_tag(packages)
    assert base_image_tag([*packages, "curl"]) != base_image_tag(packages)


def test_read_packages_skips_comments_and_blanks(tmp_path: Path) -> None:
    (tmp_path / "packages.txt").write_text("# header\npython3\n\n  iproute2  # routing\n")
    assert read_packages(tmp_path) == ["python3", "iproute2"]


ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://ftp.fr.debian.org/debian/ bookworm main contrib
deb-src http://ftp.fr.debian.org/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
"""

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----
"""


def test_parse_sources_list() -> None:
    assert parse_sources_list(ONE_LINE) == [
        AptSource("http://ftp.fr.debian.org/debian/", "bookworm"),
        AptSource("http://security.debian.org/debian-security", "bookworm-security"),
    ]


def test_parse_deb822_sources() -> None:
    assert parse_deb822_sources(DEB822) == [
        AptSource("http://deb.debian.org/debian", "bookworm"),
        AptSource("http://deb.debian.org/debian", "bookworm-updates"),
        AptSource("http://deb.debian.org/debian-security", "bookworm-security"),
    ]


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_find_mirror_from_deb822(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert find_mirror({}, apt) == Mirror("http://deb.debian.org/debian", str(apt / "sources.list.d/debian.sources"))


def test_find_mirror_from_sources_list(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list": ONE_LINE})
    assert find_mirror({}, apt) == Mirror("http://ftp.fr.debian.org/debian", str(apt / "sources.list"))


def test_find_mirror_prefers_a_bookworm_entry(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {
        "sources.list": "deb http://mirror.example/debian trixie main\n",
        "sources.list.d/snapshot.list": "deb http://snapshot.example/archive/debian/2025 bookworm main\n",
    })
    assert find_mirror({}, apt).url == "http://snapshot.example/archive/debian/2025"


def test_find_mirror_on_another_release(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list": "deb https://mirror.example/debian trixie main\n"})
    assert find_mirror({}, apt).url == "https://mirror.example/debian"


def test_find_mirror_ignores_other_distributions(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"
                                             "deb cdrom:[Debian]/ bookworm main\n"})
    mirror = find_mirror({}, apt)
    assert mirror.url == images.DEFAULT_MIRROR and mirror.origin.startswith("default")


def test_find_mirror_env_overrides(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    mirror = find_mirror({"NETFAULT_DEBIAN_MIRROR": "http://local:3142/debian"}, apt)
    assert mirror == Mirror("http://local:3142/debian", "$NETFAULT_DEBIAN_MIRROR")


def test_step_failure_message(tmp_path: Path) -> None:
    log = tmp_path / "debootstrap.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "E: Couldn't download packages\n")
    message = str(step_failure("debootstrap", 1, log))
    assert message.startswith("step 'debootstrap' failed with exit status 1\n")
    assert "    E: Couldn't download packages" in message
    assert "    line 81\n" in message and "line 80\n" not in message  # the last 20 lines only
    assert message.endswith(f"full log: {log}")


def test_step_failure_without_log(tmp_path: Path) -> None:
    message = str(step_failure("import", "engine error (HTTP 500)", tmp_path / "missing.log"))
    assert "exit status engine error (HTTP 500)" in message and "(empty)" in message


def test_build_log_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert images.build_log_dir() == tmp_path / "netfault" / "build"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert images.build_log_dir() == tmp_path / ".cache" / "netfault" / "build"


def test_run_step_failure_names_step_and_log(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    with pytest.raises(BuildError) as info:
        images._run_step("fake", ["sh", "-c", "echo doing; echo broken >&2; exit 3"], log, lambda _: None)
    message = str(info.value)
    assert "step 'fake' failed with exit status 3" in message
    assert "    broken" in message and f"full log: {log}" in message


def test_ensure_rejects_unknown_base() -> None:
    with pytest.raises(ValueError, match="auto, registry, debootstrap"):
        images.ensure_peer_image(None, base="cloud")  # type: ignore[arg-type]


def test_extra_packages_tag_ignores_order_repeats_and_the_mirror_but_not_the_peer_image():
    packages = images.check_package_names(["redis-server", "curl", "curl"])
    assert packages == ["curl", "redis-server"]

    def tag(names: list[str], mirror: str, peer: str = BASE_ID) -> str:
        return images.extras_image_tag(names, peer, images.extras_context(names, mirror))[0]
    first = tag(packages, "http://deb.debian.org/debian")
    assert first.startswith("netfault/peer-") and first == tag(packages, "http://mirror.example/debian")
    assert first != tag(packages, "http://deb.debian.org/debian", peer="sha256:" + "cd" * 32)
    assert first.split(":")[0] != tag(["curl"], "http://deb.debian.org/debian").split(":")[0]
    assert images.extras_context(packages, "http://m/debian")["sources.list"] == b"deb http://m/debian bookworm main\n"


def test_package_names_debian_would_refuse_are_named():
    with pytest.raises(BuildError, match=r"not Debian package names: 'Curl', 'x; rm -rf /'"):
        images.check_package_names(["curl", "Curl", "x; rm -rf /"])


def test_a_scratch_image_needs_a_static_binary(tmp_path: Path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BuildError, match="is not a 64-bit ELF executable"):
        images.build_scratch_image(None, script)  # type: ignore[arg-type]  # refused before any engine call
    dynamic = Path(shutil.which("true") or "/bin/true")
    with pytest.raises(BuildError, match="is dynamically linked: a FROM scratch image has no libc"):
        images.build_scratch_image(None, dynamic)  # type: ignore[arg-type]
