"""The HTML report of a run: one static file (inline CSS and SVG, nothing fetched) with a summary table and
each test's timeline picture, rendered with Jinja2 from the run's results (read with load_run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import jinja2

from .report_data import bundle_report
from .report_svg import picture
from .results_reader import load_run

REPORT_HTML = "report.html"
_TEMPLATES = Path(__file__).parent / "templates"


def render_html(run_dir: Path | str) -> str:
    """The report of the run in `run_dir` as HTML (ResultsError for a missing, half-written or foreign run)."""
    run = load_run(run_dir)
    reports = sorted((bundle_report(b) for b in run.bundles.values()), key=lambda r: (r.scenario, r.nodeid))
    counts = Counter(r.outcome for r in reports)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        run_id=run.manifest["run_id"], manifest=run.manifest, tests=reports,
        counts=[f"{n} {outcome}" for outcome, n in sorted(counts.items())] or ["none"],
        sections=[(r, picture(r)) for r in reports])


def write_html_report(run_dir: Path | str) -> Path:
    """Write run_dir/report.html and return its path."""
    path = Path(run_dir) / REPORT_HTML
    path.write_text(render_html(run_dir))
    return path
