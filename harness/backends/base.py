"""What every backend provides: a test bed of hosts on one network, each with an agent and a driver."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..channel import AgentChannel, AgentError, BadRequest
from ..endpoint import Endpoint
from ..errors import ConfigError, NetfaultError, SysctlError
from ..topology import HostSpec

if TYPE_CHECKING:
    from ..programs import Program

# Seconds a reset waits for a killed program to end.
_PROGRAM_END_TIMEOUT = 10.0


class HostDriver(ABC):
    """Backend-specific operations on one host (the part of a host that is not its agent)."""

    backend: Backend

    @abstractmethod
    def set_sysctls(self, values: Mapping[str, str]) -> dict[str, str]:
        """Set net.* sysctls in the host's network namespace; return the previous values."""

    @abstractmethod
    def describe(self) -> str:
        """Where the host lives (container name and id, namespace path, ...)."""

    @abstractmethod
    def state(self) -> str:
        """"running", "paused" or "exited" (the engine's word for anything else)."""

    @abstractmethod
    def pause(self) -> None:
        """Freeze every process of the host; its kernel keeps answering (ACKs, buffers, RSTs)."""

    @abstractmethod
    def unpause(self) -> None:
        """Thaw the processes `pause` froze."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL every process of the host at once; returns when it is down (its network namespace gone)."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns when the host is down."""

    @abstractmethod
    def start(self) -> AgentChannel:
        """Boot a stopped host with the same address; returns a channel to a new agent in it.

        Its network namespace is new: the topology's sysctls are back, run-time ones are gone.
        """

    @abstractmethod
    def restart(self, timeout: float) -> AgentChannel:
        """`stop(timeout)` then `start()` as one engine operation; returns the new agent's channel."""

    # Programs and files (see Host.put_file, Host.launch, Host.main_program).

    files_dir: str

    @abstractmethod
    def put_file(self, dest: str, data: bytes, mode: int) -> str:
        """Write `data` at `dest` in the host's filesystem; returns the path its programs see."""

    @abstractmethod
    def launch(self, host: Host, argv: Sequence[str], name: str, env: Mapping[str, str] | None,
               cwd: str | None) -> Program:
        """Start `argv` in the background in the host."""

    @abstractmethod
    def main_program(self, host: Host) -> Program:
        """The host's own command (a container's)."""


