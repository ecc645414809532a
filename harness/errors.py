"""Exceptions for expected failures: each message says what happened, what was tried and what to do."""


class NetfaultError(Exception):
    """Base of netfault's expected errors (the CLI prints them without a traceback)."""


class ConfigError(NetfaultError):
    """A bad value in a configuration source (compose file, marker, option, environment)."""


class EngineUnavailable(NetfaultError):
    """The container engine (or the backend's prerequisites) cannot be reached."""


class SysctlError(NetfaultError):
    """A sysctl the kernel does not have, or one netfault cannot set per host."""


class MissingCapability(NetfaultError):
    """The kernel (or engine) lacks what a fault needs; the message is the exact reason, with what to do.

    The pytest plugin turns it into a skip with that reason: never a silent no-op, never a faked fault.
    """

    def __init__(self, capability: str, reason: str) -> None:
        super().__init__(reason)
        self.capability = capability
        self.reason = reason


class ResultsError(NetfaultError):
    """A results directory that cannot be read: missing, half-written, malformed, or from an incompatible version."""
