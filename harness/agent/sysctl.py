"""Sysctls read and written through /proc/sys."""

from __future__ import annotations

import os

from .errors import BadRequest

ROOT = "/proc/sys"


def path_of(key: str) -> str:
    """net.ipv4.tcp_syn_retries -> /proc/sys/net/ipv4/tcp_syn_retries."""
    if not key or key.startswith(".") or "/" in key or ".." in key:
        raise BadRequest(f"bad sysctl key {key!r}: use dotted names like net.ipv4.tcp_syn_retries")
    return os.path.join(ROOT, *key.split("."))


def read(key: str) -> str:
    path = path_of(key)
    try:
        with open(path) as file:
            return file.read().strip()
    except FileNotFoundError:
        raise BadRequest(f"unknown sysctl {key!r}: {path} does not exist") from None


def write(key: str, value: str | int) -> None:
    path = path_of(key)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        raise BadRequest(f"unknown sysctl {key!r}: {path} does not exist") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write sysctl {key} ({path}): {exc.strerror}") from exc
    try:
        os.write(fd, str(value).encode())
    except OSError as exc:
        raise OSError(exc.errno, f"cannot set sysctl {key} to {value!r} ({path}): {exc.strerror}") from exc
    finally:
        os.close(fd)


def sysctl_get(keys: list[str]) -> dict[str, str]:
    return {key: read(key) for key in keys}


def sysctl_set(values: dict[str, str | int]) -> dict[str, str]:
    """Write all values, returning the previous ones; on a failure, the ones already written are restored."""
    previous = sysctl_get(list(values))
    written: list[str] = []
    try:
        for key, value in values.items():
            write(key, value)
            written.append(key)
    except OSError:
        for key in reversed(written):
            write(key, previous[key])
        raise
    return previous
