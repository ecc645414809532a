"""pytest collects scenario files: each `*.netfault.yaml` is one `faults`-marked item that runs the scenario on
a test bed of its own (harness.scenario_run) and fails with the expectations that do not hold and the scenario's
timeline. Its evidence goes into the session's results like a Python test's (harness.results_plugin).

Registered by harness.pytest_plugin (`pytest_plugins`); the session's backend and image settings apply. A file
whose `backend:` is not the session's is skipped with the reason; an invalid file fails with every problem.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from .errors import EngineUnavailable, MissingCapability
from .evidence import Evidence
from .pytest_plugin import (EVIDENCE_KEY, HOSTS_KEY, RESULTS_KEY, RUN_KEY, SYSCTLS_KEY, _setting, _worker,
                            backend_name, missing_prerequisite)
from .scenario_file import SUFFIX, ScenarioError, load_scenario
from .scenario_run import run_scenario


class ScenarioFailed(Exception):
    """A scenario file that is invalid, or whose expectations do not all hold; the message says which."""


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name.endswith(SUFFIX):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    """A scenario file: one item, named after the file (its name without the suffix)."""

    def collect(self) -> list[pytest.Item]:
        return [ScenarioItem.from_parent(self, name=self.path.name.removesuffix(SUFFIX))]


class ScenarioItem(pytest.Item):
    """Runs one scenario file."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker("faults")

    def runtest(self) -> None:
        self.stash[EVIDENCE_KEY] = Evidence()
        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:
            raise ScenarioFailed(f"invalid scenario file:\n{exc}") from None
        backend = backend_name(self.config)
        if scenario.backend not in (None, backend):
            pytest.skip(f"{self.path.name} needs the {scenario.backend} backend; this session uses {backend}")
        recorder = self.config.stash.get(RESULTS_KEY, None)
        image = _setting(self.config, "netfault_image", "netfault_image", "NETFAULT_IMAGE", None)
        try:
            run = run_scenario(scenario, backend, self.config.stash[RUN_KEY], image=image, progress=print,
                               worker=f"{_worker()}-{secrets.token_hex(2)}",
                               on_hosts=(lambda hosts: None) if recorder is None else recorder.note_hosts)
        except Exception as exc:
            missing = exc if isinstance(exc, MissingCapability) else exc.__cause__
            if isinstance(missing, MissingCapability):
                pytest.skip(missing.reason)
            if isinstance(exc, EngineUnavailable):
                missing_prerequisite(str(exc), "engine")
            raise
        self.stash[EVIDENCE_KEY] = run.evidence
        self.stash[SYSCTLS_KEY] = run.sysctls
        self.stash[HOSTS_KEY] = run.hosts
        if not run.passed:
            raise ScenarioFailed(run.report())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario file {self.path.name}"
