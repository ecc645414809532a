"""netem's documented fallback where the kernel lacks sch_netem (see docs/netem-fallback.md for its fidelity).

- Random loss ("nft-numgen"): an nft table of the fault's own, family netdev, on the interface's egress (or
  ingress) hook, where netem's qdisc would sit: `numgen random mod 10000 < N`, N = loss_pct * 100, then on
  ingress `drop`, on egress `fwd` to a black hole (a veth pair of the fault's own, left down). Forwarding
  steals the packet, so the sender's stack sees a successful transmission, as with netem's loss; a `drop`
  there would be reported back as local congestion (TCP retries every 0.5 s without backoff) and one in the
  output hook as EPERM (UDP's sendto fails). Measured in docs/netem-fallback.md.
- Delay, jitter, reorder, duplicate ("nfqueue-delayline"): the NFQUEUE delay line (harness/agent/delayline.py),
  a process in the host, fed by an xtables NFQUEUE rule in a chain of the fault's own (`iptables-restore`:
  nftables' own `queue` expression needs CONFIG_NFT_QUEUE, which kernels such as this CI's lack; the xtables
  target works through nft_compat). No queue bypass: if the delay line dies, the interface's traffic stops
  instead of flowing un-faulted, and heal reports the death.
"""

from __future__ import annotations

import json
from typing import Any

from harness.agent.delayline import FIELDS as LINE_FIELDS
from harness.agent.netem import NetemParams
from harness.backends.base import Host
from harness.errors import NetfaultError
from harness.records import CommandFailed, CompletedRun

from .base import run_all
from .firewall import iptables_filter_tables, new_name
from .rules import XTABLES, Ruleset, XtablesState, xtables_heal

LOSS = "nft-numgen"
LINE = "nfqueue-delayline"
LABELS = {LOSS: "nft numgen loss", LINE: "NFQUEUE delay line (userspace)"}
LOSS_SCALE = 10_000  # numgen's modulus: loss in steps of 0.01 %
# NetemParams fields the fallback cannot do, by the name Netem() takes.
UNSUPPORTED = {"correlation": "correlation", "loss_correlation": "loss_correlation", "gemodel": "gemodel",
               "corrupt_pct": "corrupt_pct", "rate_bit": "rate", "seed": "seed"}
RUN_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_XT = {"egress": ("output", "OUTPUT", "-o"), "ingress": ("input", "INPUT", "-i")}


class NetemFallbackError(NetfaultError):
    """The fallback could not be put in force or removed, or its delay line died; the message says which."""


def unsupported(params: NetemParams) -> list[str]:
    """The parameters of `params` the fallback cannot do (empty: it can do them all)."""
    defaults = NetemParams()
    names = [name for field, name in UNSUPPORTED.items() if getattr(params, field) != getattr(defaults, field)]
    if 0 < params.loss_pct < 100 / LOSS_SCALE:
        names.append(f"loss_pct below {100 / LOSS_SCALE:g}")
    return names


def mechanisms(params: NetemParams) -> tuple[str, ...]:
    """Which parts the fallback of `params` uses: loss alone needs no delay line; anything else (even no
    impairment at all, as a netem qdisc without parameters) passes through the delay line."""
    loss = params.loss_pct > 0
    line = not loss or any((params.delay_ms, params.jitter_ms, params.reorder_pct, params.duplicate_pct))
    return ((LOSS,) if loss else ()) + ((LINE,) if line else ())


def label(params: NetemParams) -> str:
    """How `describe()` names the fallback of `params`, e.g. "fallback: NFQUEUE delay line (userspace)"."""
    return "fallback: " + " + ".join(LABELS[m] for m in mechanisms(params))


def loss_threshold(loss_pct: float) -> int:
    """N in `numgen random mod 10000 < N`."""
    return round(loss_pct * LOSS_SCALE / 100)


def blackhole(name: str) -> tuple[str, str]:
    """The veth pair (never set up) that egress loss forwards packets into, named after the fault's table."""
    suffix = name.removeprefix("netfault_")
    return f"nfbh{suffix}", f"nfbp{suffix}"


