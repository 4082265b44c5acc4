"""The report's transfer section: probes trained on one kind of question and tested on the others
(`halp.probe.transfer`), as a heatmap per grouping, a table of in-distribution against left-out AUROC, a
sentence on what leaving a group out costs, and the left-out numbers as DVC plot data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from halp.jsonfile import number
from halp.report import figures

SHORT = {
    "vision_only": "VF",
    "vision_token": "VT",
    "query_token": "QT",
    "image_attention": "IA",
    "image_attention_all": "IA all layers",
    "query_token+image_attention": "QT+IA",
}


def cell_name(representation: str, cell: dict) -> str:
    """ "QT L3 mlp", "VF logistic"."""
    where = "" if cell["layer"] is None else f" L{cell['layer']}"
    return f"{SHORT[representation]}{where} {cell['probe']}"


def left_out_table(transfer: dict) -> pd.DataFrame:
    """One row per (grouping, group, representation): the AUROC of the probe trained on all groups (HALP's
    protocol) and of the one trained without the group, both on the group's test rows, with intervals."""
    rows = []
    for grouping, found in transfer.items():
        for rep, cell in found.get("cells", {}).items():
            for group, tested in cell["left_out"].items():
                row = {
                    "grouping": grouping,
                    "group": group,
                    "representation": rep,
                    "cell": cell_name(rep, cell),
                }
                for protocol, metrics in tested.items():
                    for key in ("auroc_mean", "auroc_ci_low", "auroc_ci_high"):
                        row[f"{protocol}_{key.removeprefix('auroc_')}"] = number(metrics.get(key))
                rows.append(row)
    return pd.DataFrame(rows)


def _interval(mean: float, low: float, high: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.3f} [{low:.2f}, {high:.2f}]"


def section(model: str, transfer: dict, pictures: Path, plot_data: Path) -> list[str]:
    """The model's transfer heatmaps, its left-out table and sentences; writes the figures and plot data."""
    lines = []
    for grouping, found in transfer.items():
        if "cells" not in found:
            lines.append(f"**{model}** across {grouping}: not measured, {found['skipped_because']}.")
            lines.append("")
            continue
        figure = pictures / f"{model}_transfer_{grouping}.png"
        _heatmaps(model, grouping, found, figure)
        skipped = "".join(f" {g} left out: {reason}." for g, reason in found["skipped"].items())
        lines += [f"![{model}: transfer across {grouping}](figures/{figure.name})", ""]
        lines += [f"**{model}** across {grouping} (rows: trained on; columns: tested on).{skipped}", ""]
    table = left_out_table(transfer)
    if table.empty:
        return lines
    plotted = table.assign(label=table.grouping + ": " + table.group + " (" + table.cell + ")")
    plotted[["label", "grouping", "group", "cell", "in_distribution_mean", "out_of_group_mean"]].to_csv(
        plot_data, index=False, float_format="%.5g", lineterminator="\n"
    )
    lines += [
        f"**{model}**, each group left out of training (test AUROC on that group's test rows):",
        "",
        "| grouping | group | cell | trained on all groups | trained without it |",
        "|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        inside = _interval(r.in_distribution_mean, r.in_distribution_ci_low, r.in_distribution_ci_high)
        outside = _interval(r.out_of_group_mean, r.out_of_group_ci_low, r.out_of_group_ci_high)
        lines.append(f"| {r.grouping} | {r.group} | {r.cell} | {inside} | {outside} |")
    return [*lines, "", *cost_sentences(model, table), ""]


def cost_sentences(model: str, table: pd.DataFrame) -> list[str]:
    """Per grouping, what leaving a group out of training costs each representation, averaged over groups."""
    sentences = []
    for grouping, rows in table.groupby("grouping", sort=False):
        costs = []
        for rep, cells in rows.groupby("representation", sort=False):
            inside, outside = cells.in_distribution_mean.mean(), cells.out_of_group_mean.mean()
            costs.append(f"{SHORT[rep]} {inside:.3f} -> {outside:.3f} ({outside - inside:+.3f})")
        sentences.append(
            f"{model}: a kind of question ({grouping}) never seen in training moves the probes' AUROC on it, "
            f"averaged over {rows.group.nunique()} groups: " + ", ".join(costs) + "."
        )
    return sentences


def _heatmaps(model: str, grouping: str, found: dict, out: Path) -> None:
    """One panel per cell with a matrix (trained on each group, tested on each); a guard's extra cell has
    only its left-out numbers, which the table shows."""
    cells = {rep: cell for rep, cell in found["cells"].items() if "trained_on" in cell}
    groups = list(found["groups"])
    fig, axes = figures.new(width=1.2 + 2.2 * len(cells), height=2.6, panels=len(cells))
    axes = [axes] if len(cells) == 1 else axes
    for ax, (rep, cell) in zip(axes, cells.items(), strict=True):
        matrix = np.array(
            [[number(cell["trained_on"][g][h].get("auroc_mean")) for h in groups] for g in groups]
        )
        ax.imshow(matrix, vmin=0.3, vmax=1.0, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            text, colour = (
                ("n/a", "black")
                if np.isnan(value)
                else (f"{value:.2f}", "white" if value < 0.65 else "black")
            )
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.set_title(cell_name(rep, cell), fontsize=8)
    fig.suptitle(f"{model}: test AUROC across {grouping}", fontsize=9)
    figures.save(fig, axes, out, xlabel="tested on", ylabel="trained on")
