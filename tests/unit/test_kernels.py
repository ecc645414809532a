"""Unit tests of harness.kernels without network or apt: versions, Packages lists, spec selection, the cache."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from harness import kernels
from harness.errors import NetfaultError
from harness.kernels import (
    INDEX_FORMAT, Candidate, KernelError, available_text, candidates, compare_versions, image_release,
    local_kernel, parse_packages, resolve, select,
)


def stanza(name: str, version: str, depends: str = "", size: int = 1000) -> str:
    return (f"Package: {name}\nSource: linux-signed-amd64\nVersion: {version}\nArchitecture: amd64\n"
            + (f"Depends: {depends}\n" if depends else "") + f"Filename: pool/main/l/{name}_{version}.deb\n"
            f"Size: {size}\nDescription: Linux\n")


BOOKWORM = "\n".join([
    stanza("linux-image-6.1.0-47-amd64", "6.1.158-1",
           "kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool", 70_000_000),
    stanza("linux-image-6.1.0-47-cloud-amd64", "6.1.158-1", "kmod"),
    stanza("linux-image-6.1.0-47-rt-amd64", "6.1.158-1", "kmod"),
    stanza("linux-image-6.1-amd64", "6.1.158-1", "linux-image-6.1.0-47-amd64 (= 6.1.158-1)"),
    stanza("linux-image-amd64", "6.1.158-1", "linux-image-6.1.0-47-amd64 (= 6.1.158-1)"),
    stanza("linux-image-6.1.0-47-amd64-dbg", "6.1.158-1"),
    stanza("linux-headers-6.1.0-47-amd64", "6.1.158-1"),
    stanza("python3", "3.11.2-1"),
])
SECURITY = "\n".join([
    stanza("linux-image-6.1.0-50-amd64", "6.1.170-1", "kmod", 71_000_000),
    stanza("linux-image-6.12.40+deb12-amd64", "6.12.40-1~deb12u1", "kmod", 80_000_000),
])
TRIXIE = stanza("linux-image-6.12.40+deb13-amd64", "6.12.40-1", "kmod", 100_000_000)
SID = "\n".join([
    stanza("linux-image-7.2.13+deb14-amd64", "7.2.13-1",
           "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-amd64 "
           "(= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)",
           1900),
    stanza("linux-binary-7.2.13+deb14-amd64", "7.2.13-1", "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1)", 14_000_000),
    stanza("linux-modules-7.2.13+deb14-amd64", "7.2.13-1", "kmod", 110_000_000),
    stanza("linux-base-7.2.13+deb14-amd64", "7.2.13-1", "", 1_000_000),
    stanza("linux-image-7.1.4+deb14-amd64", "7.1.4-1", "linux-binary-7.1.4+deb14-amd64 (= 7.1.4-1)"),
])


@pytest.fixture
def found() -> dict[str, Candidate]:
    return candidates([*parse_packages(BOOKWORM, "bookworm"), *parse_packages(SECURITY, "bookworm-security"),
                       *parse_packages(TRIXIE, "trixie"), *parse_packages(SID, "sid")])


@pytest.mark.parametrize("a, b, expected", [
    ("6.1.158-1", "6.1.170-1", -1),
    ("6.12.40-1~deb12u1", "6.12.40-1", -1),  # a backport is older than the release it comes from
    ("7.2.13-1", "7.2.13-1", 0),
    ("1:1.0-1", "2.0-1", 1),  # epoch first
    ("1.0~rc1-1", "1.0-1", -1),
    ("1.0a-1", "1.0-1", 1),
    ("5.10.262-1", "5.10.30-1", 1),  # numbers compare as numbers
    ("7.3.4-1~bpo13+1", "7.2.13-1", 1),
])
def test_compare_versions_is_dpkg_order(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_parse_packages_keeps_kernel_stanzas_with_depends_names() -> None:
    pkgs = {p.name: p for p in parse_packages(SID, "sid")}
    assert set(pkgs) == {"linux-image-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-amd64",
                         "linux-modules-7.2.13+deb14-amd64", "linux-base-7.2.13+deb14-amd64",
                         "linux-image-7.1.4+deb14-amd64"}
    image = pkgs["linux-image-7.2.13+deb14-amd64"]
    assert image.suite == "sid" and image.version == "7.2.13-1" and image.size == 1900
    assert "linux-binary-7.2.13+deb14-amd64" in image.depends and "dracut" in image.depends
    assert "python3" not in {p.name for p in parse_packages(BOOKWORM, "bookworm")}


def test_classic_layout_fetches_the_image_package(found: dict[str, Candidate]) -> None:
    c = found["6.1.0-47-amd64"]
    assert (c.packages, c.suite, c.series, c.size) == (("linux-image-6.1.0-47-amd64",), "bookworm", "6.1", 70_000_000)


def test_split_layout_fetches_binary_modules_and_base(found: dict[str, Candidate]) -> None:
    c = found["7.2.13+deb14-amd64"]
    assert c.packages == ("linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64",
                          "linux-base-7.2.13+deb14-amd64")
    assert c.size == 125_000_000 and c.series == "7.2"


def test_meta_packages_and_incomplete_split_layouts_are_not_kernels(found: dict[str, Candidate]) -> None:
    assert "6.1-amd64" not in found and "amd64" not in found
    assert "7.1.4+deb14-amd64" not in found  # its linux-binary package is not in the lists
    assert "6.1.0-47-amd64-dbg" not in found


@pytest.mark.parametrize("spec, release", [
    ("6.1", "6.1.0-50-amd64"),  # the newest 6.1, from the security suite
    ("6.12", "6.12.40+deb13-amd64"),  # trixie's build is newer than bookworm's backport of it
    ("7", "7.2.13+deb14-amd64"),
    ("7.2", "7.2.13+deb14-amd64"),
    ("6.1.0-47", "6.1.0-47-amd64"),
    ("6.1.0-47-amd64", "6.1.0-47-amd64"),
    ("6.12.40+deb12", "6.12.40+deb12-amd64"),
])
def test_select_spec(found: dict[str, Candidate], spec: str, release: str) -> None:
    assert select(spec, found, "the lists").release == release


def test_series_never_picks_another_flavour(found: dict[str, Candidate]) -> None:
    only_cloud = {r: c for r, c in found.items() if r.endswith(("-cloud-amd64", "-rt-amd64"))}
    with pytest.raises(KernelError, match="no Debian kernel '6.1'"):
        select("6.1", only_cloud, "the lists")


def test_cloud_kernel_is_refused_with_the_reason(found: dict[str, Candidate]) -> None:
    with pytest.raises(KernelError) as info:
        select("6.1.0-47-cloud-amd64", found, "the lists")
    message = str(info.value)
    assert "cloud kernel" in message and "no 9p" in message and "6.1.0-47-amd64" in message
    with pytest.raises(KernelError, match="only the generic amd64 flavour"):
        select("6.1.0-47-rt-amd64", found, "the lists")


def test_cloud_kernel_is_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="cloud kernel"):
        resolve("6.1.0-47-cloud-amd64", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_version_lists_what_exists_by_series(found: dict[str, Candidate]) -> None:
    with pytest.raises(KernelError) as info:
        select("6.3", found, "the lists of bookworm, sid")
    message = str(info.value)
    assert "no Debian kernel '6.3' in the lists of bookworm, sid" in message
    lines = message.splitlines()
    assert "  6.1: 6.1.0-47-amd64 (bookworm), 6.1.0-50-amd64 (bookworm-security)" in lines
    assert "  6.12: 6.12.40+deb12-amd64 (bookworm-security), 6.12.40+deb13-amd64 (trixie)" in lines
    assert "  7.2: 7.2.13+deb14-amd64 (sid)" in lines
    assert "cloud" not in message
    assert [line.split(":")[0].strip() for line in lines if line.startswith("  ")] == ["6.1", "6.12", "7.2"]
    with pytest.raises(KernelError, match=r"6\.1\.0-47-amd64 \(bookworm\)"):
        select("6.1.0-41-amd64", found, "the lists")


def test_available_text_is_empty_for_no_kernels() -> None:
    assert available_text({}) == ""


def fake_tree(root: Path, release: str, *, usr: bool = False) -> Path:
    """An extracted kernel as kernel.json describes it; returns its directory."""
    tree = root / release
    mods = tree / "root" / ("usr" if usr else "") / "lib" / "modules" / release
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    (mods / "vmlinuz").write_bytes(b"")
    modules_root = "root/usr" if usr else "root"
    (tree / "kernel.json").write_text(json.dumps({
        "release": release, "vmlinuz": f"{modules_root}/lib/modules/{release}/vmlinuz", "modules_root": modules_root,
        "packages": [f"linux-binary-{release}"], "suite": "sid", "version": "7.2.13-1"}))
    return tree


def fake_index(root: Path, found: dict[str, Candidate], age: float = 0.0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.json").write_text(json.dumps({
        "format": INDEX_FORMAT, "mirror": "http://mirror/debian", "updated": time.time() - age,
        "kernels": [vars(c) for c in found.values()]}))


def no_apt(*args, **kwargs):
    raise AssertionError("apt must not run")


def test_cached_release_resolves_without_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tree(tmp_path, "7.2.13+deb14-amd64", usr=True)
    monkeypatch.setattr(kernels, "load_index", no_apt)
    k = resolve("7.2.13+deb14", cache=tmp_path)
    assert k.release == "7.2.13+deb14-amd64" and k.suite == "sid" and k.version == "7.2.13-1"
    assert k.modules_root == tmp_path / "7.2.13+deb14-amd64" / "root" / "usr"
    assert k.modules_dir.is_dir() and k.vmlinuz.name == "vmlinuz"


def test_cached_series_resolves_from_a_fresh_index_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              found: dict[str, Candidate]) -> None:
    fake_tree(tmp_path, "7.2.13+deb14-amd64", usr=True)
    fake_index(tmp_path, found)
    monkeypatch.setattr(kernels, "_update_index", no_apt)
    monkeypatch.setattr(kernels, "_extract", no_apt)
    started = time.monotonic()
    assert resolve("7", cache=tmp_path).release == "7.2.13+deb14-amd64"
    assert time.monotonic() - started < 0.5


def test_stale_index_is_updated_and_kept_when_the_update_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               found: dict[str, Candidate]) -> None:
    fake_index(tmp_path, found, age=kernels.UPDATE_EVERY + 1)
    steps = []

    def failing_step(step, cmd, log, say):
        steps.append(step)
        raise NetfaultError(f"step {step!r} failed with exit status 100")
    monkeypatch.setattr(kernels.PrivateApt, "write_config", lambda self: "http://mirror/debian")
    monkeypatch.setattr(kernels, "_run_step", failing_step)
    lines: list[str] = []
    assert "6.1.0-50-amd64" in kernels.load_index(tmp_path, lines.append)
    assert steps == ["apt-get update"]
    assert any(line.startswith("apt-get update failed, using the lists of ") for line in lines)
    (tmp_path / "index.json").unlink()
    with pytest.raises(NetfaultError, match="apt-get update"):
        kernels.load_index(tmp_path, lines.append)


def bzimage(path: Path, version: str) -> Path:
    """A file with just enough of an x86 setup header for image_release."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x400 - 0x200)
    data[0x400:0x400 + len(version) + 1] = version.encode() + b"\0"
    path.write_bytes(bytes(data))
    return path