def loss_script(name: str, iface: str, direction: str, loss_pct: float) -> str:
    """The `nft -f -` script of the loss table (one transaction, in force when nft returns)."""
    threshold = loss_threshold(loss_pct)
    chance = f"numgen random mod {LOSS_SCALE} < {threshold} " if threshold < LOSS_SCALE else ""
    action = f"fwd to \"{blackhole(name)[0]}\"" if direction == "egress" else "drop"
    return (f"table netdev {name} {{\n"
            f"\tchain {direction} {{\n"
            f"\t\ttype filter hook {direction} device \"{iface}\" priority filter; policy accept;\n"
            f"\t\t{chance}counter {action}\n"
            "\t}\n}\n")


def loss_apply_command(name: str, direction: str) -> list[str]:
    """Runs the loss script (on stdin) after creating the black hole egress loss needs."""
    if direction == "ingress":
        return ["nft", "-f", "-"]
    device, peer = blackhole(name)
    return ["sh", "-c", f"ip link add {device} type veth peer name {peer} && nft -f -"]


def loss_heal_command(name: str) -> tuple[list[str], str]:
    """Removes the loss table whether or not it is there (adding an existing table is a no-op), then the black
    hole if there is one (deleting one end of a veth pair deletes both)."""
    device, _ = blackhole(name)
    return (["sh", "-c", f"nft -f - && if ip link show {device} >/dev/null 2>&1; then ip link del {device}; fi"],
            f"add table netdev {name}\ndelete table netdev {name}\n")


def queue_script(chain: str, iface: str, direction: str, queue: int, mark: int) -> str:
    """`iptables-restore --noflush` input: the chain sending `iface`'s packets (but the delay line's own copies,
    which carry `mark`) to `queue`, jumped to first thing from OUTPUT (egress) or INPUT (ingress)."""
    _, builtin, flag = _XT[direction]
    return (f"*filter\n:{chain} - [0:0]\n"
            f"-A {chain} {flag} {iface} -m mark ! --mark {mark:#x} -j NFQUEUE --queue-num {queue}\n"
            f"-I {builtin} 1 -j {chain}\nCOMMIT\n")


def queue_chains(save: str, iface: str, direction: str) -> list[str]:
    """The netfault chains in `iptables-save` output that queue `iface`'s packets in `direction`."""
    _, _, flag = _XT[direction]
    return [line.split()[1] for line in save.splitlines()
            if line.startswith("-A netfault_") and f" {flag} {iface} " in f"{line} " and "-j NFQUEUE" in line]


