"""The report's abstention section: the probe stage's risk-coverage results (`halp.probe.risk_coverage`)
as a table, a verdict (does the guard beat entropy-based abstention?) and a curve (PNG and DVC plot data)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from halp.jsonfile import number
from halp.probe.risk_coverage import AT
from halp.report import figures


def section(model: str, evaluated: dict, figure: Path, plot_data: Path) -> list[str]:
    results = evaluated["scores"]
    lines = [
        f"**{model}**: hallucination rate among the answered questions when a score refuses the riskiest "
        f"(out-of-fold test scores; probes chosen by validation AUROC). Answering all: "
        f"{evaluated['answering_all']:.1%}.",
        "",
        "| score | AURC | hallucinated at 80% coverage |",
        "|---|---|---|",
    ]
    for r in results.values():
        lines.append(f"| {r['label']} | {_span(r, 'aurc')} | {_span(r, 'rate_at_80')} |")
    lines += ["", _verdict(results), ""]
    _plot(model, evaluated, figure, plot_data)
    return lines


def _span(r: dict, key: str) -> str:
    value, low, high = (number(r[name]) for name in (key, f"{key}_ci_low", f"{key}_ci_high"))
    return "n/a" if math.isnan(value) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _verdict(results: dict[str, dict]) -> str:
    """Whether the guard's 80%-coverage interval lies below entropy-based abstention's."""
    guard, entropy = results["guard"], results.get("first_token_entropy")
    if entropy is None:
        return f"No entropy baseline to compare the {guard['label']} with."

    def rate(r: dict) -> str:
        return f"{r['rate_at_80']:.1%} [{r['rate_at_80_ci_low']:.1%}, {r['rate_at_80_ci_high']:.1%}]"

    text = (
        f"At 80% coverage the {guard['label']} leaves {rate(guard)} hallucinated, entropy-based abstention "
        f"{rate(entropy)}: "
    )
    if guard["rate_at_80_ci_high"] < entropy["rate_at_80_ci_low"]:
        return text + "the guard beats entropy-based abstention (intervals apart)."
    return text + "the guard does not clearly beat entropy-based abstention (the intervals overlap)."


def _plot(model: str, evaluated: dict, figure: Path, plot_data: Path) -> None:
    results = evaluated["scores"]
    table = pd.DataFrame({key: r["curve"] for key, r in results.items()}, index=evaluated["coverages"])
    table.rename_axis("coverage").reset_index().to_csv(plot_data, index=False, float_format="%.5g")
    fig, ax = figures.new()
    for key in table.columns:
        ax.plot(table.index, table[key], marker=".", label=results[key]["label"])
    ax.axhline(evaluated["answering_all"], linestyle="--", color="grey", linewidth=1)
    ax.axvline(AT, color="black", linewidth=0.5)
    figures.save(
        fig,
        ax,
        figure,
        xlabel="coverage (share of questions answered)",
        ylabel="hallucinated among the answered",
        title=f"{model}: risk-coverage (mean over test folds)",
    )
