"""docs/scenarios.md is what the scenario tests say, and a scenario file without its SCENARIO fields is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.catalogue import INDEX, index, load_scenario
from harness.errors import ConfigError


def test_the_committed_index_is_up_to_date():
    assert INDEX.read_text() == index(), "docs/scenarios.md is out of date: run `netfault scenarios`"


@pytest.mark.parametrize(("body", "message"), [
    ("def test_s42_x():\n    pass\n", "no module-level SCENARIO dict"),
    ("SCENARIO = {'id': 'S42', 'title': 't'}\ndef test_s42_x():\n    pass\n", "lacks fault, linux, expect, lesson"),
    ("SCENARIO = dict.fromkeys(['title', 'fault', 'linux', 'expect', 'lesson'], 'x') | {'id': 'S41'}\n"
     "def test_s42_x():\n    pass\n", r"id 'S41' does not match the file name \(S42\)"),
    ("SCENARIO = dict.fromkeys(['title', 'fault', 'linux', 'expect', 'lesson'], 'x') | {'id': 'S42'}\n",
     "no test named test_s42_"),
])
def test_incomplete_scenario_files_are_named_with_what_they_lack(tmp_path: Path, body: str, message: str):
    path = tmp_path / "test_s42_example.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_scenario(path)
