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
import pyarrow as pa
import pyarrow.parquet as pq

from halp.data.schema import MAX_LISTED, DatasetError, canonical_category, read_lined_csv

POPE_FIELDS = ("question_id", "image", "text", "label")
HALOQUEST_COLUMNS = ("image_name", "url", "question", "groundtruth responses", "hallucination type", "split")
HALOQUEST_TYPES = ("false_premise", "insufficient_context", "visual_challenge")
AMBER_QUERY_FIELDS = ("id", "image", "query")
AMBER_WHERE = (
    "AMBER's query file (data/query/query_all.json), or the folder holding query/ and annotations.json"
)


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


def _field_problem(item: object, fields: tuple[str, ...], what: str) -> str:
    """Why `item` is no JSON object holding `fields` ("" when it is one)."""
    if not isinstance(item, dict):
        return f"is not an object; {what} holds {', '.join(fields)}"
    missing = [f for f in fields if f not in item]
    return f"lacks {missing}; {what} holds {', '.join(fields)}" if missing else ""


def _schema_rows(table: pd.DataFrame) -> pd.DataFrame:
    """HALP's columns from a reader's: no description, every row with its image, none relational."""
    return table.astype(str).assign(description="", has_image="True", is_relational="False")


def read_table_file(file: Path) -> tuple[pd.DataFrame, str]:
    """A parquet, Arrow (`save_to_disk`'s stream files) or JSON Lines file as a table, and what its rows
    are called in messages ("row", or "line" for JSON Lines). Image cells stay as read: dicts of bytes."""
    try:
        if file.suffix == ".jsonl":
            return pd.read_json(file, lines=True, dtype=False), "line"
        if file.suffix == ".arrow":
            with pa.memory_map(str(file)) as source:
                return pa.ipc.open_stream(source).read_all().to_pandas(), "row"
        return pq.read_table(file).to_pandas(), "row"
    except (ValueError, OSError, pa.ArrowException) as err:
        raise DatasetError(f"{file} cannot be read as {file.suffix[1:]}: {err}") from err


def _placed(table: pd.DataFrame, file: Path, row: str) -> pd.DataFrame:
    return table.set_axis([f"{file.name} {row} {i}" for i in range(1, len(table) + 1)])


def _read_pope_parquet(files: list[Path]) -> pd.DataFrame:
    """POPE as published on the Hugging Face hub: parquet with id, question_id, question, answer,
    image_source, image (the bytes inside), category; the dataset is "pope"."""
    tables = []
    for file in files:
        table, row = read_table_file(file)
        fields = ("question_id", "question", "answer", "image_source", "image", "category")
        if missing := [f for f in fields if f not in table.columns]:
            raise DatasetError(f"{file} lacks POPE's column(s) {missing}; it has {list(table.columns)}")
        table = _placed(table, file, row)
        answers = table.answer.astype(str).str.strip().str.lower()
        bad = [f"{where}: answer {value!r} is neither yes nor no" for where, value in answers.items()
               if value not in ("yes", "no")]  # fmt: skip
        _stop_on(bad, str(file), "POPE's answers are yes or no")
        images = [
            cell if not isinstance(cell, dict) or cell.get("path") else cell | {"path": source}
            for cell, source in zip(table.image, table.image_source.astype(str), strict=True)
        ]  # named by image_source when the cell holds no name: the probe's splits group by it
        rows = pd.DataFrame(
            {
                "question_id": "pope/" + table.category.astype(str) + "/" + table.question_id.astype(str),
                "question": table.question.astype(str),
                "gt_answer": answers,
                "category": table.category.astype(str),
                "dataset": "pope",
            },
            index=table.index,
        )
        tables.append(_schema_rows(rows).assign(image_name=images))
    return pd.concat(tables)


def read_pope(path: Path) -> pd.DataFrame:
    """POPE's `coco_pope_{random,popular,adversarial}.json`: JSON Lines despite the extension, one object
    {question_id, image, text, label} per line. The file name gives the dataset ("coco_pope") and the
    category (the split: "random"); question ids restart in every file, so an id is file/question_id.
    Parquet files (the hub's release, images inside) are read by `_read_pope_parquet`."""
    parquet = (
        [path] if path.suffix == ".parquet" else sorted(path.rglob("*.parquet")) if path.is_dir() else []
    )
    if parquet:
        table = _read_pope_parquet(parquet)
        _stop_on(_repeated_ids(table, table.question_id), str(path), "give each question one id")
        return table
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
                if problem := _field_problem(item, POPE_FIELDS, "a POPE line"):
                    problems.append(f"{where}: {problem}")
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


