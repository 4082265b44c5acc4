"""Selective answering, evaluated: answer the questions a score ranks least risky, refuse the rest, and
read the hallucination rate among the answered against the share answered (the risk-coverage curve).

Scores are the probe stage's out-of-fold test scores; each test fold is ranked on its own (one fold's
scores come from one fitted probe), and fold results are averaged, with a 95% interval pooling every
fold's bootstrap, as the AUROCs are. A score's ties are answered together in expectation (a tied group's
hallucination rate is spread over it), so a score with few values (the metadata baseline) is not
flattered by the order its ties happen to fall in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from halp.probe.headline import METADATA, best_probe
from halp.probe.run import score_column
from halp.report import figures

GRID = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # coverages the curves are drawn at
AT = 0.8  # the coverage a single number is quoted at


def _cumulative_risk(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Hallucination rate among the k least risky answers, k = 1..n, ties spread evenly."""
    order = np.argsort(s, kind="stable")
    ordered = pd.Series(y[order].astype(np.float64))
    spread = ordered.groupby(s[order]).transform("mean").to_numpy()
    return np.cumsum(spread) / np.arange(1, len(y) + 1)


def _fold_numbers(y: np.ndarray, s: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(AURC, risk at AT coverage, risk at each GRID coverage) of one fold."""
    risk = _cumulative_risk(y, s)

    def at(coverage: float) -> float:
        return float(risk[max(int(np.ceil(coverage * len(y))) - 1, 0)])

    return float(risk.mean()), at(AT), np.array([at(c) for c in GRID])


def risk_coverage(scores: pd.DataFrame, column: str, bootstrap: int, seed: int = 0) -> dict:
    """AURC and the hallucination rate at 80% coverage (mean over folds, 95% interval) and the mean curve,
    for one score column of the test-score table (higher = riskier)."""
    aurcs, rates, curves, boot_aurc, boot_rate = [], [], [], [], []
    rng = np.random.default_rng(seed)
    for _, fold in scores[scores.fold >= 0].groupby("fold"):
        y, s = fold.hallucinated.to_numpy(), fold[column].to_numpy(np.float64)
        aurc, rate, curve = _fold_numbers(y, s)
        aurcs.append(aurc), rates.append(rate), curves.append(curve)
        for rows in rng.integers(0, len(y), size=(bootstrap, len(y))):
            a, r, _ = _fold_numbers(y[rows], s[rows])
            boot_aurc.append(a), boot_rate.append(r)
    pooled = {"aurc": boot_aurc or aurcs, "rate": boot_rate or rates}
    return {
        "aurc": float(np.mean(aurcs)),
        "aurc_ci_low": float(np.percentile(pooled["aurc"], 2.5)),
        "aurc_ci_high": float(np.percentile(pooled["aurc"], 97.5)),
        "rate_at_80": float(np.mean(rates)),
        "rate_at_80_ci_low": float(np.percentile(pooled["rate"], 2.5)),
        "rate_at_80_ci_high": float(np.percentile(pooled["rate"], 97.5)),
        "curve": np.mean(curves, axis=0),
    }


def section(
    model: str, rows: pd.DataFrame, scores: pd.DataFrame, bootstrap: int, figure: Path, plot_data: Path
) -> list[str]:
    """The report's risk-coverage table, curve (PNG and DVC plot data) and verdict for one model: the
    probe chosen by validation AUROC overall (what `halp guard-fit` saves) and of each representation,
    against both output baselines and the metadata baseline."""
    guard = best_probe(rows, by="val_auroc_mean")
    candidates = {"guard": (f"guard: {_name(guard)}", score_column(guard))}  # key: the plot's column
    for rep in ("vision_only", "vision_token", "query_token"):
        if (best := best_probe(rows, rep, by="val_auroc_mean")) is not None:
            candidates[rep] = (_name(best), score_column(best))
    candidates |= {name: (name, name) for name in BASELINES if name in scores}
    results = {key: risk_coverage(scores, column, bootstrap) for key, (_, column) in candidates.items()}
    everything = scores[scores.fold >= 0].hallucinated.mean()
    lines = [
        f"**{model}**: hallucination rate among the answered questions when a score refuses the riskiest "
        f"(out-of-fold test scores; probes chosen by validation AUROC). Answering all: {everything:.1%}.",
        "",
        "| score | AURC | hallucinated at 80% coverage |",
        "|---|---|---|",
    ]
    for key, r in results.items():
        lines.append(f"| {candidates[key][0]} | {_span(r, 'aurc')} | {_span(r, 'rate_at_80')} |")
    lines += ["", _verdict(candidates["guard"][0], results), ""]
    _plot(model, results, everything, figure, plot_data)
    return lines


BASELINES = ("first_token_entropy", "first_token_max_prob", METADATA)


def _name(row: pd.Series) -> str:
    where = "VF" if pd.isna(row.layer) else f"{row.representation} L{int(row.layer)}"
    return f"{where} {row.probe}"


def _span(r: dict, key: str) -> str:
    return f"{r[key]:.3f} [{r[f'{key}_ci_low']:.3f}, {r[f'{key}_ci_high']:.3f}]"


def _verdict(label: str, results: dict[str, dict]) -> str:
    """Whether the guard's 80%-coverage interval lies below entropy-based abstention's."""
    guard, entropy = results["guard"], results.get("first_token_entropy")
    if entropy is None:
        return f"No entropy baseline to compare {label} with."

    def rate(r: dict) -> str:
        return f"{r['rate_at_80']:.1%} [{r['rate_at_80_ci_low']:.1%}, {r['rate_at_80_ci_high']:.1%}]"

    text = (
        f"At 80% coverage the {label} leaves {rate(guard)} hallucinated, entropy-based abstention "
        f"{rate(entropy)}: "
    )
    if guard["rate_at_80_ci_high"] < entropy["rate_at_80_ci_low"]:
        return text + "the guard beats entropy-based abstention (intervals apart)."
    return text + "the guard does not clearly beat entropy-based abstention (the intervals overlap)."


def _plot(model: str, results: dict[str, dict], everything: float, figure: Path, plot_data: Path) -> None:
    table = pd.DataFrame({label: r["curve"] for label, r in results.items()}, index=GRID)
    table.rename_axis("coverage").reset_index().to_csv(plot_data, index=False, float_format="%.5g")
    fig, ax = figures.new()
    for label in table.columns:
        ax.plot(table.index, table[label], marker=".", label=label)
    ax.axhline(everything, linestyle="--", color="grey", linewidth=1)
    ax.axvline(AT, color="black", linewidth=0.5)
    figures.save(
        fig,
        ax,
        figure,
        xlabel="coverage (share of questions answered)",
        ylabel="hallucinated among the answered",
        title=f"{model}: risk-coverage (mean over test folds)",
    )
