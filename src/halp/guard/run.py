"""`halp guard`: a saved guard on one question, or on a CSV in HALP's schema, row by row into an output
CSV that a killed run resumes (each batch is appended and flushed as it finishes; a rerun skips the
question ids the file holds)."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from halp.config import Params
from halp.data.images import load_image
from halp.data.schema import read_dataset
from halp.guard.guard import Guard

log = logging.getLogger(__name__)
FIELDS = ["question_id", "risk", "flagged", "answer", "error"]


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


def _finished_ids(out: Path) -> set[str]:
    """Question ids the output already holds; a last line cut off by a kill is dropped first."""
    if not out.is_file():
        return set()
    text = out.read_text(encoding="utf-8")
    whole = text[: text.rfind("\n") + 1]
    if whole != text:
        out.write_text(whole, encoding="utf-8")
    if not whole.strip():
        return set()
    return set(pd.read_csv(io.StringIO(whole), dtype=str, keep_default_na=False).question_id)


def assess_csv(
    guard: Guard, params: Params, source: Path, out: Path, abstain: bool, batch_size: int
) -> tuple[int, int]:
    """Every row of `source` into `out`; returns (rows assessed now, rows with an error). A row whose
    image is missing or broken, or whose question is empty, is written with its error and logged by CSV
    line; the run goes on."""
    valid, rejected = read_dataset(source, params.data.images_dir, params.data.columns, drop_invalid=True)
    ids = pd.read_csv(source, dtype=str, keep_default_na=False)[
        params.data.columns.get("question_id", "question_id")
    ]
    line = {question_id: i + 2 for i, question_id in enumerate(ids)}
    done = _finished_ids(out)
    todo = valid[~valid.question_id.isin(done)]
    errors = [
        {"question_id": row.question_id, "error": row.invalid_reason}
        for row in rejected.itertuples()
        if row.question_id not in done
    ]
    if done:
        log.info("%s: %d rows already assessed, %d to go", out, len(done), len(todo) + len(errors))
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.is_file() or out.stat().st_size == 0
    with out.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new_file:
            writer.writeheader()

        def write(rows: list[dict]) -> None:
            for row in rows:
                if row.get("error"):
                    log.warning(
                        "CSV line %d (%r): %s", line[row["question_id"]], row["question_id"], row["error"]
                    )
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())

        write(errors)
        failed = len(errors)
        with tqdm(total=len(todo), desc=f"guard {guard.card['model']}", unit="question") as progress:
            for start in range(0, len(todo), batch_size):
                batch = todo.iloc[start : start + batch_size]
                rows, images, questions = [], [], []
                for row in batch.itertuples():
                    try:
                        images.append(load_image(row.image_path))
                        questions.append(row.question)
                        rows.append({"question_id": row.question_id})
                    except (OSError, ValueError) as err:
                        write([{"question_id": row.question_id, "error": str(err)}])
                        failed += 1
                if images:
                    for row, result in zip(
                        rows, guard.assess(images, questions, abstain=abstain), strict=True
                    ):
                        row |= {
                            "risk": f"{result.risk:.6f}",
                            "flagged": result.flagged,
                            "answer": result.answer,
                        }
                    write(rows)
                progress.update(len(batch))
    return len(todo) + len(errors), failed
