"""Selective answering, evaluated: answer the questions a score ranks least risky, refuse the rest, and
read the hallucination rate among the answered against the share answered (the risk-coverage curve).

Scores are the probe grid's out-of-fold test scores; each test fold is ranked on its own (one fold's
scores come from one fitted probe), and fold results are averaged, with a 95% interval pooling every
fold's bootstrap, as the AUROCs are. A score's ties are answered together in expectation (a tied group's
hallucination rate is spread over it), so a score with few values (the metadata baseline) is not
flattered by the order its ties happen to fall in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from halp.probe.headline import METADATA, REPRESENTATIONS, best_probe, cell_name

GRID = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # coverages the curves are drawn at
AT = 0.8  # the coverage a single number is quoted at


def _cumulative_risk(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Hallucination rate among the k least risky answers, k = 1..n, ties spread evenly, for each row of
    y and s ([curves, n]): a bootstrap's curves all at once (one pandas group-by per curve was a third of
    the probe stage)."""
    order = np.argsort(s, axis=1, kind="stable")
    ordered_y, ordered_s = np.take_along_axis(y, order, 1).astype(np.float64), np.take_along_axis(s, order, 1)
    starts = np.ones_like(ordered_s, dtype=bool)
    starts[:, 1:] = ordered_s[:, 1:] != ordered_s[:, :-1]
    ties = np.cumsum(starts.ravel()) - 1  # one id per run of equal scores, numbered across rows
    spread = (np.bincount(ties, ordered_y.ravel()) / np.bincount(ties))[ties].reshape(ordered_y.shape)
    return np.cumsum(spread, axis=1) / np.arange(1, y.shape[1] + 1)


def _at(risk: np.ndarray, coverage: float) -> float:
    """The hallucination rate among the answered when a `coverage` share is answered."""
    return float(risk[max(int(np.ceil(coverage * len(risk))) - 1, 0)])


def risk_coverage(scores: pd.DataFrame, column: str, bootstrap: int, seed: int = 0) -> dict:
    """AURC and the hallucination rate at 80% coverage (mean over folds, 95% interval) and the mean curve,
    for one score column of the test-score table (higher = riskier)."""
    aurcs, rates, curves, boot_aurc, boot_rate = [], [], [], [], []
    rng = np.random.default_rng(seed)
    for _, fold in scores[scores.fold >= 0].groupby("fold"):
        y, s = fold.hallucinated.to_numpy(), fold[column].to_numpy(np.float64)
        risk = _cumulative_risk(y[None], s[None])[0]
        aurcs.append(risk.mean()), rates.append(_at(risk, AT)), curves.append([_at(risk, c) for c in GRID])
        rows = rng.integers(0, len(y), size=(bootstrap, len(y)))  # the curve is not resampled
        resampled = _cumulative_risk(y[rows], s[rows])
        boot_aurc += [curve.mean() for curve in resampled]
        boot_rate += [_at(curve, AT) for curve in resampled]
    pooled = {"aurc": boot_aurc or aurcs, "rate": boot_rate or rates}
    return {
        "aurc": float(np.mean(aurcs)),
        "aurc_ci_low": float(np.percentile(pooled["aurc"], 2.5)),
        "aurc_ci_high": float(np.percentile(pooled["aurc"], 97.5)),
        "rate_at_80": float(np.mean(rates)),
        "rate_at_80_ci_low": float(np.percentile(pooled["rate"], 2.5)),
        "rate_at_80_ci_high": float(np.percentile(pooled["rate"], 97.5)),
        "curve": np.mean(curves, axis=0).tolist(),
    }


BASELINES = ("first_token_entropy", "first_token_max_prob", METADATA)


def evaluate(rows: pd.DataFrame, scores: pd.DataFrame, bootstrap: int) -> dict:
    """{key: {label, aurc..., rate_at_80..., curve}} for the probe chosen by validation AUROC overall (what
    `halp guard-fit` saves; key "guard"), the one of each representation, and the output and metadata
    baselines: what the report's abstention section shows. `rows` is the grid's
    table, `scores` the test-score table (a column per probe, `score_column`, and per baseline)."""
    guard = best_probe(rows)
    candidates = {"guard": (f"guard: {probe_label(guard)}", score_column(guard))}  # key: the plot's column
    for rep in REPRESENTATIONS:
        if (best := best_probe(rows, rep)) is not None:
            candidates[rep] = (probe_label(best), score_column(best))
    candidates |= {name: (name, name) for name in BASELINES if name in scores}
    evaluated = {
        key: {"label": label} | risk_coverage(scores, column, bootstrap)
        for key, (label, column) in candidates.items()
    }
    return {
        "answering_all": float(scores[scores.fold >= 0].hallucinated.mean()),
        "coverages": GRID.tolist(),
    } | {"scores": evaluated}


def score_column(row: dict | pd.Series) -> str:
    """A probe's column in the test-score table: representation/layer/probe (layer "pooled" for VF)."""
    layer = "pooled" if row["layer"] is None or pd.isna(row["layer"]) else int(row["layer"])
    return f"{row['representation']}/{layer}/{row['probe']}"


def probe_label(row: pd.Series) -> str:
    """A grid row as people read it: "query_token L0 mlp", "VF logistic"."""
    return f"{cell_name(row)} {row.probe}"