def _json_array(file: Path) -> list:
    if not file.is_file():
        raise DatasetError(f"{file} not found: set data.source in params.yaml to {AMBER_WHERE}")
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{file} line {err.lineno} column {err.colno}: not JSON ({err.msg})") from err
    if not isinstance(items, list):
        raise DatasetError(f"{file} holds a JSON {type(items).__name__}; AMBER's files hold an array")
    return items


def _amber_truth(annotation: dict) -> str | None:
    """The ground truth of one annotation: yes/no for a discriminative item; for a generative one, its
    objects in the image (truth) and those not in it (hallu) as JSON, which the rules judge reads. None
    when the annotation holds neither."""
    truth, hallu = annotation.get("truth"), annotation.get("hallu")
    if annotation.get("type") == "generative":
        both_lists = isinstance(truth, list) and isinstance(hallu, list)
        return json.dumps({"truth": truth, "hallu": hallu}) if both_lists else None
    return str(truth).strip().lower() if str(truth).strip().lower() in ("yes", "no") else None


def read_amber(path: Path) -> pd.DataFrame:
    """AMBER: a query file (a JSON array of {id, image, query}; `query/query_all.json` when `path` is the
    data folder) and `annotations.json` beside the query folder, an array in which item id - 1 is
    {id, type, truth, hallu}. Generative items (ids 1-1004) are judged by the objects an answer names;
    discriminative ones hold yes/no in `truth`, and their `type` is the category."""
    query = path / "query" / "query_all.json" if path.is_dir() else path
    queries = _json_array(query)
    annotations = _json_array(query.parent.parent / "annotations.json")
    records, places, problems = [], [], []
    for position, item in enumerate(queries, start=1):
        where = f"{query.name} item {position}"
        if problem := _field_problem(item, AMBER_QUERY_FIELDS, "a query"):
            problems.append(f"{where}: {problem}")
            continue
        key = item["id"]
        found = annotations[key - 1] if isinstance(key, int) and 0 < key <= len(annotations) else None
        if not isinstance(found, dict) or found.get("id") != key:
            problems.append(f"{where}: id {key!r} has no annotation (annotations.json item {key!r})")
            continue
        if (truth := _amber_truth(found)) is None:
            problems.append(
                f"{where}: annotation {key} ({found.get('type')!r}) holds neither yes/no nor object lists"
            )
            continue
        places.append(f"{where} (id {key})")
        records.append(
            {
                "question_id": f"amber/{key}",
                "image_name": item["image"],
                "question": item["query"],
                "gt_answer": truth,
                "category": canonical_category(str(found.get("type"))),
                "dataset": "amber",
            }
        )
    _stop_on(problems, str(query), "use AMBER's query and annotation files as published")
    table = _schema_rows(pd.DataFrame.from_records(records, index=places))
    _stop_on(_repeated_ids(table, table.question_id), str(query), "list each query once")
    return table


def read_hf(path: Path) -> pd.DataFrame:
    """A Hugging Face dataset on disk: a `save_to_disk` folder (its Arrow files, every split), parquet
    files or JSON Lines, a file or a folder of them. Columns keep their names (`data.columns` maps them
    to HALP's); an image column may hold paths or the images' bytes."""
    if path.is_file():
        files = [path]
    else:
        found = {
            kind: sorted(path.rglob(f"*.{kind}")) if path.is_dir() else []
            for kind in ("arrow", "parquet", "jsonl")
        }
        files = found["arrow"] or found["parquet"] or found["jsonl"]
        if not files:
            raise DatasetError(
                f"{path} holds no .arrow, .parquet or .jsonl file: set data.source in params.yaml to a "
                "save_to_disk folder, or to parquet or JSON Lines files or their folder"
            )
    tables = []
    for file in files:
        table, row = read_table_file(file)
        text = [c for c in table.columns if not table[c].map(lambda v: isinstance(v, dict | bytes)).any()]
        table[text] = table[text].fillna("").astype(str)
        tables.append(_placed(table, file, row))
    return pd.concat(tables)


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "hf": read_hf,
    "pope": read_pope,
    "haloquest": read_haloquest,
    "amber": read_amber,
}
