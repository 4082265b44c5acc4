"""Scores to numbers: AUROC with bootstrap intervals, AUPRC, and accuracy/F1 at a validation threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score


def validation_threshold(y_val: np.ndarray, s_val: np.ndarray) -> float:
    """The score threshold with the best F1 on the validation split (never chosen on test)."""
    precision, recall, thresholds = precision_recall_curve(y_val, s_val)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[np.argmax(f1[:-1])])


def evaluate(y_val, s_val, y_test, s_test) -> dict[str, float]:
    predicted = s_test >= validation_threshold(y_val, s_val)
    return {
        "auroc": float(roc_auc_score(y_test, s_test)),
        "auprc": float(average_precision_score(y_test, s_test)),
        "accuracy": float((predicted == y_test).mean()),
        "f1": float(f1_score(y_test, predicted, zero_division=0)),
    }


def bootstrap_auroc(y: np.ndarray, s: np.ndarray, n: int, seed: int) -> np.ndarray:
    """AUROC of n resamples of the test set (resamples holding one class are skipped).

    A resample only re-weights samples, so each AUROC is w_pos' C w_neg / (|w_pos| |w_neg|) with C the
    fixed pairwise win matrix (1 if a positive outscores a negative, 1/2 on ties): all resamples in
    one BLAS product, instead of n calls to roc_auc_score whose input checks cost milliseconds each
    (a three-operand einsum, unlike the product, loops in plain C: 0.3 s for 200 x 2,000 samples).
    """
    positive = y.astype(bool)
    wins = np.sign(s[positive][:, None] - s[~positive][None, :]) / 2 + 0.5  # [P, N]
    rows = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    counts = np.stack([np.bincount(r, minlength=len(y)) for r in rows]).astype(np.float64)  # [n, len(y)]
    w_pos, w_neg = counts[:, positive], counts[:, ~positive]
    total = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    keep = total > 0
    return ((w_pos[keep] @ wins) * w_neg[keep]).sum(axis=1) / total[keep]


def aggregate(per_seed: list[dict[str, float]], boots: list[np.ndarray]) -> dict[str, float]:
    """Mean and std over seeds; the 95% interval pools every seed's bootstrap, so it holds both the
    split-to-split and the sampling variation."""
    aurocs = np.array([r["auroc"] for r in per_seed])
    pooled = np.concatenate(boots) if boots else aurocs
    summary = {
        "auroc_mean": float(aurocs.mean()),
        "auroc_std": float(aurocs.std(ddof=1)) if len(aurocs) > 1 else 0.0,
        "auroc_ci_low": float(np.percentile(pooled, 2.5)),
        "auroc_ci_high": float(np.percentile(pooled, 97.5)),
    }
    for key in ("auprc", "accuracy", "f1"):
        summary[f"{key}_mean"] = float(np.mean([r[key] for r in per_seed]))
    return summary
