"""A CSV setting that may say "none": it is always a path (dvc.yaml depends on it), and none is a file
without rows."""

from __future__ import annotations

from pathlib import Path

from halp.config import NONE_CSV


def holds_rows(path: Path | None, setting: str) -> bool:
    """Whether the CSV that `setting` names holds a row: not for None, an empty file or a header alone."""
    if path is None:
        return False
    if not path.is_file():
        raise FileNotFoundError(
            f"{setting} {path} not found: point {setting} at the CSV in params.yaml, or at {NONE_CSV} "
            "(an empty file) for none"
        )
    with path.open(encoding="utf-8") as handle:
        lines = (line for line in handle if line.strip())
        next(lines, None)  # the header
        return next(lines, None) is not None