def test_image_release_reads_the_setup_header(tmp_path: Path) -> None:
    image = bzimage(tmp_path / "vmlinuz", "6.1.0-47-amd64 (debian-kernel@lists.debian.org) #1 SMP")
    assert image_release(image) == "6.1.0-47-amd64"
    (tmp_path / "text").write_text("not a kernel")
    with pytest.raises(KernelError, match="not an x86 bzImage"):
        image_release(tmp_path / "text")


def test_vmlinuz_path_finds_modules_next_to_it(tmp_path: Path) -> None:
    release = "6.9.0-test-amd64"
    (tmp_path / "boot").mkdir()
    image = bzimage(tmp_path / "boot" / f"vmlinuz-{release}", release)
    (tmp_path / "lib" / "modules" / release).mkdir(parents=True)
    (tmp_path / "lib" / "modules" / release / "modules.dep").write_text("")
    k = resolve(str(image))
    assert (k.release, k.modules_root, k.packages, k.suite) == (release, tmp_path, (), None)


def test_vmlinuz_inside_its_modules_directory(tmp_path: Path) -> None:
    release = "7.9.1+test-amd64"
    mods = tmp_path / "usr" / "lib" / "modules" / release
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    assert local_kernel(bzimage(mods / "vmlinuz", release)).modules_root == tmp_path / "usr"


