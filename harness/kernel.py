"""What the Linux TCP stack will do, computed from its sysctls: retransmission schedules and timer slack.

Scenarios derive their expectations from the values read back from the host (never from `uname`), and
their tolerances from the timer wheel's granularity, which is where a kernel timer's lateness comes from.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends.base import Host

SYN_RETRIES = "net.ipv4.tcp_syn_retries"
SYN_LINEAR_TIMEOUTS = "net.ipv4.tcp_syn_linear_timeouts"
TCP_TIMEOUT_INIT = 1.0
TCP_RTO_MIN = 0.2
TCP_RTO_MAX = 120.0
# The timer wheel (kernel/time/timer.c): level n has a granularity of 8**n jiffies and holds timeouts up to
# 64 * 8**n jiffies; a timer fires at the first tick of its bucket, so it is late by less than that
# granularity, never early. HZ is not visible from a container: take the worst of the common values.
WHEEL_LEVEL_BITS = 6
WHEEL_CLK_SHIFT = 3
COMMON_HZ = (100, 250, 300, 1000)


def wheel_slack(timeout: float) -> float:
    """The most a kernel timer armed `timeout` seconds ahead fires late, over the common HZ values."""
    worst = 0.0
    for hz in COMMON_HZ:
        jiffies = max(1, round(timeout * hz))
        level = 0
        while jiffies >= (1 << WHEEL_LEVEL_BITS) << (level * WHEEL_CLK_SHIFT):
            level += 1
        worst = max(worst, (1 << (level * WHEEL_CLK_SHIFT)) / hz)
    return worst


def host_syn_timeouts(host: Host) -> list[float]:
    """syn_timeouts() for `host`, from its sysctls read back (tcp_syn_linear_timeouts is 0 before Linux 6.5)."""
    keys = [SYN_RETRIES] + ([SYN_LINEAR_TIMEOUTS] if host.has_sysctl(SYN_LINEAR_TIMEOUTS) else [])
    settings = host.sysctl_get(keys)
    return syn_timeouts(int(settings[SYN_RETRIES]), int(settings.get(SYN_LINEAR_TIMEOUTS, 0)))


def syn_timeouts(syn_retries: int, linear_timeouts: int = 0) -> list[float]:
    """The timeouts of a connect() whose SYNs go unanswered: before each retransmission, then before the give-up.

    The retransmission timer's first `linear_timeouts + 1` timeouts are TCP_TIMEOUT_INIT, then each doubles
    (tcp_syn_linear_timeouts, Linux >= 6.5; 0 before, the classic 1, 2, 4, ... s). The give-up does not count
    retransmissions: connect() fails at the first expiry at least `retries_budget(syn_retries, 1 s)` after the
    first SYN (tcp_write_timeout, tcp_model_timeout), so linear timeouts retransmit more often in the same time:
    tcp_syn_retries=2 gives SYNs at 0, 1, 3 s and ETIMEDOUT at 7 s without them; with 4 of them, SYNs at 0, 1,
    2, 3, 4, 5 s and ETIMEDOUT at 7 s (measured on 5.10, 6.1, 6.12, 6.18, 7.2 and 7.3).
    """
    budget = retries_budget(syn_retries, TCP_TIMEOUT_INIT)
    timeouts, rto, elapsed = [], TCP_TIMEOUT_INIT, 0.0
    while elapsed < budget:
        timeouts.append(min(rto, TCP_RTO_MAX))
        elapsed += timeouts[-1]
        if len(timeouts) > linear_timeouts:
            rto *= 2
    return timeouts


def retries_budget(retries: int, rto_base: float = TCP_RTO_MIN) -> float:
    """The time `tcp_retries2` (or `tcp_orphan_retries`) = `retries` allows (tcp_model_timeout): what
    `retries` doubling timeouts from `rto_base` add up to, the doubling capped at TCP_RTO_MAX.

    The kernel counts it from the first retransmission (retrans_stamp) and checks it only when the
    retransmission timer fires: the connection fails at the first expiry at least this long after the first
    retransmission, so later than `retries` would suggest.
    """
    threshold = int(math.log2(TCP_RTO_MAX / rto_base))
    if retries <= threshold:
        return ((2 << retries) - 1) * rto_base
    return ((2 << threshold) - 1) * rto_base + (retries - threshold) * TCP_RTO_MAX


def giveup_after(rto: float, retries: int) -> float:
    """Seconds from a segment's first transmission until the kernel gives up on it, nominally: the timer
    fires at rto * (2^k - 1), and the first expiry at least `retries_budget(retries)` after the first
    retransmission (at rto) ends the connection."""
    budget, k = retries_budget(retries), 2
    while rto * (2**k - 2) < budget:
        k += 1
    return rto * (2**k - 1)
