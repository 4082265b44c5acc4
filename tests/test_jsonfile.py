"""Every JSON halp writes parses in any reader: no bare NaN or Infinity."""

from __future__ import annotations

import json
import math

import pytest

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


@pytest.mark.parametrize("folder", ["metrics", "models/guards"])
def test_the_committed_outputs_are_strict_json(folder):
    files = sorted((REPO / folder).rglob("*.json"))
    assert files
    for path in files:
        strict(path.read_text())
