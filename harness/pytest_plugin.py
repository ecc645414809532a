"""pytest plugin: the `faults` marker, per-host sysctls, and the `pair` / `client` / `server` fixtures.

Settings resolve in one order: marker > command line > ini > environment.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

from . import evidence
from .backends import BACKENDS, open_backend
from .backends.base import Host, Testbed
from .errors import ConfigError, EngineUnavailable, MissingCapability, NetfaultError
from .netstate import differences, snapshot
from .results_plugin import ResultsRecorder
from .runinfo import RunInfo
from .timeline import Timeline
from .topology import load_topology

# Scenario files (*.netfault.yaml) are collected as tests too.
pytest_plugins = ["harness.scenario_plugin"]

RUN_KEY = pytest.StashKey[RunInfo]()
SYSCTLS_KEY = pytest.StashKey[dict]()
BASELINE_KEY = pytest.StashKey[dict]()
EVIDENCE_KEY = pytest.StashKey[evidence.Evidence]()
HOSTS_KEY = pytest.StashKey[dict]()
REPORTS_KEY = pytest.StashKey[dict]()
RESULTS_KEY = pytest.StashKey[ResultsRecorder]()
_PAIR_PARAMS = {"sysctls"}


@dataclass
class Pair:
    """The client and server hosts of the test bed, for one test."""

    client: Host
    server: Host
    testbed: Testbed

    @property
    def unused_addr(self) -> str:
        """An address on the test network that no host answers for."""
        return self.testbed.unused_addr


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netfault", "netfault: network fault scenarios")
    group.addoption("--netfault-backend", choices=BACKENDS, default=None,
                    help="where hosts run: docker (containers) or netns (network namespaces of this machine, root, "
                         "no engine; default: ini netfault_backend, $NETFAULT_BACKEND, docker)")
    group.addoption("--netfault-image", default=None,
                    help="peer image for hosts (default: ini netfault_image, $NETFAULT_IMAGE, the content tag "
                         "of the current sources, built if missing)")
    group.addoption("--netfault-results", default=None, metavar="DIR",
                    help="write DIR/<run-id>/ (a manifest and an evidence bundle per test using pair) and point "
                         "DIR/latest at it (default: $NETFAULT_RESULTS, else ini netfault_results relative to the "
                         "rootdir, written only when a test used the hosts; none: nothing written)")
    parser.addini("netfault_backend", "backend for hosts (docker or netns)", default=None)
    parser.addini("netfault_image", "peer image for hosts", default=None)
    parser.addini("netfault_results", "directory for run results (see --netfault-results)", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: a fault scenario run against real hosts (needs the backend: a Docker engine, or root "
        "for netns; skipped without it, failed without it when CI=true)")
    config.addinivalue_line(
        "markers", "backend(name, reason): the test needs that backend (e.g. it inspects containers); skipped with "
        "the reason on the others")
    config.addinivalue_line(
        "markers", "sysctls(**hosts): per-host sysctls for one test, restored after it, e.g. "
        "sysctls(client={'net.ipv4.tcp_syn_retries': 2})")
    workerinput = getattr(config, "workerinput", {})
    config.stash[RUN_KEY] = RunInfo.current(workerinput.get("netfault_run_id"))
    given = config.getoption("netfault_results") or os.environ.get("NETFAULT_RESULTS")
    default = config.getini("netfault_results")
    if given or default:
        results = config.invocation_params.dir / given if given else config.rootpath / default
        recorder = ResultsRecorder(config, results, config.stash[RUN_KEY].run_id, _worker(),
                                   only_with_evidence=not given)
        config.stash[RESULTS_KEY] = recorder
        config.pluginmanager.register(recorder, "netfault-results")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "netfault-xdist")
    if not workerinput:
        _terminate_as_interrupt()


class _XdistHooks:
    """Give every xdist worker the controller's run id (they make one network each)."""

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["netfault_run_id"] = node.config.stash[RUN_KEY].run_id