def test_vmlinuz_without_modules_is_a_clear_error(tmp_path: Path) -> None:
    image = bzimage(tmp_path / "vmlinuz", "6.9.0-nomods-amd64")
    with pytest.raises(KernelError) as info:
        local_kernel(image)
    message = str(info.value)
    assert "modules were not found" in message and "lib/modules/6.9.0-nomods-amd64/modules.dep" in message
    assert str(tmp_path) in message and "depmod -b" in message


def test_cloud_vmlinuz_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="no 9p"):
        local_kernel(bzimage(tmp_path / "vmlinuz", "6.1.0-47-cloud-amd64"))


def test_private_apt_config_uses_only_its_own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETFAULT_DEBIAN_MIRROR", "http://mirror.example/debian")
    monkeypatch.setattr(kernels, "_run", lambda cmd, what: 'Acquire::Check-Valid-Until "false";\n'
                        'Acquire::IndexTargets::deb::DEP-11 "";\nAcquire::http::Proxy "http://proxy:3128";\n')
    apt = kernels.PrivateApt(tmp_path)
    assert apt.write_config() == "http://mirror.example/debian"
    sources = (tmp_path / "sources.list").read_text().splitlines()
    assert [line.split()[-2] for line in sources] == [suite for _, suite in kernels.SUITES]
    assert any("http://mirror.example/debian-security bookworm-security main" in line for line in sources)
    assert any(line.endswith("http://mirror.example/debian sid main") for line in sources)
    conf = (tmp_path / "apt.conf").read_text()
    assert f'Dir::State::Lists "{tmp_path}/lists";' in conf and 'Dir::State::status "/dev/null";' in conf
    assert 'Dir::Etc::SourceParts "/dev/null";' in conf and f'Dir::Etc::Parts "{tmp_path}/apt.conf.d";' in conf
    assert 'Acquire::http::Proxy "http://proxy:3128";' in conf and "DEP-11" not in conf
    cmd = apt.command("download", "x=1", cwd=tmp_path / "debs")
    assert cmd[:4] == ["env", "-C", str(tmp_path / "debs"), f"APT_CONFIG={tmp_path}/apt.conf"]
    assert cmd[-2:] == ["download", "x=1"]
