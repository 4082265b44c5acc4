"""Hallucination benchmarks read from the files their authors publish, into HALP's schema.

Each reader gives the rows as `read_dataset` validates them (question_id, image_name, question, gt_answer,
category, dataset, is_relational), indexed by where each row sits ("coco_pope_random.json line 7"), so a
message names the place to fix. `dataset` and `category` come from the benchmark's own fields: stratified
sampling, the metadata baseline, the judges and the transfer runs see them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from halp.data.schema import MAX_LISTED, DatasetError, canonical_category, read_lined_csv

POPE_FIELDS = ("question_id", "image", "text", "label")
HALOQUEST_COLUMNS = ("image_name", "url", "question", "groundtruth responses", "hallucination type", "split")
HALOQUEST_TYPES = ("false_premise", "insufficient_context", "visual_challenge")


def benchmark_files(path: Path, pattern: str, what: str) -> list[Path]:
    """`path` itself, or the files in the folder `path` whose names match `pattern`, sorted."""
    if path.is_file():
        return [path]
    found = sorted(path.glob(pattern)) if path.is_dir() else []
    if not found:
        where = f"the folder {path} holds no {pattern}" if path.is_dir() else f"{path} does not exist"
        raise DatasetError(f"{where}: set data.source in params.yaml to {what}")
    return found


def _stop_on(problems: list[str], source: str, fix: str) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        raise DatasetError(f"{source}: {len(problems)} problem(s):\n{listed}{more}\n  fix: {fix}")


def _repeated_ids(table: pd.DataFrame, ids: pd.Series) -> list[str]:
    """A problem per id that more than one row holds, naming each of its places."""
    places = pd.Series(table.index, index=ids.to_numpy())
    return [
        f"id {key} appears {len(where)} times: {', '.join(map(str, where))}"
        for key, where in places.groupby(level=0).agg(list).items()
        if len(where) > 1
    ]


def _schema_rows(table: pd.DataFrame) -> pd.DataFrame:
    """HALP's columns from a reader's: no description, every row with its image, none relational."""
    return table.astype(str).assign(description="", has_image="True", is_relational="False")


def read_pope(path: Path) -> pd.DataFrame:
    """POPE's `coco_pope_{random,popular,adversarial}.json`: JSON Lines despite the extension, one object
    {question_id, image, text, label} per line. The file name gives the dataset ("coco_pope") and the
    category (the split: "random"); question ids restart in every file, so an id is file/question_id."""
    records, places, problems = [], [], []
    for file in benchmark_files(path, "*pope_*.json", "a POPE file (coco_pope_random.json) or their folder"):
        dataset, _, split = file.stem.rpartition("_")
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                where = f"{file.name} line {number}"
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as err:
                    problems.append(f"{where}: not a JSON object ({err.msg}, column {err.colno})")
                    continue
                if not isinstance(item, dict) or (missing := [f for f in POPE_FIELDS if f not in item]):
                    lacks = "is not an object" if not isinstance(item, dict) else f"lacks {missing}"
                    problems.append(f"{where}: {lacks}; a POPE line holds {', '.join(POPE_FIELDS)}")
                    continue
                if (label := str(item["label"]).strip().lower()) not in ("yes", "no"):
                    problems.append(f"{where}: label {item['label']!r} is neither yes nor no")
                    continue
                places.append(where)
                records.append(
                    {
                        "question_id": f"{file.stem}/{item['question_id']}",
                        "image_name": item["image"],
                        "question": item["text"],
                        "gt_answer": label,
                        "category": split,
                        "dataset": dataset or "pope",
                    }
                )
    _stop_on(
        problems, str(path), "correct or remove those lines (each line of a POPE file is one JSON object)"
    )
    table = _schema_rows(pd.DataFrame.from_records(records, index=places))
    _stop_on(_repeated_ids(table, table.question_id), str(path), "give each question of a file one id")
    return table


def read_haloquest(path: Path) -> pd.DataFrame:
    """HaloQuest's `haloquest-{train,eval}.csv`: an unnamed first column (the row's id in its file),
    image_name, url, image type, hallucination type, question, groundtruth responses (the accepted answers
    joined by ";"), split. The category is the hallucination type (false premises, insufficient context,
    visual challenge); the question id is file/first column."""
    tables = []
    for file in benchmark_files(path, "haloquest-*.csv", "haloquest-eval.csv or the folder holding it"):
        table = read_lined_csv(file)
        first = table.columns[0]
        if missing := [c for c in HALOQUEST_COLUMNS if c not in table.columns]:
            raise DatasetError(
                f"{file} lacks HaloQuest's column(s) {missing}; it has {list(table.columns)}. "
                "Use the file as published (haloquest-train.csv, haloquest-eval.csv)"
            )
        if first in HALOQUEST_COLUMNS:
            raise DatasetError(f"{file}: the first column should be the unnamed row id; it is {first!r}")
        category = table["hallucination type"].map(canonical_category)
        unknown = table[~category.isin(HALOQUEST_TYPES)]
        problems = [f"line {i}: hallucination type {t!r}" for i, t in unknown["hallucination type"].items()]
        empty = table[table["groundtruth responses"].str.strip() == ""]
        problems += [f"line {i}: no groundtruth response" for i in empty.index]
        _stop_on(
            problems,
            str(file),
            "hallucination types are false premises, insufficient context or visual "
            "challenge, and every question needs at least one accepted answer",
        )
        rows = pd.DataFrame(
            {
                "question_id": f"{file.stem}/" + table[first],
                "image_name": table.image_name,
                "question": table.question,
                "gt_answer": table["groundtruth responses"],
                "category": category,
                "dataset": "haloquest",
                "url": table.url,
            }
        )
        tables.append(_schema_rows(rows).set_axis([f"{file.name} line {i}" for i in table.index]))
    table = pd.concat(tables)
    _stop_on(_repeated_ids(table, table.question_id), str(path), "give each row of a file its own id")
    return table


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {"pope": read_pope, "haloquest": read_haloquest}
