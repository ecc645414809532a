"""Run identity and the liveness check the reaper relies on."""

import os
import socket
import subprocess
import sys

from harness.runinfo import LABEL_MACHINE, LABEL_PID, LABEL_PID_START, RunInfo, owner_alive


def test_labels_identify_this_process():
    run = RunInfo.current("r1")
    labels = run.labels("host")
    assert labels["netfault.run"] == "r1"
    assert labels[LABEL_PID] == str(os.getpid())
    assert owner_alive(labels) is True


def test_dead_process_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    labels = {LABEL_MACHINE: socket.gethostname(), LABEL_PID: str(proc.pid), LABEL_PID_START: "1"}
    assert owner_alive(labels) is False


def test_reused_pid_is_not_the_owner():
    labels = RunInfo.current("r2").labels("host")
    labels[LABEL_PID_START] = "0"
    assert owner_alive(labels) is False


def test_other_machine_is_unknown():
    labels = RunInfo.current("r3").labels("host")
    labels[LABEL_MACHINE] = "elsewhere"
    assert owner_alive(labels) is None