def _terminate_as_interrupt() -> None:
    """SIGTERM (a CI runner cancelling) tears down like Ctrl-C, so the hosts are removed."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)


def _worker() -> str:
    """This process's xdist worker id, "main" without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _setting(config: pytest.Config, option: str, ini: str, env: str, default: str | None) -> str | None:
    return config.getoption(option) or config.getini(ini) or os.environ.get(env) or default


def missing_prerequisite(reason: str, what: str = "prerequisite") -> NoReturn:
    """Skip the test with `reason`; with CI=true, fail it instead: CI must not pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing {what} is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def _say(config: pytest.Config, line: str) -> None:
    """A progress line on the terminal, even while output is captured."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line(f"netfault: {line}")


def backend_name(config: pytest.Config) -> str:
    """The backend this session uses: option > ini > $NETFAULT_BACKEND > docker."""
    name = _setting(config, "netfault_backend", "netfault_backend", "NETFAULT_BACKEND", "docker")
    if name not in BACKENDS:
        source = ("ini netfault_backend" if config.getini("netfault_backend") else "$NETFAULT_BACKEND")
        raise pytest.UsageError(f"netfault: unknown backend {name!r} from {source} (known: {', '.join(BACKENDS)})")
    return name


@pytest.fixture(scope="session")
def netfault_testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """The session's hosts on their own network (one network per xdist worker), removed at the end."""
    config = request.config
    try:
        backend = open_backend(backend_name(config), load_topology(), config.stash[RUN_KEY],
                               image=_setting(config, "netfault_image", "netfault_image", "NETFAULT_IMAGE", None),
                               progress=lambda line: _say(config, line))
    except EngineUnavailable as exc:
        missing_prerequisite(str(exc), "engine")
    try:
        testbed = backend.create(_worker())
    except BaseException:
        backend.destroy()
        raise
    try:
        yield testbed
    finally:
        backend.destroy()


