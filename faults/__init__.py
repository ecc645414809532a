"""The netfault fault library: each fault an object with apply / heal / describe, usable as a context manager."""

from .base import Fault
from .process import Signal

__all__ = ["Fault", "Signal"]
