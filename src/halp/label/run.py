"""`halp label`: one verdict per extracted answer, manual overrides last, hallucination rates as metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from halp.config import LabelSettings, Params
from halp.data.optional import holds_rows
from halp.data.schema import MAX_LISTED, read_lined_csv
from halp.jsonfile import write_json
from halp.label.judges import Judge, LLMJudge, RatioJudge, RulesJudge, Verdict
from halp.llm import OffFormat
from halp.store import open_finished

log = logging.getLogger(__name__)
TRUE_WORDS = {"1", "true", "yes", "hallucinated"}
FALSE_WORDS = {"0", "false", "no", "correct"}


def make_judge(settings: LabelSettings) -> Judge:
    if settings.judge == "ratio":
        return RatioJudge(settings.ratio_threshold)
    if settings.judge == "llm":
        return LLMJudge.configured(settings.llm)
    return RulesJudge()


def read_verdicts(path: Path, id_column: str, verdict_column: str) -> pd.Series:
    """id -> hallucinated (bool) from a CSV a person may have edited: every cell one of 1/0, true/false,
    yes/no, hallucinated/correct, every id once; the bad rows are named by line."""
    table = read_lined_csv(path)
    missing = {id_column, verdict_column} - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; it needs {id_column}, {verdict_column}")
    words = table[verdict_column].str.strip().str.lower()
    bad = table[~words.isin(TRUE_WORDS | FALSE_WORDS)]
    if len(bad):
        rows = ", ".join(f"line {i} ({v!r})" for i, v in bad[verdict_column].head(10).items())
        raise ValueError(
            f"{path}: {len(bad)} {verdict_column} cell(s) are not 1/0, true/false or yes/no (an empty cell "
            f"is none of them): {rows}"
        )
    repeated = table[table[id_column].duplicated(keep=False)]
    if len(repeated):
        rows = ", ".join(f"line {i} ({v})" for i, v in repeated[id_column].head(10).items())
        raise ValueError(
            f"{path}: {repeated[id_column].nunique()} {id_column}(s) appear more than once: {rows}; "
            "keep one row each"
        )
    return pd.Series(words.isin(TRUE_WORDS).to_numpy(), index=table[id_column].to_numpy())


def read_overrides(path: Path | None) -> pd.Series | None:
    """question_id -> hallucinated (bool) from a reviewed CSV with columns question_id, label; None for
    a CSV without rows."""
    return read_verdicts(path, "question_id", "label") if holds_rows(path, "label.overrides") else None


def label_answers(
    meta: pd.DataFrame, judge: Judge, judge_name: str, overrides: pd.Series | None
) -> pd.DataFrame:
    """One verdict per answer; an overridden answer is not judged. A reply of the LLM judge that holds no
    verdict is that answer's error: every other answer is judged (and its reply kept) before the errors
    stop the stage, so that a rerun asks about those answers only."""
    overrides = pd.Series(dtype=bool) if overrides is None else overrides
    if unknown := sorted(set(overrides.index) - set(meta.sample_id)):
        log.warning("%d overrides name samples not extracted here, e.g. %s", len(unknown), unknown[:3])
    verdicts, errors = [], {}
    for r in tqdm(meta.itertuples(), total=len(meta), desc=f"label ({judge_name})", unit="answer"):
        if r.sample_id in overrides.index:
            verdicts.append(Verdict(bool(overrides[r.sample_id]), "manual override"))
            continue
        try:
            verdicts.append(judge(r.question, r.answer, r.ground_truth, r.category))
        except OffFormat as err:
            errors[r.sample_id] = str(err)
            log.warning("%s: %s", r.sample_id, err)
    if errors:
        listed = "\n".join(f"  - {sample}: {error}" for sample, error in list(errors.items())[:MAX_LISTED])
        raise ValueError(
            f"{len(errors)} of {len(meta)} answers got a reply with no verdict in it:\n{listed}\nThe replies "
            "read are kept, so running again asks about these answers only. Fix the judge (its model or "
            "label.llm.prompt), or give these answers a label in label.overrides"
        )
    overridden = meta.sample_id.isin(overrides.index).to_numpy()
    return pd.DataFrame(
        {
            "sample_id": meta.sample_id,
            "image_id": meta.image_id,
            "category": meta.category,
            "hallucinated": [v.hallucinated for v in verdicts],
            "judge": np.where(overridden, "manual", judge_name),
            "reason": [v.reason for v in verdicts],
        }
    )


def rates(labels: pd.DataFrame) -> dict:
    return {
        "n_samples": len(labels),
        "n_hallucinated": int(labels.hallucinated.sum()),
        "hallucination_rate": float(labels.hallucinated.mean()) if len(labels) else 0.0,
        "per_category": {
            category: {"n_samples": len(group), "hallucination_rate": float(group.hallucinated.mean())}
            for category, group in labels.groupby("category")
        },
    }


def label_model(params: Params, model_name: str, allow_incomplete: bool = False) -> Path:
    params.model(model_name)
    settings = params.label
    meta = open_finished(params.extract.out_dir / model_name, allow_incomplete).meta
    overrides = read_overrides(settings.overrides)
    labels = label_answers(meta, make_judge(settings), settings.judge, overrides)
    out = settings.out_dir / f"{model_name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    labels.to_csv(out, index=False, lineterminator="\n")
    metrics = settings.metrics_dir / f"{model_name}.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics, rates(labels))
    log.info(
        "%s: %d of %d answers hallucinated -> %s", model_name, labels.hallucinated.sum(), len(labels), out
    )
    return out