def _requested_sysctls(request: pytest.FixtureRequest, hosts: list[str]) -> dict[str, dict[str, Any]]:
    """Per-host sysctls from the `sysctls` marker and an indirect `pair` parameter, validated."""
    wanted: dict[str, dict[str, Any]] = {}
    sources = [(f"marker sysctls on {request.node.nodeid}", m.kwargs)
               for m in reversed(list(request.node.iter_markers("sysctls")))]
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict) or set(param) - _PAIR_PARAMS:
            bad = sorted(set(param) - _PAIR_PARAMS) if isinstance(param, dict) else param
            raise ConfigError(f"unknown parameter {bad!r} for fixture pair on {request.node.nodeid} "
                              f"(known: {', '.join(sorted(_PAIR_PARAMS))})")
        sources.append((f"parameter of fixture pair on {request.node.nodeid}", param.get("sysctls", {})))
    for source, per_host in sources:
        for host, values in per_host.items():
            if host not in hosts:
                raise ConfigError(f"unknown host {host!r} in {source} (hosts: {', '.join(hosts)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: sysctls for {host} must be a dict of name -> value, got {values!r}")
            wanted.setdefault(host, {}).update(values)
    return wanted


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Client and server hosts, fresh for this test: per-test sysctls applied, everything undone afterwards.

    Markers and parameters are checked against the topology before any host is started.
    """
    try:
        wanted = _requested_sysctls(request, load_topology().names)
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    request.node.stash[SYSCTLS_KEY] = wanted
    request.node.user_properties.append(("netfault.sysctls", json.dumps(wanted, sort_keys=True)))
    testbed: Testbed = request.getfixturevalue("netfault_testbed")
    request.node.stash[HOSTS_KEY] = dict(testbed.hosts)
    baselines = request.config.stash.setdefault(BASELINE_KEY, {})
    for name, host in testbed.hosts.items():
        if name not in baselines:
            baselines[name] = snapshot(host)
    if RESULTS_KEY in request.config.stash:
        request.config.stash[RESULTS_KEY].note_hosts(testbed.hosts)
    undo: list[tuple[Host, dict[str, str]]] = []
    try:
        for name, values in wanted.items():
            host = testbed[name]
            undo.append((host, host.set_sysctls(values)))
    except NetfaultError as exc:
        _undo(testbed, undo)
        pytest.fail(str(exc), pytrace=False)
    try:
        with evidence.collecting() as collected:
            request.node.stash[EVIDENCE_KEY] = collected
            yield Pair(testbed["client"], testbed["server"], testbed)
            for host in testbed.hosts.values():
                host.end_programs()  # inside the collection: their exits and output go to the bundle
    finally:
        _undo(testbed, undo)
    _check_nothing_left(testbed, baselines)


def _undo(testbed: Testbed, undo: list[tuple[Host, dict[str, str]]]) -> None:
    """Bring back hosts the test left paused or down (failing its teardown), reset every agent and destroy the
    sockets the kernel still holds, then restore sysctls in reverse order of setting."""
    revived = _revive(testbed)
    try:
        testbed.reset()
        for host in testbed.hosts.values():
            left = host.destroy_sockets()
            if left:
                raise NetfaultError(f"ss -K (SOCK_DESTROY) left sockets on {host.name}: is the kernel built without "
                                    f"CONFIG_INET_DIAG_DESTROY? The next test would see them: {left}")
    finally:
        for host, previous in reversed(undo):
            host.set_sysctls(previous)
    if revived:
        raise NetfaultError("the test left hosts not running (brought back for the next test): " + "; ".join(revived))


def _revive(testbed: Testbed) -> list[str]:
    """Unpause paused hosts and start stopped ones; what was done, per host."""
    done = []
    for host in testbed.hosts.values():
        state = host.state()
        if state == "paused":
            host.unpause()
        elif state != "running":
            host.start()
        else:
            continue
        done.append(f"{host.name} was {state}")
    return done


def _check_nothing_left(testbed: Testbed, baselines: dict[str, dict[str, Any]]) -> None:
    """Fail the test's teardown if a host's rules, qdiscs, links, addresses or routes differ from before the
    first test; such a host is rebooted (a new namespace) so that the next test starts clean."""
    leaks = []
    for name, host in testbed.hosts.items():
        diff = differences(baselines[name], snapshot(host))
        if diff:
            leaks.append(f"{name}:\n{diff}")
            host.restart()
    if leaks:
        pytest.fail("the test left network configuration behind (the host was rebooted for the next test):\n"
                    + "\n".join(leaks), pytrace=False)


@pytest.fixture
def client(pair: Pair) -> Host:
    """The client host of `pair`."""
    return pair.client


@pytest.fixture
def server(pair: Pair) -> Host:
    """The server host of `pair`."""
    return pair.server


def _skip_on_missing_capability(item: pytest.Item) -> Iterator[None]:
    """A fault the kernel cannot provide (MissingCapability) in a fixture or the test skips it with its reason."""
    try:
        return (yield)
    except MissingCapability as exc:
        pytest.skip(exc.reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Skip a test marked for another backend; a missing capability in a fixture skips with its reason."""
    marker = item.get_closest_marker("backend")
    if marker is not None:
        wanted, reason = marker.args
        current = backend_name(item.config)
        if current != wanted:
            pytest.skip(f"needs the {wanted} backend ({reason}); this session uses {current}")
    return (yield from _skip_on_missing_capability(item))


pytest_runtest_call = pytest.hookimpl(wrapper=True)(_skip_on_missing_capability)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test that used the hosts gets its timeline (faults, syscalls, packets, states) in the report; with
    results enabled, every test that used `pair` (or ran a scenario file) gets its bundle written after its teardown,
    and its path as the report's `netfault.evidence` property (JUnit XML)."""
    report = yield
    collected = item.stash.get(EVIDENCE_KEY, None)
    if report.failed and call.when == "call" and collected is not None:
        report.sections.append(("netfault timeline", Timeline.of(collected).render()))
    reports = item.stash.setdefault(REPORTS_KEY, {})
    reports[call.when] = report
    recorder = item.config.stash.get(RESULTS_KEY, None)
    used_hosts = "pair" in getattr(item, "fixturenames", ()) or EVIDENCE_KEY in item.stash  # scenario files too
    if recorder is not None and call.when == "teardown" and used_hosts:
        report.user_properties += recorder.write(item, reports, collected, item.stash.get(SYSCTLS_KEY, {}),
                                                 item.stash.get(HOSTS_KEY, {}))
    return report
