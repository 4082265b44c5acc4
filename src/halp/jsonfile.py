"""JSON as every reader parses it: a number that is not finite (NaN, inf) is written as null, never as the
bare `NaN` that Python alone accepts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def json_text(value: Any, indent: int = 2) -> str:
    """`value` as strict JSON text, ending in a newline."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False) + "\n"


def write_json(path: Path, value: Any, indent: int = 2) -> None:
    path.write_text(json_text(value, indent))


def number(value: float | None) -> float:
    """A number read back from such a file: null (not finite when written, e.g. an AUROC on one class) is
    NaN again."""
    return math.nan if value is None else float(value)
