"""Packet captures with tcpdump, started only once tcpdump says it is listening."""

from __future__ import annotations

import base64
import errno
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any

from .errors import BadRequest

LISTEN_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
DRAIN_TIMEOUT = 2.0
DRAIN_POLL = 0.005
# After tcpdump exited, how long its last stderr lines may take to be read.
STDERR_GRACE = 1.0
_COUNTS = re.compile(r"(\d+) packets? captured, (\d+) packets? received by filter, (\d+) packets? dropped by kernel")
# tcpdump's buffer (KiB, -B): the default 2 MiB overflows during a bulk transfer of 64 KB TSO/GRO packets, and
# what overflows is lost to the capture ("dropped by kernel").
BUFFER_KIB = 32768
# tcpdump -U writes each packet as it comes: on a container's overlay filesystem (fuse-overlayfs here) that
# took 3 s for a 10 MB capture, on the tmpfs every container has at /dev/shm (64 MB by default) 0.1 s.
CAPTURE_DIR = "/dev/shm"


class Capture:
    """One tcpdump writing a pcap file; its stderr is collected by a thread."""

    def __init__(self, iface: str, filter: str, snaplen: int | None) -> None:
        self.iface = iface
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            raise OSError(errno.ENOENT, "tcpdump is not installed in this host: capture_start needs it on PATH")
        fd, self.path = tempfile.mkstemp(prefix="netfault-", suffix=".pcap",
                                         dir=CAPTURE_DIR if os.access(CAPTURE_DIR, os.W_OK) else None)
        os.close(fd)
        self.argv = [tcpdump, "-i", iface, "-U", "-w", self.path, "--immediate-mode", "-B", str(BUFFER_KIB),
                     *(["-s", str(snaplen)] if snaplen is not None else []), *([filter] if filter else [])]
        self._stderr: list[str] = []
        self._listening = threading.Event()
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
        except OSError:
            os.unlink(self.path)
            raise
        self._reader = threading.Thread(target=self._read_stderr, name="tcpdump-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for raw in self.popen.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stderr.append(line)
            if "listening on" in line:
                self._listening.set()
        self._listening.set()  # EOF: tcpdump ended; wait_listening() tells which case it was

    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def wait_listening(self, timeout: float) -> None:
        """Return once tcpdump listens; otherwise stop it and raise with its stderr.

        Its exit is watched directly: the end of its stderr can come later than the exit (seen while many
        processes were being started on the machine), and the exit later than the end of its stderr (a loaded
        machine)."""
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05) and self.popen.poll() is None and time.monotonic() < deadline:
            pass
        if any("listening on" in line for line in self._stderr):
            return
        if self.popen.poll() is not None or not self._reader.is_alive():
            # It exited, or closed its stderr on the way out: give the other event time to follow.
            self._reader.join(STDERR_GRACE)
            try:
                self.popen.wait(STDERR_GRACE)
            except subprocess.TimeoutExpired:
                pass  # still running without listening: the timeout error below says so
        if self.popen.poll() is None:
            self.kill()
            raise OSError(errno.ETIMEDOUT, f"tcpdump did not say 'listening on' within {timeout:.0f} s "
                                           f"({' '.join(self.argv)}); stderr: {self.stderr()!r}")
        self.kill()
        raise BadRequest(f"tcpdump exited with status {self.popen.returncode} before listening "
                         f"({' '.join(self.argv)}): {self.stderr()!r}")

    def _counts(self) -> tuple[int, int, int] | None:
        """tcpdump's latest (captured, received by filter, dropped by kernel) counts, from the line SIGUSR1
        makes it print."""
        for line in reversed(self._stderr):
            if m := _COUNTS.search(line):
                return int(m.group(1)), int(m.group(2)), int(m.group(3))
        return None

    def _drain(self) -> bool:
        """Wait until tcpdump has written every packet the kernel gave it: on SIGINT it stops at once and
        drops what is still in its ring buffer. SIGUSR1 makes it print its counts: drained when what it
        captured and what the kernel dropped for want of buffer make up all that passed the filter, or, on
        loopback (where the kernel counts each packet twice, once per direction, and libpcap keeps one), when
        two readings in a row are the same. Packets dropped by the kernel are reported by `stop`."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        previous = None
        while time.monotonic() < deadline and self.popen.poll() is None:
            printed = len(self._stderr)
            self.popen.send_signal(signal.SIGUSR1)
            while len(self._stderr) == printed and time.monotonic() < deadline:
                time.sleep(0.002)
            counts = self._counts()
            if counts is not None and (counts[0] + counts[2] >= counts[1] if self.iface != "lo"
                                       else counts == previous):
                return True
            previous = counts
            time.sleep(DRAIN_POLL)
        return False

    def stop(self) -> dict[str, Any]:
        """Drain, SIGINT (tcpdump flushes and prints its counts), wait, return the pcap."""
        drained = self._drain()
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._reader.join()
        with open(self.path, "rb") as file:
            pcap = file.read()
        os.unlink(self.path)
        counts = self._counts()
        return {"pcap": base64.b64encode(pcap).decode(), "bytes": len(pcap), "returncode": self.popen.returncode,
                "drained": drained, "dropped": None if counts is None else counts[2], "stderr": self.stderr()}

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()
        self._reader.join(STDERR_GRACE)
        os.unlink(self.path)


class Captures:
    """Running captures by id ("c1")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Capture] = {}
        self._numbers = itertools.count(1)

    def start(self, iface: str = "eth0", filter: str = "", snaplen: int | None = None) -> dict[str, Any]:
        capture = Capture(iface, filter, snaplen)
        capture.wait_listening(LISTEN_TIMEOUT)
        with self._lock:
            capture_id = f"c{next(self._numbers)}"
            self._running[capture_id] = capture
        return {"id": capture_id, "pid": capture.popen.pid, "argv": capture.argv, "stderr": capture.stderr()}

    def stop(self, id: str) -> dict[str, Any]:
        with self._lock:
            capture = self._running.pop(id, None)
            known = ", ".join(self._running) or "none"
        if capture is None:
            raise BadRequest(f"unknown capture {id!r} (argument 'id'); running: {known}")
        return capture.stop()

    def stop_all(self) -> list[str]:
        with self._lock:
            running, self._running = self._running, {}
        for capture in running.values():
            capture.kill()
        return sorted(running)
