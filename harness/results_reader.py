"""Reading a run's results back (for reports and comparisons), with an error naming the path for bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ResultsError
from .manifest import harness_version
from .results import FORMAT, MANIFEST, OUTCOME, TESTS
from .results_schema import MANIFEST_SCHEMA, OUTCOME_SCHEMA


@dataclass(frozen=True)
class Bundle:
    """One test's evidence bundle: its directory and its outcome.json."""

    path: Path
    outcome: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """A finished run: its directory, its manifest, and its bundles by nodeid."""

    path: Path
    manifest: dict[str, Any]
    bundles: dict[str, Bundle]


def load_run(path: Path | str) -> Run:
    """The run in `path` (results/<run-id>/ or results/latest), checked: ResultsError for a missing directory,
    a run without manifest.json, a test directory without outcome.json, a file that is not valid JSON or does
    not match its schema, or a `format` this version cannot read."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path}: no such run directory; give results/<run-id>/ or results/latest")
    manifest = _load(path / MANIFEST, MANIFEST_SCHEMA, missing=(
        "half-written run: it has no manifest.json, which the session writes when it ends (was it killed?); "
        "run it again"))
    bundles = {}
    tests = path / TESTS
    for bundle in sorted(tests.iterdir()) if tests.is_dir() else []:
        outcome = _load(bundle / OUTCOME, OUTCOME_SCHEMA, missing=(
            "half-written test directory: it has no outcome.json, which is written last (the writer failed or "
            "was killed); run the test again"))
        bundles[outcome["nodeid"]] = Bundle(bundle, outcome)
    for test in manifest["tests"]:
        if test["nodeid"] not in bundles:
            raise ResultsError(f"{path / MANIFEST}: lists {test['nodeid']} in {TESTS}/{test['bundle']}, which "
                               f"does not exist: the run directory is incomplete (copied in part?)")
    return Run(path, manifest, bundles)


def _load(path: Path, schema: dict[str, Any], missing: str) -> dict[str, Any]:
    """A results JSON file, its format and schema checked."""
    if not path.is_file():
        raise ResultsError(f"{path.parent}: {missing}")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc}); the file is damaged or half-written") from None
    version = value.get("format") if isinstance(value, dict) else None
    if version != FORMAT:
        raise ResultsError(f"{path}: results format {version!r}, but this netfault ({harness_version()}) reads "
                           f"format {FORMAT}; read it with the netfault version that wrote it")
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        raise ResultsError(f"{path}: does not match the {schema['title']} schema at {exc.json_path}: "
                           f"{exc.message}") from None
    return value
