"""The HALP dataset schema: reading a CSV under any column names, validating it, repairing known damage."""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from halp.data.images import NOT_FOUND, embedded_image, embedded_image_problem, image_file_problem

COLUMNS = (
    "question_id",
    "image_name",
    "question",
    "gt_answer",
    "category",
    "description",
    "has_image",
    "dataset",
    "is_relational",
)
REQUIRED = ("question_id", "image_name", "question", "gt_answer", "dataset", "is_relational")
ANSWERED = REQUIRED[:4]  # what a Hugging Face dataset must hold (its name is the dataset, none relational)
MAX_LISTED = 20
# HALP's data says "false premises"; the demo set "false_premise": one canonical name per category.
CATEGORY_ALIASES = {"false_premises": "false_premise"}
log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message names the rows and the fix."""


def canonical_category(category: str) -> str:
    """Lower case, words joined by "_", known aliases mapped: "False premises" -> "false_premise"."""
    name = re.sub(r"[\s-]+", "_", category.strip().lower())
    return CATEGORY_ALIASES.get(name, name)


def repair_ground_truth(answer: str) -> tuple[str, bool]:
    """Undo `", ".join(s)` applied to a string: "n, o" -> ("no", True). Anything else is kept as it is.

    HALP's release stores some answers as the characters of the answer joined by ", "; a real list
    of single characters is vanishingly rare in VQA answers, so such values are rejoined and flagged.
    """
    parts = answer.split(", ")
    if len(parts) > 1 and all(len(p) == 1 for p in parts):
        return "".join(parts), True
    return answer, False


def row_lines(path: Path) -> list[int]:
    """Each data row's first line in the file (the header is line 1), rows as pandas reads them: a quoted
    multi-line cell stays in its row, a blank line is no row."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        starts, end = [], reader.line_num
        for row in reader:
            if row:
                starts.append(end + 1)
            end = reader.line_num
    return starts


def read_lined_csv(path: Path) -> pd.DataFrame:
    """A CSV of strings indexed by each row's line in the file, for messages that name lines."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    lines = row_lines(path)
    table.index = lines if len(lines) == len(table) else table.index + 2  # a dialect csv reads otherwise
    return table


def _problem_list(title: str, rows: pd.DataFrame, fix: str) -> str:
    """The rows by place: a CSV's line, or where a benchmark reader found them ("x.json line 3"), with
    the url an image came from when the source gives one."""
    lines = [
        f"  - {f'CSV line {i}' if isinstance(i, int) else i} ({row.question_id!r})"
        + (f" from {row.url}" if "url" in rows else "")
        for i, row in rows.head(MAX_LISTED).iterrows()
    ]
    more = f"\n  ... and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
    return f"{title} ({len(rows)} rows):\n" + "\n".join(lines) + more + f"\n  fix: {fix}"


def read_dataset(
    csv: Path,
    images_dir: Path,
    columns: dict[str, str],
    drop_invalid: bool,
    required: tuple[str, ...] = REQUIRED,
    reader: Callable[[Path], pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and validate a HALP-schema CSV, or what `reader` makes of a benchmark's files: (valid rows,
    rejected rows), under our column names, each indexed by the row's line in the file or the reader's
    place for it (for messages). `required` may ask for less than HALP's schema (a question to assess
    needs no ground truth): absent columns are then empty.

    Structural faults (missing columns, duplicate ids) always stop. Row faults (missing image, empty
    question) stop too unless `drop_invalid`, in which case those rows are returned as rejected,
    each with its `invalid_reason`.
    """
    if reader is not None:
        table = reader(csv)
    elif csv.is_file():
        table = read_lined_csv(csv)
    else:
        raise DatasetError(
            f"dataset CSV {csv} not found: set data.source in params.yaml or run `halp prepare-data`"
        )
    table = table.rename(columns={theirs: ours for ours, theirs in columns.items()})
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{csv} lacks required column(s) {missing}; it has {list(table.columns)}. "
            "Rename them in the CSV or map them in params.yaml, e.g. data.columns: {gt_answer: answer}"
        )
    for optional in set(COLUMNS) - set(required):
        if optional not in table.columns:
            table[optional] = {"has_image": "True", "dataset": csv.stem}.get(optional, "")

    duplicated = table[table.question_id.duplicated(keep=False)]
    if len(duplicated):
        raise DatasetError(
            f"{csv}: " + _problem_list("duplicate question_id", duplicated, "give every question a unique id")
        )

    with_image = table.has_image.str.lower().isin(["true", "1", "yes"])
    if not with_image.all():
        log.info("%s: leaving out %d rows whose has_image is false", csv, int((~with_image).sum()))
    table = table[with_image].copy()
    cells = table.image_name.map(embedded_image)  # parquet and Arrow cells may hold the image's bytes
    table["image_bytes"] = [data for _, data in cells]
    table["image_name"] = [  # an embedded image without a name is named by its content
        name if name or data is None else hashlib.sha256(data).hexdigest() for name, data in cells
    ]
    table["image_path"] = [
        "" if data is not None else str(images_dir / name)  # embedded images get their path when sampled
        for name, data in zip(table.image_name, table.image_bytes, strict=True)
    ]
    table["is_relational"] = table.is_relational.str.lower().isin(["true", "1", "yes"])
    repaired = table.gt_answer.map(repair_ground_truth)
    table["gt_answer"] = [answer for answer, _ in repaired]
    table["gt_repaired"] = [flag for _, flag in repaired]

    image_problems = pd.Series(
        [
            image_file_problem(Path(path)) if data is None else embedded_image_problem(data)
            for path, data in zip(table.image_path, table.image_bytes, strict=True)
        ],
        index=table.index,
        dtype=str,
    )
    empty = table.question.str.strip() == ""
    reasons = image_problems.where(~empty, "empty question")
    invalid = reasons != ""
    if invalid.any() and not drop_invalid:
        problems = []
        if empty.any():
            problems.append(
                _problem_list("empty question", table[empty], "write the question or drop the row")
            )
        for problem in sorted(set(image_problems) - {""}):
            fix = "put the image file itself at that path"
            if problem.startswith("embedded"):
                fix = "replace those rows' image bytes in the dataset, or drop the rows"
            elif problem == NOT_FOUND:
                fix = "set data.images_dir in params.yaml to the folder holding the images, or add the files"
                if "url" in table:  # a benchmark that publishes its images as links
                    fix += f" (download each from its url into {images_dir}: halp downloads nothing)"
            problems.append(
                _problem_list(f"{problem} under {images_dir}", table[image_problems == problem], fix)
            )
        raise DatasetError(
            f"{csv} has invalid rows (set data.drop_invalid: true to leave them out instead):\n"
            + "\n".join(problems)
        )
    return table[~invalid], table[invalid].assign(invalid_reason=reasons[invalid])
