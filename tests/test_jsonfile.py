"""Every JSON halp writes parses in any reader: no bare NaN or Infinity."""

from __future__ import annotations

import json
import math
import subprocess

from halp.jsonfile import json_text
from tests.conftest import REPO


def strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_number_that_is_not_finite_is_written_as_null():
    value = {"auroc": math.nan, "by_layer": [1.5, -math.inf, (math.inf, 2)], "n": 3, "name": "NaN"}
    expected = {"auroc": None, "by_layer": [1.5, None, [None, 2]], "n": 3, "name": "NaN"}
    assert strict(json_text(value)) == expected


def test_the_json_files_in_git_are_strict():
    """What a clone holds (metrics, fingerprints); the guards travel through DVC, tested where fitted."""
    listed = subprocess.run(
        ["git", "ls-files", "*.json"], cwd=REPO, capture_output=True, text=True, check=True
    )
    files = listed.stdout.split()
    assert any(name.startswith("metrics/") for name in files)
    for name in files:
        strict((REPO / name).read_text())
