"""A model's probe results in a few numbers: what an experiment is compared by (`dvc exp show`).

The detailed results (every representation, layer and probe, with intervals) stay in metrics/probes/;
the headline gives the best probe of each representation by test AUROC, with its layer, the best output
baseline, the metadata baseline and the hallucination rate, nested under the model's name so that the
columns of several models stay apart.
"""

from __future__ import annotations

import pandas as pd

METADATA = "metadata"  # the baseline that knows only the question's (source, category)
SHORT = {"vision_only": "vf", "vision_token": "vt", "query_token": "qt"}
DIGITS = 4  # what a table column has room for; the detailed metrics keep every digit


def best_probe(
    rows: pd.DataFrame, representation: str | None = None, by: str = "auroc_mean"
) -> pd.Series | None:
    """The (representation, layer, probe) row of highest test AUROC (or `by`: "val_auroc_mean" where the
    choice must not see the test split), of one representation if given; None if there is none."""
    if representation is not None:
        rows = rows[rows.representation == representation]
    return None if rows.empty else rows.loc[rows[by].idxmax()]


def best_output_baseline(report: dict) -> tuple[str, dict]:
    outputs = {name: m for name, m in report["baselines"].items() if name != METADATA}
    name = max(outputs, key=lambda n: outputs[n]["auroc_mean"])
    return name, outputs[name]


def headline(report: dict, rows: pd.DataFrame) -> dict:
    """{model: {hallucination_rate, vf_auroc, vt_auroc, vt_layer, qt_auroc, qt_layer, output_auroc,
    metadata_auroc}}; only the rate (and the sample count) when the labels allowed no probe."""
    numbers: dict = {
        "samples": report["n_samples"],
        "hallucination_rate": round(report["n_hallucinated"] / max(report["n_samples"], 1), DIGITS),
    }
    if report["status"] == "ok":
        for rep, short in SHORT.items():
            if (best := best_probe(rows, rep)) is None:
                continue
            numbers[f"{short}_auroc"] = round(float(best.auroc_mean), DIGITS)
            if rep != "vision_only":
                numbers[f"{short}_layer"] = int(best.layer)
        numbers["output_auroc"] = round(best_output_baseline(report)[1]["auroc_mean"], DIGITS)
        numbers["metadata_auroc"] = round(report["baselines"][METADATA]["auroc_mean"], DIGITS)
    return {report["model"]: numbers}
