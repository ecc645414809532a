"""The netfault fault library: each fault an object with apply / heal / describe, usable as a context manager."""

from .base import Fault
from .firewall import Drop, FirewallError, Reject
from .partition import Partition, PowerLoss
from .process import Signal
from .container import Kill, Pause, Restart, Stop
from .link import LinkDown, LinkFlap
from .netem import GEModel, Netem, NetemUnavailable, netem_missing, require_netem
from .netem_fallback import NetemFallbackError
from .process import Spawned
from .schedule import Schedule, ScheduleError
from .sysctl import Sysctls

__all__ = ["Fault", "Signal"]
__all__ += ["Drop", "FirewallError", "Partition", "PowerLoss", "Reject"]
__all__ += ["GEModel", "Kill", "LinkDown", "LinkFlap", "Netem", "NetemUnavailable", "Pause", "Restart", "Schedule",
            "ScheduleError", "Spawned", "Stop", "Sysctls", "netem_missing", "require_netem"]
__all__ += ["NetemFallbackError"]
