"""load_run reads a written run back, and says what is wrong with a missing, half-written, damaged or
incompatible one (no Docker: runs are written from constructed pieces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import NetfaultError, ResultsError
from harness.results import CompletedTest, write_bundle, write_json
from harness.results_reader import load_run

from report_helpers import MANIFEST as REPORT_MANIFEST

MANIFEST = {**REPORT_MANIFEST, "run_id": "run-1", "exit_status": 0,
            "totals": {**REPORT_MANIFEST["totals"], "tests": 1, "files": 2, "bytes": 100}}
NODEID = "t.py::test_a"


def _run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run-1"
    bundle, _ = write_bundle(run_dir, CompletedTest(
        nodeid=NODEID, run_id="run-1", worker="main", outcome="passed", duration=1.0,
        phases={"setup": {"outcome": "passed", "duration": 0.5}, "teardown": {"outcome": "passed", "duration": 0.5}},
        longrepr=None, sysctls={}, evidence=None))
    write_json(run_dir / "manifest.json", {**MANIFEST, "tests": [{"nodeid": NODEID, "bundle": bundle.name}]})
    return run_dir


def test_a_complete_run_loads_with_its_bundles(tmp_path: Path):
    run = load_run(_run(tmp_path))
    assert run.manifest["run_id"] == "run-1"
    assert list(run.bundles) == [NODEID] and run.bundles[NODEID].outcome["outcome"] == "passed"


def test_a_missing_directory_is_named(tmp_path: Path):
    with pytest.raises(ResultsError, match=f"^{tmp_path / 'nope'}: no such run directory"):
        load_run(tmp_path / "nope")


def test_a_run_without_manifest_is_half_written(tmp_path: Path):
    run_dir = _run(tmp_path)
    (run_dir / "manifest.json").unlink()
    with pytest.raises(ResultsError, match=f"^{run_dir}: half-written run: it has no manifest.json"):
        load_run(run_dir)


def test_a_test_directory_without_outcome_is_half_written(tmp_path: Path):
    run_dir = _run(tmp_path)
    (run_dir / "tests" / "test_b-12345678").mkdir()
    with pytest.raises(ResultsError, match="test_b-12345678: half-written test directory: it has no outcome.json"):
        load_run(run_dir)


def test_a_listed_bundle_that_is_gone_is_named(tmp_path: Path):
    run_dir = _run(tmp_path)
    bundle = next((run_dir / "tests").iterdir())
    for path in bundle.iterdir():
        path.unlink()
    bundle.rmdir()
    with pytest.raises(ResultsError, match=f"lists {NODEID} in tests/{bundle.name}, which does not exist"):
        load_run(run_dir)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_a_manifest_of_another_format_is_refused_with_both_versions(tmp_path: Path, version: object):
    run_dir = _run(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["format"] = version
    write_json(run_dir / "manifest.json", manifest)
    with pytest.raises(ResultsError, match=rf"manifest.json: results format {version!r}, but this netfault "
                                           rf"\(.+\) reads format 1"):
        load_run(run_dir)


def test_damaged_json_and_schema_mismatches_are_named(tmp_path: Path):
    run_dir = _run(tmp_path)
    outcome = next((run_dir / "tests").iterdir()) / "outcome.json"
    text = outcome.read_text()
    outcome.write_text(text[: len(text) // 2])
    with pytest.raises(ResultsError, match=f"^{outcome}: not valid JSON"):
        load_run(run_dir)
    value = json.loads(text)
    value["outcome"] = "maybe"
    outcome.write_text(json.dumps(value))
    with pytest.raises(ResultsError, match=rf"^{outcome}: does not match the .* schema at \$.outcome: 'maybe'"):
        load_run(run_dir)


def test_results_errors_are_netfault_errors_for_the_cli():
    assert issubclass(ResultsError, NetfaultError)