class NetemFallback:
    """One Netem fault's fallback in one host: a loss table and/or a delay line with its queue rule."""

    def __init__(self, host: Host, iface: str, direction: str, params: NetemParams) -> None:
        self.host = host
        self.iface = iface
        self.direction = direction
        self.params = params
        self.mechanisms = mechanisms(params)
        self.name = new_name()
        self.ruleset = Ruleset(self.name, ())
        self.chain = self.ruleset.chain(_XT[direction][0])
        self.line: dict[str, Any] | None = None  # the delayline_start result
        self.line_exit: dict[str, Any] | None = None
        self._loss_pending = False
        self._rule_pending = False
        self._filter_acquired = False
        self._line_running = False

    @property
    def mechanism(self) -> str:
        return "+".join(self.mechanisms)

    def apply(self) -> None:
        if LOSS in self.mechanisms:
            self._loss_pending = True
            self._run(loss_apply_command(self.name, self.direction), f"adding nft table {self.name}",
                      loss_script(self.name, self.iface, self.direction, self.params.loss_pct))
        if LINE in self.mechanisms:
            self._refuse_second_line()
            values = {name: getattr(self.params, name) for name in LINE_FIELDS}
            self.line = self.host.delayline_start(f"delayline-{self.name}", values)
            self._line_running = True
            # iptables-nft creates its `ip filter` table on first use; the last of its users removes it again.
            iptables_filter_tables(self.host).acquire(self.host, "ip")
            self._filter_acquired = True
            self._rule_pending = True
            self._run(list(XTABLES["ip"][1]), f"adding iptables chain {self.chain}",
                      queue_script(self.chain, self.iface, self.direction, self.line["queue"], self.line["mark"]))

    def _refuse_second_line(self) -> None:
        """A packet accepted by one delay line skips the rest of iptables' filter chain, so a second delay
        line on the same interface and direction would never see it: refused, as netem refuses a second root."""
        save = self._run(list(XTABLES["ip"][2]), "reading iptables rules").stdout
        others = queue_chains(save, self.iface, self.direction)
        if others:
            raise NetemFallbackError(f"{self.iface} of host {self.host.name} has a delay line in {self.direction} "
                                     f"already (iptables chain {others[0]}): heal that fault first")

    def heal(self) -> None:
        """Remove the queue rule, stop the delay line, then remove the tables: each step even if another fails.

        The delay line stops (releasing what it holds) before any table goes: when a netfilter hook is
        unregistered the kernel drops every packet held in the namespace's queues (nfqnl_nf_hook_drop).
        """
        run_all((self._heal_rule, self._stop_line, self._release_filter, self._heal_loss), NetemFallbackError,
                f"healing the netem fallback on {self.host.name}")

    def _release_filter(self) -> None:
        if self._filter_acquired and not self._rule_pending:
            self._filter_acquired = False
            iptables_filter_tables(self.host).release(self.host, "ip")

    def _heal_rule(self) -> None:
        if not self._rule_pending:
            return
        _, builtin, _ = _XT[self.direction]
        cmd, script = xtables_heal(XtablesState((self.chain,), ((builtin, self.chain),)), "ip")
        if self.host.run(cmd, input=script, timeout=RUN_TIMEOUT).returncode != 0:
            left = XtablesState.parse(self._run(list(XTABLES["ip"][2]), "reading iptables rules").stdout,
                                      self.ruleset)
            if not left.empty:
                cmd, script = xtables_heal(left, "ip")
                self._run(cmd, f"removing iptables chain {self.chain}", script)
        self._rule_pending = False

    def _stop_line(self) -> None:
        """SIGTERM (the delay line releases what it holds and prints its counters); SIGKILL if it hangs. A
        delay line that exited before is an error: the interface's traffic stopped when it died."""
        if not self._line_running or self.line is None:
            return
        name, self._line_running = self.line["name"], False
        before = self.host.wait(name, timeout=0)
        if not before.timed_out:
            self.line_exit = _exit(before)
            how = f"killed by {before.signal}" if before.signal else f"exit status {before.returncode}"
            raise NetemFallbackError(
                f"the NFQUEUE delay line of the netem fallback on {self.iface} of host {self.host.name} died while "
                f"the fault was in force ({how}): from then on its queue rule dropped the interface's "
                f"{self.direction} packets (no bypass). Its stderr:\n{before.stderr.strip()}")
        self.host.signal(name, "SIGTERM")
        done = self.host.wait(name, timeout=STOP_TIMEOUT)
        if done.timed_out:
            self.host.signal(name, "SIGKILL")
            done = self.host.wait(name)
        self.line_exit = _exit(done)

    def _heal_loss(self) -> None:
        if self._loss_pending:
            cmd, script = loss_heal_command(self.name)
            self._run(cmd, f"removing nft table {self.name}", script)
            self._loss_pending = False

    def _run(self, cmd: list[str], what: str, input: str | None = None) -> CompletedRun:
        try:
            return self.host.run(cmd, input=input, timeout=RUN_TIMEOUT, check=True)
        except CommandFailed as exc:
            raise NetemFallbackError(f"{what} on host {self.host.name} failed: {exc}") from None

    def record(self) -> dict[str, Any]:
        loss = LOSS in self.mechanisms
        return {"name": self.name, "loss_threshold": loss_threshold(self.params.loss_pct) if loss else None,
                "blackhole": blackhole(self.name)[0] if loss and self.direction == "egress" else None,
                "chain": self.chain if LINE in self.mechanisms else None, "delayline": self.line,
                "delayline_exit": self.line_exit}


def _exit(run: CompletedRun) -> dict[str, Any]:
    """How the delay line ended, with its counters (the JSON line it prints when stopped by SIGTERM)."""
    lines = run.stdout.strip().splitlines()
    counters = json.loads(lines[-1]) if run.returncode == 0 and lines else None
    return {"returncode": run.returncode, "signal": run.signal, "counters": counters}
