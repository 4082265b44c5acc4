"""A model's probe results in a few numbers: what an experiment is compared by (`dvc exp show`).

The detailed results (every representation, layer and probe, with intervals) stay in metrics/probes/;
the headline gives each representation's probe chosen by validation AUROC, with its layer and test AUROC,
the output baseline chosen the same way, the metadata baseline and the hallucination rate, nested under the
model's name so that the columns of several models stay apart.

Every choice here sees the validation splits only. Chosen by test AUROC, a headline would report the
largest of a dozen noisy estimates of often similar cells: optimistic, and on cells within noise of each
other not even the same cell on two CPUs.
"""

from __future__ import annotations

from typing import get_args

import pandas as pd

from halp.config import Representation

METADATA = "metadata"  # the baseline that knows only the question's (source, category)
# Every representation the grid probes, in order (the settings validate names against the same list).
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
# The headline's cells, few enough for `dvc exp show` on one screen: each chosen on validation among its
# representations (VT and QT with their layer); the rest is in metrics/probes/.
HEADLINE = {
    "vf": ("vision_only",),
    "vt": ("vision_token",),
    "qt": ("query_token",),
    "ia": ("image_attention", "image_attention_all"),
}
UNLAYERED = ("vision_only", "image_attention_all")  # one cell each, no decoder block of their own
LABEL = {"vision_only": "VF", "image_attention_all": "image attention, all layers"}
DIGITS = 4  # what a table column has room for; the detailed metrics keep every digit


CHOOSE_BY = "val_auroc_mean"  # what chooses a probe or a baseline; its test AUROC is what gets reported


def best_probe(
    rows: pd.DataFrame, representation: str | None = None, by: str = CHOOSE_BY
) -> pd.Series | None:
    """The (representation, layer, probe) row of highest validation AUROC (or `by`), of one representation
    if given; None if there is none."""
    if representation is not None:
        rows = rows[rows.representation == representation]
    return None if rows.empty else rows.loc[rows[by].idxmax()]


def cell_layer(row: pd.Series) -> int | None:
    """A grid row's decoder block; None for a representation of no one block (VF, all layers' attention)."""
    return None if pd.isna(row.layer) else int(row.layer)


def cell_name(row: pd.Series) -> str:
    """Where a grid row reads, as people say it: "VF", "query_token L2"."""
    return LABEL[row.representation] if pd.isna(row.layer) else f"{row.representation} L{int(row.layer)}"


def best_output_baseline(report: dict) -> tuple[str, dict]:
    outputs = {name: m for name, m in report["baselines"].items() if name != METADATA}
    name = max(outputs, key=lambda n: outputs[n][CHOOSE_BY])
    return name, outputs[name]


def headline(report: dict, rows: pd.DataFrame) -> dict:
    """{model: {hallucination_rate, vf_auroc, vt_auroc, vt_layer, qt_auroc, qt_layer, (with image attention:
    ia_auroc,) output_auroc, metadata_auroc}}, test AUROCs of the cells chosen on validation; only the rate
    (and the sample count) when the labels allowed no probe."""
    numbers: dict = {
        "samples": report["n_samples"],
        "hallucination_rate": round(report["n_hallucinated"] / max(report["n_samples"], 1), DIGITS),
    }
    if report["status"] == "ok":
        for short, representations in HEADLINE.items():
            if (best := best_probe(rows[rows.representation.isin(representations)])) is None:
                continue
            numbers[f"{short}_auroc"] = round(float(best.auroc_mean), DIGITS)
            if short in ("vt", "qt"):
                numbers[f"{short}_layer"] = int(best.layer)
        numbers["output_auroc"] = round(best_output_baseline(report)[1]["auroc_mean"], DIGITS)
        numbers["metadata_auroc"] = round(report["baselines"][METADATA]["auroc_mean"], DIGITS)
    return {report["model"]: numbers}
