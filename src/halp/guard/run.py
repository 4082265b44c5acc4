"""`halp guard`: a saved guard on one question, or on a CSV in HALP's schema, row by row into an output
CSV that a killed run resumes (each batch is appended and flushed as it finishes; a rerun skips the
question ids the file holds)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from halp.config import ConfigError, Params
from halp.data.images import load_image
from halp.data.schema import read_dataset
from halp.guard.guard import SEAL, Guard
from halp.store.parts import write_atomically, writing_output

log = logging.getLogger(__name__)
FIELDS = ["question_id", "risk", "flagged", "answer", "error"]
QUESTION_COLUMNS = ("question_id", "image_name", "question")  # a question to assess needs no ground truth
SETTINGS = ".settings.json"  # beside the output: what its rows were assessed with


def load_guard(params: Params, model_name: str, coverage: float) -> Guard:
    """The guard `halp guard-fit` saved for `model_name`, on that name's model in params.yaml."""
    return Guard.load(params.guard.out_dir / model_name, params.model(model_name).model, coverage=coverage)


def assess_question(guard: Guard, image: Path, question: str, abstain: bool) -> str:
    if not question.strip():
        raise ValueError("the question is empty: pass --question TEXT")
    (result,) = guard.assess([load_image(str(image))], [question], abstain=abstain)
    answer = "(abstained)" if result.answer is None else result.answer
    verdict = "flagged" if result.flagged else "not flagged"
    return f"risk {result.risk:.3f} ({verdict} at threshold {guard.threshold:.3f})\nanswer: {answer}"


@dataclass
class Questions:
    """A CSV's questions, validated before any weights load: the valid rows, the rejected ones with their
    reason, and each question id's line in the file (for messages)."""

    valid: pd.DataFrame
    rejected: pd.DataFrame
    line: dict[str, int]


def read_questions(params: Params, source: Path, out: Path, batch_size: int) -> Questions:
    """The questions to assess; a bad option, an output that is not a guard's, or a CSV without the
    columns a question needs stops here, before minutes of loading."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    if out.resolve() == source.resolve():
        raise ConfigError(f"--out {out} is the input CSV: name a new file for the results")
    header = ",".join(FIELDS)
    if out.is_file() and out.stat().st_size and (found := _first_line(out)) != header:
        raise ConfigError(
            f"--out {out} is not a guard's output (its header is {found!r}, not {header!r}): "
            "name a new file, or the file a previous `halp guard --csv` run wrote"
        )
    valid, rejected = read_dataset(
        source, params.data.images_dir, params.data.columns, drop_invalid=True, required=QUESTION_COLUMNS
    )
    lines = pd.concat([valid.question_id, rejected.question_id])
    return Questions(valid, rejected, dict(zip(lines, lines.index, strict=True)))


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8") as handle:
        return handle.readline().strip()


def run_settings(guard: Guard, coverage: float, abstain: bool) -> dict:
    """What decides an output's rows: the guard (its card's seal, a digest of weights and card), the
    coverage whose threshold flags, and abstention. A resume must keep them, or one file would mix two
    kinds of row."""
    return {"guard": guard.card[SEAL], "coverage": coverage, "abstain": abstain}


def _resume(out: Path, settings: dict) -> set[str]:
    """Question ids the output already holds without an error. A last line cut off by a kill is dropped,
    and rows with an error are removed (atomically) so that they are tried again."""
    recorded = out.with_name(out.name + SETTINGS)
    if not out.is_file() or not out.stat().st_size:
        recorded.write_text(json.dumps(settings, indent=1) + "\n")
        return set()
    before = json.loads(recorded.read_text()) if recorded.is_file() else None
    if before != settings:
        raise ConfigError(
            f"{out} was begun with other settings ({before or f'none recorded in {recorded.name}'}) than "
            f"this run's ({settings}): its rows would mix two guards or thresholds. Resume with the same "
            "--coverage, --abstain and guard, or name a new --out"
        )
    text = out.read_text(encoding="utf-8")
    rows = pd.read_csv(io.StringIO(text[: text.rfind("\n") + 1]), dtype=str, keep_default_na=False)
    kept = rows[rows.error == ""]
    if len(kept) < len(rows) or not text.endswith("\n"):
        if len(kept) < len(rows):
            log.info("%s: %d rows with an error are tried again", out, len(rows) - len(kept))
        write_atomically(out, kept.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return set(kept.question_id)


def assess_csv(
    guard: Guard, questions: Questions, out: Path, settings: dict, batch_size: int
) -> tuple[int, int]:
    """Every question into `out` under its lock; returns (rows assessed now, rows with an error). A row
    whose image is missing or broken, whose question is empty, or that the processor refuses, is written
    with its error and logged by CSV line; the run goes on, and a rerun tries those rows again. A disk that
    is full or read-only stops the run with one message; every row written stays."""
    with writing_output(out, "every row written is kept, and the rerun goes on from there"):
        return _assess_into(guard, questions, out, settings, batch_size)


def _assess_into(
    guard: Guard, questions: Questions, out: Path, settings: dict, batch_size: int
) -> tuple[int, int]:
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out, settings)
    todo = questions.valid[~questions.valid.question_id.isin(done)]
    errors = [
        {"question_id": row.question_id, "error": row.invalid_reason}
        for row in questions.rejected.itertuples()
        if row.question_id not in done
    ]
    if done:
        log.info("%s: %d rows already assessed, %d to go", out, len(done), len(todo) + len(errors))
    new_file = not out.is_file() or out.stat().st_size == 0
    with out.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new_file:
            writer.writeheader()

        def write(rows: list[dict]) -> None:
            for row in rows:
                if row.get("error"):
                    line = questions.line.get(row["question_id"], "?")
                    log.warning("CSV line %s (%r): %s", line, row["question_id"], row["error"])
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())

        write(errors)
        failed = len(errors)
        with tqdm(total=len(todo), desc=f"guard {guard.card['model']}", unit="question") as progress:
            for start in range(0, len(todo), batch_size):
                batch = todo.iloc[start : start + batch_size]
                rows, images, texts = [], [], []
                for row in batch.itertuples():
                    try:
                        images.append(load_image(row.image_path))
                        texts.append(row.question)
                        rows.append({"question_id": row.question_id})
                    except (OSError, ValueError) as err:
                        write([{"question_id": row.question_id, "error": str(err)}])
                        failed += 1
                assessed = _assessed(guard, rows, images, texts, settings["abstain"])
                write(assessed)
                failed += sum(1 for row in assessed if row.get("error"))
                progress.update(len(batch))
    return len(todo) + len(errors), failed


def _assessed(guard: Guard, rows: list[dict], images: list, texts: list[str], abstain: bool) -> list[dict]:
    """The rows with their risk, flag and answer; a batch the processor or model refuses (one image of an
    odd shape) is retried one row at a time, so only the row at fault gets the error."""
    if not rows:
        return []
    try:
        results = guard.assess(images, texts, abstain=abstain)
    except (ValueError, RuntimeError) as err:
        if len(rows) == 1:
            return [rows[0] | {"error": f"{type(err).__name__}: {err}"}]
        return [
            row
            for i in range(len(rows))
            for row in _assessed(guard, rows[i : i + 1], images[i : i + 1], texts[i : i + 1], abstain)
        ]
    return [
        row | {"risk": f"{result.risk:.6f}", "flagged": result.flagged, "answer": result.answer}
        for row, result in zip(rows, results, strict=True)
    ]