class Host(Endpoint):
    """A host of the test bed: its agent's main process (the Endpoint API), its address and its driver."""

    def __init__(self, spec: HostSpec, addr: str, channel: AgentChannel, driver: HostDriver) -> None:
        super().__init__(channel, host=spec.name)
        self.spec = spec
        self.name = spec.name
        self.addr = addr
        self.driver = driver
        self.channel = channel
        self._programs: dict[str, Program] = {}

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} {self.driver.describe()}>"

    # Programs: files in, programs started in the background, the container's own command.

    @property
    def files_dir(self) -> str:
        """Where a relative `put_file` destination goes: "/" in a container; on the netns backend a directory of
        this machine kept for the host (programs run on the machine's filesystem), also the programs' cwd."""
        return self.driver.files_dir

    def put_file(self, dest: str, data: bytes | Path, mode: int = 0o644) -> str:
        """Copy `data` (bytes, or a file of this machine) to `dest` in the host's filesystem (parents made; a
        relative `dest` is under `files_dir`; on netns an absolute one must be too); returns the path as the
        host's programs see it. Docker: into the host's own container, so it works on a FROM-scratch image."""
        content = data.read_bytes() if isinstance(data, Path) else bytes(data)
        return self.driver.put_file(dest, content, mode)

    def launch(self, argv: Sequence[str], name: str, *, env: Mapping[str, str] | None = None,
               cwd: str | None = None) -> Program:
        """Start `argv` in the background in the host: Docker: a `docker exec` in its container (the image's
        environment, the host's `environment`, then `env`); netns: a child of its agent (the host's
        `environment`, then `env`; cwd `files_dir` by default). `name` must not be a running program's.
        Programs still running at the end of a test are killed then, and their output goes to its bundle."""
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise ConfigError(f"host {self.name}: launch needs a non-empty argv list of strings, not {argv!r}")
        running = self._programs.get(name)
        if running is not None and running.running():
            raise ConfigError(f"host {self.name}: a program named {name!r} is running; wait for it, kill it, "
                              "or pick another name")
        program = self.driver.launch(self, argv, name, env, cwd)
        self._programs[name] = program
        return program

    def main_program(self) -> Program:
        """The host container's own command (its PID 1, or docker-init's child): Docker only."""
        return self.driver.main_program(self)

    def end_programs(self) -> list[str]:
        """SIGKILL the programs `launch` started that still run and wait for them; returns their names. A host
        that is not running (paused, stopped) keeps them for when it is brought back."""
        if not self._programs or self.state() != "running":
            return []
        ended = []
        for name, program in self._programs.items():
            try:
                if program.running():
                    program.kill("SIGKILL")
                    program.wait(_PROGRAM_END_TIMEOUT)
                    ended.append(name)
            except (NetfaultError, AgentError):
                continue  # its host went down with it
        self._programs.clear()
        return ended

    def reset(self, *, background: bool = False) -> dict[str, Any]:
        """End launched programs, then the agent's reset (sockets, workers, spawned processes, captures)."""
        self.end_programs()
        return super().reset(background=background)

    def destroy_sockets(self) -> list[dict[str, Any]]:
        """Destroy the TCP sockets left on the host's address (orphans retransmitting, TIME_WAIT) with `ss -K`
        (SOCK_DESTROY), so that a test starts without the previous one's; returns those left after it.

        Older kernels (5.10 in the kernel matrix) cannot destroy a TIME_WAIT socket that way: a host left with
        only those is rebooted, as a new network namespace has none.
        """
        self.run(["ss", "-K", "-t", "-a", "src", self.addr], timeout=30, check=True)
        left = [s for s in self.sockets() if s["src"] == self.addr]
        if left and {s["state"] for s in left} == {"TIME_WAIT"}:
            self.restart()
            left = [s for s in self.sockets() if s["src"] == self.addr]
        return left

    def has_sysctl(self, key: str) -> bool:
        """Whether the host's kernel has the sysctl `key` (some appeared in later kernels)."""
        return self.run(["test", "-e", "/proc/sys/" + key.replace(".", "/")], timeout=30).returncode == 0

    def set_sysctls(self, values: Mapping[str, object]) -> dict[str, str]:
        """Set per-host sysctls now; returns the previous values (to restore them later).

        Only net.* sysctls are per network namespace, so only those can differ between hosts.
        """
        strings = {key: str(value) for key, value in values.items()}
        for key in strings:
            if not key.startswith("net."):
                raise SysctlError(
                    f"sysctl {key} on host {self.name}: only net.* sysctls belong to a host's network "
                    "namespace; others are kernel-wide and netfault does not change them"
                )
        try:
            self.sysctl_get(list(strings))
        except BadRequest as exc:
            raise SysctlError(f"host {self.name}: {exc.error.get('message', exc)} (kernel {self.kernel_release})") from None
        return self.driver.set_sysctls(strings)

    @property
    def kernel_release(self) -> str:
        return str(self.info()["kernel"])

    # The host itself (its container), not its agent. After a kill or stop the agent is gone: calls fail
    # with ChannelClosed until `start`. `start` and `restart` return once the new agent answered.

    def state(self) -> str:
        """"running", "paused" or "exited"."""
        return self.driver.state()

    def pause(self) -> None:
        """Freeze the host's processes (its agent too: it answers again after `unpause`)."""
        self.driver.pause()

    def unpause(self) -> None:
        self.driver.unpause()

    def kill(self) -> None:
        """SIGKILL every process of the host: a power cut for its sockets (the namespace is destroyed)."""
        self.driver.kill()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the host down (SIGTERM, SIGKILL after `timeout` seconds)."""
        self.driver.stop(timeout)

    def start(self) -> None:
        """Boot the host again with its address; run-time sysctls are gone, the topology's are back."""
        self._attach(self.driver.start())

    def restart(self, timeout: float = 10.0) -> None:
        """A reboot: same address, new network namespace (no old sockets; peers get RST on their next use)."""
        self._attach(self.driver.restart(timeout))

    def _attach(self, channel: AgentChannel) -> None:
        previous, self.channel = self.channel, channel
        previous.close()
        self.info()


class Testbed:
    """The hosts of one session on one network."""

    def __init__(self, backend: Backend, hosts: Mapping[str, Host], subnet: ipaddress.IPv4Network,
                 unused_addr: str) -> None:
        self.backend = backend
        self.hosts = dict(hosts)
        self.subnet = subnet
        self.unused_addr = unused_addr

    def __getitem__(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise ConfigError(f"unknown host {name!r}: this test bed has {', '.join(self.hosts)}") from None

    def reset(self) -> None:
        """Bring every agent back to its fresh state (no sockets, workers, captures)."""
        for host in self.hosts.values():
            host.reset()


class Backend(ABC):
    """Makes and destroys test beds."""

    name: str

    @abstractmethod
    def create(self, worker: str) -> Testbed:
        """Create the network and hosts of the topology; ready when it returns (agents answered)."""

    @abstractmethod
    def destroy(self) -> None:
        """Remove everything this backend created; idempotent, never raises for already-gone resources."""
