"""Entry point: `python -m netfault_agent` in hosts, `python -m harness.agent` in the repository."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import sys
import threading
from typing import BinaryIO

from .ops import Agent
from .server import EOF_GRACE, Server
from .workers import SIGPIPE_MODES


def _claim_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Move the protocol to private descriptors; fd 0 becomes /dev/null and fd 1 the log (stderr).

    Nothing else (a stray print, a library, an inheriting child) can then corrupt the answer stream.
    """
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return requests, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__)
    parser.add_argument("--worker", action="store_true", help="run as a worker under another agent")
    parser.add_argument("--sigpipe", choices=SIGPIPE_MODES, default="ignore",
                        help="SIGPIPE disposition: 'default' lets a write to a reset socket kill the process")
    parser.add_argument("--name", default=socket.gethostname(), help="name used in logs and info")
    args = parser.parse_args(argv)
    if args.sigpipe == "default":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    requests, answers = _claim_stdio()
    if not args.worker:
        # pyroute2 takes seconds to import on a small, busy machine: warm it while the first requests run,
        # so the first socket snapshot of a test is not late.
        threading.Thread(target=importlib.import_module, args=(f"{__package__}.diag",), name="warm-diag",
                         daemon=True).start()
    agent = Agent(args.name, args.worker)
    try:
        Server(agent, answers, eof_grace=0.0 if args.worker else EOF_GRACE).serve(requests)
    finally:
        agent.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
